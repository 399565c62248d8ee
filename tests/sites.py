"""Sites for tests that run the mailqueue command: a var directory, a
configuration file, and helpers to wait for processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailqueue.metrics import Counters
from mailqueue.runners import IncomingRunner, RetryRunner


def process_gone(pid):
    """True once *pid* has exited (a zombie nobody reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def interruptible():
    """Give a child the default SIGINT, for a test that interrupts it.

    A shell starts a background job with SIGINT ignored, and its children
    inherit that, Python too: it then never raises KeyboardInterrupt.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


class Site:
    """A var directory with a configuration file, and the command to run on it."""

    def __init__(self, var_dir, extra="", paths=""):
        self.var_dir = var_dir
        self.config_file = os.path.join(var_dir, "site.cfg")
        # retry and virgin do not start, unless the test's extra says so.
        quiet = "".join(
            f"[runner.{name}]\nstart: no\n"
            for name in ("retry", "virgin")
            if f"[runner.{name}]" not in extra
        )
        with open(self.config_file, "w") as stream:
            stream.write(f"[paths]\nvar_dir: {var_dir}\n{paths}" + quiet + extra)

    def run(self, *arguments, check=True, env=None):
        result = subprocess.run(
            [sys.executable, "-m", "mailqueue", "-C", self.config_file, *arguments],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def status(self):
        """What the master last wrote about itself and its runners.

        ``start`` returns once the master holds its lock; it writes its
        status a moment later, so wait for that (at most 10 s).
        """
        path = os.path.join(self.var_dir, "master.json")
        wait_for(lambda: os.path.exists(path), 10, "the master's status")
        with open(path) as stream:
            return json.load(stream)

    def log(self, name):
        try:
            with open(os.path.join(self.var_dir, "logs", name)) as stream:
                return stream.read()
        except FileNotFoundError:
            return ""


# Runners a test can watch ----------------------------------------------------
#
# A test that must know a runner process looked (and took nothing, or went
# back to sleep) waits for the runner to say so; it never sleeps and hopes.
# The site names one of the classes below as the runner's class, and the
# process runs with watched_environment(record): the runner appends a line to
# *record* each time it ends a pass (after its back-off wait, if any, as it
# calls _snooze) and each time it adds its counts.


#: The environment variable that names the file a watched runner writes to.
RECORD = "MAILQUEUE_TEST_RECORD"


def _say(*words):
    with open(os.environ[RECORD], "a") as stream:
        stream.write(" ".join(map(str, words)) + "\n")


class _SayingCounters(Counters):
    """Counts that say each time they are added: ``counts TIME``.

    A runner adds its counts before each sleep (:mod:`mailqueue.metrics`
    says so), the sleeps of a runner standing by too, and after each entry.
    """

    def flush(self, every=0.0):
        _say("counts", time.monotonic())
        super().flush(every)


class _Watched:
    """Says ``pass FOUND TIME`` as each pass ends, and has counts that say so."""

    def __init__(self, *arguments, **keywords):
        super().__init__(*arguments, **keywords)
        self.counters = _SayingCounters(self.counters.var_dir)

    def _snooze(self, filecnt):
        # The hook each pass ends with (docs/runner.rst), with what it found.
        _say("pass", filecnt, time.monotonic())
        super()._snooze(filecnt)


class WatchedIncomingRunner(_Watched, IncomingRunner):
    """The in runner, watched: ``class: sites.WatchedIncomingRunner``."""


class WatchedRetryRunner(_Watched, RetryRunner):
    """The retry runner, watched: ``class: sites.WatchedRetryRunner``."""


def watched_environment(record):
    """The environment of a process whose watched runners write to *record*.

    This file's directory comes first on its PYTHONPATH, so that the
    runner's class is found.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.pathsep.join(filter(None, (here, os.environ.get("PYTHONPATH"))))
    return os.environ | {"PYTHONPATH": path, RECORD: str(record)}


def recorded(record, kind):
    """What watched runners said in *record*, in lines of *kind* (pass, counts).

    Each is the list of the numbers the line gives after its kind: for a
    pass, the entries it found and when it ended (``time.monotonic()``).
    """
    try:
        text = Path(record).read_text()
    except FileNotFoundError:
        return []
    return [
        [float(word) for word in line.split()[1:]]
        for line in text.splitlines(keepends=True)
        if line.endswith("\n") and line.split()[0] == kind
    ]

"""Sites for tests that run the mailqueue command: a var directory, a
configuration file, and helpers to wait for processes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest


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

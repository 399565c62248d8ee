"""Helpers the tests share: tests/ is on sys.path, so ``from helpers import run``.

Fixtures the tests share are in conftest.py instead.
"""

import contextlib
import fcntl
import os
import resource
import subprocess
import sys
import textwrap
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from mailqueue import config, message_from_string
from mailqueue.cli import main
from mailqueue.metrics import FAMILIES
from mailqueue.runners import maildir

# A runner that manages no queue (its class is never imported here).
TICKER = "[runner.ticker]\nclass: tickers.Ticker\npath:\n"


@contextlib.contextmanager
def master_lock(pid):
    """Hold the master's lock on the var directory, saying it is *pid*'s.

    What a running master leaves for the commands to find: they look only
    at the lock and at master.json.
    """
    fd = os.open(os.path.join(config.VAR_DIR, "master.lck"), os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, f"{pid}\n".encode())
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


FILEBASE = "1600000000.0+" + "7" * 40


LATER = "1600000001.0+" + "8" * 40


def place(queue, payload, filebase=FILEBASE, extension=".pck"):
    path = os.path.join(queue.queue_directory, filebase + extension)
    with open(path, "wb") as stream:
        stream.write(payload)
    return path


def in_child(var_dir, code, timeout=60, memory=1 << 30):
    """Run *code* in a child with the var directory set; return it finished."""

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    prelude = (
        "from mailqueue import config\n"
        f"config.push('test', '[paths]\\nvar_dir: {var_dir}\\n')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
        check=False,
    )


def message(number=1, message_id=True):
    header = f"Message-ID: <m{number}@example.com>\n" if message_id else ""
    return message_from_string(
        f"From: aperson@example.com\n{header}Subject: number {number}\n\nHi.\n"
    )


DAY = 86400.0


MESSAGE = "From: aperson@example.com\nMessage-ID: <{}@example.com>\n\nHi\n"


def parsed(text):
    """The families in *text*, by name, each checked to be one of ours."""
    families = {}
    for family in text_string_to_metric_families(text):
        # The parser drops a counter's _total from the family's name.
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in FAMILIES, f"a sample of no family: {family}"
        assert (family.type, family.documentation) == FAMILIES[name]
        families[name] = family
    assert list(families) == list(FAMILIES)
    return families


def values(family, **labels):
    """The samples of *family* whose labels include *labels*, as {labels: value}."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for sample in family.samples
        if labels.items() <= sample.labels.items()
    }


def value(family, **labels):
    [found] = values(family, **labels).values()
    return found


def get(url):
    """The status, content type and text of a GET of *url*."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def listing(directory):
    return sorted(os.listdir(directory))


def once(real, when, fault):
    """Wrap the system call *real*: the first call *when* accepts gets *fault*.

    *fault* is called with the same arguments and its result returned.
    """
    done = []

    def call(*args):
        if not done and when(*args):
            done.append(args)
            return fault(*args)
        return real(*args)

    call.done = done
    return call


def block_delivery(mlist):
    # A file where the list's Maildir goes: every delivery to it fails.
    os.makedirs(os.path.dirname(maildir(mlist)), exist_ok=True)
    open(maildir(mlist), "w").close()


def errors_logged(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "mailqueue.error"]


BROKEN = """
from mailqueue.runners import IncomingRunner

class BrokenRunner(IncomingRunner):
    def __init__(self, *arguments, **keywords):
        raise RuntimeError("this runner cannot start")
"""


def run(capsys, *arguments):
    status = main(list(arguments))
    out, err = capsys.readouterr()
    return status, out, err


def queued(queue="in", subject="hi", listid="test.example.com"):
    msg = message_from_string(f"From: a@example.com\nSubject: {subject}\n\nHi\n")
    return config.switchboards[queue].enqueue(msg, listid=listid)

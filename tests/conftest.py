"""Fixtures for the tests in this directory.

The harnesses in tools/ (the hostile corpus and its harness, the soak, the
crash test, the site checker) are importable here by their module names, so
that their reduced runs and the unit tests that borrow from them can import
them.
"""

import os
import sys
from pathlib import Path

import pytest
from sites import Site

from mailqueue import Switchboard, config, create_list, qfile
from mailqueue.master import Master, _Child
from mailqueue.testing import isolated_state

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path[:0] = [str(TOOLS / name) for name in ("hostile", "soak", "crash", "browser")]


def pytest_collection_modifyitems(config, items):
    # A test marked postgresql is about PostgreSQL itself: it runs where the
    # lists are in PostgreSQL (make spec-postgresql, which CI runs) and is
    # deselected elsewhere, as a selection, not a skip.
    if os.environ.get("MAILQUEUE_TEST_DATABASE"):
        return
    elsewhere = [item for item in items if item.get_closest_marker("postgresql")]
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        items[:] = [item for item in items if item not in elsewhere]


@pytest.fixture
def var_dir():
    """A fresh, private var directory (queues and list database) for one test."""
    with isolated_state() as path:
        yield path


@pytest.fixture
def site(var_dir):
    """Make a site (var directory, configuration file) in the test's var directory."""
    sites = []

    def make(extra=""):
        sites.append(Site(var_dir, extra))
        return sites[-1]

    yield make
    for made in sites:  # never leave a master behind, whatever failed
        made.run("stop", "--timeout", "30", check=False)


@pytest.fixture
def master(var_dir, monkeypatch):
    """A master in this process that started one runner, pid 4242.

    Its children are never real: each test says what ``os.waitpid`` finds.
    """
    made = Master(["mailqueue"])
    child = _Child("in", 0, 1, max_restarts=10, window=600.0, pid=4242)
    made.children[child.spec] = child
    made._by_pid[4242] = child

    def waitpid_finds(*found):
        results = list(found)

        def waitpid(pid, options):
            assert (pid, options) == (-1, os.WNOHANG)
            result = results.pop(0)
            if isinstance(result, BaseException):
                raise result
            return result

        monkeypatch.setattr(os, "waitpid", waitpid)

    made.waitpid_finds = waitpid_finds
    return made


@pytest.fixture
def calls(monkeypatch):
    """The directory flushes, links, unlinks and writes made, in order."""
    made = []
    flush = qfile.fsync_directory

    def fsync_directory(directory):
        made.append(("flush", directory))
        flush(directory)

    def recording(name, real):
        def call(*arguments, **keywords):
            made.append((name, arguments[0]))
            return real(*arguments, **keywords)

        return call

    monkeypatch.setattr(qfile, "fsync_directory", fsync_directory)
    for name in ("link", "unlink", "rename", "pwritev", "mkdir"):
        monkeypatch.setattr(qfile.os, name, recording(name, getattr(os, name)))
    return made


@pytest.fixture
def var_queue(var_dir):
    """A switchboard made by hand, in the test's var directory."""
    return Switchboard("test", os.path.join(config.QUEUE_DIR, "test"))


@pytest.fixture
def mlist(var_dir):
    return create_list("test@example.com")

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

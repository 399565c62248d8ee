"""Fixtures for the tests in this directory."""

import os

import pytest
from sites import Site

from mailqueue.testing import isolated_state


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

"""Fixtures for the tests in this directory."""

import pytest
from sites import Site

from mailqueue.testing import isolated_state


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

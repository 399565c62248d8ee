"""Fixtures for the tests in this directory."""

import pytest

from mailqueue.testing import isolated_state


@pytest.fixture
def var_dir():
    """A fresh, private var directory (queues and list database) for one test."""
    with isolated_state() as path:
        yield path

"""Run the narrative documents in docs/ as tests, with Sybil.

Each document gets its own fresh state (a temporary var directory, so new
queues and a new list database) through module-scoped fixtures, and these
fixtures are the names a document may use without importing them:

``config``
    the global configuration, :data:`mailqueue.config`;
``create_list``
    :func:`mailqueue.create_list`;
``dump_msgdata``
    :func:`mailqueue.testing.dump_msgdata`, which prints metadata sorted and aligned;
``message_from_string``
    :func:`mailqueue.message_from_string`;
``subscribe``
    ``subscribe(mlist, address, language=None)`` makes *address* a member;
``show_log``
    ``show_log(name)`` prints what was logged to ``mailqueue.<name>``
    (``error``, ``runner``) since it was last called.
"""

from doctest import ELLIPSIS, NORMALIZE_WHITESPACE, REPORT_NDIFF

import pytest
from sybil import Sybil
from sybil.parsers.rest import DocTestParser, PythonCodeBlockParser

import mailqueue
from mailqueue.testing import LogCapture, isolated_state
from mailqueue.testing import dump_msgdata as _dump_msgdata
from mailqueue.testing import subscribe as _subscribe

DOC_FIXTURES = [
    "config",
    "create_list",
    "dump_msgdata",
    "message_from_string",
    "subscribe",
    "show_log",
]


@pytest.fixture(scope="module")
def _document_state():
    with isolated_state() as var_dir:
        yield var_dir


@pytest.fixture(scope="module")
def config(_document_state):
    return mailqueue.config


@pytest.fixture(scope="module")
def create_list(_document_state):
    return mailqueue.create_list


@pytest.fixture(scope="module")
def dump_msgdata(_document_state):
    return _dump_msgdata


@pytest.fixture(scope="module")
def message_from_string(_document_state):
    return mailqueue.message_from_string


@pytest.fixture(scope="module")
def subscribe(_document_state):
    return _subscribe


@pytest.fixture(scope="module")
def show_log(_document_state):
    with LogCapture().installed() as capture:
        yield capture


pytest_collect_file = Sybil(
    parsers=[
        DocTestParser(optionflags=ELLIPSIS | NORMALIZE_WHITESPACE | REPORT_NDIFF),
        PythonCodeBlockParser(),
    ],
    patterns=["*.rst"],
    path="docs",
    fixtures=DOC_FIXTURES,
).pytest()

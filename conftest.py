"""Run the narrative documents in docs/ as tests, with Sybil.

Every document gets fresh state (for the reference implementation, a new
temporary var directory: new queues, a new list database) and these
fixtures, the only names a document may use without importing them:

``config``
    the global configuration, :data:`mailqueue.config`;
``create_list``
    :func:`mailqueue.create_list`;
``dump_msgdata``
    :func:`mailqueue.queuetools.dump_msgdata`, which prints metadata sorted and aligned;
``message_from_string``
    :func:`mailqueue.message_from_string`;
``subscribe``
    ``subscribe(mlist, address, language=None)`` makes *address* a member;
``show_log``
    ``show_log(name)`` prints what was logged to ``mailqueue.<name>``
    (``error``, ``runner``) since it was last called.

``pytest --implementation=NAME`` runs the same documents against another
implementation, whose adapter gives these fixtures (see docs/conformance.rst).
"""

from doctest import ELLIPSIS, NORMALIZE_WHITESPACE, REPORT_NDIFF

from sybil import Sybil
from sybil.parsers.rest import DocTestParser, PythonCodeBlockParser

from mailqueue.conformance.adapter import FIXTURES

pytest_plugins = ["mailqueue.conformance.plugin"]


def document_setup(namespace):
    # Imported here: pytest must import the plugin itself, to rewrite its asserts.
    from mailqueue.conformance.plugin import document_setup

    document_setup(namespace)


pytest_collect_file = Sybil(
    parsers=[
        DocTestParser(optionflags=ELLIPSIS | NORMALIZE_WHITESPACE | REPORT_NDIFF),
        PythonCodeBlockParser(),
    ],
    patterns=["*.rst"],
    path="docs",
    setup=document_setup,
    fixtures=list(FIXTURES),
).pytest()

"""The pytest plugin that runs the spec documents against an implementation.

It collects the documents with Sybil: their doctest examples,
``.. code-block:: python`` blocks and, on a page that asks for it, shell
sessions (``.. code-block:: console``, see
:mod:`mailqueue.conformance.console`), where the documents are (the installed
package's, or a checkout's docs/, see
:func:`~mailqueue.conformance.spec.documents_directory`).  Every document
gets fresh state and these fixtures from the implementation's adapter, the
only names a document may use without importing them:

``config``
    the global configuration, :data:`mailqueue.configuration.config`;
``create_list``
    :func:`mailqueue.configuration.create_list`;
``dump_msgdata``
    :func:`mailqueue.queuetools.dump_msgdata`, which prints metadata sorted and aligned;
``message_from_string``
    :func:`mailqueue.message.message_from_string`;
``subscribe``
    ``subscribe(mlist, address, language=None)`` makes *address* a member;
``show_log``
    ``show_log(name)`` prints what was logged to ``mailqueue.<name>``
    (``error``, ``runner``) since it was last called.

``from mailqueue import ...`` in a document gives the adapter's classes.
The plugin adds ``--implementation=NAME`` (default: the reference,
``mailqueue``), ``--level=MUST`` (run the examples of one level only) and
``--report-dir=DIR``; with ``--implementation`` on the command line it
reports conformance (see :mod:`mailqueue.conformance.report`).  Each
example also matches ``-k`` by its section's title and its level.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping, Sequence
from doctest import ELLIPSIS, NORMALIZE_WHITESPACE, REPORT_NDIFF
from types import SimpleNamespace
from typing import Any

import pytest
from sybil import Sybil
from sybil.parsers.rest import DocTestParser, PythonCodeBlockParser

from mailqueue.conformance.adapter import FIXTURES, Adapter, AdapterError, load_adapter
from mailqueue.conformance.console import ConsoleParser, end_session
from mailqueue.conformance.report import SET_UP, ConformanceReport
from mailqueue.conformance.spec import LEVELS, Place, SpecDocument, documents_directory

__all__ = ["document_setup", "pytest_collect_file"]

_adapter: Adapter | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--implementation",
        default=None,
        metavar="NAME",
        help="run the spec against this implementation's adapter: mailqueue "
        "(the default), mailman, an entry point of mailqueue.adapters, or "
        "package.module[:attribute]; also writes a conformance report",
    )
    parser.addoption(
        "--report-dir",
        default=None,
        metavar="DIR",
        help="with --implementation, write the conformance report there "
        "(report.json and junit.xml)",
    )
    parser.addoption(
        "--level",
        default=None,
        choices=LEVELS,
        help="run only the spec's examples of this requirement level",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    global _adapter
    chosen = config.getoption("--implementation")
    try:
        _adapter = load_adapter(chosen or "mailqueue")
        _adapter.start()
    except AdapterError as error:
        raise pytest.UsageError(str(error)) from None
    if chosen is not None:
        report = ConformanceReport(_adapter, config)
        config.pluginmanager.register(report, "mailqueue-conformance-report")


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> Iterator[None]:
    """Select the examples to run, and those they need.

    Another implementation runs the spec, not the pages about our tools;
    ``--level`` keeps one level's examples and ``-k`` matches a section's
    title and level too.  An example builds on the ones before it in its
    document, so those still run, as its set-up, whatever the selection.
    """
    assert _adapter is not None
    level = config.getoption("--level")
    collected = list(items)
    documents: dict[str, SpecDocument] = {}
    places: dict[pytest.Item, tuple[SpecDocument, Place]] = {}
    for item in collected:
        example = getattr(item, "example", None)
        if example is not None:
            if example.path not in documents:
                documents[example.path] = SpecDocument(example.path)
            document = documents[example.path]
            place = document.place(example.line)
            places[item] = document, place
            item.extra_keyword_matches.update((place.section, place.level))
    yield  # pytest's own selection, -k and -m among it
    selected = set(items)
    for item, (document, place) in places.items():
        wanted = (document.is_spec or _adapter.runs_reference_documents) and (
            level is None or place.level == level
        )
        if not wanted:
            selected.discard(item)
    last: dict[SpecDocument, int] = {}
    for index, item in enumerate(collected):
        if item in selected and item in places:
            last[places[item][0]] = index
    kept: list[pytest.Item] = []
    for index, item in enumerate(collected):
        if item in selected:
            kept.append(item)
        elif item in places and index < last.get(places[item][0], -1):
            item.stash[SET_UP] = True
            kept.append(item)
    dropped = [item for item in items if item not in kept]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept


@pytest.fixture(scope="module")
def _document_fixtures() -> Any:
    assert _adapter is not None
    with _adapter.document_state() as fixtures:
        missing = set(FIXTURES) - set(fixtures)
        if missing:
            raise AdapterError(
                f"the {_adapter.name} adapter gives no {', '.join(sorted(missing))}"
            )
        yield fixtures


def _make_fixture(name: str) -> Any:
    def fixture(_document_fixtures: Mapping[str, Any]) -> Any:
        return _document_fixtures[name]

    fixture.__name__ = name
    fixture.__doc__ = f"The document fixture {name!r}, from the adapter."
    return pytest.fixture(scope="module", name=name)(fixture)


for _name in FIXTURES:
    globals()[f"_fixture_{_name}"] = _make_fixture(_name)


def document_setup(namespace: dict[str, Any]) -> None:
    """Sybil's set-up of a document: ``import mailqueue`` gives the adapter's names."""
    assert _adapter is not None
    implementation = SimpleNamespace(**_adapter.namespace())
    real_import = builtins.__import__

    def redirecting_import(
        name: str,
        globals: Mapping[str, object] | None = None,
        locals: Mapping[str, object] | None = None,
        fromlist: Sequence[str] = (),
        level: int = 0,
    ) -> object:
        if level == 0 and name == "mailqueue":
            return implementation
        return real_import(name, globals, locals, fromlist, level)

    namespace["__builtins__"] = {**vars(builtins), "__import__": redirecting_import}


pytest_collect_file = Sybil(
    parsers=[
        DocTestParser(optionflags=ELLIPSIS | NORMALIZE_WHITESPACE | REPORT_NDIFF),
        PythonCodeBlockParser(),
        ConsoleParser(),
    ],
    patterns=["*.rst"],
    path=str(documents_directory()),
    setup=document_setup,
    teardown=end_session,
    fixtures=list(FIXTURES),
).pytest()
pytest_collect_file.__doc__ = (
    "pytest's hook, from Sybil: the examples of each document, as test items."
)

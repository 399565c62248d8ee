"""The pytest plugin that runs the spec documents against an implementation.

It adds ``--implementation=NAME`` (default: the reference, ``mailqueue``),
gives every document its fixtures from that implementation's adapter, and
makes ``from mailqueue import ...`` in a document give the adapter's
classes.  With ``--implementation`` on the command line it also writes the
conformance report (see :mod:`mailqueue.conformance.report`).
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from mailqueue.conformance.adapter import FIXTURES, Adapter, AdapterError, load_adapter
from mailqueue.conformance.report import ConformanceReport
from mailqueue.conformance.spec import SpecDocument

__all__ = ["document_setup"]

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
        help="where the conformance report goes (default: "
        "build/conformance/IMPLEMENTATION)",
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


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    # Another implementation runs the spec, not the pages about our tools.
    assert _adapter is not None
    if _adapter.runs_reference_documents:
        return
    is_spec: dict[str, bool] = {}
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        path = getattr(getattr(item, "example", None), "path", None)
        if path is not None and path not in is_spec:
            is_spec[path] = SpecDocument(path).is_spec
        (kept if path is None or is_spec[path] else dropped).append(item)
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

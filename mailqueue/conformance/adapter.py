"""The adapter interface: what running the spec needs from an implementation.

An adapter says how to start an implementation, gives each document fresh
state and its fixtures, names the classes the documents import, and lists
where the implementation is known to differ from the spec, with reasons.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any

__all__ = ["FIXTURES", "Adapter", "AdapterError", "load_adapter"]

#: The fixtures every document may use, which every adapter must give.
FIXTURES = (
    "config",
    "create_list",
    "dump_msgdata",
    "message_from_string",
    "subscribe",
    "show_log",
)

#: The adapters that ship with mailqueue, by name.
BUILTIN = {
    "mailqueue": "mailqueue.conformance.reference:ReferenceAdapter",
    "mailman": "mailqueue.conformance.mailman:MailmanAdapter",
}


class AdapterError(Exception):
    """An adapter that cannot be found, loaded or started."""


class Adapter:
    """The base class of adapters; subclasses override what they need.

    The documents import the classes under test with ``from mailqueue import
    Switchboard``; while the spec runs against this adapter, that import
    gives the objects in :meth:`namespace` instead.
    """

    #: A short name, used in reports (and the entry point name, by custom).
    name = "unnamed"
    #: One line saying what implementation this is.
    description = ""
    #: Where the implementation is known to differ from the spec, example
    #: by example: ``(document file name, section title, example)`` to the
    #: reason, where *example* is the example's first line of source without
    #: its prompt (and `` #N`` for the Nth example of the section that
    #: starts with that line).  These examples still run; their failures
    #: are reported as known, and one that passes fails the run.
    known_divergences: Mapping[tuple[str, str, str], str] = {}
    #: Whether the documents about the reference implementation's own tools
    #: (those with no requirement levels) run too: only for the reference.
    runs_reference_documents = False

    def start(self) -> None:
        """Start the implementation, once, before the first document runs."""

    def namespace(self) -> Mapping[str, Any]:
        """The names ``from mailqueue import ...`` gives the documents.

        At least ``Switchboard``, ``Runner`` and ``QueueFileError``.
        """
        raise NotImplementedError

    @contextlib.contextmanager
    def document_state(self) -> Iterator[Mapping[str, Any]]:
        """Give one document fresh state, and yield its fixtures by name.

        The names are those of :data:`~mailqueue.conformance.adapter.FIXTURES`.
        Everything the document changed is undone when the block ends.
        """
        raise NotImplementedError
        yield {}


def load_adapter(spec: str) -> Adapter:
    """Find the adapter named *spec*.

    *spec* is a built-in name (``mailqueue``, ``mailman``), the name of an
    entry point in the ``mailqueue.adapters`` group, or an import path,
    ``package.module:attribute`` or ``package.module`` (whose ``adapter``
    attribute is used).  An attribute that is a class is instantiated.
    """
    target = BUILTIN.get(spec)
    if target is None:
        found = entry_points(group="mailqueue.adapters", name=spec)
        target = next(iter(found)).value if found else spec
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise AdapterError(f"cannot load the adapter {spec!r}: {error}") from None
    try:
        adapter = getattr(module, attribute or "adapter")
    except AttributeError:
        raise AdapterError(
            f"the adapter {spec!r}: {module_name} has no {attribute or 'adapter'!r}"
        ) from None
    if isinstance(adapter, type):
        adapter = adapter()
    if not isinstance(adapter, Adapter):
        raise AdapterError(f"the adapter {spec!r} is not a mailqueue Adapter")
    return adapter

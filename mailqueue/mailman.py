"""A GNU Mailman 3 plugin: Mailman reads its queue files with mailqueue's loader.

GNU Mailman loads a queue file with :func:`pickle.load`, which runs whatever
code the file names.  Enabled in a Mailman site's configuration::

    [plugin.mailqueue]
    class: mailqueue.mailman.Plugin
    enabled: yes

every process of the site (its runners, ``mailman qfile``, ``mailman
unshunt``, the REST server) reads queue files and the message store through
:func:`load` instead: each pickle is checked by :func:`mailqueue.safepickle.check`
(opcodes, classes, sizes, depth, with the limits of mailqueue's own runners)
before an object is built from it, and a file that breaks a rule raises
:exc:`~mailqueue.safepickle.PickleRefused`, which Mailman treats as it treats
any file it cannot read: its runner logs the error and preserves the entry in
``bad``.  A file that passes gives the very objects :func:`pickle.load` gives
(Mailman's own message classes), and Mailman writes its files as before.

This module is for Mailman's processes: it imports ``mailman``, and nothing
in mailqueue imports it.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
from typing import IO, Any

from mailman.interfaces.plugin import IPlugin
from zope.interface import implementer

from mailqueue import message, qfile, safepickle

__all__ = ["READERS", "Plugin", "install", "installed", "load", "uninstall"]

#: The modules of GNU Mailman that read pickles from files this plugin
#: covers: the switchboard (dequeue, and the recovery of ``.bak`` files),
#: ``mailman qfile``, and the message store.
READERS = (
    "mailman.core.switchboard",
    "mailman.commands.cli_qfile",
    "mailman.model.messagestore",
)


class _Unpickler(safepickle.SafeUnpickler):
    # What pickle.load would build, for the names safepickle allows: what
    # a file names (Mailman's own message classes and time zone among them),
    # not the stand-ins mailqueue's own loader reads them as.
    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)  # refuses what is not allowed
        if found is message.Message or module.startswith("mailman."):
            return pickle.Unpickler.find_class(self, module, name)
        return found


def load(file: IO[bytes], max_size: int = qfile.MAX_ENTRY_SIZE) -> Any:
    """Read one pickle from the binary *file*, as :func:`pickle.load` does.

    It starts at the file's position and leaves the file just after the
    pickle; at the end of the file it raises :exc:`EOFError`.  The pickle is
    checked before anything is built: :exc:`~mailqueue.safepickle.PickleRefused`
    (a :exc:`ValueError`) names the file and the broken rule, and a file of
    more than *max_size* bytes is refused before it is read.
    """
    name = getattr(file, "name", "a queue file")
    start = file.tell()
    try:
        left = os.fstat(file.fileno()).st_size - start
    except (AttributeError, OSError, io.UnsupportedOperation):
        left = max_size
    data = file.read(min(left, max_size) + 1)
    if not data:
        raise EOFError("Ran out of input")
    if len(data) > max_size:
        raise safepickle.PickleRefused(
            f"{name}: more than the limit of {max_size:,} bytes"
        )
    try:
        _, end = safepickle.check(data)
        stream = io.BytesIO(data)
        built = _Unpickler(stream).load()
    except safepickle.PickleRefused as error:
        raise safepickle.PickleRefused(f"{name}: {error}") from None
    file.seek(start + end)
    return built


class _VerifiedPickle:
    """The :mod:`pickle` module as a reader of :data:`READERS` sees it: its
    ``load`` is :func:`load`; everything else is pickle's own."""

    load = staticmethod(load)

    def __getattr__(self, name: str) -> Any:
        return getattr(pickle, name)


_VERIFIED = _VerifiedPickle()


def install() -> None:
    """Make each module of :data:`READERS` load pickles with :func:`load`."""
    for name in READERS:
        vars(importlib.import_module(name))["pickle"] = _VERIFIED


def uninstall() -> None:
    """Give each module of :data:`READERS` back the :mod:`pickle` module."""
    for name in READERS:
        vars(importlib.import_module(name))["pickle"] = pickle


def installed() -> bool:
    """Whether every module of :data:`READERS` loads with :func:`load`."""
    modules = [importlib.import_module(name) for name in READERS]
    return all(vars(module).get("pickle") is _VERIFIED for module in modules)


@implementer(IPlugin)
class Plugin:
    """The plugin Mailman makes from ``[plugin.NAME] class:`` (see :func:`install`).

    Its ``pre_hook`` runs in every Mailman process as it starts, before the
    database is set up and before any runner or command reads a file.
    """

    #: No REST resource.
    resource = None

    def pre_hook(self) -> None:
        install()

    def post_hook(self) -> None:
        """Nothing: everything was done before Mailman went on starting."""

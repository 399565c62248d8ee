"""What the narrative documents and the tests use besides the public API.

:func:`isolated_state` gives a block of code a fresh, private var directory,
:class:`LogCapture` shows what was logged, and :func:`subscribe` adds a
member to a list.  (The documents' ``dump_msgdata`` is
:func:`mailqueue.queuetools.dump_msgdata`.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator

from mailqueue.configuration import Configuration, config
from mailqueue.lists import MailingList

__all__ = ["LogCapture", "isolated_state", "subscribe"]


@contextlib.contextmanager
def isolated_state(
    configuration: Configuration = config, database_url: str | None = None
) -> Iterator[str]:
    """Run the block with all state (queues, lists) in a new temporary directory.

    The lists are in an SQLite file there, or, with a ``postgresql://``
    *database_url* (by default ``$MAILQUEUE_TEST_DATABASE``, if set; an
    empty one means SQLite whatever that says), in a new schema of that
    database, dropped afterwards.  On the way out every
    configuration layer pushed inside the block (and not popped) is popped
    too, and the directory is removed.  Yield the directory.
    """
    layer = f"isolated-state-{uuid.uuid4().hex}"
    if database_url is None:
        database_url = os.environ.get("MAILQUEUE_TEST_DATABASE") or None
    with (
        tempfile.TemporaryDirectory(prefix="mailqueue-") as var_dir,
        _fresh_schema(database_url) as url,
    ):
        database = f"[database]\nurl: {url}\n" if url else ""
        configuration.push(layer, f"[paths]\nvar_dir: {var_dir}\n{database}")
        try:
            yield var_dir
        finally:
            names = configuration.layers
            for name in reversed(names[names.index(layer) :]):
                # Popping the layer also closes the list database in it.
                configuration.pop(name)


@contextlib.contextmanager
def _fresh_schema(url: str | None) -> Iterator[str | None]:
    # A PostgreSQL database shared by many blocks: each gets its own schema.
    if not url:
        yield None
        return
    import psycopg

    schema = f"mailqueue_{uuid.uuid4().hex}"
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
        try:
            separator = "&" if "?" in url else "?"
            yield f"{url}{separator}options=-csearch_path%3D{schema}"
        finally:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


#: The loggers a document can look at, below the implementation's root logger.
LOGGERS = ("error", "runner", "debug")


class LogCapture(logging.Handler):
    """Keep every line logged under *root* (``mailqueue``) until it is shown.

    Calling the capture with a logger's short name (``error``, ``runner``,
    ``debug``) prints the lines logged there since the last call, one a
    line, followed by the last line of the exception's traceback if any:
    what an operator reading the log would look at first.
    """

    def __init__(self, root: str = "mailqueue") -> None:
        super().__init__(logging.DEBUG)
        self.root = root
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __call__(self, name: str) -> None:
        logger = f"{self.root}.{name}"
        shown = [record for record in self.records if record.name == logger]
        self.records = [record for record in self.records if record.name != logger]
        for record in shown:
            print(record.getMessage())
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                print(f"  {type(error).__name__}: {error}")

    @contextlib.contextmanager
    def installed(self, level: int = logging.INFO) -> Iterator[LogCapture]:
        """Capture lines at *level* and above while the block runs.

        The capture sits on each of the ``error``, ``runner`` and ``debug``
        loggers, so it sees their lines even where they do not propagate.
        """
        loggers = [logging.getLogger(f"{self.root}.{name}") for name in LOGGERS]
        saved = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(level)
            logger.addHandler(self)
        try:
            yield self
        finally:
            for logger, old_level in zip(loggers, saved, strict=True):
                logger.removeHandler(self)
                logger.setLevel(old_level)


def subscribe(mlist: MailingList, address: str, language: str | None = None) -> None:
    """Subscribe *address* to *mlist*, preferring *language* if given."""
    mlist.subscribe(address, language)

"""The loggers, and reopening their files after log rotation.

Everything is logged under ``mailqueue``: ``mailqueue.error`` for what went
wrong with an entry, ``mailqueue.runner`` for a runner's life (starts,
signals, stops), ``mailqueue.admin`` for what an operator did to entries
(deleted, held, released, requeued), ``mailqueue.delivery`` for each
delivery attempt, one line of ``key=value`` fields each (see
:func:`fields`), and ``mailqueue.debug`` for the details of each pass.  A
library adds no handlers; the program that runs it decides where lines go.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator

__all__ = ["LOG_FILES", "fields", "logging_to", "reopen_logs"]

#: The log file of each logger, in the log directory.
LOG_FILES = {
    "mailqueue.error": "error.log",
    "mailqueue.runner": "runner.log",
    "mailqueue.admin": "admin.log",
    "mailqueue.delivery": "delivery.log",
}

logging.getLogger("mailqueue").addHandler(logging.NullHandler())


def reopen_logs() -> None:
    """Close every file handler of the ``mailqueue`` loggers.

    A :class:`logging.FileHandler` in append mode opens its file again on
    its next line, so after a rotation the lines go to the new file.
    """
    loggers = [logging.getLogger("mailqueue")] + [
        logger
        for name, logger in logging.Logger.manager.loggerDict.items()
        if name.startswith("mailqueue.") and isinstance(logger, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.close()


@contextlib.contextmanager
def logging_to(log_dir: str, debug: bool = False) -> Iterator[None]:
    """Send each logger's lines to its file in *log_dir* while the block runs.

    ``mailqueue.error`` goes to ``error.log`` and ``mailqueue.runner`` to
    ``runner.log``; with *debug*, ``mailqueue.debug`` goes to ``debug.log``.
    Each line names its time and process.  The directory is made if missing.
    """
    os.makedirs(log_dir, mode=0o770, exist_ok=True)
    files = dict(LOG_FILES)
    if debug:
        files["mailqueue.debug"] = "debug.log"
    formatter = logging.Formatter("%(asctime)s [%(process)d] %(levelname)s %(message)s")
    for name, filename in files.items():
        logger = logging.getLogger(name)
        _remove_file_handlers(logger)
        handler = logging.FileHandler(os.path.join(log_dir, filename), delay=True)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if name == "mailqueue.debug" else logging.INFO)
    try:
        yield
    finally:
        for name in files:
            _remove_file_handlers(logging.getLogger(name))


# A value that needs no quotes: no white space, quote, backslash or "=".
_BARE = re.compile(r"[^\s\"'\\=]+")


def fields(**values: object) -> str:
    """*values* as one line of ``key=value`` fields, in the order given.

    A value is written bare if it can be, else in double quotes, with a
    backslash before each ``"`` and ``\\`` in it; an empty value is ``""``.
    So ``shlex.split()`` reads the line back into ``key=value`` words, and
    the first ``=`` of each word ends its key.  The values must be printable
    text already (see :func:`mailqueue.entry_format.one_line`); others are written
    as ``str()`` writes them.
    """
    written = []
    for key, value in values.items():
        text = str(value)
        if not _BARE.fullmatch(text):
            text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        written.append(f"{key}={text}")
    return " ".join(written)


def _remove_file_handlers(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            logger.removeHandler(handler)
            handler.close()

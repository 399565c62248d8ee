"""The loggers, and reopening their files after log rotation.

Everything is logged under ``mailqueue``: ``mailqueue.error`` for what went
wrong with an entry, ``mailqueue.runner`` for a runner's life (starts,
signals, stops) and ``mailqueue.debug`` for the details of each pass.  A
library adds no handlers; the program that runs it decides where lines go.
"""

from __future__ import annotations

import logging

__all__ = ["reopen_logs"]

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

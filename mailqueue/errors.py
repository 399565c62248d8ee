"""The base of the errors mailqueue raises for what its user can put right.

A bad queue file, a mistake in the configuration, a list that exists
already, a master that is running already: each is a :exc:`MailqueueError`,
and the ``mailqueue`` command reports one in one line.  Anything else that
escapes is a bug, and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["MailqueueError"]


class MailqueueError(Exception):
    """Something the user of mailqueue can put right; the message says what."""

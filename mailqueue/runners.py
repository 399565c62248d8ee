"""The built-in runners: enough for a message to go from ``in`` to a mailbox.

``in`` stamps a message with its list's ``List-Id`` and passes it to
``out``; ``out`` delivers it to the list's Maildir under the var directory
(as the bytes it came as, 8-bit text and all), and hands it to ``retry`` if
delivery fails; ``retry`` gives it back to
``out`` once per ``sleep_time``; ``virgin`` passes messages the system made
itself to ``out``.  ``bad`` and ``shunt`` are never run: they hold messages
for a person.  These illustrate the base class; they are not Mailman.
"""

from __future__ import annotations

import copy
import email.generator
import io
import logging
import mailbox
import os
from typing import Any

from mailqueue.configuration import config
from mailqueue.lists import MailingList, check_list_id
from mailqueue.message import Message
from mailqueue.qfile import fsync_directory
from mailqueue.runner import Runner

__all__ = [
    "IncomingRunner",
    "OutgoingRunner",
    "RetryRunner",
    "VirginRunner",
    "maildir",
    "message_bytes",
]

elog = logging.getLogger("mailqueue.error")


def maildir(mlist: MailingList) -> str:
    """The directory of the Maildir that *mlist*'s messages are delivered to.

    The list-id is checked again here, as the name of a directory: one that
    is not a list-id (from a database written by other means) is a
    :exc:`ValueError`, never a path out of the var directory.
    """
    return os.path.join(config.VAR_DIR, "lists", check_list_id(mlist.list_id))


class IncomingRunner(Runner):
    """Accept a message for a list: stamp its ``List-Id`` and queue it for ``out``."""

    def _dispose(
        self, mlist: MailingList, msg: Message, msgdata: dict[str, Any]
    ) -> bool:
        del msg["List-Id"]
        msg["List-Id"] = f"<{mlist.list_id}>"
        config.switchboards["out"].enqueue(msg, msgdata, listid=mlist.list_id)
        return False


class VirginRunner(Runner):
    """Pass a message the system made itself straight to ``out``."""

    def _dispose(
        self, mlist: MailingList, msg: Message, msgdata: dict[str, Any]
    ) -> bool:
        config.switchboards["out"].enqueue(msg, msgdata)
        return False


class RetryRunner(VirginRunner):
    """Pass every message back to ``out``, like ``virgin``, but wait between passes."""

    def _snooze(self, filecnt: int) -> None:
        # A retry queue is a delay: it always waits before its next pass.
        super()._snooze(0)


class OutgoingRunner(Runner):
    """Deliver a message to its list's Maildir; on failure, queue it for ``retry``."""

    def _dispose(
        self, mlist: MailingList, msg: Message, msgdata: dict[str, Any]
    ) -> bool:
        try:
            _deliver(maildir(mlist), msg)
        except OSError as error:
            elog.error(
                "%s runner: delivery to %s failed, will retry: %s",
                self.name,
                mlist.fqdn_listname,
                error,
            )
            config.switchboards["retry"].enqueue(msg, msgdata)
        return False


def message_bytes(msg: Message) -> bytes:
    """*msg* as the bytes its Maildir gets: as ``mailbox`` would write it.

    But for a message with text that is not ASCII where the email package
    wants 7 bits (a body of 8-bit text ``mailqueue inject`` read as UTF-8),
    which ``mailbox`` cannot write: that one is written as the bytes it
    was read from, each character that is not ASCII as UTF-8 and each byte
    that was not UTF-8 as it came.
    """
    try:
        return _flattened(msg)
    except UnicodeEncodeError:
        # The email package writes back as they were the bytes it could not
        # decode: make every byte that is not ASCII one of those.
        raw = copy.deepcopy(msg)
        for part in raw.walk():
            headers = list(part.raw_items())
            for name in {name.lower() for name, _ in headers}:
                del part[name]
            for name, value in headers:
                part[name] = _as_bytes_read(value)
            # Not get_payload(), which fails on such text as the generator does.
            part.set_payload(_as_bytes_read(part.__dict__["_payload"]))
        return _flattened(raw)


def _flattened(msg: Message) -> bytes:
    flattened = io.BytesIO()
    email.generator.BytesGenerator(flattened, False, 0).flatten(msg)
    return flattened.getvalue()


def _as_bytes_read(text: Any) -> Any:
    """*text* as if the email package had read it from its bytes (a list of
    parts, or a header object, as it is)."""
    if not isinstance(text, str):
        return text
    return text.encode("utf-8", "surrogateescape").decode("ascii", "surrogateescape")


def _deliver(directory: str, msg: Message) -> None:
    # Maildir(create=True) is not safe against another runner making the
    # same Maildir at the same moment: it skips tmp/, new/ and cur/ when the
    # top directory exists, even if they are not there yet.  Make each level
    # here, where a directory that is already there is no error.
    os.makedirs(os.path.dirname(directory), mode=0o770, exist_ok=True)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for folder in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(directory, folder), mode=0o700, exist_ok=True)
    box = mailbox.Maildir(directory, create=False)
    key = box.add(message_bytes(msg))
    # The queue entry is finished after this returns, so the delivery must
    # be on disk first: the file, then its name.  A message that is not a
    # MaildirMessage is always added to new/.
    path = os.path.join(directory, "new", key)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(os.path.dirname(path))

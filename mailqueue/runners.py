"""The built-in runners: enough for a message to go from ``in`` to a mailbox.

``in`` stamps a message with its list's ``List-Id`` and passes it to
``out``; ``out`` delivers it to the list's Maildir under the var directory,
and hands it to ``retry`` if delivery fails; ``retry`` gives it back to
``out`` once per ``sleep_time``; ``virgin`` passes messages the system made
itself to ``out``.  ``bad`` and ``shunt`` are never run: they hold messages
for a person.  These illustrate the base class; they are not Mailman.
"""

from __future__ import annotations

import logging
import mailbox
import os
from typing import Any

from mailqueue.configuration import config
from mailqueue.lists import MailingList, check_list_id
from mailqueue.message import Message
from mailqueue.qfile import fsync_directory
from mailqueue.runner import Runner

__all__ = ["IncomingRunner", "OutgoingRunner", "RetryRunner", "VirginRunner", "maildir"]

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
            self.counters.add(self.name, "delivery_failures")
        else:
            self.counters.add(self.name, "deliveries")
        return False


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
    key = box.add(msg)
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

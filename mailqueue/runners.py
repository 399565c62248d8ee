"""The built-in runners: enough for a message to go from ``in`` to a mailbox.

``in`` stamps a message with its list's ``List-Id`` and passes it to
``out``; ``out`` delivers it to the list's Maildir under the var directory
(as the bytes it came as, 8-bit text and all), and hands it to ``retry`` if
delivery fails, or gives up on it, into
``bad``, once it has waited ``[queues] max_queue_lifetime``; ``retry`` gives
it back to ``out`` once per ``sleep_time``; ``virgin`` passes messages the
system made itself to ``out``.  Every entry they queue carries its history
on (see :meth:`~mailqueue.runner.Runner._carried`), and ``out`` logs each
attempt to ``mailqueue.delivery``.  ``bad`` and ``shunt`` are never run:
they hold messages for a person.  These illustrate the base class; they are
not Mailman.
"""

from __future__ import annotations

import copy
import email.generator
import io
import logging
import mailbox
import os
import time
from typing import Any

from mailqueue.configuration import config
from mailqueue.entry_format import one_line
from mailqueue.lists import MailingList, check_list_id
from mailqueue.logs import fields
from mailqueue.message import Message
from mailqueue.qfile import fsync_directory
from mailqueue.runner import Runner, _message_id

__all__ = [
    "IncomingRunner",
    "OutgoingRunner",
    "RetryRunner",
    "VirginRunner",
    "maildir",
    "message_bytes",
]

elog = logging.getLogger("mailqueue.error")
delivery_log = logging.getLogger("mailqueue.delivery")


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
        config.switchboards["out"].enqueue(
            msg, msgdata, listid=mlist.list_id, **self._carried()
        )
        return False


class VirginRunner(Runner):
    """Pass a message the system made itself straight to ``out``."""

    def _dispose(
        self, mlist: MailingList, msg: Message, msgdata: dict[str, Any]
    ) -> bool:
        config.switchboards["out"].enqueue(msg, msgdata, **self._carried())
        return False


class RetryRunner(VirginRunner):
    """Pass every message back to ``out``, like ``virgin``, but wait between passes."""

    def _snooze(self, filecnt: int) -> None:
        # A retry queue is a delay: it always waits before its next pass.
        super()._snooze(0)


class OutgoingRunner(Runner):
    """Deliver a message to its list's Maildir; on failure, queue it for ``retry``.

    A message whose delivery fails once it has waited ``[queues]
    max_queue_lifetime`` since it was first queued is given up on instead:
    preserved in ``bad``, with the reason.  Each attempt is one line of the
    delivery log; a failure is one line of the error log too, and those
    that fail for the same cause are counted (see ``_RepeatedErrors``).
    """

    def _dispose(
        self, mlist: MailingList, msg: Message, msgdata: dict[str, Any]
    ) -> bool:
        try:
            _deliver(maildir(mlist), msg)
        except OSError as error:
            self.counters.add(self.name, "delivery_failures")
            self._failed(mlist, msg, msgdata, error)
        else:
            self.counters.add(self.name, "deliveries")
            self._log_delivery(mlist, msg, "sent")
        return False

    def _failed(
        self,
        mlist: MailingList,
        msg: Message,
        msgdata: dict[str, Any],
        error: OSError,
    ) -> None:
        reason = f"delivery to {mlist.fqdn_listname} failed: {error}"
        waited = time.time() - self._first_queued
        if waited < config.max_queue_lifetime:
            config.switchboards["retry"].enqueue(msg, msgdata, **self._carried(reason))
            self._errors.error(
                "%s runner: delivery of %s %s to %s failed, will retry: %s",
                self.name,
                self._filebase,
                _message_id(msg),
                mlist.fqdn_listname,
                error,
                # One cause, whatever the file each failure names.
                key=(mlist.list_id, type(error), error.errno, error.strerror),
                again=f"{self.name} runner: delivery to {mlist.fqdn_listname} "
                f"failed again, will retry: {error.strerror or error}; the last "
                f"was {self._filebase} {_message_id(msg)}",
            )
            self._log_delivery(mlist, msg, "deferred", reason)
            return
        reason = (
            f"gave up after {_duration(waited)} in the queue (max_queue_lifetime "
            f"{_duration(config.max_queue_lifetime)}): {reason}"
        )
        bad = config.switchboards["bad"]
        preserved = bad.enqueue(msg, msgdata, **self._carried(reason))
        bad.finish(preserved, preserve=True)
        elog.error(
            "%s runner: gave up on %s %s for %s after %d attempts; preserved in "
            "bad as %s: %s",
            self.name,
            self._filebase,
            _message_id(msg),
            mlist.fqdn_listname,
            self._attempts + 1,
            preserved,
            one_line(reason, 500),
        )
        self._log_delivery(mlist, msg, "expired", reason)

    def _log_delivery(
        self, mlist: MailingList, msg: Message, status: str, reason: str = ""
    ) -> None:
        # One line of key=value fields an attempt, as Postfix's maillog.
        line = fields(
            runner=self.name,
            entry=self._filebase,
            message_id=_message_id(msg),
            list=mlist.list_id,
            delay=f"{max(0.0, time.time() - self._first_queued):.2f}",
            attempt=self._attempts + 1,
            status=status,
        )
        if reason:
            line += " " + fields(reason=one_line(reason, 500))
        delivery_log.info("%s", line)


def _duration(seconds: float) -> str:
    """*seconds* as an operator reads it, in its largest unit: ``45s``, ``5d``."""
    whole = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}"
    return f"{whole}s"


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

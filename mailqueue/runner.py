"""The runner: a loop that takes entries from a queue and disposes of them."""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType
from typing import Any

from mailqueue.config import config
from mailqueue.lists import MailingList
from mailqueue.logs import reopen_logs
from mailqueue.message import Message
from mailqueue.switchboard import Switchboard

__all__ = ["Runner", "RunnerInterrupt"]

dlog = logging.getLogger("mailqueue.debug")
elog = logging.getLogger("mailqueue.error")
rlog = logging.getLogger("mailqueue.runner")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class RunnerInterrupt(Exception):
    """Raised by a stop signal that arrives while the runner sleeps, to wake it."""


class Runner:
    """The base class of every runner.

    *name* selects the ``[runner.NAME]`` configuration section; for a queue
    runner, *slice* selects which of its ``instances`` slices of the queue
    this runner serves.  Subclasses implement :meth:`_dispose`.
    """

    #: False for runners that manage no queue: they have no switchboard.
    is_queue_runner = True

    def __init__(self, name: str, slice: int | None = None) -> None:
        section = config.runners.get(name)
        if section is None:
            raise ValueError(f"no [runner.{name}] section in the configuration")
        self.name = name
        if self.is_queue_runner:
            if section.path is None:
                raise ValueError(f"[runner.{name}] has no path for its queue")
            self.queue_directory: str | None = section.path
            self.switchboard: Switchboard | None = Switchboard(
                name,
                section.path,
                slice,
                section.instances,
                recover=True,
                max_entry_size=config.max_entry_size,
            )
        else:
            self.queue_directory = None
            self.switchboard = None
        self.sleep_time = section.sleep_time
        self.max_restarts = section.max_restarts
        self.start = section.start
        #: 0, or the number of the signal that stopped the runner.
        self.status = 0
        self._stop = False
        self._sleeping = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # Running and stopping ------------------------------------------------

    def run(self) -> None:
        """Process the queue in passes until :meth:`stop` is called.

        After each pass :meth:`_do_periodic` runs, then, unless stopped,
        :meth:`_snooze`.  :meth:`_clean_up` runs at the end, however the
        loop ends.
        """
        try:
            while True:
                filecnt = self._one_iteration()
                self._do_periodic()
                # Mark the sleep before the last look at the stop flag: a stop
                # signal then either is seen here or interrupts the sleep.
                self._sleeping = True
                try:
                    if self._stop:
                        break
                    self._snooze(filecnt)
                finally:
                    self._sleeping = False
        except (KeyboardInterrupt, RunnerInterrupt):
            pass
        finally:
            self._clean_up()

    def stop(self) -> None:
        """Ask the runner to stop after the entry it is processing."""
        self._stop = True

    def set_signals(self) -> None:
        """Install the handlers of a runner process's signals.

        SIGTERM, SIGINT and SIGUSR1 stop the runner after its current entry,
        with :attr:`status` set to the signal; SIGHUP reopens the log files.
        """
        for signum in (*_STOP_SIGNALS, signal.SIGHUP):
            signal.signal(signum, self._signal_handler)

    def _signal_handler(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            reopen_logs()
            rlog.info("%s runner caught SIGHUP; reopened the logs", self.name)
            return
        self.stop()
        self.status = signum
        rlog.info(
            "%s runner caught %s; stopping", self.name, signal.Signals(signum).name
        )
        if self._sleeping:
            # Only a sleep is cut short; an entry being processed is finished.
            raise RunnerInterrupt

    # One pass over the queue ---------------------------------------------

    def _one_iteration(self) -> int:
        """Process each queued entry once, oldest first; return how many there were."""
        files = self.switchboard.files if self.switchboard is not None else []
        for filebase in files:
            self._process_filebase(filebase)
            self._do_periodic()
            if self._short_circuit():
                break
        return len(files)

    def _process_filebase(self, filebase: str) -> None:
        assert self.switchboard is not None
        dlog.debug("[%s] processing %s", self.name, filebase)
        try:
            msg, msgdata = self.switchboard.dequeue(filebase)
        except FileNotFoundError:
            # Another process dequeued it first: it is theirs to finish.
            dlog.debug("[%s] %s was taken by another runner", self.name, filebase)
            return
        except Exception:
            elog.exception(
                "%s runner preserving unreadable entry %s", self.name, filebase
            )
            self.switchboard.finish(filebase, preserve=True)
            return
        try:
            self._process_one_file(msg, msgdata)
        except Exception:
            elog.exception(
                "%s runner: uncaught exception processing %s", self.name, filebase
            )
            self._shunt(filebase, msg, msgdata)
        else:
            self.switchboard.finish(filebase)

    def _enqueue_in_shunt(self, msg: Message, msgdata: dict[str, Any]) -> str:
        # whichq says where the message goes back to once it is unshunted.
        assert self.switchboard is not None
        msgdata["whichq"] = self.switchboard.name
        return config.switchboards["shunt"].enqueue(msg, msgdata)

    def _shunt(self, filebase: str, msg: Message, msgdata: dict[str, Any]) -> None:
        assert self.switchboard is not None
        try:
            new_filebase = self._enqueue_in_shunt(msg, msgdata)
        except Exception:
            elog.exception(
                "%s runner cannot shunt %s; preserving it", self.name, filebase
            )
            self.switchboard.finish(filebase, preserve=True)
        else:
            elog.error("%s runner shunted %s as %s", self.name, filebase, new_filebase)
            self.switchboard.finish(filebase)

    def _process_one_file(self, msg: Message, msgdata: dict[str, Any]) -> None:
        """Find the entry's list and language, then hand it to :meth:`_dispose`.

        The list is named by ``listid`` (its list-id) or ``listname`` (its
        posting address) in *msgdata*.  An entry for a list that does not
        exist is moved to the ``shunt`` queue.  ``lang`` is set to the
        sender's preferred language if the sender is a member, else the
        list's.  If :meth:`_dispose` returns True the entry is queued again.
        """
        mlist = _find_list(msgdata)
        if mlist is None:
            wanted = msgdata.get("listid", msgdata.get("listname"))
            elog.error(
                "%s runner shunting %s for a missing list: %s",
                self.name,
                _loggable(msg.get("message-id", "a message")),
                _loggable(wanted),
            )
            self._enqueue_in_shunt(msg, msgdata)
            return
        member = mlist.members.get_member(msg.sender) if msg.sender else None
        language = member.preferred_language if member else mlist.preferred_language
        msgdata["lang"] = language.code
        if self._dispose(mlist, msg, msgdata):
            assert self.switchboard is not None
            self.switchboard.enqueue(msg, msgdata)

    # What subclasses override --------------------------------------------

    def _dispose(
        self, mlist: MailingList, msg: Message, msgdata: dict[str, Any]
    ) -> bool:
        """Do this runner's work on one message; return True to keep it queued."""
        raise NotImplementedError

    def _do_periodic(self) -> None:
        """Work done after every entry and after every pass; nothing by default."""

    def _snooze(self, filecnt: int) -> None:
        """Sleep for ``sleep_time``, unless the last pass found *filecnt* entries."""
        seconds = self.sleep_time.total_seconds()
        if filecnt or seconds <= 0:
            return
        time.sleep(seconds)

    def _short_circuit(self) -> bool:
        """Return True to end a pass before its last entry; True once stopped."""
        return self._stop

    def _clean_up(self) -> None:
        """Work done once when :meth:`run` ends, however it ends; nothing by default."""


def _find_list(msgdata: dict[str, Any]) -> MailingList | None:
    # The names come from a queue file: anything but text names no list.
    if "listid" in msgdata:
        list_id = msgdata["listid"]
        return (
            config.lists.get_by_list_id(list_id) if isinstance(list_id, str) else None
        )
    if "listname" in msgdata:
        name = msgdata["listname"]
        return config.lists.get(name) if isinstance(name, str) else None
    return None


def _loggable(value: object) -> str:
    """*value*, from a queue file, as one bounded line of a log."""
    text = value if isinstance(value, str) else repr(value)
    if not text.isprintable():
        text = ascii(text)
    return text if len(text) <= 200 else text[:200] + "..."

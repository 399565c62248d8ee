"""The runner: a loop that takes entries from a queue and disposes of them."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import select
import signal
import time
from collections.abc import Hashable
from types import FrameType
from typing import Any

from mailqueue.configuration import ConfigurationError, config
from mailqueue.entry_format import ATTEMPTS, FIRST_QUEUED, REASON, one_line
from mailqueue.errors import MailqueueError
from mailqueue.lists import MailingList
from mailqueue.logs import reopen_logs
from mailqueue.message import Message
from mailqueue.metrics import Counters
from mailqueue.ownership import Standby
from mailqueue.qfile import QueueFileError, parse_filebase
from mailqueue.switchboard import Switchboard

__all__ = [
    "MASTER_FD",
    "SIGNALS",
    "Runner",
    "RunnerError",
    "RunnerInterrupt",
    "parse_runner_spec",
    "runner_class",
]

#: The environment variable that names the runner's end of its master's pipe.
MASTER_FD = "MAILQUEUE_MASTER_FD"
#: After a pass that made no progress, a runner waits this long, twice as
#: long after each further such pass, up to :data:`MAX_BACKOFF`.
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 30.0

dlog = logging.getLogger("mailqueue.debug")
elog = logging.getLogger("mailqueue.error")
rlog = logging.getLogger("mailqueue.runner")

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
#: The signals a runner handles.  The master starts a runner with them
#: blocked, and the runner unblocks them once its handlers are in place: a
#: signal that comes while it starts (``mailqueue reopen`` just after a
#: restart) waits for its handler instead of killing the runner.
SIGNALS = frozenset((*_STOP_SIGNALS, signal.SIGHUP, signal.SIGUSR2))


class _Wake(Exception):
    """Raised by SIGUSR2 while the runner sleeps: try the queue now."""


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
            raise ConfigurationError(f"no [runner.{name}] section in the configuration")
        self.name = name
        if self.is_queue_runner:
            if section.path is None:
                raise ConfigurationError(f"[runner.{name}] has no path for its queue")
            self.queue_directory: str | None = section.path
            board = config.switchboards.make(name, slice, section.instances)
            self.switchboard: Switchboard | None = board
            #: Whether this runner works its slice, stands by, or hands it over.
            self._standby: Standby | None = Standby(
                name, board, (slice or 0) in section.prefer
            )
        else:
            self.queue_directory = None
            self.switchboard = None
            self._standby = None
        #: Whether this host prefers this runner's slice (``prefer``), alone.
        self.preferred = self._standby is not None and self._standby.preferred
        self.sleep_time = section.sleep_time
        self.max_restarts = section.max_restarts
        self.start = section.start
        #: 0, or the number of the signal that stopped the runner.
        self.status = 0
        #: The read end of the master's pipe, for a runner a master started:
        #: the runner stops when it reads the end of it (the master is gone).
        self.master_fd: int | None = None
        if os.environ.get(MASTER_FD, "").isdigit():
            self.master_fd = int(os.environ[MASTER_FD])
        self._stop = False
        self._sleeping = False
        self._progress = 0
        self._fruitless = 0
        self._errors = _RepeatedErrors(elog)
        #: What this runner counted (deliveries, shunts...) for the metrics,
        #: added to the var dir's counts before it sleeps, and at most once a
        #: second while it works (see :mod:`mailqueue.metrics`).
        self.counters = Counters(config.VAR_DIR)
        #: The entry being processed: its file base, when its message was
        #: first queued (see :meth:`_carried`), and how many attempts on it
        #: failed before this one.
        self._filebase = ""
        self._first_queued = 0.0
        self._attempts = 0
        self._temporary_checked = 0.0
        #: Lists and members looked up in this pass, for at most a second.
        self._lookups: dict[tuple[str, ...], Any] = {}
        self._lookups_at = 0.0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # Running and stopping ------------------------------------------------

    def run_once(self) -> int:
        """Make one pass over the queue, then clean up; return the entries seen.

        Raise :exc:`RunnerError` if another process owns this runner's
        slice: its entries are that process's to take.
        """
        board = self.switchboard
        if board is not None and not board.owned_here:
            where = "" if board.slice is None else f":{board.slice}:{board.numslices}"
            raise RunnerError(
                f"{self.name}{where}: its slice is owned by {board.owner_id()}; "
                "not taking its entries"
            )
        try:
            return self._one_iteration()
        finally:
            self._errors.flush()
            self._clean_up()
            self.counters.flush()

    def run(self) -> None:
        """Process the queue in passes until :meth:`stop` is called.

        A queue runner first waits until it owns its slice (the policy of
        :class:`~mailqueue.ownership.Standby`).  After
        each pass :meth:`_do_periodic` runs, then, unless stopped,
        :meth:`_snooze`; a pass that found entries but could take none of
        them is followed by a wait that doubles each time, up to
        ``MAX_BACKOFF`` (30) seconds.  :meth:`_clean_up` runs at the end,
        however the loop ends.  A runner started by a master also stops,
        after its current entry, when the master is gone.
        """
        try:
            if self._standby is not None:
                self._standby.stand_by(lambda: self._stop, self._nap)
            while True:
                self._progress = 0
                filecnt = self._one_iteration()
                self._do_periodic()
                self._remove_stale_temporary_files()
                self._errors.tick()
                # Mark the sleep before the last look at the stop flag: a stop
                # signal then either is seen here or interrupts the sleep.
                try:
                    self._sleeping = True
                    if self._stop:
                        break
                    if filecnt and not self._progress:
                        self._fruitless += 1
                        self._sleep(
                            min(FIRST_BACKOFF * 2**self._fruitless, MAX_BACKOFF)
                        )
                    else:
                        self._fruitless = 0
                    self._snooze(filecnt)
                except _Wake:
                    self._fruitless = 0
                    rlog.info("%s runner woken: trying its queue now", self.name)
                finally:
                    self._sleeping = False
        except (KeyboardInterrupt, RunnerInterrupt):
            pass
        finally:
            self._errors.flush()
            self.counters.flush()
            self._clean_up()

    def _nap(self, seconds: float) -> None:
        """Sleep while standing by: a stop signal ends it, SIGUSR2 cuts it short."""
        with contextlib.suppress(_Wake):
            try:
                self._sleeping = True
                self._sleep(seconds)
            finally:
                self._sleeping = False

    def _sleep(self, seconds: float) -> None:
        """Sleep, waking early if the master goes away (the pipe's end is read)."""
        # What was counted is written before a sleep, which may be long (a
        # retry runner's), and at most once a second while entries keep coming.
        self.counters.flush()
        if self.master_fd is None:
            time.sleep(seconds)
            return
        readable, _, _ = select.select([self.master_fd], [], [], seconds)
        if readable:
            self._master_gone()

    def _check_master(self) -> None:
        if self.master_fd is not None and not self._stop:
            readable, _, _ = select.select([self.master_fd], [], [], 0)
            if readable:
                self._master_gone()

    def _master_gone(self) -> None:
        if not self._stop:
            rlog.info("%s runner: its master is gone; stopping", self.name)
        self.stop()

    def _remove_stale_temporary_files(self) -> None:
        # At most every quarter of the age at which a file counts as stale.
        age = config.stale_tmp_after
        now = time.monotonic()
        if self.switchboard is None or now - self._temporary_checked < age / 4:
            return
        self._temporary_checked = now
        if self.switchboard.owner:
            self.switchboard.remove_stale_temporary_files(age)

    def stop(self) -> None:
        """Ask the runner to stop after the entry it is processing."""
        self._stop = True

    def set_signals(self) -> None:
        """Install the handlers of a runner process's signals.

        SIGTERM, SIGINT and SIGUSR1 stop the runner after its current entry,
        with :attr:`status` set to the signal; SIGHUP reopens the log files;
        SIGUSR2 cuts a sleep short, so that the queue is tried at once.
        """
        for signum in SIGNALS:
            signal.signal(signum, self._signal_handler)
        # Any that came while the process started are handled now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)

    def _signal_handler(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            reopen_logs()
            rlog.info("%s runner caught SIGHUP; reopened the logs", self.name)
            return
        if signum == signal.SIGUSR2:
            if self._sleeping:
                raise _Wake
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
        """Process each queued entry once, oldest first; return how many there were.

        Only while this process owns the runner's slice: otherwise it takes
        nothing and returns 0.
        """
        if self.switchboard is None or self._standby is None:
            return 0
        # Only the owner of a slice works on it: entries another process is
        # taking must not be taken twice.
        if not self._standby.may_work() or self._standby.hand_over():
            return 0
        files = self.switchboard.files
        self._lookups.clear()
        for filebase in files:
            self._process_filebase(filebase)
            self.counters.flush(every=1.0)
            self._do_periodic()
            self._check_master()
            if self._short_circuit() or self._standby.hand_over():
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
        except QueueFileError:
            elog.exception(
                "%s runner preserving unreadable entry %s", self.name, filebase
            )
            self.switchboard.finish(filebase, preserve=True)
            self._progress += 1
            return
        except OSError as error:
            # The system's, not the entry's (a directory it may not write, a
            # full or failing disk): the entry stays where it is.
            self._errors.error(
                "%s runner cannot take entries from %s: %s",
                self.name,
                self.switchboard.queue_directory,
                error.strerror or error,
            )
            return
        self._progress += 1
        self._filebase = filebase
        parsed = parse_filebase(filebase)
        self._first_queued = msgdata.get(
            FIRST_QUEUED, parsed.when if parsed else time.time()
        )
        self._attempts = msgdata.get(ATTEMPTS, 0)
        try:
            self._process_one_file(msg, msgdata)
        except Exception as error:
            elog.exception(
                "%s runner: uncaught exception processing %s", self.name, filebase
            )
            self._shunt(filebase, msg, msgdata, f"{type(error).__name__}: {error}")
        else:
            self.switchboard.finish(filebase)

    def _carried(self, failure: str = "") -> dict[str, Any]:
        """What an entry queued from the one being processed carries on.

        Pass it to ``enqueue`` beside the metadata, as in
        ``enqueue(msg, msgdata, **self._carried())``: the time the message
        was first queued (``mq_first_queued``: the entry's own, or the time
        in its file base if it has none).  With *failure*, also one more
        failed attempt (``mq_attempts``) and *failure*, in one line, as the
        reason (``mq_reason``).  The keys are those of "What a file holds"
        in :doc:`/queue-files`.
        """
        carried: dict[str, Any] = {FIRST_QUEUED: self._first_queued}
        if failure:
            carried[ATTEMPTS] = self._attempts + 1
            carried[REASON] = one_line(failure, 500)
        return carried

    def _enqueue_in_shunt(
        self, msg: Message, msgdata: dict[str, Any], reason: str
    ) -> str:
        # whichq says where the message goes back to once it is unshunted;
        # the reason, why it is in shunt.
        assert self.switchboard is not None
        msgdata["whichq"] = self.switchboard.name
        return config.switchboards["shunt"].enqueue(
            msg, msgdata, **self._carried(reason)
        )

    def _shunt(
        self, filebase: str, msg: Message, msgdata: dict[str, Any], reason: str
    ) -> None:
        assert self.switchboard is not None
        try:
            new_filebase = self._enqueue_in_shunt(msg, msgdata, reason)
        except Exception:
            elog.exception(
                "%s runner cannot shunt %s; preserving it", self.name, filebase
            )
            self.switchboard.finish(filebase, preserve=True)
        else:
            elog.error(
                "%s runner shunted %s %s as %s: %s",
                self.name,
                filebase,
                _message_id(msg),
                new_filebase,
                one_line(reason, 500),
            )
            self.counters.add(self.name, "shunts")
            self.switchboard.finish(filebase)

    def _process_one_file(self, msg: Message, msgdata: dict[str, Any]) -> None:
        """Find the entry's list and language, then hand it to :meth:`_dispose`.

        The list is named by ``listid`` (its list-id) or ``listname`` (its
        posting address) in *msgdata*.  An entry for a list that does not
        exist is moved to the ``shunt`` queue.  ``lang`` is set to the
        sender's preferred language if the sender is a member, else the
        list's.  If :meth:`_dispose` returns True the entry is queued again.
        """
        mlist = self._lookup(("list", *_list_key(msgdata)), _find_list, msgdata)
        if mlist is None:
            wanted = msgdata.get("listid", msgdata.get("listname"))
            elog.error(
                "%s runner shunting %s %s for a missing list: %s",
                self.name,
                self._filebase,
                _message_id(msg),
                _loggable(wanted),
            )
            self._enqueue_in_shunt(msg, msgdata, f"no such list: {_loggable(wanted)}")
            self.counters.add(self.name, "shunts")
            return
        sender = msg.sender
        member = (
            self._lookup(
                ("member", mlist.list_id, sender), mlist.members.get_member, sender
            )
            if sender
            else None
        )
        language = member.preferred_language if member else mlist.preferred_language
        msgdata["lang"] = language.code
        if self._dispose(mlist, msg, msgdata):
            assert self.switchboard is not None
            self.switchboard.enqueue(msg, msgdata, **self._carried())

    def _lookup(self, key: tuple[str, ...], find: Any, argument: Any) -> Any:
        # A list or a member is looked up once a pass, and again after a
        # second: a long pass sees a change made meanwhile that late at most.
        now = time.monotonic()
        if now - self._lookups_at > 1.0:
            self._lookups.clear()
            self._lookups_at = now
        if key not in self._lookups:
            self._lookups[key] = find(argument)
        return self._lookups[key]

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
        self._sleep(seconds)

    def _short_circuit(self) -> bool:
        """Return True to end a pass before its last entry; True once stopped."""
        return self._stop

    def _clean_up(self) -> None:
        """Work done once when :meth:`run` ends, however it ends; nothing by default."""


class RunnerError(MailqueueError):
    """A runner cannot be made or run as asked: the message says why."""


def parse_runner_spec(spec: str) -> tuple[str, int | None]:
    """The runner name and slice of ``NAME`` or ``NAME:SLICE:COUNT``.

    ``NAME`` alone is a runner of one instance.  Raise :exc:`RunnerError`
    for a runner the configuration has not, or a slice it has not.
    """
    name, *rest = spec.split(":")
    section = config.runners.get(name)
    if section is None:
        raise RunnerError(f"no runner is called {name!r} (no [runner.{name}] section)")
    if not rest:
        if section.instances != 1:
            raise RunnerError(
                f"{name} has {section.instances} instances: name one, as "
                f"{name}:SLICE:{section.instances}"
            )
        return name, None
    if len(rest) != 2 or not all(part.isdigit() for part in rest):
        raise RunnerError(f"a runner is NAME or NAME:SLICE:COUNT, not {spec!r}")
    slice, count = int(rest[0]), int(rest[1])
    if count != section.instances:
        raise RunnerError(f"{name} has {section.instances} instances, not {count}")
    if slice >= count:
        raise RunnerError(f"slice {slice} of {name} does not exist (0 to {count - 1})")
    return name, slice


def runner_class(name: str) -> type[Runner]:
    """The class ``[runner.NAME] class`` names, imported and checked.

    Raise :exc:`~mailqueue.configuration.ConfigurationError` if it cannot
    be imported, is not a :class:`Runner`, or is the base class itself (a
    queue held for a person, such as ``bad``, that no runner drains).
    """
    section = config.runners[name]
    module_name, _, class_name = section.class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ConfigurationError(
            f"[runner.{name}] class {section.class_path}: {error}"
        ) from None
    if not (isinstance(found, type) and issubclass(found, Runner)):
        raise ConfigurationError(
            f"[runner.{name}] class {section.class_path} is not a Runner"
        )
    if found is Runner:
        raise ConfigurationError(
            f"the {name} queue is held: [runner.{name}] names no runner class to run"
        )
    return found


class _RepeatedErrors:
    """Log an error once, then only how often it repeated (at most each minute).

    Errors are the same when their *key* is (by default, when their text
    is): a runner that fails on every entry of a list for the same cause
    says so once, naming the first entry, and then how many more there
    were, once a minute at most, and once more when it stops.
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        #: For each key: when it was last said, how often it repeated
        #: since, and what to say of those repeats.
        self._seen: dict[Hashable, list[Any]] = {}

    def error(
        self,
        message: str,
        *arguments: object,
        key: Hashable = None,
        again: str = "",
    ) -> None:
        """Log *message* % *arguments*, unless an error of its *key* was just logged.

        *again* is what the line that counts the repeats says (by default,
        the message).
        """
        text = message % arguments
        now = time.monotonic()
        key = text if key is None else key
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) >= _KEYS_KEPT:
                self.flush()
            self.logger.error("%s", text)
            self._seen[key] = [now, 0, again or text]
            return
        seen[1] += 1
        seen[2] = again or text
        if now - seen[0] >= self.interval:
            self._say(seen, now)

    def tick(self) -> None:
        """Say the repeats of every error last said a minute ago or more.

        An error that did not repeat in that minute is forgotten: the
        next one of its kind is logged in full again.
        """
        now = time.monotonic()
        for key, seen in list(self._seen.items()):
            if now - seen[0] >= self.interval:
                if seen[1]:
                    self._say(seen, now)
                else:
                    del self._seen[key]

    def flush(self) -> None:
        """Say every count of repeats not said yet, and forget every error."""
        for seen in self._seen.values():
            if seen[1]:
                self._say(seen, 0.0)
        self._seen.clear()

    def _say(self, seen: list[Any], now: float) -> None:
        self.logger.error("%s (%d more times)", seen[2], seen[1])
        seen[0], seen[1] = now, 0


#: How many kinds of error :class:`_RepeatedErrors` remembers at once.
_KEYS_KEPT = 1000


def _message_id(msg: Message) -> str:
    """The Message-ID of *msg*, from a queue file, for a log: ``<>`` if it has none.

    A message built from a queue file may have any state the checks let
    through: one whose headers cannot be read has none, as far as a log goes.
    """
    try:
        value = msg.get("message-id")
    except Exception:
        return "<>"
    return "<>" if value is None else one_line(value)


def _list_key(msgdata: dict[str, Any]) -> tuple[str, str, str]:
    # What _find_list looks the list up by, as a key (it finds no list by
    # anything but text).
    for key in ("listid", "listname"):
        if key in msgdata:
            name = msgdata[key]
            return (key, "text", name) if isinstance(name, str) else (key, "", "")
    return "", "", ""


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
    return one_line(value)

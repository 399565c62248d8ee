"""Who works a slice of a queue: the locks that say so, and who holds them.

Only one process works on a slice of a queue at a time, its *owner*: it
holds an exclusive ``flock`` on the slice's owner file, beside the queue
directory, for as long as it lives, and writes its host name and pid into
it.  A process that prefers the slice (``prefer`` in its runner's section)
holds the slice's preference file the same way, and an owner that does not
prefer its slice hands it over to one that does.  The master holds its var
directory's lock file alike.

Here are, in that order: holding a lock file and reading who holds one; a
switchboard's owner and preference locks (:class:`SliceLocks`); who owns a
slice, seen from anywhere (:func:`slice_owner`); the policy a runner follows
to take its slice, stand by, or hand it over (:class:`Standby`); and each
slice's state as ``mailqueue status`` shows it (:func:`slice_states`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "HAND_OVER_CHECK",
    "STANDBY_INTERVAL",
    "Board",
    "SliceLocks",
    "SliceState",
    "Standby",
    "lock_file",
    "owner_file",
    "owner_name",
    "read_holder",
    "slice_owner",
    "slice_states",
    "write_holder",
]

#: How long a runner that does not own its slice waits before it asks again.
STANDBY_INTERVAL = 1.0
#: How often, at most, an owner that does not prefer its slice looks, between
#: two entries, whether a process that does waits for it.
HAND_OVER_CHECK = 1.0

rlog = logging.getLogger("mailqueue.runner")


# A lock file: holding it, and reading who holds it ------------------------------


def lock_file(path: str) -> int | None:
    """Take an exclusive lock on *path*, made if missing; its descriptor.

    Return None if another process holds the lock.  The lock lasts until
    the descriptor is closed, and so at most as long as the process.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def write_holder(fd: int, text: str) -> None:
    """Say who holds the lock file open as *fd*: *text* becomes all it holds."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def read_holder(path: str, *, file_if_no_locks: bool = False) -> str | None:
    """What the holder of the lock on *path* wrote in it; None if nobody holds it.

    A missing file is held by nobody.  This only looks: a lock it tests is
    let go of at once.  Where locks cannot be tested (a file system without
    them, such as an NFS mount without its lock daemon) the error is raised,
    or with *file_if_no_locks* the file's text is returned: only it can tell.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # held: the file names the holder
        except OSError:
            if not file_if_no_locks:
                raise
        else:
            return None
        return os.pread(fd, 300, 0).decode(errors="replace").strip()
    finally:
        os.close(fd)


# A switchboard's locks on its slice -------------------------------------------


def owner_file(
    queue_directory: str, slice: int | None, numslices: int, suffix: str = ".owner"
) -> str:
    """The lock file of a slice of the queue in *queue_directory*.

    Beside the queue directory, not in it: the directory holds queue entries
    and nothing else.  With *suffix* ``.prefer``, the slice's preference file.
    """
    parent, queue = os.path.split(os.path.normpath(queue_directory))
    where = "" if slice is None or numslices == 1 else f"-{slice}-of-{numslices}"
    return os.path.join(parent, f".{queue}{where}{suffix}")


#: The slice locks of this process that own their slice, by owner file.
_owners: weakref.WeakValueDictionary[str, SliceLocks] = weakref.WeakValueDictionary()


class SliceLocks:
    """The owner and preference locks a switchboard takes on its slice.

    Each is held until it is let go of or this object goes (with its
    switchboard), or its process ends, however it ends.  The promises are
    those of :class:`~mailqueue.switchboard.Switchboard`'s methods of the
    same names, which call these.
    """

    def __init__(
        self, queue_directory: str, slice: int | None, numslices: int, host: str
    ) -> None:
        self.queue_directory = queue_directory
        self.slice = slice
        self.numslices = numslices
        self.host = host
        self.owner_file = owner_file(queue_directory, slice, numslices)
        self.prefer_file = owner_file(queue_directory, slice, numslices, ".prefer")
        self._owner_lock: int | None = None
        self._prefer_lock: int | None = None
        self._closers: dict[int, weakref.finalize[[int], SliceLocks]] = {}

    @property
    def owner(self) -> bool:
        """True while this object holds the owner lock."""
        return self._owner_lock is not None

    @property
    def owned_here(self) -> bool:
        """True if this process holds the owner lock, through this object or another."""
        other = _owners.get(self.owner_file)
        return self.owner or (other is not None and other.owner)

    def owner_id(self) -> str:
        """Who owns the slice: ``pid PID on HOST``, or ``nobody``."""
        return owner_name(
            slice_owner(self.queue_directory, self.slice, self.numslices, self.host)
        )

    def take(self) -> bool:
        """Take the owner lock, not held yet, if no process holds it; whether it did."""
        assert self._owner_lock is None, "taken already"
        self._owner_lock = self._hold(self.owner_file)
        if self._owner_lock is None:
            return False
        _owners[self.owner_file] = self
        return True

    def release(self) -> None:
        """Let go of the owner lock, if this holds it, and empty the file."""
        if self._owner_lock is None:
            return
        if _owners.get(self.owner_file) is self:
            del _owners[self.owner_file]
        fd, self._owner_lock = self._owner_lock, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        self._closers.pop(fd)()

    def claim_preference(self) -> bool:
        """Take the preference lock if no process holds it; whether this holds it."""
        if self._prefer_lock is None:
            self._prefer_lock = self._hold(self.prefer_file)
        return self._prefer_lock is not None

    def preferred_elsewhere(self) -> bool:
        """True if another live process holds the preference lock."""
        if self._prefer_lock is not None:
            return False
        return read_holder(self.prefer_file) is not None

    def _hold(self, path: str) -> int | None:
        fd = lock_file(path)
        if fd is None:
            return None
        # Closed when this object goes, or when it lets go (once only: the
        # number may belong to another file by then).
        self._closers[fd] = weakref.finalize(self, os.close, fd)
        # Who holds it, for a person (and for other hosts) to read.
        with contextlib.suppress(OSError):
            write_holder(fd, f"{self.host} {os.getpid()}\n")
        return fd


# Who owns a slice, seen from anywhere -------------------------------------------


def slice_owner(
    queue_directory: str,
    slice: int | None = None,
    numslices: int = 1,
    host: str | None = None,
) -> tuple[str, int] | None:
    """Who owns a slice of a queue: its host and pid, or None if nobody does.

    The owner holds a lock on the owner file and has written its host and
    pid into it.  A file that nobody holds a lock on names nobody, whatever
    it says: its owner is gone, on this host or another (a lock taken over
    a network file system is let go of when its client goes).  *host* is
    this host's name (the system's by default); a process of this host that
    is gone owns nothing either.  This only looks: a lock it tests is let
    go of at once.
    """
    try:
        text = read_holder(
            owner_file(queue_directory, slice, numslices), file_if_no_locks=True
        )
    except OSError:
        return None  # a file that cannot be read names nobody
    if text is None:
        return None
    host_name, _, pid = text.partition(" ")
    if not pid.isdigit():
        return None
    if host_name == (host or socket.gethostname()):
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, and someone else's
    return host_name, int(pid)


def owner_name(owner: tuple[str, int] | None) -> str:
    """An owner as :func:`slice_owner` gives it, in words: ``pid PID on HOST``."""
    return "nobody" if owner is None else f"pid {owner[1]} on {owner[0]}"


# Which runner works a slice -------------------------------------------------------


class Board(Protocol):
    """What :class:`Standby` needs of a switchboard."""

    @property
    def owner(self) -> bool: ...

    @property
    def owned_here(self) -> bool: ...

    recovered: int

    def owner_id(self) -> str: ...

    def take_ownership(self) -> bool: ...

    def release_ownership(self) -> None: ...

    def claim_preference(self) -> bool: ...

    def preferred_elsewhere(self) -> bool: ...


class Standby:
    """Which process works a slice: the policy the runner *name* follows on it.

    A runner works its slice only while its process owns it (see *board*'s
    :meth:`~mailqueue.switchboard.Switchboard.take_ownership`); until then
    it stands by.  A runner that is *preferred* (its host's ``prefer``
    names the slice) says so as long as it lives, unless another process
    says so already; a runner that is not leaves the slice to a process that
    prefers it while that one lives, and hands it over between two entries
    when one comes.  The slice is taken as this is made, if it may be.
    """

    def __init__(self, name: str, board: Board, preferred: bool) -> None:
        self.name = name
        self.board = board
        #: Whether this runner prefers its slice, and no other process does.
        self.preferred = preferred
        if preferred and not board.claim_preference():
            rlog.info("%s runner: another process prefers its slice too", name)
            self.preferred = False
        self._waiting = False
        self._preference_checked = 0.0
        self.may_work()  # the slice is taken at once if it may be

    def stand_by(
        self, stopped: Callable[[], bool], nap: Callable[[float], None]
    ) -> None:
        """Until this runner may work its slice, or *stopped*, *nap* and ask again."""
        if self.may_work():
            return
        rlog.info(
            "%s runner standing by: its slice is owned by %s",
            self.name,
            self.board.owner_id(),
        )
        while not stopped() and not self.may_work():
            nap(STANDBY_INTERVAL)

    def may_work(self) -> bool:
        """True if this process owns the slice, taking it if it may."""
        board = self.board
        if board.owner or board.owned_here:
            return True
        # A slice another process prefers is left to it, while it lives.
        if (not self.preferred and board.preferred_elsewhere()) or (
            not board.take_ownership()
        ):
            self._waiting = True
            return False
        if self._waiting:
            self._waiting = False
            rlog.info(
                "%s runner now owns its slice%s",
                self.name,
                f" and recovered {board.recovered} entries" if board.recovered else "",
            )
        return True

    def hand_over(self) -> bool:
        """Between entries: let the slice go if a process that prefers it waits.

        Looked at every :data:`HAND_OVER_CHECK` seconds at most.  Return
        True if it was let go.
        """
        board = self.board
        if self.preferred or not board.owner:
            return False
        now = time.monotonic()
        if now - self._preference_checked < HAND_OVER_CHECK:
            return False
        self._preference_checked = now
        if not board.preferred_elsewhere():
            return False
        board.release_ownership()
        rlog.info(
            "%s runner hands its slice over to a process that prefers it", self.name
        )
        return True


# Each slice's state, as ``mailqueue status`` shows it ------------------------------


@dataclass(frozen=True)
class SliceState:
    """One runner slice: what its master says of it, and who owns it."""

    #: ``NAME:SLICE:COUNT``.
    spec: str
    #: running, standing by (running, but another process owns the slice),
    #: restarting, given up, stopping, or not started.
    state: str
    #: The runner process's pid, or None while it does not run.
    pid: int | None
    #: How often the master restarted it.
    restarts: int
    #: Who owns the slice, on any host (see :func:`slice_owner`).
    owner: tuple[str, int] | None
    #: Whether the owner is this slice's own runner.
    owned_by_runner: bool

    @property
    def owner_text(self) -> str:
        """The owner in words: ``nobody``, ``this runner``, or ``pid PID on HOST``."""
        return "this runner" if self.owned_by_runner else owner_name(self.owner)

    def as_json(self) -> dict[str, Any]:
        """The slice as ``status --json`` gives it: the owner as host and pid."""
        owner = self.owner
        return {
            "pid": self.pid,
            "state": self.state,
            "restarts": self.restarts,
            "owner": None if owner is None else {"host": owner[0], "pid": owner[1]},
        }


def slice_states(
    runners: Mapping[str, Mapping[str, Any]],
    not_started: Iterable[str],
    queues: Mapping[str, str],
    host: str,
) -> list[SliceState]:
    """Each slice a master runs or does not start, by runner name and slice number.

    *runners* is what the master says of each slice it runs (its ``pid``,
    ``state`` and ``restarts``), *not_started* the slices it does not start,
    *queues* each queue's directory, and *host* the name the master's host
    goes by.  A slice whose runner runs while another process owns the slice
    is *standing by*.  This only looks.
    """
    recorded = [
        *runners.items(),
        *(
            (spec, {"pid": None, "state": "not started", "restarts": 0})
            for spec in not_started
        ),
    ]
    states = []
    for spec, runner in sorted(recorded, key=lambda item: _spec_order(item[0])):
        name, number, count = spec.split(":")
        path = queues.get(name)
        owner = (
            None if path is None else slice_owner(path, int(number), int(count), host)
        )
        owned_by_runner = owner == (host, runner["pid"])
        state = runner["state"]
        if state == "running" and owner is not None and not owned_by_runner:
            state = "standing by"
        states.append(
            SliceState(
                spec, state, runner["pid"], runner["restarts"], owner, owned_by_runner
            )
        )
    return states


def _spec_order(spec: str) -> tuple[str, int]:
    name, number, _ = spec.split(":")
    return name, int(number)

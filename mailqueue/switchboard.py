"""The switchboard: one queue directory, and the entries in it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
import time
from typing import Any

from mailqueue import entry_format, ownership, qfile
from mailqueue.message import Message
from mailqueue.seal import Seal
from mailqueue.spares import SparePool

__all__ = [
    "MAX_BAK_COUNT",
    "STALE_TEMPORARY_AFTER",
    "Switchboard",
    "default_bad_directory",
]


#: How many times an entry may be left as a ``.bak``: the recovery that finds
#: it so for this time preserves it in the ``bad`` queue instead of putting it
#: back, so that a message that kills its runner cannot loop forever.
MAX_BAK_COUNT = 3

#: How old, in seconds, a ``.tmp`` file must be before the owner removes it:
#: far longer than any write takes, so only a dead writer's file is that old.
STALE_TEMPORARY_AFTER = 3600.0

#: How many dequeued, unfinished entries a switchboard remembers the size of:
#: a runner that never finishes what it takes must not grow without bound.
_SIZES_KEPT = 10_000

dlog = logging.getLogger("mailqueue.debug")
elog = logging.getLogger("mailqueue.error")

#: The entries this process has dequeued and not finished, by the path of
#: their ``.bak``: the descriptor that holds each one's ``flock``.  A
#: recovering owner in another process leaves a locked ``.bak`` alone: a
#: live process is working on it.
_held: dict[str, int] = {}


def _release_all_held() -> None:
    # A forked child does not work on its parent's entries.
    for fd in _held.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_release_all_held)


def _lock_entry(path: str) -> int | None:
    """Lock the entry file at *path*; its descriptor, or None if it cannot be.

    Raise :exc:`BlockingIOError` if another process holds its lock.  A file
    that cannot be opened (gone, a link, not a regular file) is not locked:
    what it is, the next step that reads it says.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:
        os.close(fd)  # no locks on this file system: as before, unlocked
        return None
    return fd


def _release(path: str) -> None:
    fd = _held.pop(path, None)
    if fd is not None:
        os.close(fd)


class Switchboard:
    """The entries of one queue directory, or of one slice of it.

    *name* is the queue's name and *queue_directory* its directory, made if
    missing.  With *numslices* greater than one (a power of two), this
    switchboard sees only the entries whose digest falls in slice *slice*,
    counted from zero.

    An entry may be at most *max_entry_size* bytes, when written and when
    read.

    With *recover*, this switchboard tries to become the *owner* of its
    slice: the one process that recovers the slice's ``.bak`` files.  It
    holds a lock on the slice for as long as it lives; if it gets the lock,
    it puts the ``.bak`` files left by an earlier run back in the queue (see
    :meth:`recover_backup_files`).  If another process holds the lock, those
    files may be entries that process is working on right now, so they are
    left alone.

    *bad_directory* is where :meth:`finish` preserves an entry; by default
    the ``bad`` directory beside *queue_directory* (see
    :func:`default_bad_directory`).  The configuration hands each
    switchboard it makes the ``bad`` queue's directory.
    """

    #: Whether a small finished entry may be kept as a spare file, to be
    #: written over by a later one (see :class:`~mailqueue.spares.SparePool`;
    #: never on a network file system).  A subclass that wants a new file
    #: for every entry sets it to False.
    keep_spares = True

    def __init__(
        self,
        name: str,
        queue_directory: str,
        slice: int | None = None,
        numslices: int = 1,
        recover: bool = False,
        max_entry_size: int = qfile.MAX_ENTRY_SIZE,
        host: str | None = None,
        bad_directory: str | None = None,
        seal: Seal | None = None,
    ) -> None:
        if (
            not isinstance(numslices, int)
            or numslices < 1
            or numslices & (numslices - 1)
        ):
            raise ValueError(f"numslices must be a power of two, not {numslices!r}")
        if numslices == 1 and slice in (None, 0):
            slice = None
        elif not isinstance(slice, int) or not 0 <= slice < numslices:
            raise ValueError(
                f"slice must be an integer from 0 to {numslices - 1}, not {slice!r}"
            )
        self.name = name
        self.queue_directory = queue_directory
        self._prefix = os.path.join(queue_directory, "")
        #: This site's seal (see :mod:`mailqueue.seal`): entries written are
        #: sealed, and sealed ones are read without the opcode check.
        self.seal = seal
        #: Where :meth:`finish` preserves entries.
        self.bad_directory = bad_directory or default_bad_directory(queue_directory)
        self.slice = slice
        self.numslices = numslices
        self.max_entry_size = max_entry_size
        #: This host's name, as owner files give it.
        self.host = host or socket.gethostname()
        # A digest's slice is its top bits: exact integer arithmetic, so
        # every digest is in exactly one slice.
        self._shift = qfile.DIGEST_BITS - (numslices.bit_length() - 1)
        qfile.make_directories(queue_directory)
        self._reported: set[str] = set()
        self._locks = ownership.SliceLocks(queue_directory, slice, numslices, self.host)
        self.recovered = 0
        self._spares = SparePool(queue_directory)
        if not self.keep_spares:
            self._spares.enabled = False
        #: The sizes of the entries this switchboard dequeued and has not
        #: finished: those small enough become spares when finished.
        self._sizes: dict[str, int] = {}
        if recover and not self.take_ownership():
            dlog.debug("%r: another process owns this slice; not recovering", self)

    # Owning the slice, and preferring it (see mailqueue.ownership) -------

    @property
    def owner(self) -> bool:
        """True if this switchboard holds its slice's lock and so recovers it."""
        return self._locks.owner

    @property
    def owned_here(self) -> bool:
        """True if this process owns the slice, by this switchboard or another.

        Within one process, work on a slice is not concurrent; what must
        never happen is two *processes* working on one slice.
        """
        return self._locks.owned_here

    @property
    def owner_file(self) -> str:
        """The lock file of this slice, beside the queue directory.

        Its owner holds an exclusive ``flock`` on it for as long as it
        lives, and writes its host name and pid into it.
        """
        return self._locks.owner_file

    def owner_id(self) -> str:
        """Who owns this slice: ``pid PID on HOST``, or ``nobody``."""
        return self._locks.owner_id()

    def take_ownership(self) -> bool:
        """Become the owner of this slice if no process is; return whether it is.

        The owner is the one process that recovers the slice's ``.bak`` files
        (it does so as it becomes the owner, see :meth:`recover_backup_files`)
        and removes its stale temporary files.  Ownership lasts until this
        switchboard is collected or its process ends, however it ends.
        """
        if self._locks.owner:
            return True
        if not self._locks.take():
            return False
        self.recover_backup_files()
        self.remove_stale_temporary_files()
        return True

    def release_ownership(self) -> None:
        """Stop owning this slice, so that another process can take it.

        Call it only between entries: every entry this process dequeued
        must be finished first, or the next owner recovers it again.
        """
        self._locks.release()

    @property
    def prefer_file(self) -> str:
        """The lock file a process holds while it prefers to own this slice."""
        return self._locks.prefer_file

    def claim_preference(self) -> bool:
        """Say, for as long as this switchboard lives, that it prefers this slice.

        Return False if another process says so already.  An owner that
        does not prefer the slice hands it over, between two entries, as
        soon as a process that does is waiting for it (see
        :meth:`preferred_elsewhere`).
        """
        return self._locks.claim_preference()

    def preferred_elsewhere(self) -> bool:
        """True if a process other than this one prefers this slice, and lives."""
        return self._locks.preferred_elsewhere()

    def __repr__(self) -> str:
        where = "" if self.slice is None else f" slice {self.slice}/{self.numslices}"
        return f"<Switchboard {self.name!r}{where} at {self.queue_directory}>"

    def _path(self, filebase: str, extension: str) -> str:
        # os.path.join's checks cost more than the rest of a lookup here.
        return self._prefix + filebase + extension

    def enqueue(
        self, msg: Any, metadata: dict[str, Any] | None = None, /, **kws: Any
    ) -> str:
        """Add *msg* with its metadata to the queue; return its file base.

        The metadata is *metadata* updated with *kws*.  Keys that start with
        ``_`` are not stored, except that ``version`` and ``_parsemsg`` are
        always set.  With ``_plaintext=True`` the message is stored as text.
        What is written, and what is refused, is
        :func:`mailqueue.entry_format.encode`'s.
        """
        data = dict(metadata or {})
        data.update(kws)
        filebase, parts = entry_format.encode(
            msg, data, self.seal, self.max_entry_size, self.name
        )
        try:
            qfile.write_file(self._path(filebase, ".pck"), parts, self._spares)
        except OSError as error:
            raise OSError(
                error.errno,
                f"cannot enqueue into the {self.name!r} queue at "
                f"{self.queue_directory}: {error.strerror or error}",
            ) from error
        return filebase

    def dequeue(self, filebase: str) -> tuple[Message, dict[str, Any]]:
        """Take the entry *filebase* for processing; return its message and metadata.

        The entry becomes a ``.bak`` file until :meth:`finish` is called,
        and this process holds an ``flock`` on it until then: no recovery in
        another process puts it back while this one works on it.
        Raise :exc:`FileNotFoundError` if another process took it first
        (then nothing was touched), and :exc:`~mailqueue.qfile.QueueFileError`
        if it cannot be read safely (then the ``.bak`` stays, to be preserved).
        A ``.bak`` of the same name that is there already is never replaced:
        that too is a :exc:`~mailqueue.qfile.QueueFileError`, and then
        preserving the entry sets that ``.bak`` aside.
        """
        queued, backup = self._path(filebase, ".pck"), self._path(filebase, ".bak")
        # The entry is locked for as long as this process works on it, so
        # that no recovery in another process puts it back meanwhile; the
        # lock is on the file, taken before the rename makes it a .bak.
        try:
            lock = _lock_entry(queued)
        except BlockingIOError:
            raise FileNotFoundError(
                errno.ENOENT, "taken by another process", queued
            ) from None
        # Whoever renames the .pck owns the entry; a loser's rename fails.
        # No writer ever makes a .bak while its .pck is there: if both are,
        # the .bak is a stray, never replaced.
        try:
            qfile.rename_no_replace(queued, backup)
        except BaseException as error:
            if lock is not None:
                os.close(lock)
            if isinstance(error, FileExistsError):
                raise qfile.QueueFileError(
                    f"{filebase}: its .bak exists already"
                ) from None
            if isinstance(error, FileNotFoundError):
                raise FileNotFoundError(
                    errno.ENOENT, "taken by another process", queued
                ) from None
            raise
        if lock is not None:
            if len(_held) >= _SIZES_KEPT:
                _release_all_held()  # dequeued and never finished: let go
            _held[backup] = lock
        # Read through the locked descriptor: the file it opened is the .bak.
        if lock is None:
            content = qfile.read_file(backup, self.max_entry_size)
        else:
            content = qfile.read_descriptor(
                lock, filebase + ".bak", self.max_entry_size
            )
        if len(self._sizes) >= _SIZES_KEPT:
            self._sizes.clear()  # dequeued and never finished: forget them
        self._sizes[filebase] = len(content)
        return entry_format.decode(content, filebase, filebase + ".bak", self.seal)

    def finish(self, filebase: str, preserve: bool = False) -> None:
        """Finish with *filebase*: remove it, or with *preserve* move it to ``bad``.

        A preserved entry keeps its file base and gets the ``.psv``
        extension, unless ``bad`` holds that name already: then it gets a
        new file base with the same time, and nothing is replaced.
        """
        source = self._path(filebase, ".bak")
        queued = self._path(filebase, ".pck")
        size = self._sizes.pop(filebase, None)
        try:
            self._finish(source, queued, filebase, size, preserve)
        finally:
            _release(source)

    def _finish(
        self, source: str, queued: str, filebase: str, size: int | None, preserve: bool
    ) -> None:
        try:
            if preserve:
                if not os.path.lexists(source) and os.path.lexists(queued):
                    source = queued
                self._preserve(source, filebase, self.bad_directory)
                return
            try:
                # A small entry may be kept as a spare file for a later one.
                self._spares.give(source, size)
            except FileNotFoundError:
                if not os.path.lexists(queued):
                    raise
                source = queued  # finished without being dequeued
                os.unlink(source)
        except OSError:
            elog.exception(
                "Cannot %s queue file %s", "preserve" if preserve else "remove", source
            )

    def _preserve(self, source: str, filebase: str, bad: str) -> None:
        qfile.make_directories(bad)
        target = filebase
        while os.path.lexists(os.path.join(bad, target + ".psv")):
            parsed = qfile.parse_filebase(target)
            when = parsed.when if parsed is not None else None
            target = qfile.make_filebase(b"", filebase, when)
        if target != filebase:
            elog.error(
                "Preserving %s as %s: bad holds its name already", filebase, target
            )
        # Nothing else makes names in bad, so the check above cannot go stale.
        qfile.move_file(source, os.path.join(bad, target + ".psv"))

    @property
    def files(self) -> list[str]:
        """The file bases of the queued (``.pck``) entries, first in first out."""
        return self.get_files()

    def get_files(self, extension: str = ".pck") -> list[str]:
        """The file bases of this slice's entries with *extension*, oldest first.

        Entries are ordered by the exact value of the time in their name,
        then by digest.  A file whose name is not a file base is logged and
        left alone.
        """
        return qfile.list_queue(
            self.queue_directory,
            extension,
            self.slice,
            self.numslices,
            self._report_stray,
        )

    def _report_stray(self, name: str) -> None:
        if name not in self._reported:
            self._reported.add(name)
            elog.warning(
                "Ignoring %s in the %s queue: not a queue file name", name, self.name
            )

    def get_temporary_files(self) -> list[str]:
        """The names of this slice's ``.tmp`` files: entries being written, or
        left behind by a writer that died."""
        found = []
        with os.scandir(self.queue_directory) as entries:
            for entry in entries:
                base, ext = os.path.splitext(entry.name)
                if ext != ".tmp":
                    continue
                parsed = qfile.parse_filebase(os.path.splitext(base)[0])
                if parsed is not None and self._in_slice(parsed):
                    found.append(entry.name)
        return sorted(found)

    def remove_stale_temporary_files(self, age: float = STALE_TEMPORARY_AFTER) -> int:
        """Remove this slice's ``.tmp`` files older than *age* seconds; return how many.

        No writer takes that long, so such a file is what a writer left
        when it died before its entry was complete: never an entry.
        """
        removed = 0
        deadline = time.time() - age
        for name in self.get_temporary_files():
            path = os.path.join(self.queue_directory, name)
            try:
                if os.lstat(path).st_mtime < deadline:
                    os.unlink(path)
                    removed += 1
            except OSError:
                continue
        if removed:
            elog.info("Removed %d stale temporary file(s) from %r", removed, self)
        return removed

    def _in_slice(self, parsed: qfile.FileBase) -> bool:
        return self.slice is None or parsed.digest >> self._shift == self.slice

    def recover_backup_files(self) -> None:
        """Put this slice's ``.bak`` files back in the queue.

        A ``.bak`` file is an entry a runner took and never finished,
        because it crashed or was killed.  Each time an entry is found so is
        counted in its metadata as ``_bak_count``; an entry left as a
        ``.bak`` :data:`MAX_BAK_COUNT` times is preserved in the ``bad``
        queue instead of being put back.  An entry that
        cannot be read or written back is preserved at once, and recovery
        goes on with the next: whatever the queue holds, this returns.  A
        ``.bak`` that another live process holds locked (it dequeued the
        entry and works on it) is left alone; this process's own unfinished
        entries are recovered, as after a crash.
        """
        backups = self.get_files(".bak")
        #: How many ``.bak`` files the last recovery found.
        self.recovered = len(backups)
        for filebase in backups:
            backup = self._path(filebase, ".bak")
            # This process's own unfinished entries are recovered: within a
            # process, work on a slice is not concurrent.  Another live
            # process's are left to it.
            _release(backup)
            try:
                lock = _lock_entry(backup)
            except BlockingIOError:
                dlog.debug("%r: %s is being processed elsewhere", self, filebase)
                continue
            try:
                self._recover(filebase)
            except FileNotFoundError:
                continue
            except Exception as error:
                elog.error(
                    "Preserving backup %s: cannot recover it: %s", filebase, error
                )
                self.finish(filebase, preserve=True)
            finally:
                if lock is not None:
                    os.close(lock)

    def _recover(self, filebase: str) -> None:
        backup = self._path(filebase, ".bak")
        try:
            _msg, data, message_pickle = entry_format.load_entry(
                backup, self.max_entry_size, self.seal
            )
        except qfile.QueueFileError as error:
            elog.error("Preserving unreadable backup %s: %s", filebase, error)
            self.finish(filebase, preserve=True)
            return
        data["_bak_count"] = data.get("_bak_count", 0) + 1
        if data["_bak_count"] >= MAX_BAK_COUNT:
            elog.error(
                "Preserving %s: left as a .bak %d times", filebase, MAX_BAK_COUNT
            )
            self.finish(filebase, preserve=True)
            return
        queued = self._path(filebase, ".pck")
        if os.path.lexists(queued):
            elog.error("Preserving backup %s: its .pck exists already", filebase)
            self.finish(filebase, preserve=True)
            return
        parts = entry_format.reencode(
            filebase, message_pickle, data, self.seal, self.max_entry_size
        )
        # Count first (an atomic replace of the .bak), then requeue: a crash
        # in between can only count one recovery too many.
        qfile.write_file(backup, parts)
        os.rename(backup, queued)


def default_bad_directory(queue_directory: str) -> str:
    """Where a switchboard made without a *bad_directory* preserves entries.

    The ``bad`` directory beside its own, where the default configuration
    keeps the ``bad`` queue.  This is the one place the core assumes a
    layout; everything the configuration makes is told where ``bad`` is.
    """
    parent = os.path.dirname(os.path.normpath(queue_directory))
    return os.path.join(parent, "bad")

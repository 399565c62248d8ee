"""Spare files: finished entries of a queue, kept to be written over by new ones.

Making a file and removing it cost a disk more than its bytes (see
:class:`SparePool`); a finished entry is kept instead, and
:func:`mailqueue.qfile.write_file` writes a new entry over it.  Spares are
kept only on a file system of this host alone (see
:func:`is_local_file_system`).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import stat
import time

from mailqueue import qfile

__all__ = [
    "LOCAL_FILE_SYSTEMS",
    "SparePool",
    "is_local_file_system",
]


class SparePool:
    """Spare files for a queue directory: finished entries, to be written over.

    Making a file and removing it cost a disk more than its bytes: blocks
    are allocated, the new inode and the directory entry are flushed with
    the data, and (on a file system mounted with ``discard``) freed blocks
    are trimmed.  Before a finished entry of at most :attr:`max_size` bytes
    is removed, :meth:`give` links it into a free slot of the pool, a
    directory beside the queue directory with at most :attr:`slots` files;
    :meth:`take` renames one to the temporary name of a new entry, which is
    then written over from its start, cut to its new length and flushed as
    any temporary file is.  A spare is never listed as an entry, and one
    that has another name too is never written over.
    """

    #: How many spare files a pool holds.
    slots = 8
    #: The largest entry kept as a spare, in bytes.
    max_size = 256 * 1024

    def __init__(self, queue_directory: str) -> None:
        parent, queue = os.path.split(os.path.normpath(queue_directory))
        self.directory = os.path.join(parent, f".{queue}.spare")
        #: Spares only on a local file system: a network file system may keep
        #: a file's old content, by its identity, on one host while another
        #: host writes over it (GlusterFS does); a new file is a new identity.
        self.enabled = is_local_file_system(parent)
        self._next = 0
        #: When taking last found the pool empty, and giving found it full:
        #: it is not tried again for a second.
        self._empty_at = self._full_at = -math.inf

    def give(self, path: str, size: int | None) -> None:
        """Remove the finished entry at *path* (of *size* bytes), keeping it as a spare.

        It is kept if it is small enough and a slot of the pool is free;
        else it is just removed.  Either way it is gone from *path*.
        """
        if (
            self.enabled
            and size is not None
            and size <= self.max_size
            and self._keep(path)
        ):
            self._empty_at = -math.inf
        os.unlink(path)

    def _keep(self, path: str) -> bool:
        # A second name in a free slot: a rename onto a taken slot would
        # replace a file, which some file systems pay for with a flush.
        if time.monotonic() - self._full_at < 1.0:
            return False
        for step in range(self.slots):
            number = (self._next + step) % self.slots
            try:
                os.link(path, os.path.join(self.directory, str(number)))
            except FileExistsError:
                continue
            except FileNotFoundError:
                if not os.path.lexists(path):
                    raise
                qfile.make_directories(self.directory)
                return self._keep(path)
            except OSError:
                return False  # no hard links here: never mind
            self._next = number
            return True
        self._full_at = time.monotonic()
        return False

    def take(self, temporary: str) -> tuple[int | None, int]:
        """Move a spare file to *temporary* and open it for writing.

        Return its descriptor and its size, or None and 0 if there is none.
        A spare is written over only if it is a regular file of this user
        with no other name; anything else found in the pool is removed, or
        left alone if it is a directory.
        """
        if not self.enabled or time.monotonic() - self._empty_at < 1.0:
            return None, 0
        for step in range(self.slots):
            number = (self._next + step) % self.slots
            slot = os.path.join(self.directory, str(number))
            try:
                found = os.lstat(slot)
            except OSError:
                continue
            if not _reusable(found):
                if not stat.S_ISDIR(found.st_mode):
                    with contextlib.suppress(OSError):
                        os.unlink(slot)
                continue
            try:
                os.rename(slot, temporary)
            except OSError:
                continue  # taken by another process first
            # The entry this file was, finished into the pool, had its name
            # in the queue directory: that name's removal must be on disk
            # before the file holds another entry's bytes, or a crash could
            # bring the old name back over the new bytes.
            try:
                qfile.fsync_directory(os.path.dirname(temporary))
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                return None, 0  # a new file, then, whose writing says why
            self._next = number
            self._full_at = -math.inf
            fd = self._open(temporary, found)
            if fd is not None:
                return fd, found.st_size
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        self._empty_at = time.monotonic()
        return None, 0

    @staticmethod
    def _open(path: str, found: os.stat_result) -> int | None:
        # Never through a link, never waiting on a FIFO; and it must still
        # be the file found in the slot.
        try:
            fd = os.open(
                path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            )
        except OSError:
            return None
        try:
            opened = os.fstat(fd)
        except OSError:
            # A network file system may say the file went away under it.
            opened = None
        if (
            opened is not None
            and _reusable(opened)
            and (opened.st_dev, opened.st_ino) == (found.st_dev, found.st_ino)
        ):
            return fd
        with contextlib.suppress(OSError):
            os.close(fd)
        return None


#: File systems whose files are this host's alone (its page cache is theirs).
LOCAL_FILE_SYSTEMS = frozenset(
    ["ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "f2fs", "jfs", "zfs", "overlay"]
)


@functools.cache
def is_local_file_system(
    directory: str, mountinfo: str = "/proc/self/mountinfo"
) -> bool:
    """True if *directory* is on a file system of :data:`LOCAL_FILE_SYSTEMS`.

    Read from *mountinfo* (Linux's): the mount whose point is the longest
    prefix of the directory's real path.  Anything else, or not knowing, is
    False.
    """
    path = os.path.realpath(directory)
    best, kind = "", None
    try:
        with open(mountinfo) as stream:
            for line in stream:
                fields = line.split()
                point = fields[4].replace("\\040", " ")
                # After the optional fields, a "-", then the type.
                fs_type = fields[fields.index("-") + 1]
                inside = path == point or path.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, fs_type
    except (OSError, ValueError, IndexError):
        return False
    return kind in LOCAL_FILE_SYSTEMS


def _reusable(found: os.stat_result) -> bool:
    # A spare may be written over: a regular file of ours with one name.
    return (
        stat.S_ISREG(found.st_mode)
        and found.st_nlink == 1
        and found.st_uid == os.geteuid()
    )

"""The on-disk format of one queue entry.

A queue entry is one file holding two pickles: the message, then its
metadata dictionary.  Its name is ``<time>+<digest><extension>``: the time
the entry was made (a decimal number of seconds since the epoch, as
``repr(float)`` writes it) and the 40 hexadecimal digits of a SHA-1 digest.
The time orders a queue first in, first out; the digest places the entry in
a slice of the hash space.

Queue files are untrusted input.  Only regular files are read, never
through a symbolic link, and only up to a size limit; both pickles are
checked in full by :mod:`mailqueue.safepickle` before anything is built,
and built with an unpickler that admits only the message classes and plain
data types, so a crafted file can never run code, exhaust memory or time,
or change anything but the objects it makes.

They are written so that a crash leaves either the old state or the new
one: to a temporary name, flushed to disk, renamed into place, and then the
directory itself is flushed.
"""

from __future__ import annotations

import contextlib
import email.message
import errno
import hashlib
import math
import os
import pickle
import re
import stat
import threading
import time
from typing import Any, NamedTuple

from mailqueue import safepickle

__all__ = [
    "DIGEST_BITS",
    "FILEBASE",
    "MAX_ENTRY_SIZE",
    "PICKLE_PROTOCOL",
    "QFILE_SCHEMA_VERSION",
    "FileBase",
    "QueueFileError",
    "dump_checked",
    "fsync_directory",
    "load_entry",
    "make_filebase",
    "parse_filebase",
    "read_file",
    "write_file",
]

#: The metadata schema version every entry is stamped with.
QFILE_SCHEMA_VERSION = 3
#: The pickle protocol this implementation writes (readers accept 0 to 5).
PICKLE_PROTOCOL = 4
#: The width of the digest in a file name, in bits.
DIGEST_BITS = 160
#: The largest entry read or written, in bytes, unless the queue says otherwise.
MAX_ENTRY_SIZE = 32 * 2**20

#: What a file base is: ``<time>+<digest>``.
FILEBASE = re.compile(r"(?P<when>[0-9]+(?:\.[0-9]+)?)\+(?P<digest>[0-9a-fA-F]{40})")


class QueueFileError(ValueError):
    """A queue file that cannot be read safely: damaged, or asking for code."""


class FileBase(NamedTuple):
    """A parsed file base; tuples of these sort in queue order."""

    when: float
    digest: int
    text: str


def parse_filebase(text: str) -> FileBase | None:
    """Parse ``<time>+<digest>``; return None if *text* is not of that form."""
    match = FILEBASE.fullmatch(text)
    if match is None:
        return None
    return FileBase(float(match["when"]), int(match["digest"], 16), text)


_clock_lock = threading.Lock()
_last_time = 0.0


def _unique_time() -> float:
    """The current time, strictly later than any this process gave before.

    Entries made by one process therefore never share a time, and their
    order in the queue is the order they were made in.
    """
    global _last_time
    with _clock_lock:
        _last_time = max(time.time(), math.nextafter(_last_time, math.inf))
        return _last_time


def make_filebase(
    message_pickle: bytes, list_id: str, when: float | None = None
) -> str:
    """Make a new, unique file base for an entry holding *message_pickle*.

    Its time is now, or *when* (for an entry that must keep its place).
    """
    now = repr(_unique_time() if when is None else when)
    food = b"".join(
        (message_pickle, list_id.encode(errors="replace"), now.encode(), os.urandom(16))
    )
    return f"{now}+{hashlib.sha1(food).hexdigest()}"


def dump_checked(obj: Any, what: str) -> bytes:
    """Pickle *obj*, refusing anything that :func:`load_entry` would refuse.

    The pickle is checked by the same rules a reader checks it by, so an
    entry is never written that could not be dequeued.  *what* names it in
    the error, a :exc:`TypeError`.
    """
    try:
        data = pickle.dumps(obj, PICKLE_PROTOCOL)
        safepickle.check(data)
    except (pickle.PicklingError, TypeError, AttributeError, ValueError) as error:
        raise TypeError(f"cannot queue this {what}: {error}") from None
    except RecursionError:
        raise TypeError(
            f"cannot queue this {what}: nested more than "
            f"{safepickle.MAX_DEPTH} levels deep"
        ) from None
    return data


def read_file(path: str, max_size: int = MAX_ENTRY_SIZE) -> bytes:
    """Read the queue file at *path*, which must be a regular file.

    A symbolic link is not followed and a FIFO or device is not waited on:
    anything but a regular file of at most *max_size* bytes is refused with
    :exc:`QueueFileError`.  :exc:`FileNotFoundError` means it is gone (taken
    by another process, say); any other :exc:`OSError` is the system's.
    """
    name = os.path.basename(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EACCES, errno.EPERM, errno.ENXIO):
            what = "a symbolic link" if error.errno == errno.ELOOP else error.strerror
            raise QueueFileError(f"{name}: cannot be read ({what})") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = _FILE_TYPES.get(stat.S_IFMT(info.st_mode), "of an unknown type")
            raise QueueFileError(f"{name}: not a regular file ({kind})")
        if info.st_size > max_size:
            raise QueueFileError(
                f"{name}: {info.st_size:,} bytes, more than the limit of {max_size:,}"
            )
        chunks = []
        size = 0
        while chunk := os.read(fd, max(info.st_size - size, 0) + 1):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_size:
                raise QueueFileError(
                    f"{name}: more than the limit of {max_size:,} bytes"
                )
    except IsADirectoryError:
        raise QueueFileError(f"{name}: not a regular file (a directory)") from None
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_FILE_TYPES = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


def load_entry(
    path: str, max_size: int = MAX_ENTRY_SIZE
) -> tuple[Any, dict[str, Any], bytes]:
    """Read the entry at *path* safely.

    Return the message (an object, or text when it was stored as text), the
    metadata, and the message pickle exactly as stored.  Raise
    :exc:`QueueFileError` for anything that is not a well-formed entry (and
    :exc:`FileNotFoundError` if there is no file).  Both pickles are
    checked in full (see :mod:`mailqueue.safepickle`) before anything is
    built, and whatever goes wrong while building becomes a
    :exc:`QueueFileError` too.
    """
    data = read_file(path, max_size)
    name = os.path.basename(path)
    try:
        made, boundary = safepickle.check(data)
        if made not in ("message", "text"):
            raise QueueFileError("the message is not a message")
        made, end = safepickle.check(data, boundary)
        if made != "dict":
            raise QueueFileError("the metadata is not a dict with string keys")
        if end != len(data):
            raise QueueFileError(f"{len(data) - end:,} bytes follow the metadata")
        message = safepickle.load(data)
        metadata = safepickle.load(data, boundary)
        if not isinstance(metadata, dict) or not isinstance(
            message, (email.message.Message, str)
        ):
            raise QueueFileError("not a message and its metadata")
        _check_reserved_keys(metadata)
    except (QueueFileError, safepickle.PickleRefused) as error:
        raise QueueFileError(f"{name}: {error}") from None
    except Exception as error:
        # A damaged pickle raises any of a dozen exception types, and even
        # a checked one can fail to build; all of them mean the same here.
        raise QueueFileError(
            f"{name}: not a queue entry (a damaged pickle: {type(error).__name__})"
        ) from None
    return message, metadata, data[:boundary]


def _check_reserved_keys(metadata: dict[str, Any]) -> None:
    # The keys this implementation acts on must be what it writes.
    count = metadata.get("_bak_count", 0)
    if type(count) is not int or count < 0:
        raise QueueFileError(f"_bak_count is a {type(count).__name__}, not a count")
    if type(metadata.get("_parsemsg", False)) not in (bool, int):
        raise QueueFileError("_parsemsg is not a flag")


def write_file(path: str, parts: tuple[bytes, ...]) -> None:
    """Write *parts* to *path* durably and atomically.

    The bytes go to ``<path>.tmp``, are flushed to disk, and the file is
    renamed to *path*; then the directory is flushed so the new name
    survives a crash.  On any error the temporary file is removed and the
    error propagates.
    """
    temporary = path + ".tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o660)
    try:
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_directory(os.path.dirname(path))


def fsync_directory(directory: str) -> None:
    """Flush *directory* so that names just made or moved in it persist."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

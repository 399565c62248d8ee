"""Queue files: their names and order, and reading and writing them safely.

A queue entry is one file; what it holds is :mod:`mailqueue.entry_format`'s.
Its name is ``<time>+<digest><extension>``: the time the entry was made (a
decimal number of seconds since the epoch, as ``repr(float)`` writes it)
and the 40 hexadecimal digits of a SHA-1 digest.  The time orders a queue
first in, first out; the digest places the entry in a slice of the hash
space.

Queue files are untrusted input.  Only regular files are read, never
through a symbolic link, and only up to a size limit.

They are written so that a crash leaves either the old state or the new
one: to a temporary name, flushed to disk, renamed into place, and then the
directory itself is flushed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import hashlib
import itertools
import math
import os
import re
import stat
import threading
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

from mailqueue.errors import MailqueueError

__all__ = [
    "DIGEST_BITS",
    "FILEBASE",
    "FILE_MODE",
    "MAX_ENTRY_SIZE",
    "FileBase",
    "QueueFileError",
    "Spares",
    "fsync_directory",
    "list_queue",
    "make_filebase",
    "order_key",
    "parse_filebase",
    "read_file",
    "rename_no_replace",
    "write_file",
]

#: The mode of every queue file written, as GNU Mailman's are.
FILE_MODE = 0o660
#: The width of the digest in a file name, in bits.
DIGEST_BITS = 160
#: The largest entry read or written, in bytes, unless the queue says otherwise.
MAX_ENTRY_SIZE = 32 * 2**20

#: What a file base is: ``<time>+<digest>``.
FILEBASE = re.compile(r"(?P<when>[0-9]+(?:\.[0-9]+)?)\+(?P<digest>[0-9a-fA-F]{40})")


class QueueFileError(MailqueueError, ValueError):
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


def order_key(filebase: str) -> tuple[int, str, str]:
    """The key that sorts file bases in queue order: time, then digest.

    Times compare by their exact decimal value (``5``, ``5.0`` and ``5.00``
    are one time, and no precision is lost to floating point); digests
    compare as numbers, whatever their case.
    """
    when, _, digest = filebase.partition("+")
    whole, _, fraction = when.partition(".")
    return int(whole), fraction.rstrip("0"), digest.lower()


# A file base in canonical form: no leading zero in the time's integer part,
# a fraction without trailing zeros (or just "0"), a lower-case digest, as
# repr(float) and hexdigest() write them.  Canonical file bases whose
# integer parts are equally long sort as strings exactly as by order_key.
_CANONICAL = r"(?:0|[1-9][0-9]*+)\.[0-9]++(?<![0-9]0)\+[0-9a-f]{40}"
#: How many integer digits the times of today's entries have.
_USUAL = len(str(int(time.time())))
_CHUNK = 10_000


@functools.cache
def _canonical(extension: str) -> tuple[re.Pattern[str], ...]:
    # Lines that are all canonical names with *extension* and today's
    # number of integer digits; lines that are all canonical names; and the
    # file bases of canonical names among other lines.
    name = _CANONICAL + re.escape(extension)
    usual = name.replace("(?:0|[1-9][0-9]*+)", f"[1-9][0-9]{{{_USUAL - 1}}}", 1)
    return (
        re.compile(rf"(?:{usual}\n)*+{usual}"),
        re.compile(rf"(?:{name}\n)*+{name}"),
        re.compile(rf"^({_CANONICAL}){re.escape(extension)}$", re.MULTILINE),
    )


def list_queue(
    directory: str,
    extension: str = ".pck",
    slice: int | None = None,
    numslices: int = 1,
    on_stray: Callable[[str], object] | None = None,
) -> list[str]:
    """The file bases of the entries with *extension* in *directory*, in queue order.

    Only those in slice *slice* of *numslices* are listed, if *slice* is
    given.  The queue order is that of :func:`order_key`.  A name with
    *extension* that is not a file base is passed to *on_stray* and left
    out.
    """
    # Canonical names are ordered as strings, with no number made: a few
    # passes in C over all names rather than a few steps in Python for each.
    only_usual, only, among = _canonical(extension)
    cut = len(extension)
    names = os.listdir(directory)
    # The file bases with today's number of integer digits, and the others.
    usual: list[str] = []
    others: list[str] = []
    while names:
        # Names are let go of a chunk at a time as their file bases are
        # found: a listing never holds both in full.
        chunk = names[-_CHUNK:]
        del names[-_CHUNK:]
        text = "\n".join(chunk)
        if text.count("\n") != len(chunk) - 1:
            found = None  # a name holds a line break: it would read as two
        elif only_usual.fullmatch(text):
            usual += [name[:-cut] for name in chunk]
            continue
        elif only.fullmatch(text):
            found = [name[:-cut] for name in chunk]
        else:
            found = among.findall(text)
            with_extension = text.count(extension + "\n") + text.endswith(extension)
            if len(found) != with_extension:
                found = None
        if found is None:
            names += chunk
            names += [base + extension for base in (*usual, *others)]
            del chunk, usual, others, text
            return _queue_order_parsed(names, extension, slice, numslices, on_stray)
        # Split while the names lie in memory in the order they were made.
        usual += [base for base in found if base[_USUAL] == "."]
        others += [base for base in found if base[_USUAL] != "."]
    del names
    if slice is not None:
        # The slice is the digest's top bits: its first hex digits.
        prefixes = _prefixes(slice, numslices)
        end = -40 + len(next(iter(prefixes)))
        usual = [base for base in usual if base[-40 : end or None] in prefixes]
        others = [base for base in others if base[-40 : end or None] in prefixes]
    usual.sort()
    if not others:
        return usual
    # A shorter integer part is an earlier time (there are no leading zeros).
    others.sort()
    others.sort(key=_integer_digits)  # stable: the order within a length stays
    split = next(
        (at for at, base in enumerate(others) if base.index(".") > _USUAL), len(others)
    )
    return [*others[:split], *usual, *others[split:]]


def _integer_digits(filebase: str) -> int:
    return filebase.index(".")


@functools.cache
def _prefixes(slice: int, numslices: int) -> frozenset[str]:
    # The lower-case hex prefixes whose top bits are *slice*.
    bits = numslices.bit_length() - 1
    digits = -(-bits // 4)
    spare = 4 * digits - bits
    return frozenset(
        f"{value:0{digits}x}" for value in range(slice << spare, (slice + 1) << spare)
    )


def _queue_order_parsed(
    names: list[str],
    extension: str,
    slice: int | None,
    numslices: int,
    on_stray: Callable[[str], object] | None,
) -> list[str]:
    # Any name the spec allows: each is parsed and given its key.
    shift = DIGEST_BITS - (numslices.bit_length() - 1)
    cut = len(extension)
    keyed = []
    for name in names:
        if not name.endswith(extension):
            continue
        base = name[:-cut]
        if FILEBASE.fullmatch(base) is None:
            if on_stray is not None:
                on_stray(name)
            continue
        key = order_key(base)
        if slice is not None and int(key[2], 16) >> shift != slice:
            continue
        keyed.append((key, base))
    keyed.sort()
    return [base for _, base in keyed]


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
    # This process's random bytes, a count and the time make the digest
    # unique and spread it evenly; the list and the size cost nothing more.
    food = b"%s\0%d\0%s\0%d\0%s" % (
        _process_random(),
        next(_made),
        list_id.encode(errors="replace"),
        len(message_pickle),
        now.encode(),
    )
    return f"{now}+{hashlib.sha1(food).hexdigest()}"


_made = itertools.count()
_random: list[bytes] = []


def _process_random() -> bytes:
    if not _random:
        _random.append(os.urandom(16))
    return _random[0]


# A forked child draws its own: it must never repeat its parent's digests.
os.register_at_fork(after_in_child=_random.clear)


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
        return read_descriptor(fd, name, max_size)
    finally:
        os.close(fd)


def read_descriptor(fd: int, name: str, max_size: int = MAX_ENTRY_SIZE) -> bytes:
    """Read the queue file open (just opened) as *fd*; see :func:`read_file`.

    *name* names it in errors.  The descriptor stays open.
    """
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
    while True:
        wanted = max(info.st_size - size, 0) + 1
        chunk = os.read(fd, wanted)
        chunks.append(chunk)
        size += len(chunk)
        if size > max_size:
            raise QueueFileError(f"{name}: more than the limit of {max_size:,} bytes")
        if len(chunk) < wanted:
            break  # a regular file reads short only at its end
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


_FILE_TYPES = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link",
}


class Spares(Protocol):
    """Where :func:`write_file` takes a file to write over: a pool of spares.

    :class:`mailqueue.spares.SparePool` is the one there is.
    """

    def take(self, temporary: str) -> tuple[int | None, int]:
        """Move a spare file to *temporary* and open it for writing.

        Return its descriptor and its size, or None and 0 if there is none.
        """


def write_file(
    path: str,
    parts: tuple[bytes | memoryview, ...],
    spares: Spares | None = None,
) -> None:
    """Write *parts* to *path* durably and atomically.

    The bytes go to ``<path>.tmp``, are flushed to disk, and the file is
    renamed to *path*; then the directory is flushed so the new name
    survives a crash.  On any error the temporary file is removed and the
    error propagates.

    With *spares*, the temporary file is a spare file taken from the pool
    when there is one (see :class:`mailqueue.spares.SparePool`), and
    written over.
    """
    temporary = path + ".tmp"
    fd, old_size = spares.take(temporary) if spares is not None else (None, 0)
    written = False
    if fd is not None:
        try:
            _write_temporary(fd, parts, old_size)
            written = True
        except OSError:
            # Whatever went wrong with a spare (a network file system may
            # call it stale), a new file is tried before giving up.
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    try:
        if not written:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o660)
            _write_temporary(fd, parts, None)
        os.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    fsync_directory(os.path.dirname(path))


def _write_temporary(
    fd: int, parts: tuple[bytes | memoryview, ...], old: int | None
) -> None:
    # Write parts over what fd holds (old bytes of it, None for a new file),
    # flush, and close it.
    try:
        if old is None:
            # GNU Mailman's mode, whatever the umask: its runners (the same
            # user, or its group) read what an operator's tool writes.
            os.fchmod(fd, FILE_MODE)
            old = 0
        size = _write_all(fd, parts)
        # A spare may be longer than this entry: nothing of it may stay.
        if old > size:
            os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, parts: tuple[bytes | memoryview, ...]) -> int:
    # One system call for all parts, unless the system writes less.
    size = sum(len(part) for part in parts)
    written = os.pwritev(fd, parts, 0)
    if written < size:
        view = memoryview(b"".join(parts))[written:]
        while view:
            step = os.pwrite(fd, view, written)
            view = view[step:]
            written += step
    return size


def make_directories(directory: str) -> None:
    """Make *directory* and any missing parent, each flushed into its parent.

    A new directory's name is in its parent until that is flushed, like a
    file's: an entry written into a directory whose own name a crash loses
    would be lost with it.
    """
    try:
        os.mkdir(directory, 0o770)
    except FileExistsError:
        return
    except FileNotFoundError:
        parent = os.path.dirname(os.path.normpath(directory))
        if parent == directory:
            raise
        make_directories(parent)
        try:
            os.mkdir(directory, 0o770)
        except FileExistsError:
            return
    fsync_directory(os.path.dirname(os.path.normpath(directory)))


def move_file(source: str, target: str) -> None:
    """Move the file *source* to *target* in another directory, losing it in no crash.

    A rename from one directory to another changes two directories, and
    unless a journal ties them together either may reach the disk first:
    a crash between the two could leave the file in neither.  So the file
    is linked to *target*, that directory flushed, and only then is
    *source* removed and its directory flushed: a crash leaves the file
    under one name or both, never under none.  *target* is never replaced
    (:exc:`FileExistsError`).  If *source* goes (another process took it)
    before it is removed here, the link is taken back and
    :exc:`FileNotFoundError` raised: the file is the other process's.  Where
    the file system has no hard links, it is renamed, and both directories
    are flushed.
    """
    try:
        os.link(source, target, follow_symlinks=False)
    except (FileNotFoundError, FileExistsError):
        raise
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP):
            raise
        if os.path.lexists(target):
            raise FileExistsError(
                errno.EEXIST, os.strerror(errno.EEXIST), target
            ) from None
        os.rename(source, target)
        fsync_directory(os.path.dirname(target))
    else:
        fsync_directory(os.path.dirname(target))
        try:
            os.unlink(source)
        except FileNotFoundError:
            os.unlink(target)
            fsync_directory(os.path.dirname(target))
            raise
    fsync_directory(os.path.dirname(source))


#: renameat2's flag that makes it fail, rather than replace, an existing
#: target; and its "relative to the working directory".
_RENAME_NOREPLACE, _AT_FDCWD = 1, -100


@functools.cache
def _renameat2() -> tuple[Callable[..., int], Callable[[], int]] | None:
    # Linux's renameat2 from the C library and how to read its errno, or
    # None where there is none.  Its arguments are ints and bytes, which
    # ctypes passes as C ints and pointers as they are.
    try:
        return ctypes.CDLL(None, use_errno=True).renameat2, ctypes.get_errno
    except (OSError, AttributeError):
        return None


def rename_no_replace(source: str, target: str) -> None:
    """Rename *source* to *target* in one step, never replacing *target*.

    Raise :exc:`FileExistsError` if *target* exists, and
    :exc:`FileNotFoundError` if *source* does not.  Where the system can
    (Linux's ``renameat2`` with ``RENAME_NOREPLACE``, on most local file
    systems), the test and the rename are one atomic call; elsewhere the
    target is looked for first, which is as good where nothing else makes
    that name (as nothing makes a ``.bak`` but the rename of its ``.pck``).
    """
    found = _renameat2()
    if found is not None:
        renameat2, get_errno = found
        paths = os.fsencode(source), os.fsencode(target)
        if not renameat2(_AT_FDCWD, paths[0], _AT_FDCWD, paths[1], _RENAME_NOREPLACE):
            return
        number = get_errno()
        if number not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise OSError(number, os.strerror(number), source, None, target)
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), target)
    os.rename(source, target)


def fsync_directory(directory: str) -> None:
    """Flush *directory* so that names just made or moved in it persist."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

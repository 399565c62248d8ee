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
import ctypes
import email.message
import errno
import functools
import hashlib
import io
import itertools
import math
import os
import pickle
import re
import stat
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from mailqueue import safepickle
from mailqueue.errors import MailqueueError
from mailqueue.message import Message
from mailqueue.seal import SEAL_MAX, Seal, seal_start

__all__ = [
    "ATTEMPTS",
    "DIGEST_BITS",
    "FILEBASE",
    "FILE_MODE",
    "FIRST_QUEUED",
    "LOCAL_FILE_SYSTEMS",
    "MAX_ENTRY_SIZE",
    "PICKLE_PROTOCOL",
    "QFILE_SCHEMA_VERSION",
    "REASON",
    "FileBase",
    "QueueFileError",
    "SparePool",
    "dump_checked",
    "fsync_directory",
    "is_local_file_system",
    "list_queue",
    "load_entry",
    "make_filebase",
    "one_line",
    "order_key",
    "parse_entry",
    "parse_filebase",
    "read_file",
    "rename_no_replace",
    "reserved_key_problem",
    "write_file",
]

#: The metadata schema version every entry is stamped with.
QFILE_SCHEMA_VERSION = 3
#: The pickle protocol this implementation writes (readers accept 0 to 5).
PICKLE_PROTOCOL = 4
#: The mode of every queue file written, as GNU Mailman's are.
FILE_MODE = 0o660
#: The width of the digest in a file name, in bits.
DIGEST_BITS = 160
#: The largest entry read or written, in bytes, unless the queue says otherwise.
MAX_ENTRY_SIZE = 32 * 2**20

# The reserved metadata keys of an entry's history, kept from queue to queue
# (see "What a file holds" in docs/queue-files.rst).  No underscore: a writer
# keeps them, GNU Mailman's too, and Mailman's runners read none of them.
#: The reserved key of when the entry's message was first queued (seconds
#: since the epoch).
FIRST_QUEUED = "mq_first_queued"
#: The reserved key of how many times a runner failed on the entry.
ATTEMPTS = "mq_attempts"
#: The reserved key of why a runner failed on the entry last, in one line.
REASON = "mq_reason"

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


def dump_checked(
    obj: Any, what: str, long_strings: list[tuple[int, int]] | None = None
) -> bytes:
    """Pickle *obj*, refusing anything that :func:`load_entry` would refuse.

    The pickle is checked by the same rules a reader checks it by, so an
    entry is never written that could not be dequeued.  *what* names it in
    the error, a :exc:`TypeError`.  With *long_strings*, a pickle of more
    than :data:`~mailqueue.seal.SEAL_MAX` bytes is walked opcode by opcode,
    and where its long strings are is appended to the list, for its seal.
    """
    try:
        if type(obj) in _PORTABLE_NAMES:
            data = _portable_dumps(obj)
        else:
            data = pickle.dumps(obj, PICKLE_PROTOCOL)
            if _OWN_NAME in data:
                data = _portable_dumps(obj)
        if long_strings is not None and len(data) > SEAL_MAX:
            safepickle.check(data, 0, long_strings)
        elif not safepickle.is_plain(obj, len(data)):
            safepickle.check(data)
    except (pickle.PicklingError, TypeError, AttributeError, ValueError) as error:
        raise TypeError(f"cannot queue this {what}: {error}") from None
    except RecursionError:
        raise TypeError(
            f"cannot queue this {what}: nested more than "
            f"{safepickle.MAX_DEPTH} levels deep"
        ) from None
    return data


# Our message class pickles under its own module's name, which no reader
# without mailqueue can import; it is written under the name of the class it
# adds nothing to the state of.
_OWN_NAME = b"mailqueue.message"
_PORTABLE_NAMES = {Message: ("email.message", "Message")}


def _portable_dumps(obj: Any) -> bytes:
    """Pickle *obj* with each of our classes named as :data:`_PORTABLE_NAMES` says.

    The C pickler writes a class it has seen before as a reference to its
    memo; so the memo is given each class at the start, and the pickle is
    given, after its protocol opcode, what makes those memo entries: the
    global under its portable name, memoized, and popped off the stack.
    """
    stream = io.BytesIO()
    pickler = pickle.Pickler(stream, PICKLE_PROTOCOL)
    prelude = bytearray()
    memo = {}
    for index, (cls, (module, name)) in enumerate(_PORTABLE_NAMES.items()):
        memo[id(cls)] = (index, cls)
        for text in (module.encode(), name.encode()):
            prelude += pickle.SHORT_BINUNICODE + bytes([len(text)]) + text
        prelude += pickle.STACK_GLOBAL + pickle.MEMOIZE + pickle.POP
    pickler.memo = memo
    pickler.dump(obj)
    data = stream.getvalue()
    # data[:2] is PROTO 4: the prelude comes next, before the first frame.
    return data[:2] + bytes(prelude) + data[2:]


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


def load_entry(
    path: str, max_size: int = MAX_ENTRY_SIZE, seal: Seal | None = None
) -> tuple[Any, dict[str, Any], memoryview]:
    """Read the entry at *path* safely.

    Return the message (an object, or text when it was stored as text), the
    metadata, and the message pickle exactly as stored (a view of the bytes
    read, not a copy).  Raise :exc:`QueueFileError` for anything that is not
    a well-formed entry (and :exc:`FileNotFoundError` if there is no file).
    Both pickles are checked in full (see :mod:`mailqueue.safepickle`)
    before anything is built, unless the entry bears a valid *seal* of this
    site (see :mod:`mailqueue.seal`); whatever goes wrong while building
    becomes a :exc:`QueueFileError` too.
    """
    name = os.path.basename(path)
    return parse_entry(read_file(path, max_size), name, seal, os.path.splitext(name)[0])


def parse_entry(
    data: bytes,
    name: str,
    seal: Seal | None = None,
    filebase: str | None = None,
) -> tuple[Any, dict[str, Any], memoryview]:
    """Check and build the entry *data*, read from the file *name*.

    An entry may end in a seal (see :mod:`mailqueue.seal`); with *seal* and
    the entry's *filebase*, a valid one lets the pickles be built without
    the opcode check.  See :func:`load_entry`.
    """
    end = seal_start(data)
    try:
        if (
            seal is not None
            and filebase is not None
            and end < len(data)
            and seal.valid(filebase, data, end)
        ):
            message, boundary, metadata = safepickle.load_two(data, end)
        else:
            made, boundary = safepickle.check(data)
            if made not in ("message", "text"):
                raise QueueFileError("the message is not a message")
            made, stop = safepickle.check(data, boundary)
            if made != "dict":
                raise QueueFileError("the metadata is not a dict with string keys")
            if stop != end:
                raise QueueFileError(f"{len(data) - stop:,} bytes follow the metadata")
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
    return message, metadata, memoryview(data)[:boundary]


def _check_reserved_keys(metadata: dict[str, Any]) -> None:
    # The keys this implementation acts on must be what it writes.
    problem = reserved_key_problem(metadata)
    if problem:
        raise QueueFileError(problem)


def reserved_key_problem(metadata: dict[str, Any]) -> str:
    """What is wrong with the reserved keys of *metadata*, or an empty string."""
    for key in ("_bak_count", ATTEMPTS):
        count = metadata.get(key, 0)
        if type(count) is not int or count < 0:
            return f"{key} is not a count: {count!r:.40}"
    if type(metadata.get("_parsemsg", False)) not in (bool, int):
        return "_parsemsg is not a flag"
    when = metadata.get(FIRST_QUEUED, 0.0)
    if type(when) not in (int, float) or not math.isfinite(when):
        return f"{FIRST_QUEUED} is not a time"
    if type(metadata.get(REASON, "")) is not str:
        return f"{REASON} is not text"
    return ""


def one_line(value: object, limit: int = 200) -> str:
    """*value*, from a queue file, as one printable line of at most *limit* characters.

    Text that is not printable (a line break, a control character) is
    written as ``ascii()`` writes it; anything but text as ``repr()`` does.
    """
    text = value if isinstance(value, str) else repr(value)
    if not text.isprintable():
        text = ascii(text)
    return text if len(text) <= limit else text[:limit] + "..."


def write_file(
    path: str,
    parts: tuple[bytes | memoryview, ...],
    spares: SparePool | None = None,
) -> None:
    """Write *parts* to *path* durably and atomically.

    The bytes go to ``<path>.tmp``, are flushed to disk, and the file is
    renamed to *path*; then the directory is flushed so the new name
    survives a crash.  On any error the temporary file is removed and the
    error propagates.

    With *spares*, the temporary file is a spare file taken from the pool
    when there is one (see :class:`SparePool`), and written over.
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
                make_directories(self.directory)
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
                fsync_directory(os.path.dirname(temporary))
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

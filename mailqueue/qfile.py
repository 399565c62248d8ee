"""The on-disk format of one queue entry.

A queue entry is one file holding two pickles: the message, then its
metadata dictionary.  Its name is ``<time>+<digest><extension>``: the time
the entry was made (a decimal number of seconds since the epoch, as
``repr(float)`` writes it) and the 40 hexadecimal digits of a SHA-1 digest.
The time orders a queue first in, first out; the digest places the entry in
a slice of the hash space.

Queue files are untrusted input.  They are read with an unpickler that
admits only the message classes and plain data types, so a crafted file can
never run code.  They are written so that a crash leaves either the old state
or the new one: to a temporary name, flushed to disk, renamed into place,
and then the directory itself is flushed.
"""

from __future__ import annotations

import builtins
import contextlib
import copyreg
import datetime
import email._policybase
import email.charset
import email.errors
import email.header
import email.message
import hashlib
import inspect
import io
import math
import os
import pickle
import re
import threading
import time
from typing import Any, NamedTuple

from mailqueue.message import Message

__all__ = [
    "DIGEST_BITS",
    "PICKLE_PROTOCOL",
    "QFILE_SCHEMA_VERSION",
    "FileBase",
    "QueueFileError",
    "dump_checked",
    "fsync_directory",
    "load_entry",
    "make_filebase",
    "parse_filebase",
    "write_file",
]

#: The metadata schema version every entry is stamped with.
QFILE_SCHEMA_VERSION = 3
#: The pickle protocol this implementation writes (readers accept 0 to 5).
PICKLE_PROTOCOL = 4
#: The width of the digest in a file name, in bits.
DIGEST_BITS = 160

_FILEBASE = re.compile(r"(?P<when>[0-9]+(?:\.[0-9]+)?)\+(?P<digest>[0-9a-fA-F]{40})")


class QueueFileError(ValueError):
    """A queue file that cannot be read safely: damaged, or asking for code."""


class FileBase(NamedTuple):
    """A parsed file base; tuples of these sort in queue order."""

    when: float
    digest: int
    text: str


def parse_filebase(text: str) -> FileBase | None:
    """Parse ``<time>+<digest>``; return None if *text* is not of that form."""
    match = _FILEBASE.fullmatch(text)
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


def make_filebase(message_pickle: bytes, list_id: str) -> str:
    """Make a new, unique file base for an entry holding *message_pickle*."""
    now = repr(_unique_time())
    food = b"".join((message_pickle, list_id.encode(), now.encode(), os.urandom(16)))
    return f"{now}+{hashlib.sha1(food).hexdigest()}"


def dump_checked(obj: Any, what: str) -> bytes:
    """Pickle *obj*, refusing anything that :func:`load_entry` would refuse.

    The pickle is read back with the same safe loader, so an entry is never
    written that could not be dequeued.  *what* names it in the error.
    """
    try:
        data = pickle.dumps(obj, PICKLE_PROTOCOL)
        _SafeUnpickler(io.BytesIO(data)).load()
    except (pickle.PicklingError, TypeError, AttributeError, QueueFileError) as error:
        raise TypeError(f"cannot queue this {what}: {error}") from None
    return data


def load_entry(path: str) -> tuple[Any, dict[str, Any], bytes]:
    """Read the entry at *path* safely.

    Return the message (an object, or text when it was stored as text), the
    metadata, and the message pickle exactly as stored.  Raise
    :exc:`QueueFileError` for anything that is not a well-formed entry.
    """
    with open(path, "rb") as stream:
        data = stream.read()
    source = io.BytesIO(data)
    try:
        message = _SafeUnpickler(source).load()
        boundary = source.tell()
        metadata = _SafeUnpickler(source).load()
    except QueueFileError as error:
        raise QueueFileError(f"{os.path.basename(path)}: {error}") from None
    except Exception as error:
        # Truncated, garbage or otherwise malformed pickles raise any of a
        # dozen exception types; all of them mean the same thing here.
        raise QueueFileError(
            f"{os.path.basename(path)}: not a queue entry (a damaged pickle: "
            f"{type(error).__name__})"
        ) from None
    if not isinstance(metadata, dict):
        raise QueueFileError(
            f"{os.path.basename(path)}: the metadata is a "
            f"{type(metadata).__name__}, not a dict"
        )
    if not isinstance(message, (email.message.Message, str)):
        raise QueueFileError(
            f"{os.path.basename(path)}: the message is a "
            f"{type(message).__name__}, not a message"
        )
    return message, metadata, data[:boundary]


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


# What the safe unpickler admits ---------------------------------------------


def _bytes_from_text(text: str, encoding: str = "latin1") -> bytes:
    # Pickle protocols 0 to 2 store bytes as _codecs.encode(text, "latin1").
    if encoding not in ("latin1", "latin-1"):
        raise QueueFileError(f"refused to decode bytes with {encoding!r}")
    return text.encode("latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import email.mime.application
    import email.mime.audio
    import email.mime.base
    import email.mime.image
    import email.mime.message
    import email.mime.multipart
    import email.mime.nonmultipart
    import email.mime.text

    classes: list[type] = [
        email.message.Message,
        email.charset.Charset,
        email.header.Header,
        email.mime.application.MIMEApplication,
        email.mime.audio.MIMEAudio,
        email.mime.base.MIMEBase,
        email.mime.image.MIMEImage,
        email.mime.message.MIMEMessage,
        email.mime.multipart.MIMEMultipart,
        email.mime.nonmultipart.MIMENonMultipart,
        email.mime.text.MIMEText,
        email._policybase.Compat32,
        Message,
        datetime.date,
        datetime.datetime,
        datetime.time,
        datetime.timedelta,
        datetime.timezone,
    ]
    classes += [
        value
        for value in vars(email.errors).values()
        if inspect.isclass(value) and issubclass(value, email.errors.MessageDefect)
    ]
    allowed: dict[tuple[str, str], Any] = {
        (cls.__module__, cls.__qualname__): cls for cls in classes
    }
    allowed.update(
        {
            # GNU Mailman's message classes are read as ours: their state is
            # that of an email.message.Message.  Their code is never imported.
            ("mailman.email.message", "Message"): Message,
            ("mailman.email.message", "UserNotification"): Message,
            ("mailman.email.message", "OwnerNotification"): Message,
            # What protocols 0 to 2 need to rebuild objects and bytes, under
            # both their Python 3 and their Python 2 module names.
            ("copyreg", "_reconstructor"): copyreg._reconstructor,
            ("copy_reg", "_reconstructor"): copyreg._reconstructor,
            ("builtins", "object"): object,
            ("__builtin__", "object"): object,
            ("_codecs", "encode"): _bytes_from_text,
        }
    )
    for name in ("set", "frozenset", "bytes", "bytearray"):
        allowed["builtins", name] = getattr(builtins, name)
        allowed["__builtin__", name] = getattr(builtins, name)
    return allowed


_ALLOWED = _allowed_globals()


class _SafeUnpickler(pickle.Unpickler):
    """An unpickler that can only build messages and plain data."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[module, name]
        except KeyError:
            raise QueueFileError(
                f"refused to load {module}.{name}: queue files may hold only "
                "messages and plain data"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise QueueFileError("refused a persistent id: queue files are self-contained")

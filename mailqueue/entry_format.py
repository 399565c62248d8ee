"""The format of one queue entry: what its bytes are, written and read.

An entry is two pickles, one after the other: the message, then its
metadata dictionary; a writer that has the site's key appends a seal (see
:mod:`mailqueue.seal`).  The message is stored as an
:class:`email.message.Message`, or as its text when the metadata's
``_parsemsg`` flag is set.  The metadata is stamped with the schema version
(:data:`QFILE_SCHEMA_VERSION`, as ``version``); keys that start with ``_``
are not stored, except ``_parsemsg`` (the writer sets it) and ``_bak_count``
(only recovery writes it); the reserved keys :data:`FIRST_QUEUED`,
:data:`ATTEMPTS` and :data:`REASON` are an entry's history (see "What a
file holds" in the queue file page).

Entries are untrusted input.  Both pickles are checked in full by
:mod:`mailqueue.safepickle` before anything is built, and built with an
unpickler that admits only the message classes and plain data types, so a
crafted file can never run code, exhaust memory or time, or change anything
but the objects it makes.  What is written is checked by the same rules, so
an entry is never written that could not be read.

Where an entry's file is, what it is named and how it is written and read
durably is :mod:`mailqueue.qfile`'s.
"""

from __future__ import annotations

import email
import email.message
import io
import math
import os
import pickle
from typing import Any

from mailqueue import pickle_rules, qfile, safepickle
from mailqueue.errors import MailqueueError
from mailqueue.message import Message
from mailqueue.qfile import MAX_ENTRY_SIZE, QueueFileError
from mailqueue.seal import (
    MAX_RANGES,
    RANGE_SIZE,
    SEAL_MAX,
    TRAILER_SIZE,
    Seal,
    seal_start,
)

__all__ = [
    "ATTEMPTS",
    "FIRST_QUEUED",
    "PICKLE_PROTOCOL",
    "QFILE_SCHEMA_VERSION",
    "REASON",
    "EntryTooLargeError",
    "decode",
    "dump_checked",
    "encode",
    "load_entry",
    "one_line",
    "parse_entry",
    "reencode",
    "reserved_key_problem",
]

#: The metadata schema version every entry is stamped with.
QFILE_SCHEMA_VERSION = 3
#: The pickle protocol this implementation writes (readers accept 0 to 5).
PICKLE_PROTOCOL = 4

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

#: The parts of an entry, in the order they are written: the message
#: pickle, the metadata pickle, and the seal if there is one.
Parts = tuple[bytes | memoryview, ...]


class EntryTooLargeError(MailqueueError, ValueError):
    """An entry larger than its queue's ``max_entry_size``: it is not queued."""


# Writing ---------------------------------------------------------------------


def encode(
    msg: Any,
    metadata: dict[str, Any],
    seal: Seal | None = None,
    max_size: int = MAX_ENTRY_SIZE,
    queue: str = "",
) -> tuple[str, Parts]:
    """A new entry holding *msg* with *metadata*: its file base and its parts.

    Keys of *metadata* that start with ``_`` are not stored, except that
    ``version`` and ``_parsemsg`` are always set; with ``_plaintext=True``
    the message is stored as text.  The entry is sealed with *seal*, when
    there is one and the entry can be.  Raise :exc:`TypeError` for what
    cannot be queued (what a reader would refuse), and
    :exc:`EntryTooLargeError` for an entry of more than *max_size* bytes,
    naming the *queue* it was for.
    """
    odd = [key for key in metadata if not isinstance(key, str)]
    if odd:
        raise TypeError(
            f"cannot queue metadata with a key that is not text: {odd[0]!r:.40}"
        )
    # Metadata may come from a queue file: never ask an object of it for
    # its truth, only plain flags and text are taken.
    plaintext = _flag(metadata.get("_plaintext"))
    stored = {key: value for key, value in metadata.items() if not key.startswith("_")}
    stored["version"] = QFILE_SCHEMA_VERSION
    stored["_parsemsg"] = plaintext
    # What a reader would refuse is not written (an entry's history).
    problem = reserved_key_problem(stored)
    if problem:
        raise TypeError(f"cannot queue this metadata: {problem}")
    if not isinstance(msg, email.message.Message):
        raise TypeError(f"cannot queue a {type(msg).__name__}: not a message")
    # Where the long strings of a large message are, for its seal.
    long_strings: list[tuple[int, int]] | None = None if seal is None else []
    message_pickle = dump_checked(
        _as_text(msg) if plaintext else msg, "message", long_strings
    )
    metadata_pickle = dump_checked(stored, "metadata")
    size = len(message_pickle) + len(metadata_pickle)
    if size > max_size:
        raise EntryTooLargeError(
            f"cannot queue an entry of {size:,} bytes in the {queue!r} "
            f"queue: its limit is {max_size:,}"
        )
    names = [metadata.get(key) for key in ("listid", "listname")]
    list_id = next((name for name in names if isinstance(name, str) and name), "")
    filebase = qfile.make_filebase(message_pickle, list_id or "--nolist--")
    parts = _sealed(
        seal, filebase, message_pickle, metadata_pickle, max_size, long_strings
    )
    return filebase, parts


def reencode(
    filebase: str,
    message_pickle: bytes | memoryview,
    metadata: dict[str, Any],
    seal: Seal | None = None,
    max_size: int = MAX_ENTRY_SIZE,
) -> Parts:
    """The parts of the entry *filebase* with its message pickle as it is stored.

    The metadata is *metadata*, as it is (recovery counts an entry's
    returns in it); the entry is sealed with *seal*, when there is one and
    the entry can be.  Raise :exc:`TypeError` for metadata that a reader
    would refuse.
    """
    metadata_pickle = dump_checked(metadata, "metadata")
    return _sealed(seal, filebase, message_pickle, metadata_pickle, max_size)


def _sealed(
    seal: Seal | None,
    filebase: str,
    message_pickle: bytes | memoryview,
    metadata_pickle: bytes,
    max_size: int,
    long_strings: list[tuple[int, int]] | None = None,
) -> Parts:
    # The two pickles, and their seal if there is a key, and either they
    # are small or the check told where the message's long strings are
    # (the seal leaves those out).
    parts = (message_pickle, metadata_pickle)
    if seal is None:
        return parts
    ranges = (long_strings or [])[:MAX_RANGES]
    size = len(message_pickle) + len(metadata_pickle)
    size += TRAILER_SIZE + RANGE_SIZE * len(ranges)
    if size > max_size or (size > SEAL_MAX and not ranges):
        return parts
    trailer = seal.trailer(filebase, parts, ranges)
    return parts if trailer is None else (*parts, trailer)


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
            f"{pickle_rules.MAX_DEPTH} levels deep"
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


def _as_text(msg: email.message.Message) -> str:
    try:
        return str(msg)
    except Exception as error:
        raise TypeError(
            f"cannot queue this message as text: {type(error).__name__}"
        ) from None


# Reading ---------------------------------------------------------------------


def load_entry(
    path: str, max_size: int = MAX_ENTRY_SIZE, seal: Seal | None = None
) -> tuple[Any, dict[str, Any], memoryview]:
    """Read the entry at *path* safely.

    Return the message (an object, or text when it was stored as text), the
    metadata, and the message pickle exactly as stored (a view of the bytes
    read, not a copy).  Raise :exc:`~mailqueue.qfile.QueueFileError` for
    anything that is not a well-formed entry (and :exc:`FileNotFoundError`
    if there is no file).  Both pickles are checked in full (see
    :mod:`mailqueue.safepickle`) before anything is built, unless the entry
    bears a valid *seal* of this site (see :mod:`mailqueue.seal`); whatever
    goes wrong while building becomes a
    :exc:`~mailqueue.qfile.QueueFileError` too.
    """
    name = os.path.basename(path)
    data = qfile.read_file(path, max_size)
    return parse_entry(data, name, seal, os.path.splitext(name)[0])


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


def decode(
    data: bytes, filebase: str, name: str, seal: Seal | None = None
) -> tuple[Message, dict[str, Any]]:
    """The message and metadata of the entry *filebase*, *data* read from *name*.

    As :func:`parse_entry`, but the message is always a
    :class:`~mailqueue.message.Message`: one stored as text (``_parsemsg``
    set) is parsed, and the metadata's ``original_size`` (and the
    message's) is the length of that text.  Anything else stored as text,
    or text that is not a message, is a
    :exc:`~mailqueue.qfile.QueueFileError`.
    """
    msg, metadata, _ = parse_entry(data, name, seal, filebase)
    if _flag(metadata.get("_parsemsg")):
        if not isinstance(msg, str):
            raise QueueFileError(f"{filebase}: _parsemsg set, but not text")
        metadata["original_size"] = len(msg)
        try:
            msg = email.message_from_string(msg, _class=Message)
        except Exception as error:
            raise QueueFileError(
                f"{filebase}: the text is not a message ({type(error).__name__})"
            ) from None
        msg.original_size = metadata["original_size"]
    elif isinstance(msg, str):
        raise QueueFileError(f"{filebase}: text stored without _parsemsg")
    return msg, metadata


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
    :data:`REASON` is written so.
    """
    text = value if isinstance(value, str) else repr(value)
    if not text.isprintable():
        text = ascii(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _flag(value: Any) -> bool:
    """A flag from metadata: true only for ``True`` or a non-zero integer."""
    return type(value) in (bool, int) and value != 0

"""Queue tools for an operator: list entries, and delete, hold, release or requeue them.

Modelled on Postfix's ``postqueue -p`` and ``postsuper -d/-h/-H/-r``.  Every
action is one rename (or one unlink) of an entry that waits: a queued
``.pck`` (in ``bad`` too), a preserved ``.psv``, or a held entry.  It never
replaces a file, it is made durable by flushing the directories it changed,
and it is logged to ``mailqueue.admin``.  An entry a runner has taken
(``.bak``) is never touched: a rename that loses the race to the runner
fails, and the entry is left to it.

Held entries wait in ``$QUEUE_DIR/hold/<queue>/``, where no runner looks;
the directory remembers the queue that releasing them puts them back in.
Listing reads every entry with the safe loader and creates nothing;
:func:`dump_msgdata` prints an entry's metadata as ``mailqueue qfile`` and
the documents do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import time
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mailqueue import entry_format, qfile
from mailqueue.configuration import config
from mailqueue.errors import MailqueueError
from mailqueue.message import decoded

__all__ = [
    "MAILMAN_NEEDS",
    "EntryError",
    "QueueEntry",
    "Unshunted",
    "age",
    "count_entries",
    "delete",
    "dump_msgdata",
    "entry_files",
    "entry_path",
    "hold",
    "hold_directory",
    "in_hand",
    "list_entries",
    "load_queue_file",
    "queue_counts",
    "release",
    "requeue",
    "unshunt",
]

alog = logging.getLogger("mailqueue.admin")


def dump_msgdata(msgdata: dict[str, Any], *skip: str) -> None:
    """Print *msgdata* one key a line, sorted, values aligned; leave out *skip*."""
    keys = sorted(key for key in msgdata if key not in skip)
    if not keys:
        print("*Empty*")
        return
    width = max(len(key) for key in keys)
    for key in keys:
        print(f"{key:{width}}: {msgdata[key]}")


class EntryError(MailqueueError, ValueError):
    """An entry that cannot be acted on: gone, taken, held, or in the way."""


@dataclass(frozen=True)
class QueueEntry:
    """One waiting entry, as an operator sees it."""

    #: The queue it is in: ``in``, ``bad``, ... or ``hold/in`` when held.
    queue: str
    filebase: str
    path: str
    #: When it was made, in seconds since the epoch (from its file base).
    when: float
    size: int
    #: The list it is for (its list-id or posting address), or empty.
    list: str
    sender: str
    subject: str
    #: Why it could not be read, for an entry that cannot be.
    problem: str = ""
    #: When its message was first queued, in seconds since the epoch: its
    #: metadata's ``mq_first_queued``, else :attr:`when`.  Its age counts
    #: from here.
    first_queued: float = 0.0
    #: How many times a runner failed on it (``mq_attempts``), and why,
    #: last (``mq_reason``, in one line).
    attempts: int = 0
    reason: str = ""

    @property
    def held(self) -> bool:
        return self.queue.startswith("hold/")

    @property
    def preserved(self) -> bool:
        """Whether it is set aside (a ``.psv``), for a person to look at."""
        return self.path.endswith(".psv")


def hold_directory(queue: str) -> str:
    """Where the entries held from *queue* wait."""
    return os.path.join(config.QUEUE_DIR, "hold", queue)


#: The extensions of the entries that wait in a queue: queued, preserved.
_WAITING = (".pck", ".psv")


def _directories() -> list[tuple[str, str, tuple[str, ...]]]:
    """Each place entries wait: (queue, directory, extensions)."""
    places: list[tuple[str, str, tuple[str, ...]]] = []
    for name in sorted(config.runners):
        path = config.runners[name].path
        if path:
            places.append((name, path, _WAITING))
    for name in sorted(config.runners):
        places.append((f"hold/{name}", hold_directory(name), (".pck",)))
    return places


def entry_files(
    directory: str, extensions: Container[str]
) -> Iterator[tuple[str, str, qfile.FileBase]]:
    """The entries in *directory* whose extension is one of *extensions*.

    Each as its file name, its extension and its parsed file base; a file
    whose name is no entry's is passed over, and a directory that is not
    there has none.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        base, extension = os.path.splitext(name)
        parsed = qfile.parse_filebase(base)
        if extension in extensions and parsed is not None:
            yield name, extension, parsed


def count_entries(directory: str, extensions: Iterable[str] = _WAITING) -> int:
    """How many entries with *extensions* are in *directory* (none if it is not)."""
    return sum(1 for _ in entry_files(directory, tuple(extensions)))


def list_entries(queues: Iterable[str] | None = None) -> list[QueueEntry]:
    """The entries waiting in *queues* (all of them, held ones too), oldest first."""
    wanted = set(queues) if queues is not None else None
    found = []
    for queue, directory, extensions in _directories():
        if (
            wanted is not None
            and queue not in wanted
            and queue.removeprefix("hold/") not in wanted
        ):
            continue
        for name, _, parsed in entry_files(directory, extensions):
            found.append(_read(queue, os.path.join(directory, name), parsed))
    return sorted(found, key=lambda entry: (entry.when, entry.filebase))


def _read(queue: str, path: str, parsed: qfile.FileBase) -> QueueEntry:
    try:
        size = os.lstat(path).st_size
    except OSError:
        size = 0  # gone since it was listed: the load below says so
    found: dict[str, Any] = {"list": "", "sender": "", "subject": ""}
    try:
        msg, metadata, _ = entry_format.load_entry(path, config.max_entry_size)
    except (OSError, qfile.QueueFileError) as error:
        found["problem"], metadata = str(error), {}
    else:
        names = [metadata.get(key) for key in ("listid", "listname")]
        found["list"] = next((name for name in names if isinstance(name, str)), "")
        if isinstance(msg, str):
            found["subject"] = "(stored as text)"
        else:
            try:
                found["sender"] = msg.sender
                found["subject"] = decoded(str(msg.get("subject", "")))
            except Exception:  # a message put together so that it cannot say
                found["sender"], found["subject"] = "", "(unreadable headers)"
    return QueueEntry(
        queue,
        parsed.text,
        path,
        parsed.when,
        size,
        first_queued=metadata.get(entry_format.FIRST_QUEUED, parsed.when),
        attempts=metadata.get(entry_format.ATTEMPTS, 0),
        reason=entry_format.one_line(metadata.get(entry_format.REASON, ""), 500),
        **found,
    )


# One entry an operator names -----------------------------------------------------


def entry_path(name: str) -> str:
    """*name* as a path: a file base names its entry in whichever queue has it.

    Queued, in hand or preserved in a queue first (the queues in the order
    of their names), then held; anything else is taken as a path.
    """
    if os.sep in name or qfile.parse_filebase(name) is None:
        return name
    for queue in sorted(config.runners):
        directory = config.runners[queue].path
        for extension in (".pck", ".bak", ".psv"):
            path = os.path.join(directory or "", name + extension)
            if directory and os.path.lexists(path):
                return path
    for queue in sorted(config.runners):
        path = os.path.join(hold_directory(queue), name + ".pck")
        if os.path.lexists(path):
            return path
    return name


#: How every queue file begins: the pickle opcode PROTO, and a protocol
#: from 2 (GNU Mailman 2's) to 5.
_PICKLE_START = re.compile(rb"\x80[\x02-\x05]")


def load_queue_file(path: str) -> tuple[Any, dict[str, Any], memoryview]:
    """Load the queue file at *path*, as :func:`mailqueue.entry_format.load_entry` does.

    A file that does not even begin as a pickle is said to be no queue file,
    rather than described as a pickle that went wrong at its first byte.
    """
    data = qfile.read_file(path, config.max_entry_size)
    name = os.path.basename(path)
    if not _PICKLE_START.match(data):
        begins = f"begins {data[:16]!r}" if data else "is empty"
        raise qfile.QueueFileError(
            f"{name}: not a queue file (a queue file is a pickle, which begins "
            f"with byte 0x80; this one {begins})"
        )
    return entry_format.parse_entry(data, name)


def in_hand(filebase: str) -> str | None:
    """The queue whose runner has the entry *filebase* in hand (a ``.bak``), if one."""
    for name, section in sorted(config.runners.items()):
        if section.path and os.path.lexists(
            os.path.join(section.path, filebase + ".bak")
        ):
            return name
    return None


# Acting on one entry -----------------------------------------------------------


def delete(entry: QueueEntry) -> None:
    """Delete *entry* for good."""
    try:
        os.unlink(entry.path)
    except FileNotFoundError:
        raise EntryError(f"{entry.filebase} is gone (or a runner took it)") from None
    qfile.fsync_directory(os.path.dirname(entry.path))
    alog.info("deleted %s from %s", entry.filebase, entry.queue)


def hold(entry: QueueEntry) -> str:
    """Hold *entry*: no runner sees it until it is released.  Return where it is."""
    if entry.held:
        raise EntryError(f"{entry.filebase} is held already")
    if entry.queue == "bad" or entry.preserved:
        # Nothing takes it from there: holding it would change nothing.
        raise EntryError(
            f"{entry.filebase} is preserved in {entry.queue}: requeue it instead"
        )
    target = os.path.join(hold_directory(entry.queue), entry.filebase + ".pck")
    qfile.make_directories(os.path.dirname(target))
    _move(entry, target)
    alog.info("held %s from %s", entry.filebase, entry.queue)
    return target


def release(entry: QueueEntry) -> str:
    """Put a held *entry* back in the queue it was held from."""
    if not entry.held:
        raise EntryError(f"{entry.filebase} is not held")
    queue = entry.queue.removeprefix("hold/")
    path = config.runners[queue].path
    assert path is not None
    target = os.path.join(path, entry.filebase + ".pck")
    _move(entry, target)
    alog.info("released %s to %s", entry.filebase, queue)
    return target


def requeue(entry: QueueEntry, queue: str, reset_count: bool = False) -> str:
    """Move *entry* (queued, preserved or held) to be queued in *queue*.

    With *reset_count*, its count of recoveries (``_bak_count``) starts
    again, and it may go back to the queue it is in.  On a GNU Mailman site,
    an entry that lacks what *queue*'s runner needs (``recipients`` for
    ``out``, say) is refused, naming what it lacks.
    """
    section = config.runners.get(queue)
    if section is None or section.path is None:
        raise EntryError(f"no queue is called {queue!r}")
    if entry.queue == queue and not reset_count:
        raise EntryError(f"{entry.filebase} is in {queue} already")
    target = os.path.join(section.path, entry.filebase + ".pck")
    gone = f"{entry.filebase} is gone (or a runner took it)"
    if config.mailman is not None or reset_count:
        try:
            _, metadata, message = entry_format.load_entry(
                entry.path, config.max_entry_size
            )
        except FileNotFoundError:
            raise EntryError(
                f"{entry.filebase} is gone (or a runner took it)"
            ) from None
        except qfile.QueueFileError as error:
            raise EntryError(f"{error}: it is left where it is") from None
        if config.mailman is not None:
            _check_needs(entry.filebase, queue, metadata)
    if reset_count:
        taken = _take(entry.path)
        if taken is None:
            raise EntryError(gone)
        metadata.setdefault("_bak_count", 0)  # so that it is written anew
        try:
            _move_file(taken, entry.filebase, section.path, message, metadata)
        except BaseException:
            os.rename(taken, entry.path)
            raise
    else:
        qfile.make_directories(section.path)
        _move(entry, target)
    alog.info("requeued %s from %s to %s", entry.filebase, entry.queue, queue)
    return target


#: What GNU Mailman's runners need in an entry's metadata, by queue: the
#: list (``listid``, or the older ``listname``), and what each one reads.
MAILMAN_NEEDS = {
    "archive": ("listid",),
    "digest": ("listid", "volume", "digest_number", "digest_path"),
    "in": ("listid",),
    "out": ("listid", "recipients"),
    "pipeline": ("listid",),
    "virgin": ("listid",),
}


def _check_needs(filebase: str, queue: str, metadata: dict[str, Any]) -> None:
    present = set(metadata) | ({"listid"} if "listname" in metadata else set())
    lacking = [key for key in MAILMAN_NEEDS.get(queue, ()) if key not in present]
    if queue == "out" and "recipients" in metadata and not metadata["recipients"]:
        lacking.append("recipients")  # Mailman's delivery drops an empty set
    if lacking:
        raise EntryError(
            f"{filebase}: GNU Mailman's {queue} runner needs "
            f"{' and '.join(sorted(set(lacking)))} in the metadata, which this "
            "entry lacks; it is left where it is"
        )


def _move(entry: QueueEntry, target: str) -> None:
    # An operator's move races nobody but a runner taking the entry (which
    # renames it to .bak: then the move finds nothing, or takes its link
    # back), so the check that the target is free cannot go stale.
    if os.path.lexists(target):
        raise EntryError(f"{entry.filebase}: {target} exists already")
    try:
        qfile.move_file(entry.path, target)
    except FileExistsError:
        raise EntryError(f"{entry.filebase}: {target} exists already") from None
    except FileNotFoundError:
        raise EntryError(f"{entry.filebase} is gone (or a runner took it)") from None
    except OSError as error:
        if error.errno == errno.EXDEV:
            raise EntryError(
                f"{entry.filebase}: {target} is on another file system"
            ) from None
        raise


def age(entry: QueueEntry, now: float | None = None) -> str:
    """How long *entry* has waited since first queued: ``45s``, ``3h``, ``2d``."""
    seconds = max(0, int((now or time.time()) - entry.first_queued))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# Counting, and unshunting ----------------------------------------------------


def queue_counts() -> dict[str, dict[str, int]]:
    """Each queue's entries by extension: ``pck``, ``bak``, ``psv`` and ``tmp``,
    and ``held``: those held from it (see :func:`hold`).

    Counting creates nothing: a queue whose directory is not there has none.
    """
    counts = {}
    for name in sorted(config.switchboards):
        path = config.runners[name].path
        if path is None or not os.path.isdir(path):
            counts[name] = {"pck": 0, "bak": 0, "psv": 0, "tmp": 0}
        else:
            queue = config.switchboards[name]
            counts[name] = {
                extension[1:]: len(queue.get_files(extension))
                for extension in (".pck", ".bak", ".psv")
            }
            # Entries being written, or left by a writer that died.
            counts[name]["tmp"] = len(queue.get_temporary_files())
        counts[name]["held"] = count_entries(hold_directory(name), (".pck",))
    return counts


@dataclass(frozen=True)
class Unshunted:
    """What :func:`unshunt` did with one entry, said in one line."""

    filebase: str
    #: False if the entry could not go back (it was left, or moved to bad).
    ok: bool
    text: str


def unshunt(discard: bool = False) -> Iterator[Unshunted]:
    """Move every shunted entry back to the queue it came from (its ``whichq``).

    As GNU Mailman's ``unshunt`` does, an entry that names no queue goes to
    ``in``, and ``whichq`` stays in its metadata.  The message's bytes are
    kept as they are; the metadata too, but for the count of recoveries
    (``_bak_count``), which starts again.  With *discard*, the entries are
    deleted instead.  An entry that cannot be read is preserved in ``bad``;
    one whose queue is unknown, or that fails in any other way, stays in
    ``shunt``; the others go on.  One unshunt runs at a time.
    """
    shunt = config.runners["shunt"].path
    assert shunt is not None
    with _unshunt_lock():
        # As Mailman's does: entries an unshunt was killed in the middle of
        # (.bak files) go back to the shunt queue first.
        for filebase in qfile.list_queue(shunt, ".bak"):
            backup = os.path.join(shunt, filebase + ".bak")
            if os.path.lexists(os.path.join(shunt, filebase + ".pck")):
                _preserve(backup, filebase)  # two of one name: keep both
            else:
                _rename(backup, filebase, shunt, ".pck")
        for filebase in qfile.list_queue(shunt, ".pck"):
            taken = _take(os.path.join(shunt, filebase + ".pck"))
            if taken is None:
                continue  # taken by another process
            try:
                yield _unshunt_one(taken, filebase, discard)
            except Exception as error:  # whatever it was, the others go on
                where = "left in shunt"
                try:
                    _rename(taken, filebase, shunt, ".pck")
                except EntryError:  # its name came back meanwhile: keep both
                    where += " as .bak, for the next unshunt"
                yield Unshunted(
                    filebase,
                    False,
                    f"{filebase}: {type(error).__name__}: {error!s:.200}; {where}",
                )


def _unshunt_one(taken: str, filebase: str, discard: bool) -> Unshunted:
    shunt = os.path.dirname(taken)
    try:
        _, metadata, message = entry_format.load_entry(taken, config.max_entry_size)
    except qfile.QueueFileError as error:
        _preserve(taken, filebase)
        return Unshunted(filebase, False, f"{error}; moved to bad")
    if discard:
        os.unlink(taken)
        qfile.fsync_directory(shunt)
        alog.info("discarded %s from shunt", filebase)
        return Unshunted(filebase, True, f"discarded {filebase}")
    target = metadata.get("whichq", "in")
    section = config.runners.get(target) if isinstance(target, str) else None
    if section is None or section.path is None or target in ("shunt", "bad"):
        _rename(taken, filebase, shunt, ".pck")
        return Unshunted(
            filebase,
            False,
            f"{filebase} names no queue to go back to "
            f"(whichq {target!r:.80}); left in shunt",
        )
    _move_file(taken, filebase, section.path, message, metadata)
    alog.info("unshunted %s to %s", filebase, target)
    return Unshunted(filebase, True, f"moved {filebase} to {target} as {filebase}")


@contextlib.contextmanager
def _unshunt_lock() -> Iterator[None]:
    # In mailqueue's own var dir: never in a queue directory of Mailman's.
    directory = os.path.join(config.VAR_DIR, "locks")
    os.makedirs(directory, mode=0o770, exist_ok=True)
    fd = os.open(os.path.join(directory, "unshunt.lock"), os.O_RDWR | os.O_CREAT, 0o660)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _take(path: str) -> str | None:
    """Rename the entry at *path* to ``.bak``, as a runner takes one; None if gone."""
    taken = os.path.splitext(path)[0] + ".bak"
    try:
        os.rename(path, taken)
    except FileNotFoundError:
        return None
    return taken


def _preserve(path: str, filebase: str) -> None:
    """Move the entry at *path* to ``bad``, under a new file base if need be."""
    bad = config.runners["bad"].path
    assert bad is not None
    target = filebase
    while os.path.lexists(os.path.join(bad, target + ".psv")):
        parsed = qfile.parse_filebase(target)
        target = qfile.make_filebase(b"", filebase, parsed.when if parsed else None)
    _rename(path, target, bad, ".psv")


def _rename(path: str, filebase: str, directory: str, extension: str) -> None:
    target = os.path.join(directory, filebase + extension)
    qfile.make_directories(directory)
    if os.path.lexists(target):  # nothing is ever replaced
        raise EntryError(f"{filebase}: {target} exists already")
    if os.path.dirname(path) != directory:
        try:
            qfile.move_file(path, target)
        except FileExistsError:
            raise EntryError(f"{filebase}: {target} exists already") from None
        return
    os.rename(path, target)
    qfile.fsync_directory(directory)


def _move_file(
    taken: str,
    filebase: str,
    directory: str,
    message: memoryview,
    metadata: dict[str, Any],
) -> None:
    """Queue the entry at *taken* in *directory*, then remove *taken*.

    Its bytes move unchanged, by a rename, unless the metadata has a
    recovery count to start again; then the message's bytes are kept and
    the metadata is written anew.
    """
    target = os.path.join(directory, filebase + ".pck")
    if os.path.lexists(target):
        raise EntryError(f"{filebase}: {target} exists already")
    if "_bak_count" not in metadata:
        _rename(taken, filebase, directory, ".pck")
        return
    metadata = {key: value for key, value in metadata.items() if key != "_bak_count"}
    qfile.make_directories(directory)
    qfile.write_file(target, entry_format.reencode(filebase, message, metadata))
    os.unlink(taken)
    qfile.fsync_directory(os.path.dirname(taken))

"""Queue tools for an operator: list entries, and delete, hold, release or requeue them.

Modelled on Postfix's ``postqueue -p`` and ``postsuper -d/-h/-H/-r``.  Every
action is one rename (or one unlink) of an entry that waits: a queued
``.pck``, a preserved ``.psv`` in ``bad``, or a held entry.  It never
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

import errno
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from mailqueue import qfile
from mailqueue.configuration import config
from mailqueue.errors import MailqueueError

__all__ = [
    "EntryError",
    "QueueEntry",
    "Unshunted",
    "age",
    "delete",
    "dump_msgdata",
    "hold",
    "hold_directory",
    "list_entries",
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

    @property
    def held(self) -> bool:
        return self.queue.startswith("hold/")


def hold_directory(queue: str) -> str:
    """Where the entries held from *queue* wait."""
    return os.path.join(config.QUEUE_DIR, "hold", queue)


def _directories() -> list[tuple[str, str, str]]:
    """Each place entries wait: (queue, directory, extension)."""
    places = []
    for name in sorted(config.runners):
        path = config.runners[name].path
        if path:
            places.append((name, path, ".psv" if name == "bad" else ".pck"))
    for name in sorted(config.runners):
        places.append((f"hold/{name}", hold_directory(name), ".pck"))
    return places


def list_entries(queues: Iterable[str] | None = None) -> list[QueueEntry]:
    """The entries waiting in *queues* (all of them, held ones too), oldest first."""
    wanted = set(queues) if queues is not None else None
    found = []
    for queue, directory, extension in _directories():
        if (
            wanted is not None
            and queue not in wanted
            and queue.removeprefix("hold/") not in wanted
        ):
            continue
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            base, ext = os.path.splitext(name)
            parsed = qfile.parse_filebase(base)
            if ext == extension and parsed is not None:
                found.append(_read(queue, os.path.join(directory, name), parsed))
    return sorted(found, key=lambda entry: (entry.when, entry.filebase))


def _read(queue: str, path: str, parsed: qfile.FileBase) -> QueueEntry:
    try:
        size = os.lstat(path).st_size
        msg, metadata, _ = qfile.load_entry(path, config.max_entry_size)
    except (OSError, qfile.QueueFileError) as error:
        return QueueEntry(
            queue, parsed.text, path, parsed.when, 0, "", "", "", str(error)
        )
    names = [metadata.get(key) for key in ("listid", "listname")]
    mlist = next((name for name in names if isinstance(name, str)), "")
    if isinstance(msg, str):
        sender, subject = "", "(stored as text)"
    else:
        try:
            sender, subject = msg.sender, str(msg.get("subject", ""))
        except Exception:  # a message put together so that it cannot say
            sender, subject = "", "(unreadable headers)"
    return QueueEntry(
        queue, parsed.text, path, parsed.when, size, mlist, sender, subject
    )


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
    if entry.queue == "bad":
        raise EntryError(f"{entry.filebase} is preserved in bad: requeue it instead")
    target = os.path.join(hold_directory(entry.queue), entry.filebase + ".pck")
    os.makedirs(os.path.dirname(target), mode=0o770, exist_ok=True)
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


def requeue(entry: QueueEntry, queue: str) -> str:
    """Move *entry* (queued, preserved or held) to be queued in *queue*."""
    section = config.runners.get(queue)
    if section is None or section.path is None:
        raise EntryError(f"no queue is called {queue!r}")
    if entry.queue == queue:
        raise EntryError(f"{entry.filebase} is in {queue} already")
    target = os.path.join(section.path, entry.filebase + ".pck")
    os.makedirs(section.path, mode=0o770, exist_ok=True)
    _move(entry, target)
    alog.info("requeued %s from %s to %s", entry.filebase, entry.queue, queue)
    return target


def _move(entry: QueueEntry, target: str) -> None:
    # An operator's move races nobody but a runner taking the entry (which
    # renames it to .bak: then this rename finds nothing), so the check
    # that the target is free cannot go stale.
    if os.path.lexists(target):
        raise EntryError(f"{entry.filebase}: {target} exists already")
    try:
        os.rename(entry.path, target)
    except FileNotFoundError:
        raise EntryError(f"{entry.filebase} is gone (or a runner took it)") from None
    except OSError as error:
        if error.errno == errno.EXDEV:
            raise EntryError(
                f"{entry.filebase}: {target} is on another file system"
            ) from None
        raise
    qfile.fsync_directory(os.path.dirname(target))
    qfile.fsync_directory(os.path.dirname(entry.path))


def age(entry: QueueEntry, now: float | None = None) -> str:
    """How long *entry* has waited, as ``45s``, ``12m``, ``3h`` or ``2d``."""
    seconds = max(0, int((now or time.time()) - entry.when))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# Counting, and unshunting ----------------------------------------------------


def queue_counts() -> dict[str, dict[str, int]]:
    """Each queue's entries by extension: ``pck``, ``bak``, ``psv`` and ``tmp``.

    Counting creates nothing: a queue whose directory is not there has none.
    """
    counts = {}
    for name in sorted(config.switchboards):
        path = config.runners[name].path
        if path is None or not os.path.isdir(path):
            counts[name] = {"pck": 0, "bak": 0, "psv": 0, "tmp": 0}
            continue
        queue = config.switchboards[name]
        counts[name] = {
            extension[1:]: len(queue.get_files(extension))
            for extension in (".pck", ".bak", ".psv")
        }
        # Entries being written, or left by a writer that died.
        counts[name]["tmp"] = len(queue.get_temporary_files())
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

    With *discard*, delete them instead.  An entry that cannot be read, or
    cannot be queued again, is preserved in ``bad``; one that names no queue
    to go back to stays in ``shunt``; the others go on.
    """
    shunt = config.switchboards["shunt"]
    # As Mailman's does: entries an earlier unshunt was killed in the middle
    # of (.bak files) go back to the shunt queue first.
    recovering = config.switchboards.make("shunt", recover=True)
    del recovering
    for filebase in shunt.files:
        try:
            msg, msgdata = shunt.dequeue(filebase)
        except FileNotFoundError:
            continue  # taken by another process
        except qfile.QueueFileError as error:
            shunt.finish(filebase, preserve=True)
            yield Unshunted(filebase, False, f"{error}; moved to bad")
            continue
        if discard:
            shunt.finish(filebase)
            yield Unshunted(filebase, True, f"discarded {filebase}")
            continue
        target = msgdata.pop("whichq", None)
        known = isinstance(target, str) and target in config.switchboards
        try:
            if not known or target in ("shunt", "bad"):
                # Nowhere to send it: it stays in shunt, under a new file base.
                shunt.enqueue(msg, msgdata, whichq=target)
                shunt.finish(filebase)
                yield Unshunted(
                    filebase,
                    False,
                    f"{filebase} names no queue to go back to "
                    f"(whichq {target!r:.80}); left in shunt",
                )
                continue
            new_filebase = config.switchboards[target].enqueue(msg, msgdata)
        except (TypeError, ValueError) as error:
            # What a queue file held that cannot be queued again.
            shunt.finish(filebase, preserve=True)
            yield Unshunted(filebase, False, f"{filebase}: {error}; moved to bad")
            continue
        shunt.finish(filebase)
        yield Unshunted(
            filebase, True, f"moved {filebase} to {target} as {new_filebase}"
        )

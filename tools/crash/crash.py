"""Every state a crash can leave on disk, for each queue operation; recovery from each.

The method is ALICE's (Pillai et al., OSDI 2014).  Each *scenario* sets up
a var directory, flushes it (``sync``), then runs its *steps* (queue
operations) in a child process traced by ``strace``.  From the trace this
builds the operation's effects on the file system (a name made, moved or
removed in a directory; bytes written or a file cut; a flush), and from
those, every state a crash at each point of the trace can leave under two
models:

prefix
    the effects of the calls made before the crash, all of them, in order
    (a process killed, or a file system that writes everything in order);
unflushed
    what POSIX allows without the flushes that were not asked for: an
    effect before the crash reaches the disk for sure only if a flush of
    its file (``fsync`` of the file, for bytes and lengths) or of its
    directory (``fsync`` of the directory, for names) or ``sync`` came after
    it and before the crash.  Any other may be there or not, independently
    and so in any order; written bytes may be there in full, not at all,
    their first half only, or as zeros (the length reached the disk, the
    data not).  A rename between two directories is two effects (the new
    name, the old name gone), one in each.

For each state (the same state reached twice is run once) a forked child
recovers as a site does after a crash, a switchboard with ``recover=True``
for every queue, then one pass of the ``in`` runner, and lists what is
left.  The invariants checked, per state:

lost
    an entry that must exist (its enqueue returned, and nothing that
    returned removed it) is nowhere: not processed, waiting, held, in
    ``bad`` or in ``shunt``;
torn
    a queue file that cannot be read, or reads as something no entry ever
    was (partly old, partly new);
another entry's bytes
    a queue file whose name belongs to one entry holds another's;
misplaced
    an operation returned, and its entry is not where it put it (a hold
    returned, and the entry is not held);
processed after finish
    in the prefix model, an entry whose finish (or delete) returned is
    processed or found again;
unclassified
    a file under ``queue/`` that recovery cannot classify (not an entry, a
    temporary file, a spare, a lock, a stale ``.bak``).

And counted, not a violation: *repeats*, an entry found again after a
finish whose removal had not reached the disk (only in the unflushed
model), or found in two places: processing is at least once, never at
most once (see the queue files page).

Run it as ``python tools/crash/crash.py [--full] [--report FILE] [--plant
BUG]``; ``make crash-test`` runs it in full.
"""

from __future__ import annotations

import argparse
import email
import hashlib
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mailqueue import entry_format, qfile, queuetools, switchboard
from mailqueue.configuration import config
from mailqueue.message import Message
from mailqueue.runner import Runner

LIST = "test@example.com"
LIST_ID = "test.example.com"
BEGIN, RETURNED = "MQ-CRASH-BEGIN", "MQ-CRASH-RETURNED"
#: Keys a pass or a move may add to or change in the metadata.
CHANGING = {"version", "_parsemsg", "_bak_count", "lang", "original_size"}
#: Whole states tried at one crash point: all of them up to this many, else
#: this many drawn at random (the same ones every run), the extremes always.
REDUCED_LIMIT, FULL_LIMIT = 48, 4096
STRACE_CALLS = (
    "open,openat,creat,write,pwrite64,pwritev,pwritev2,writev,ftruncate,"
    "truncate,rename,renameat,renameat2,link,linkat,unlink,unlinkat,mkdir,"
    "mkdirat,rmdir,fsync,fdatasync,sync,syncfs"
)


# The entries ---------------------------------------------------------------


def message(token: str, size: int = 1024) -> Message:
    """A message that says which entry it is, padded to about *size* bytes."""
    body = f"entry {token}\n" + "".join(
        f"{token} line {n:04d} of padding, the same in every copy.\n"
        for n in range(size // 48)
    )
    text = (
        f"From: someone@example.com\nTo: {LIST}\nSubject: {token}\n"
        f"Message-ID: <{token}@crash.example.com>\n\n{body}"
    )
    return email.message_from_string(text, _class=Message)


def metadata(token: str, **more: Any) -> dict[str, Any]:
    return {"listid": LIST_ID, "token": token, **more}


# Scenarios: set-up, steps, and what must become of each entry ----------------

#: A fate: "must" (found somewhere), "must@PLACE" (found there), "may" (either
#: way), "finished" (never found again).
Fates = dict[str, str]


@dataclass
class Scenario:
    """One queue operation (or a few in a row), traced as one run."""

    name: str
    #: The operation this scenario records, as the report names it.
    operation: str
    #: What it returns is not used.
    setup: Callable[[dict[str, str]], object]
    steps: list[Callable[[dict[str, str]], None]]
    #: fates(steps returned, whether the next step has begun) per entry.
    fates: Callable[[int, bool], Fates]
    tokens: tuple[str, ...] = ("A",)


def _in() -> switchboard.Switchboard:
    return config.switchboards.make("in")


def _queue(name: str) -> switchboard.Switchboard:
    return config.switchboards.make(name)


def _enqueue(names: dict[str, str], token: str, queue: str = "in", **more: Any) -> None:
    data = metadata(token, **more)
    names[_queue(queue).enqueue(message(token), data)] = token
    _MADE[token] = _plain(data)


#: Each entry's metadata as made, but for what may change.
_MADE: dict[str, dict[str, Any]] = {}


def _dequeued(names: dict[str, str], token: str) -> None:
    # Enqueued and dequeued by a process that then goes away: a .bak is left.
    pid = os.fork()
    if pid == 0:
        try:
            board = _in()
            filebase = next(f for f, t in names.items() if t == token)
            board.dequeue(filebase)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def _filebase(names: dict[str, str], token: str) -> str:
    return next(f for f, t in names.items() if t == token)


def _entry(names: dict[str, str], token: str) -> queuetools.QueueEntry:
    filebase = _filebase(names, token)
    return next(e for e in queuetools.list_entries() if e.filebase == filebase)


def _finished_a(spare_step: int) -> Callable[[int, bool], Fates]:
    # A is dequeued (step 1) and finished (step 2); E1 is enqueued at
    # spare_step (into the spare A left, when there is one).
    def fates(returned: int, started: bool) -> Fates:
        a = "must" if returned < 1 or (returned == 1 and not started) else "may"
        if returned >= 2:
            a = "finished"
        e1 = "must@processed" if returned >= spare_step else "may"
        return {"A": a, "E1": e1}

    return fates


def _always(last: str) -> Callable[[int, bool], Fates]:
    def fates(returned: int, started: bool) -> Fates:
        return {"A": last if returned >= 1 else "must"}

    return fates


def _deleted(returned: int, started: bool) -> Fates:
    return {"A": "finished" if returned >= 1 else ("may" if started else "must")}


def _enqueued(returned: int, started: bool) -> Fates:
    return {"A": "must@processed" if returned >= 1 else "may"}


def _no_setup(names: dict[str, str]) -> None:
    _in()


def _finishing(token: str) -> Callable[[dict[str, str]], None]:
    # One step: take the entry and finish it, with one switchboard for all.
    def step(names: dict[str, str]) -> None:
        if not _BOARD:
            _BOARD.append(_in())
        _BOARD[0].dequeue(_filebase(names, token))
        _BOARD[0].finish(_filebase(names, token))

    return step


def _enqueuing(token: str) -> Callable[[dict[str, str]], None]:
    return lambda names: _enqueue(names, token)


def _finish_fate(index: int, returned: int, started: bool) -> str:
    # The entry finished by step index + 1.
    if returned > index:
        return "finished"
    return "may" if returned == index and started else "must"


def _finish_one(names: dict[str, str], token: str) -> None:
    # Enqueued, dequeued and finished: its file is a spare now.
    _enqueue(names, token)
    board = _in()
    board.dequeue(_filebase(names, token))
    board.finish(_filebase(names, token))
    assert os.listdir(board._spares.directory), "no spare was kept"


def _queue_recovering(name: str) -> None:
    config.switchboards.make(name, recover=True).release_ownership()


def _set_count(
    names: dict[str, str], token: str, count: int, queue: str = "in"
) -> None:
    board = _queue(queue)
    filebase = _filebase(names, token)
    path = os.path.join(board.queue_directory, filebase + ".pck")
    _msg, data, message_pickle = entry_format.load_entry(path)
    data["_bak_count"] = count
    qfile.write_file(
        path, (message_pickle, entry_format.dump_checked(data, "metadata"))
    )


SCENARIOS = [
    Scenario(
        "enqueue",
        "enqueue (a new file)",
        _no_setup,
        [lambda names: _enqueue(names, "A")],
        _enqueued,
    ),
    Scenario(
        "enqueue-spare",
        "enqueue (into a spare file)",
        lambda names: _finish_one(names, "OLD"),
        [lambda names: _enqueue(names, "A")],
        lambda returned, started: {**_enqueued(returned, started), "OLD": "finished"},
        ("A", "OLD"),
    ),
    Scenario(
        "dequeue",
        "dequeue",
        lambda names: _enqueue(names, "A"),
        [lambda names: _in().dequeue(_filebase(names, "A"))],
        _always("must@processed"),
    ),
    Scenario(
        "finish",
        "finish, the spare pool's refill, and an enqueue into that spare",
        lambda names: _enqueue(names, "A"),
        [
            lambda names: (
                _BOARD.append(_in()) or _BOARD[0].dequeue(_filebase(names, "A"))
            ),
            lambda names: _BOARD[0].finish(_filebase(names, "A")),
            lambda names: _enqueue(names, "E1"),
        ],
        _finished_a(3),
        ("A", "E1"),
    ),
    Scenario(
        "busy",
        "a busy queue: three entries finished, three enqueued into their spares",
        lambda names: [_enqueue(names, token) for token in "ABC"],
        [
            *(_finishing(token) for token in "ABC"),
            *(_enqueuing(token) for token in "DEF"),
        ],
        lambda returned, started: {
            **{t: _finish_fate(i, returned, started) for i, t in enumerate("ABC")},
            **{
                t: "must@processed" if returned > 3 + i else "may"
                for i, t in enumerate("DEF")
            },
        },
        tuple("ABCDEF"),
    ),
    Scenario(
        "finish-preserve",
        "finish with preserve",
        lambda names: _enqueue(names, "A"),
        [
            lambda names: (
                _BOARD.append(_in()) or _BOARD[0].dequeue(_filebase(names, "A"))
            ),
            lambda names: _BOARD[0].finish(_filebase(names, "A"), preserve=True),
        ],
        lambda returned, started: {"A": "must@bad" if returned >= 2 else "must"},
    ),
    Scenario(
        "recovery",
        "recovery of a .bak",
        lambda names: (_enqueue(names, "A"), _dequeued(names, "A")),
        [lambda names: _queue_recovering("in")],
        _always("must@processed"),
    ),
    Scenario(
        "recovery-to-bad",
        "recovery, the move to bad after the recovery limit",
        lambda names: (
            (
                _enqueue(names, "A", _bak_count=0),
                _set_count(names, "A", switchboard.MAX_BAK_COUNT - 1),
                _dequeued(names, "A"),
            )
        ),
        [lambda names: _queue_recovering("in")],
        _always("must@bad"),
    ),
    Scenario(
        "unshunt",
        "unshunt (the entry moved back)",
        lambda names: _enqueue(names, "A", "shunt", whichq="in"),
        [lambda names: list(queuetools.unshunt())],
        _always("must@processed"),
    ),
    Scenario(
        "unshunt-count",
        "unshunt (the entry written anew, its recovery count reset)",
        lambda names: (
            (
                _enqueue(names, "A", "shunt", whichq="in"),
                _set_count(names, "A", 1, "shunt"),
            )
        ),
        [lambda names: list(queuetools.unshunt())],
        _always("must@processed"),
    ),
    Scenario(
        "requeue",
        "requeue (from bad)",
        lambda names: (
            (
                _enqueue(names, "A"),
                _in().dequeue(_filebase(names, "A")),
                _in().finish(_filebase(names, "A"), preserve=True),
            )
        ),
        [lambda names: queuetools.requeue(_entry(names, "A"), "in")],
        _always("must@processed"),
    ),
    Scenario(
        "requeue-reset",
        "requeue with the recovery count reset",
        lambda names: _enqueue(names, "A", "out"),
        [lambda names: queuetools.requeue(_entry(names, "A"), "in", reset_count=True)],
        _always("must@processed"),
    ),
    Scenario(
        "hold",
        "hold",
        lambda names: _enqueue(names, "A"),
        [lambda names: queuetools.hold(_entry(names, "A"))],
        _always("must@held"),
    ),
    Scenario(
        "release",
        "release",
        lambda names: ((_enqueue(names, "A"), queuetools.hold(_entry(names, "A")))),
        [lambda names: queuetools.release(_entry(names, "A"))],
        _always("must@processed"),
    ),
    Scenario(
        "delete",
        "delete",
        lambda names: _enqueue(names, "A"),
        [lambda names: queuetools.delete(_entry(names, "A"))],
        _deleted,
    ),
]
_BOARD: list[switchboard.Switchboard] = []


# Planted bugs: what the test must catch -------------------------------------


def _plant(bug: str) -> None:
    # Each removes one flush of the protocol, where the name says.
    skipped = {
        "no-directory-fsync-after-rename": "write_file",
        "spare-taken-without-flush": "take",
        "move-without-flush": "move_file",
    }
    if bug in skipped:
        flush = qfile.fsync_directory

        def fsync_directory(directory: str) -> None:
            if sys._getframe(1).f_code.co_name != skipped[bug]:
                flush(directory)

        qfile.fsync_directory = fsync_directory  # type: ignore[assignment]
    elif bug == "move-by-rename":
        # How moves were made before this test: one rename, two flushes.
        def move_file(source: str, target: str) -> None:
            if os.path.lexists(target):
                raise FileExistsError(target)
            os.rename(source, target)
            qfile.fsync_directory(os.path.dirname(target))
            qfile.fsync_directory(os.path.dirname(source))

        qfile.move_file = move_file  # type: ignore[assignment]
    elif bug == "directory-not-flushed-when-made":

        def make_directories(directory: str) -> None:
            os.makedirs(directory, mode=0o770, exist_ok=True)

        qfile.make_directories = make_directories  # type: ignore[assignment]
    elif bug == "spare-not-flushed":
        write = qfile._write_temporary

        def _write_temporary(fd: int, parts: Any, old: int | None) -> None:
            if old is None:
                return write(fd, parts, old)
            try:
                size = qfile._write_all(fd, parts)
                if old > size:
                    os.ftruncate(fd, size)
            finally:
                os.close(fd)

        qfile._write_temporary = _write_temporary  # type: ignore[assignment]
    elif bug:
        raise SystemExit(f"no planted bug is called {bug!r}")


# The traced child ------------------------------------------------------------


def site_config(root: str) -> str:
    return (
        f"[paths]\nvar_dir: {root}/var\n"
        f"[database]\nurl: sqlite:///{root}/lists.sqlite3\n"
    )


def traced_child(name: str, root: str, plant: str) -> None:
    scenario = next(s for s in SCENARIOS if s.name == name)
    config.push("crash", site_config(root))
    names: dict[str, str] = {}
    scenario.setup(names)
    _BOARD.clear()
    with open(os.path.join(root, "before.json"), "w") as stream:
        json.dump(snapshot(os.path.join(root, "var")), stream)
    _plant(plant)
    marker = os.open(os.devnull, os.O_WRONLY)
    os.sync()
    os.write(marker, BEGIN.encode())
    for number, step in enumerate(scenario.steps, 1):
        step(names)
        os.write(marker, f"{RETURNED} {number}".encode())
    with open(os.path.join(root, "names.json"), "w") as stream:
        json.dump([names, _MADE], stream)


def snapshot(var: str) -> dict[str, Any]:
    """The var directory: each name's inode (or "dir"), each inode's bytes."""
    names: dict[str, Any] = {}
    data: dict[str, str] = {}
    for directory, _dirs, files in os.walk(var):
        names[directory] = "dir"
        for file in files:
            path = os.path.join(directory, file)
            found = os.lstat(path)
            inode = f"i{found.st_ino}"
            names[path] = inode
            if inode not in data:
                with open(path, "rb") as stream:
                    data[inode] = stream.read().hex()
    return {"names": names, "data": data}


# The trace, as effects ---------------------------------------------------------


@dataclass
class Effect:
    """One thing a call does to what is on disk, or a flush, or a marker."""

    kind: str  # "name", "data", "flush-file", "flush-dir", "sync", "returned"
    #: For "name": the directory, and (path, inode or "dir" or None) changes.
    directory: str = ""
    changes: tuple[tuple[str, str | None], ...] = ()
    #: For "data" and "flush-file": the inode; for data, offset and bytes,
    #: or a length to cut to.
    inode: str = ""
    offset: int = 0
    data: bytes = b""
    cut: int | None = None
    call: str = ""


_LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(\w+)\((.*)\)\s+=\s+(-?\d+)(.*)$")
_STRING = re.compile(r'"((?:\\x[0-9a-f]{2})*)"')
_FD = re.compile(r"^(\d+)<((?:\\x[0-9a-f]{2})*)")


def _unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace("\\x", ""))


def _split_arguments(text: str) -> list[str]:
    parts, depth, current, quoted = [], 0, "", False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "[{":
            depth += 1
        elif not quoted and char in "]}":
            depth -= 1
        if char == "," and depth == 0 and not quoted:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return parts


def _path_argument(text: str) -> str:
    match = _STRING.fullmatch(text)
    if match is None:
        raise ValueError(f"not a path: {text!r}")
    return os.fsdecode(_unhex(match.group(1)))


class Trace:
    """The effects, on the files under *var*, of the calls in an strace log."""

    def __init__(self, log: str, var: str, before: dict[str, Any]) -> None:
        self.var = var
        self.live: dict[str, str] = dict(before["names"])
        self.sizes = {inode: len(hexed) // 2 for inode, hexed in before["data"].items()}
        self.fds: dict[tuple[str, int], tuple[str, int]] = {}
        self.effects: list[Effect] = []
        self.calls = 0
        self._made = itertools.count()
        begun = False
        for line in log.splitlines():
            if BEGIN.encode().hex() in line.replace("\\x", ""):
                begun = True
                continue
            if begun:
                self._line(line)

    def _inside(self, path: str) -> bool:
        return path == self.var or path.startswith(self.var + "/")

    def _fd(self, pid: str, text: str) -> tuple[str, str] | None:
        # "5</path>": the inode this process opened as 5, and its path.
        match = _FD.match(text)
        if match is None:
            return None
        number, path = int(match.group(1)), os.fsdecode(_unhex(match.group(2)))
        known = self.fds.get((pid, number))
        if known is not None:
            return known[0], path
        if self._inside(path) and path in self.live:
            return self.live[path], path
        return None

    def _line(self, line: str) -> None:
        match = _LINE.match(line.strip())
        if match is None:
            return
        pid, call, arguments, result, rest = match.groups()
        if int(result) < 0:
            return
        args = _split_arguments(arguments)
        if call == "write" and RETURNED.encode().hex() in args[1].replace("\\x", ""):
            self.effects.append(Effect("returned", call="return"))
            return
        handler = getattr(self, f"_call_{call}", None)
        if handler is not None:
            before = len(self.effects)
            handler(pid, args, int(result), rest.strip())
            if len(self.effects) > before:
                self.calls += 1

    # Opening and writing

    def _call_openat(self, pid: str, args: list[str], result: int, rest: str) -> None:
        path = _path_argument(args[1])
        match = _FD.match(f"{result}{rest.split(' ', 1)[0]}") if rest else None
        if match is not None:
            path = os.fsdecode(_unhex(match.group(2)))
        if not self._inside(path):
            return
        flags = args[2]
        if path not in self.live and "O_CREAT" in flags:
            inode = f"n{next(self._made)}"
            self.live[path] = inode
            self.sizes[inode] = 0
            self._name(path, inode, "creat")
        inode = self.live.get(path)
        if inode is None or inode == "dir":
            return
        self.fds[(pid, result)] = (inode, 0)
        if "O_TRUNC" in flags and self.sizes.get(inode, 0):
            self._data(inode, cut=0, call="open O_TRUNC")

    def _call_open(self, pid: str, args: list[str], result: int, rest: str) -> None:
        self._call_openat(pid, ["AT_FDCWD", *args], result, rest)

    def _write_at(
        self, pid: str, fd: str, data: bytes, offset: int | None, call: str
    ) -> None:
        found = self._fd(pid, fd)
        if found is None or not self._inside(found[1]):
            return
        inode = found[0]
        number = int(fd.split("<")[0])
        if offset is None:
            offset = self.fds.get((pid, number), (inode, 0))[1]
            self.fds[(pid, number)] = (inode, offset + len(data))
        self._data(inode, offset=offset, data=data, call=call)

    def _call_write(self, pid: str, args: list[str], result: int, rest: str) -> None:
        data = _unhex(_STRING.fullmatch(args[1]).group(1))[:result]  # type: ignore[union-attr]
        self._write_at(pid, args[0], data, None, "write")

    def _call_pwrite64(self, pid: str, args: list[str], result: int, rest: str) -> None:
        data = _unhex(_STRING.fullmatch(args[1]).group(1))[:result]  # type: ignore[union-attr]
        self._write_at(pid, args[0], data, int(args[3]), "pwrite")

    def _call_pwritev(self, pid: str, args: list[str], result: int, rest: str) -> None:
        data = b"".join(
            _unhex(part)
            for part in re.findall(r'iov_base="((?:\\x[0-9a-f]{2})*)"', args[1])
        )
        self._write_at(pid, args[0], data[:result], int(args[3]), "pwritev")

    _call_pwritev2 = _call_pwritev

    def _call_ftruncate(
        self, pid: str, args: list[str], result: int, rest: str
    ) -> None:
        found = self._fd(pid, args[0])
        if found is not None and self._inside(found[1]):
            self._data(found[0], cut=int(args[1]), call="ftruncate")

    # Names

    def _call_rename(self, pid: str, args: list[str], result: int, rest: str) -> None:
        old, new = _path_argument(args[0]), _path_argument(args[1])
        if not (self._inside(old) or self._inside(new)):
            return
        inode = self.live.pop(old)
        if inode == "dir":
            raise ValueError(f"a directory renamed: {old}")
        self.live[new] = inode
        if os.path.dirname(old) == os.path.dirname(new):
            self.effects.append(
                Effect(
                    "name",
                    os.path.dirname(new),
                    ((new, inode), (old, None)),
                    call="rename",
                )
            )
        else:
            self._name(new, inode, "rename (its new name)")
            self._name(old, None, "rename (its old name gone)")

    def _call_renameat2(
        self, pid: str, args: list[str], result: int, rest: str
    ) -> None:
        self._call_rename(pid, [args[1], args[3]], result, rest)

    _call_renameat = _call_renameat2

    def _call_link(self, pid: str, args: list[str], result: int, rest: str) -> None:
        old, new = _path_argument(args[0]), _path_argument(args[1])
        if self._inside(new):
            self.live[new] = self.live[old]
            self._name(new, self.live[old], "link")

    def _call_linkat(self, pid: str, args: list[str], result: int, rest: str) -> None:
        self._call_link(pid, [args[1], args[3]], result, rest)

    def _call_unlink(self, pid: str, args: list[str], result: int, rest: str) -> None:
        path = _path_argument(args[0])
        if self._inside(path):
            self.live.pop(path)
            self._name(path, None, "unlink")

    def _call_unlinkat(self, pid: str, args: list[str], result: int, rest: str) -> None:
        self._call_unlink(pid, [args[1]], result, rest)

    def _call_mkdir(self, pid: str, args: list[str], result: int, rest: str) -> None:
        path = _path_argument(args[0])
        if self._inside(path):
            self.live[path] = "dir"
            self._name(path, "dir", "mkdir")

    def _call_rmdir(self, pid: str, args: list[str], result: int, rest: str) -> None:
        self._call_unlink(pid, args, result, rest)

    # Flushes

    def _call_fsync(self, pid: str, args: list[str], result: int, rest: str) -> None:
        match = _FD.match(args[0])
        if match is None:
            return
        path = os.fsdecode(_unhex(match.group(2)))
        if not self._inside(path):
            return
        if self.live.get(path) == "dir":
            self.effects.append(
                Effect("flush-dir", directory=path, call="fsync (directory)")
            )
        else:
            found = self._fd(pid, args[0])
            if found is not None:
                self.effects.append(Effect("flush-file", inode=found[0], call="fsync"))

    _call_fdatasync = _call_fsync

    def _call_sync(self, pid: str, args: list[str], result: int, rest: str) -> None:
        self.effects.append(Effect("sync", call="sync"))

    _call_syncfs = _call_sync

    def _name(self, path: str, inode: str | None, call: str) -> None:
        self.effects.append(
            Effect("name", os.path.dirname(path), ((path, inode),), call=call)
        )

    def _data(
        self,
        inode: str,
        offset: int = 0,
        data: bytes = b"",
        cut: int | None = None,
        call: str = "",
    ) -> None:
        if cut is not None:
            self.sizes[inode] = cut
        else:
            self.sizes[inode] = max(self.sizes.get(inode, 0), offset + len(data))
        self.effects.append(
            Effect("data", inode=inode, offset=offset, data=data, cut=cut, call=call)
        )


# Crash states ------------------------------------------------------------------


@dataclass
class State:
    """A state a crash can leave: the names and the bytes of each file."""

    names: dict[str, str]
    data: dict[str, bytes]
    model: str
    point: int
    returned: int
    started: bool
    #: What each unflushed effect became, for the report.
    choices: tuple[str, ...] = ()
    #: Drawn at random among too many states of its crash point.
    drawn: bool = False

    def key(self) -> str:
        digest = hashlib.sha1()
        groups: dict[str, list[str]] = {}
        for path, inode in self.names.items():
            groups.setdefault(inode, []).append(path)
        for inode, paths in sorted(groups.items(), key=lambda item: sorted(item[1])):
            digest.update(repr(sorted(paths)).encode())
            if inode != "dir":
                digest.update(hashlib.sha1(self.data.get(inode, b"")).digest())
        return digest.hexdigest()


def _covered(effect: Effect, flush: Effect) -> bool:
    if flush.kind == "sync":
        return True
    if flush.kind == "flush-file":
        return effect.kind == "data" and effect.inode == flush.inode
    if flush.kind == "flush-dir":
        return effect.kind == "name" and effect.directory == flush.directory
    return False


_CHANGES = ("name", "data")


def _variants(effect: Effect, sectors: bool) -> list[str]:
    # With *sectors*, bytes written may reach the disk up to any 512-byte
    # boundary; else in full, not at all, or their first half.
    if effect.kind == "name":
        return ["lost", "kept"]
    if effect.cut is not None or len(effect.data) < 2:
        return ["lost", "kept"]
    if sectors:
        cuts = [f"prefix {n}" for n in range(512, len(effect.data), 512)]
        return ["lost", "kept", "zeros", *cuts]
    return ["lost", "kept", "half", "zeros"]


def states(trace: Trace, before: dict[str, Any], limit: int) -> Iterator[State]:
    """Every state of both models at every crash point (at most *limit* a point)."""
    effects = trace.effects
    start_names = dict(before["names"])
    start_data = {inode: bytes.fromhex(h) for inode, h in before["data"].items()}
    step_of: list[int] = []
    returned = 0
    for effect in effects:
        step_of.append(returned)
        if effect.kind == "returned":
            returned += 1
    for point in range(len(effects) + 1):
        done = sum(1 for e in effects[:point] if e.kind == "returned")
        started = any(
            e.kind in _CHANGES and step_of[i] == done
            for i, e in enumerate(effects[:point])
        )
        changes = [i for i, e in enumerate(effects[:point]) if e.kind in _CHANGES]
        flushes = [
            i
            for i, e in enumerate(effects[:point])
            if e.kind in ("flush-file", "flush-dir", "sync")
        ]
        free = [
            i
            for i in changes
            if not any(j > i and _covered(effects[i], effects[j]) for j in flushes)
        ]
        everything = {i: "kept" for i in changes}
        yield _apply(
            effects, start_names, start_data, everything, "prefix", point, done, started
        )
        options = [_variants(effects[i], limit >= FULL_LIMIT) for i in free]
        total = 1
        for option in options:
            total *= len(option)
        if total <= limit:
            combinations: Iterator[tuple[str, ...]] = itertools.product(*options)
        else:
            draw = random.Random(f"{point}:{len(effects)}")
            extremes = [tuple("lost" for _ in free)] + [
                tuple("lost" if k == n else "kept" for k in range(len(free)))
                for n in range(len(free))
            ]
            drawn = [tuple(draw.choice(o) for o in options) for _ in range(limit)]
            combinations = iter(extremes + drawn)
        for combination in combinations:
            chosen = dict(everything)
            chosen.update(zip(free, combination, strict=True))
            described = tuple(
                f"{effects[i].call} {_where(effects[i])}: {choice}"
                for i, choice in zip(free, combination, strict=True)
            )
            state = _apply(
                effects,
                start_names,
                start_data,
                chosen,
                "unflushed",
                point,
                done,
                started,
            )
            state.choices = described
            state.drawn = total > limit
            yield state


def _where(effect: Effect) -> str:
    if effect.kind == "name":
        return ", ".join(_short(p) for p, _ in effect.changes)
    if effect.kind == "flush-dir":
        return _short(effect.directory)
    if effect.kind in ("data", "flush-file"):
        return f"(file {effect.inode})"
    return ""


def _short(path: str) -> str:
    # From the queue directory down, the file base cut short.
    parts = path.split("/var/", 1)[-1].split("/")
    return "/".join(
        re.sub(r"^(\d+)\.\d+\+([0-9a-f]{6})[0-9a-f]+", r"\1+\2", p) for p in parts
    )


def _apply(
    effects: list[Effect],
    names: dict[str, str],
    data: dict[str, bytes],
    chosen: dict[int, str],
    model: str,
    point: int,
    returned: int,
    started: bool,
) -> State:
    names = dict(names)
    contents = {inode: bytearray(b) for inode, b in data.items()}
    for index, choice in sorted(chosen.items()):
        effect = effects[index]
        if choice == "lost":
            continue
        if effect.kind == "name":
            for path, inode in effect.changes:
                if inode is None:
                    names.pop(path, None)
                else:
                    names[path] = inode
                    if inode != "dir":
                        contents.setdefault(inode, bytearray())
            continue
        content = contents.setdefault(effect.inode, bytearray())
        if effect.cut is not None:
            del content[effect.cut :]
            content.extend(bytes(effect.cut - len(content)))
            continue
        written = effect.data
        if choice == "half":
            written = written[: len(written) // 2]
        elif choice.startswith("prefix "):
            written = written[: int(choice.split()[1])]
        elif choice == "zeros":
            written = bytes(len(written))
        end = effect.offset + len(written)
        if len(content) < end:
            content.extend(bytes(end - len(content)))
        content[effect.offset : end] = written
    # A name in a directory that is not there is not reachable.
    root = min(names, key=len)
    reachable: dict[str, str] = {}
    for path in sorted(names, key=len):
        if path == root or reachable.get(os.path.dirname(path)) == "dir":
            reachable[path] = names[path]
    return State(
        reachable,
        {k: bytes(v) for k, v in contents.items()},
        model,
        point,
        returned,
        started,
    )


def materialize(state: State, var: str, into: str) -> None:
    """Write *state* (of the var directory *var*) under *into* instead."""
    first: dict[str, str] = {}
    for path in sorted(state.names, key=len):
        target = into + path[len(var) :]
        inode = state.names[path]
        if inode == "dir":
            os.makedirs(target, mode=0o770, exist_ok=True)
        elif inode in first:
            os.link(first[inode], target)
        else:
            with open(target, "wb") as stream:
                stream.write(state.data.get(inode, b""))
            os.chmod(target, 0o660)
            first[inode] = target


# Recovery, in a forked child ---------------------------------------------------


class RecordingRunner(Runner):
    """The ``in`` runner's pass, keeping each entry it is given."""

    seen: ClassVar[list[tuple[str, str, dict[str, Any]]]] = []

    def _dispose(self, mlist: Any, msg: Any, msgdata: dict[str, Any]) -> bool:
        self.seen.append(("processed", msg.as_string(), dict(msgdata)))
        return False

    def _snooze(self, filecnt: int) -> None:
        return


def recover(root: str) -> dict[str, Any]:
    """Recover the site at *root* as after a crash; say what became of each entry."""
    config.push("crash-recovery", site_config(root))
    try:
        for name, section in config.runners.items():
            if section.path and name != "bad" and os.path.isdir(section.path):
                config.switchboards.make(name, recover=True).release_ownership()
        RecordingRunner.seen = []
        runner = RecordingRunner("in")
        runner.run_once()
        found: list[dict[str, Any]] = [
            {"place": place, "file": "", "text": text, "metadata": _plain(data)}
            for place, text, data in RecordingRunner.seen
        ]
        odd = []
        queue = os.path.join(root, "var", "queue")
        for directory, _dirs, files in os.walk(queue):
            relative = os.path.relpath(directory, queue)
            for file in files:
                place = _place(relative, file)
                if place in ("temporary", "spare", "lock"):
                    continue
                if place is None:
                    odd.append(os.path.join(relative, file))
                    continue
                path = os.path.join(directory, file)
                try:
                    msg, data, _ = entry_format.load_entry(path)
                    text = msg.as_string() if not isinstance(msg, str) else msg
                except qfile.QueueFileError as error:
                    found.append(
                        {"place": place, "file": file, "unreadable": str(error)}
                    )
                    continue
                found.append(
                    {
                        "place": place,
                        "file": file,
                        "text": text,
                        "metadata": _plain(data),
                    }
                )
        return {"found": found, "unclassified": odd}
    finally:
        config.pop("crash-recovery")


def _found(result: dict[str, Any]) -> list[str]:
    # What recovery left, entry by entry, for a person reading the report.
    if "crash" in result:
        return [result["crash"]]
    return [
        f"{item['place']}: "
        + (
            f"unreadable {item['file']}"
            if "unreadable" in item
            else str(item["metadata"].get("token", "no entry"))
        )
        for item in result["found"]
    ] + [f"unclassified: {file}" for file in result["unclassified"]]


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in data.items()
        if k not in CHANGING and isinstance(v, (str, int, float, bool))
    }


def _place(relative: str, file: str) -> str | None:
    parts = relative.split(os.sep)
    if parts[0].startswith(".") and parts[0].endswith(".spare"):
        return "spare"
    if file.endswith(".tmp") and qfile.parse_filebase(
        os.path.splitext(os.path.splitext(file)[0])[0]
    ):
        return "temporary"
    if file.startswith("."):
        return "lock"
    if parts[0] == "hold" and len(parts) == 2 and file.endswith(".pck"):
        return "held"
    if len(parts) != 1 or relative == ".":
        return None
    queue = parts[0]
    if queue == "bad" and file.endswith(".psv"):
        return "bad"
    if file.endswith(".pck"):
        return queue if queue in ("shunt",) else f"waiting in {queue}"
    return None


def run_recovery(root: str) -> dict[str, Any]:
    """:func:`recover` in a forked child, with a time limit."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 0
        try:
            import logging

            logging.disable(logging.CRITICAL)
            result = recover(root)
        except BaseException as error:
            result = {"crash": f"{type(error).__name__}: {error}"}
            code = 1
        with os.fdopen(write, "w") as stream:
            json.dump(result, stream)
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as stream:
        text = stream.read()
    os.waitpid(pid, 0)
    return json.loads(text) if text else {"crash": "no answer"}


# Checking --------------------------------------------------------------------


def check(
    state: State,
    result: dict[str, Any],
    scenario: Scenario,
    names: dict[str, str],
    expected: dict[str, tuple[str, dict[str, Any]]],
) -> tuple[list[str], int]:
    """The violations in what recovery made of *state*, and how many repeats."""
    if "crash" in result:
        return [f"recovery failed: {result['crash']}"], 0
    problems: list[str] = []
    places: dict[str, list[str]] = {}
    for item in result["found"]:
        label = item["file"] or "a processed entry"
        if "unreadable" in item:
            problems.append(
                f"torn: {item['place']} {label} cannot be read ({item['unreadable']})"
            )
            continue
        token = item["metadata"].get("token")
        if token not in expected or (item["text"], item["metadata"]) != expected[token]:
            problems.append(f"torn: {item['place']} {label} reads as no entry ever was")
            continue
        owner = names.get(item["file"].split(".")[0]) if item["file"] else None
        if owner is not None and owner != token:
            problems.append(
                f"another entry's bytes: {label}, {owner}'s, holds {token}'s"
            )
            continue
        places.setdefault(token, []).append(item["place"])
    for file in result["unclassified"]:
        problems.append(f"unclassified: {file}")
    repeats = 0
    fates = scenario.fates(state.returned, state.started)
    for token, fate in fates.items():
        where = places.get(token, [])
        if len(where) > 1:
            repeats += 1
        if fate == "finished" and where:
            if state.model == "prefix":
                problems.append(
                    f"processed after finish: {token} found again ({', '.join(where)})"
                )
            else:
                repeats += 1
        elif fate.startswith("must") and not where:
            problems.append(f"lost: {token}")
        elif fate.startswith("must@") and fate[5:] not in where:
            problems.append(f"misplaced: {token} is {', '.join(where)}, not {fate[5:]}")
    for token in places:
        if token not in fates:
            problems.append(f"foreign: {token}")
    return problems, repeats


# Running it all ------------------------------------------------------------------


@dataclass
class Outcome:
    scenario: str
    operation: str
    calls: int
    effects: int
    points: int
    states: int
    distinct: int
    repeats: int
    violations: list[dict[str, Any]] = field(default_factory=list)
    #: Whether every state of every crash point was tried (none drawn at random).
    exhaustive: bool = True
    #: The calls recorded, in order, with what each changed.
    sequence: list[str] = field(default_factory=list)


def trace_scenario(
    scenario: Scenario, root: str, plant: str
) -> tuple[Trace, dict[str, Any], dict[str, str], dict[str, dict[str, Any]]]:
    """Trace *scenario* under *root*: the trace, the state it began from, each
    file base's entry, and each entry's metadata as made."""
    os.makedirs(root)
    config.push("crash-lists", site_config(root))
    try:
        config.lists.create(LIST)
        config.lists.close()
    finally:
        config.pop("crash-lists")
    log = os.path.join(root, "trace.txt")
    command = [
        "strace",
        "-f",
        "-qq",
        "-yy",
        "-xx",
        "-s",
        "4000000",
        "-e",
        f"trace={STRACE_CALLS}",
        "-o",
        log,
        sys.executable,
        __file__,
        "--trace-child",
        scenario.name,
        root,
        "--plant",
        plant,
    ]
    subprocess.run(
        command,
        check=True,
        timeout=120,
        env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)},
    )
    with open(os.path.join(root, "before.json")) as stream:
        before = json.load(stream)
    with open(os.path.join(root, "names.json")) as stream:
        names, made = json.load(stream)
    with open(log, errors="replace") as stream:
        trace = Trace(stream.read(), os.path.join(root, "var"), before)
    return trace, before, names, made


def explore(scenario: Scenario, work: str, limit: int, plant: str = "") -> Outcome:
    root = os.path.join(work, scenario.name)
    trace, before, names, made = trace_scenario(scenario, root, plant)
    expected = {
        token: (message(token).as_string(), data) for token, data in made.items()
    }
    var = os.path.join(root, "var")
    results: dict[str, dict[str, Any]] = {}
    outcome = Outcome(
        scenario.name,
        scenario.operation,
        trace.calls,
        len(trace.effects),
        len(trace.effects) + 1,
        0,
        0,
        0,
    )
    outcome.sequence = [
        "step returned" if e.kind == "returned" else f"{e.call} {_where(e)}".strip()
        for e in trace.effects
    ]
    violations: dict[tuple[str, ...], dict[str, Any]] = {}
    lists = os.path.join(root, "lists.sqlite3")
    for state in states(trace, before, limit):
        outcome.states += 1
        outcome.exhaustive = outcome.exhaustive and not state.drawn
        key = state.key()
        if key not in results:
            place = os.path.join(work, "state")
            shutil.rmtree(place, ignore_errors=True)
            os.makedirs(place)
            shutil.copyfile(lists, os.path.join(place, "lists.sqlite3"))
            materialize(state, var, os.path.join(place, "var"))
            results[key] = run_recovery(place)
            outcome.distinct += 1
        problems, repeats = check(state, results[key], scenario, names, expected)
        outcome.repeats += repeats
        for problem in problems:
            signature = (problem.split(":")[0], state.model, str(state.returned))
            if signature not in violations:
                violations[signature] = {
                    "violation": problem,
                    "model": state.model,
                    "calls before the crash": [
                        e.call
                        for e in trace.effects[: state.point]
                        if e.kind != "returned"
                    ],
                    "steps returned": state.returned,
                    "unflushed effects": list(state.choices),
                    "recovery found": _found(results[key]),
                    "states": 0,
                }
            violations[signature]["states"] += 1
    outcome.violations = list(violations.values())
    return outcome


def run(limit: int, plant: str = "", only: list[str] | None = None) -> dict[str, Any]:
    """Explore every scenario (or those named in *only*); return the report."""
    started = time.monotonic()
    outcomes = []
    work = os.path.realpath(tempfile.mkdtemp(prefix="mailqueue-crash-"))
    try:
        for scenario in SCENARIOS:
            if only and scenario.name not in only:
                continue
            outcomes.append(explore(scenario, work, limit, plant))
    finally:
        # CRASH_KEEP=1 keeps the traces and the last state, to look at.
        if not os.environ.get("CRASH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "command": "make crash-test (tools/crash/crash.py --full)"
        if limit == FULL_LIMIT
        else "tools/crash/crash.py (the reduced run of make test)",
        "file-system model": "prefix, and unflushed (POSIX without the flushes "
        "not asked for)",
        "states tried at one crash point, at most": limit,
        "planted bug": plant or None,
        "operations": [outcome.__dict__ for outcome in outcomes],
        "calls recorded": sum(o.calls for o in outcomes),
        "states explored": sum(o.states for o in outcomes),
        "distinct states recovered": sum(o.distinct for o in outcomes),
        "repeats (at least once)": sum(o.repeats for o in outcomes),
        "violations": sum(sum(v["states"] for v in o.violations) for o in outcomes),
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--full", action="store_true", help="up to 4096 states a crash point"
    )
    parser.add_argument("--report", help="write the report (JSON) here")
    parser.add_argument("--plant", default="", help="run with a planted protocol bug")
    parser.add_argument(
        "--only", action="append", help="only this scenario (repeatable)"
    )
    parser.add_argument("--trace-child", nargs=2, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.trace_child:
        traced_child(*arguments.trace_child, arguments.plant)
        return 0
    if shutil.which("strace") is None:
        print("crash test: strace is not installed (make installs it)", file=sys.stderr)
        return 2
    report = run(
        FULL_LIMIT if arguments.full else REDUCED_LIMIT, arguments.plant, arguments.only
    )
    for outcome in report["operations"]:
        print(
            f"{outcome['operation']}: {outcome['calls']} calls, "
            f"{outcome['states']} states ({outcome['distinct']} distinct), "
            f"{sum(v['states'] for v in outcome['violations'])} violations, "
            f"{outcome['repeats']} repeats"
        )
        for violation in outcome["violations"]:
            print(
                f"  {violation['model']}: {violation['violation']} "
                f"(after step {violation['steps returned']}, "
                f"{violation['states']} states)"
            )
    print(
        f"{report['calls recorded']} calls recorded, "
        f"{report['states explored']} states explored, "
        f"{report['violations']} violations, "
        f"{report['repeats (at least once)']} repeats, {report['seconds']} s"
    )
    if arguments.report:
        with open(arguments.report, "w") as stream:
            json.dump(report, stream, indent=2)
            stream.write("\n")
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())

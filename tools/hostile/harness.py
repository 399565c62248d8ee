"""Run hostile cases, each in a child process with memory and time limits.

Every case goes through every path that reads a queue file: ``dequeue``, a
pass of the ``in`` and ``out`` runners, recovery, ``mailqueue qfile``,
``mailqueue queues`` and ``mailqueue unshunt``.  Each path gets a var
directory of its own, with the hostile file where that path finds entries
and a good *canary* entry queued after it.  A child process is forked for
each case; the parent kills it after :data:`TIME_LIMIT` seconds or once it
holds more than :data:`MEMORY_LIMIT` bytes.

What counts against the implementation, per case:

code executed
    the case made a file in the marker directory;
crash
    the child died of a signal, or an exception escaped a path;
hang
    the child ran out of time;
memory
    the child went over the memory limit, or a ``MemoryError`` was seen;
later entry harmed
    the canary was not handled exactly as it is without the hostile file
    (delivered byte for byte, recovered, moved back), or a class that queue
    files may name was changed, or a message made afterwards came out
    different;
file lost
    fewer entries (in the queues, in ``bad``, delivered) after a path than
    before it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import resource
import shutil
import signal
import socket
import stat
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from entries import (
    CANARY_TEXT,
    LIST_ID,
    LONG_STRING_KIND,
    SEAL_KINDS,
    Case,
    good_entry,
)

from mailqueue import (
    Message,
    QueueFileError,
    Switchboard,
    config,
    create_list,
    entry_format,
    message_from_string,
    pickle_rules,
)
from mailqueue import cli as command_line
from mailqueue.entry_format import load_entry
from mailqueue.runners import IncomingRunner, OutgoingRunner
from mailqueue.seal import SEAL_MAX, TRAILER_SIZE, Seal

#: Seconds a case may take.  Under ``make coverage`` every line is traced,
#: which makes the slowest cases several times slower: they get longer.
TIME_LIMIT = 10.0 * (4 if "COVERAGE_PROCESS_CONFIG" in os.environ else 1)
MEMORY_LIMIT = 1 << 30
#: The address space a child may map: above the limit the parent enforces,
#: so that a large allocation shows as resident memory, and is caught.
ADDRESS_SPACE = 8 << 30
HOSTILE = "1600000000.0+" + "5" * 40
PATHS = ("dequeue", "runner", "recovery", "qfile", "queues", "unshunt")
NOBODY = 65534


@dataclass
class Outcome:
    """What became of one case."""

    case: str
    source: str
    code_executed: bool = False
    crash: str = ""
    hang: bool = False
    memory: bool = False
    harmed: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    preserved: bool = False
    seconds: float = 0.0
    peak_bytes: int = 0

    @property
    def failed(self) -> bool:
        return bool(
            self.code_executed
            or self.crash
            or self.hang
            or self.memory
            or self.harmed
            or self.lost
        )


# The child's side -----------------------------------------------------------


class _Setting:
    """What every child shares: directories, and the canary as it should end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.marker = root / "markers"
        self.marker.mkdir(mode=0o777)
        os.chmod(self.marker, 0o1777)
        self.cases = root / "cases"
        self.cases.mkdir()
        os.chmod(self.cases, 0o1777)
        template = root / "template"
        with _configured(template):
            create_list("test@example.com")
            config.lists.close()
            self.database = Path(config.DATA_DIR) / "lists.sqlite3"
            self.delivered = _deliver_alone()
        self.canary = message_from_string(CANARY_TEXT).as_string()


def _deliver_alone() -> bytes:
    """The canary as the runners deliver it when nothing else is queued."""
    config.switchboards["in"].enqueue(message_from_string(CANARY_TEXT), listid=LIST_ID)
    IncomingRunner("in")._one_iteration()
    OutgoingRunner("out")._one_iteration()
    (found,) = _delivered_files()
    return found.read_bytes()


def _delivered_files() -> list[Path]:
    lists = Path(config.VAR_DIR) / "lists"
    return sorted(path for path in lists.glob("*/*/*") if path.is_file())


@contextlib.contextmanager
def _configured(var_dir: Path) -> Iterator[None]:
    layer = f"hostile {var_dir}"
    config.push(layer, f"[paths]\nvar_dir: {var_dir}\n")
    try:
        yield
    finally:
        config.pop(layer)


def _place(case: Case, directory: Path, extension: str, tree: Path) -> Path:
    """Put the hostile thing where *directory*'s entries are; return its path."""
    path = directory / (HOSTILE + extension)
    outside = tree / "outside"
    outside.mkdir(exist_ok=True)
    kind = case.kind
    if kind == "bytes":
        path.write_bytes(case.data)
    elif kind in SEAL_KINDS:
        path.write_bytes(case.data + _seal(kind, case.data, tree))
    elif kind == LONG_STRING_KIND:
        path.write_bytes(_in_a_sealed_body(case.data))
    elif kind == "oversized":
        with open(path, "wb") as stream:
            stream.truncate(config.max_entry_size + 1)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink-to-fifo":
        os.mkfifo(outside / "fifo")
        path.symlink_to(outside / "fifo")
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_bytes(good_entry())
    elif kind == "symlink-loop":
        path.symlink_to(path.name)
    elif kind == "dangling-symlink":
        path.symlink_to(outside / "nothing")
    elif kind == "symlink-to-entry-outside":
        (outside / "secret.pck").write_bytes(good_entry())
        path.symlink_to(outside / "secret.pck")
    elif kind in ("char-device", "zero-device"):
        minor = 3 if kind == "char-device" else 5
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    elif kind == "socket":
        # A socket's path must be short: bind it by its name, from its directory.
        here = os.getcwd()
        os.chdir(directory)
        try:
            with socket.socket(socket.AF_UNIX) as listener:
                listener.bind(path.name)
        finally:
            os.chdir(here)
    elif kind == "unreadable":
        path.write_bytes(good_entry())
        os.chmod(path, 0)
    elif kind == "pck-and-bak":
        (directory / (HOSTILE + ".pck")).write_bytes(good_entry(which="pck"))
        (directory / (HOSTILE + ".bak")).write_bytes(good_entry(which="bak"))
    elif kind == "bak-and-psv":
        path.write_bytes(b"not a pickle")
        bad = tree / "queue" / "bad"
        bad.mkdir(parents=True, exist_ok=True)
        (bad / (HOSTILE + ".psv")).write_bytes(good_entry(which="psv"))
    elif kind == "stray-name":
        path = directory / ("not-a-file-base" + extension)
        path.write_bytes(good_entry())
    else:
        raise ValueError(f"unknown kind of case {kind!r}")
    return path


def _in_a_sealed_body(data: bytes) -> bytes:
    """A large entry with this site's valid seal, *data* written into its body.

    The seal leaves the body out of its MAC: it still holds, so the entry
    is built without the opcode check, and *data* can only be its text.
    """
    body = "x" * max(SEAL_MAX, len(data))
    ranges: list[tuple[int, int]] = []
    message = entry_format.dump_checked(
        message_from_string(f"Subject: long\n\n{body}"), "message", ranges
    )
    parts = (message, entry_format.dump_checked({"listid": LIST_ID}, "metadata"))
    trailer = config.seal.trailer(HOSTILE, parts, ranges)
    assert trailer is not None and len(ranges) == 1
    offset, length = ranges[0]
    planted = bytearray(message)
    planted[offset : offset + length] = data.ljust(length, b"x")
    return bytes(planted) + parts[1] + trailer


def _seal(kind: str, data: bytes, tree: Path) -> bytes:
    """A seal for the hostile *data* that must not make it trusted."""
    if kind == "seal-replayed":
        # The canary's own seal, valid for the canary's bytes.
        (canary,) = [
            p for p in (tree / "queue").glob("*/*") if p.suffix in (".pck", ".bak")
        ]
        return canary.read_bytes()[-TRAILER_SIZE:]
    if kind == "seal-other-key":
        return Seal(str(tree / "outside" / "other.keys")).trailer(HOSTILE, (data,))
    filebase = "1600000000.0+" + "6" * 40 if kind == "seal-other-name" else HOSTILE
    trailer = config.seal.trailer(filebase, (data,))
    if kind == "seal-forged":
        return trailer[:-9] + bytes(b ^ 0xFF for b in trailer[-9:-1]) + b"."
    if kind == "seal-truncated":
        return trailer[:-2]
    return trailer


def _count_entries(tree: Path) -> int:
    """Every name in every queue (a .tmp aside), and every delivered message."""
    count = 0
    for queue in (tree / "queue").iterdir():
        if queue.is_dir() and not queue.is_symlink():
            count += sum(1 for name in os.listdir(queue) if not name.endswith(".tmp"))
    lists = tree / "lists"
    if lists.exists():
        count += sum(1 for path in lists.glob("*/*/*") if path.is_file())
    return count


class _Child:
    """Runs one case through every path, in the forked child."""

    def __init__(self, setting: _Setting, case: Case, where: Path) -> None:
        self.setting = setting
        self.case = case
        self.where = where
        self.harmed: list[str] = []
        self.lost: list[str] = []
        self.crash = ""
        self.preserved = False
        self.text = io.StringIO()
        self.canaries: dict[str, str] = {}

    def prepare(self, path: str) -> tuple[Path, Path]:
        """A var directory for *path*, with the canary and the hostile file.

        The canary's file base is kept in :attr:`canaries`.
        """
        tree = self.where / path
        for queue in ("in", "out", "bad", "shunt", "retry", "virgin"):
            (tree / "queue" / queue).mkdir(parents=True, exist_ok=True)
        (tree / "data").mkdir()
        shutil.copy(self.setting.database, tree / "data" / "lists.sqlite3")
        canary = message_from_string(CANARY_TEXT)
        with _configured(tree):
            if path == "unshunt":
                shunt = config.switchboards["shunt"]
                self.canaries[path] = shunt.enqueue(canary, listid=LIST_ID, whichq="in")
                hostile = _place(self.case, tree / "queue" / "shunt", ".pck", tree)
            elif path == "recovery":
                queue = config.switchboards["in"]
                self.canaries[path] = queue.enqueue(canary, listid=LIST_ID)
                queue.dequeue(self.canaries[path])
                hostile = _place(self.case, tree / "queue" / "in", ".bak", tree)
            else:
                queue = config.switchboards["in"]
                self.canaries[path] = queue.enqueue(canary, listid=LIST_ID)
                hostile = _place(self.case, tree / "queue" / "in", ".pck", tree)
            config.lists.close()
        return tree, hostile

    def run(self) -> None:
        trees = {path: self.prepare(path) for path in PATHS}
        # Open to all, so that a case can run as nobody; an unreadable file
        # (mode 0) stays unreadable.
        for directory, _, files in os.walk(self.where):
            os.chmod(directory, 0o777)
            for name in files:
                target = Path(directory, name)
                mode = target.lstat().st_mode
                if stat.S_ISREG(mode) and stat.S_IMODE(mode):
                    os.chmod(target, 0o666)
        if self.case.kind == "unreadable":
            # The queues belong to whoever runs the tools on them (the tools
            # refuse to write in another user's queues).
            for directory, names, files in os.walk(self.where):
                for name in [".", *names, *files]:
                    os.lchown(os.path.join(directory, name), NOBODY, NOBODY)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        classes = _class_state()
        capture = logging.StreamHandler(self.text)
        capture.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("mailqueue").addHandler(capture)
        for path, (tree, hostile) in trees.items():
            before = _count_entries(tree)
            try:
                with (
                    _configured(tree),
                    contextlib.redirect_stdout(self.text),
                    contextlib.redirect_stderr(self.text),
                ):
                    getattr(self, f"path_{path}")(tree, hostile)
            except BaseException as error:  # the harness must see everything
                self.crash = f"{path}: {type(error).__name__}: {error!s:.200}"
            after = _count_entries(tree)
            if after < before:
                self.lost.append(f"{path}: {before} entries before, {after} after")
            bad = tree / "queue" / "bad"
            if any(name.startswith(HOSTILE[:12]) for name in os.listdir(bad)):
                self.preserved = True
        if _class_state() != classes:
            self.harmed.append("a class that queue files may name was changed")
        if message_from_string(CANARY_TEXT).as_string() != self.setting.canary:
            self.harmed.append("a message made afterwards came out different")

    def path_dequeue(self, tree: Path, hostile: Path) -> None:
        queue = Switchboard("in", str(tree / "queue" / "in"))
        canary = self.canaries["dequeue"]
        for filebase in queue.files:
            try:
                msg, msgdata = queue.dequeue(filebase)
            except FileNotFoundError:
                continue
            except QueueFileError as error:
                print(error)
                queue.finish(filebase, preserve=True)
                continue
            if filebase == canary:
                self.check_canary("dequeue", msg, msgdata.get("listid") == LIST_ID)
                return
        self.harmed.append("dequeue: the canary was not dequeued")

    def check_canary(self, path: str, msg: object, metadata_right: bool) -> None:
        if msg.as_string() != self.setting.canary or not metadata_right:
            self.harmed.append(f"{path}: the canary came out different")

    def canary_entry(self, queue: Path, filebase: str) -> tuple[object, dict] | None:
        try:
            msg, msgdata, _ = load_entry(str(queue / (filebase + ".pck")))
        except (OSError, QueueFileError):
            return None
        return msg, msgdata

    def path_runner(self, tree: Path, hostile: Path) -> None:
        for _ in range(2):
            IncomingRunner("in")._one_iteration()
            OutgoingRunner("out")._one_iteration()
        delivered = [path.read_bytes() for path in _delivered_files()]
        if self.setting.delivered not in delivered:
            self.harmed.append("runner: the canary was not delivered as it should be")

    def path_recovery(self, tree: Path, hostile: Path) -> None:
        Switchboard("in", str(tree / "queue" / "in"), recover=True)
        found = self.canary_entry(tree / "queue" / "in", self.canaries["recovery"])
        if found is None:
            self.harmed.append("recovery: the canary was not recovered")
        else:
            self.check_canary("recovery", found[0], found[1].get("_bak_count") == 1)

    def path_qfile(self, tree: Path, hostile: Path) -> None:
        canary = tree / "queue" / "in" / (self.canaries["qfile"] + ".pck")
        for arguments in (
            [str(hostile), str(canary)],
            ["--json", str(hostile), str(canary)],
        ):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                status = command_line.main(["qfile", *arguments])
            self.text.write(out.getvalue())
            if status not in (0, 1) or "Subject: canary" not in out.getvalue():
                self.harmed.append(f"qfile {arguments[0]}: the canary was not shown")

    def path_queues(self, tree: Path, hostile: Path) -> None:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = command_line.main(["queues"])
        if status != 0 or "in" not in out.getvalue():
            self.harmed.append(f"queues: exit status {status}")

    def path_unshunt(self, tree: Path, hostile: Path) -> None:
        command_line.main(["unshunt"])
        queue = tree / "queue" / "in"
        for name in os.listdir(queue):
            found = self.canary_entry(queue, name.removesuffix(".pck"))
            if (
                found
                and isinstance(found[0], Message)
                and found[0]["subject"] == "canary"
            ):
                self.check_canary(
                    "unshunt", found[0], found[1].get("listid") == LIST_ID
                )
                return
        self.harmed.append("unshunt: the canary was not moved back")


def _class_state() -> dict[str, object]:
    """What a hostile file could change in the classes it may name."""
    names = {}
    for (module, name), value in pickle_rules.ALLOWED.items():
        state = dict(getattr(value, "__dict__", {}))
        # copyreg caches the slot names of a class the first time one of its
        # instances is pickled, whatever the instance.
        state.pop("__slotnames__", None)
        names[f"{module}.{name}"] = {key: id(item) for key, item in state.items()}
    return names


def _in_child(setting: _Setting, case: Case, where: Path, report_fd: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    child = _Child(setting, case, where)
    try:
        child.run()
    except BaseException as error:
        child.crash = f"harness: {type(error).__name__}: {error!s:.200}"
    result = {
        "harmed": child.harmed,
        "lost": child.lost,
        "crash": child.crash,
        "preserved": child.preserved,
        "memory": "MemoryError" in child.text.getvalue(),
    }
    os.write(report_fd, json.dumps(result).encode())


# The parent's side -----------------------------------------------------------


def _resident(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class _Running:
    case: Case
    pid: int
    reader: int
    where: Path
    started: float
    killed: str = ""
    peak: int = 0
    chunks: list[bytes] = field(default_factory=list)


class Harness:
    """A place to run cases: a directory (in memory where the system has
    one), the list database the runners need, and the marker directory in
    which code that runs would leave a file (:attr:`marker`)."""

    def __init__(self) -> None:
        base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
        self._directory = tempfile.TemporaryDirectory(
            prefix="mailqueue-hostile-", dir=base
        )
        root = Path(self._directory.name)
        os.chmod(root, 0o755)
        self.setting = _Setting(root)
        #: The file a case's code, if it ran, would make.
        self.marker = str(self.setting.marker / "code-ran")

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._directory.cleanup()

    def run(
        self,
        cases: Iterable[Case],
        jobs: int = 2,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> list[Outcome]:
        """Run every case in a child of its own, *jobs* at a time."""
        outcomes = []
        pending = iter(cases)
        running: list[_Running] = []
        number = 0
        while True:
            while len(running) < jobs:
                case = next(pending, None)
                if case is None:
                    break
                number += 1
                running.append(_start(self.setting, case, number))
            if not running:
                return outcomes
            time.sleep(0.002)
            for job in list(running):
                outcome = _poll(job, self.setting)
                if outcome is not None:
                    running.remove(job)
                    outcomes.append(outcome)
                    if on_outcome is not None:
                        on_outcome(outcome)


def _start(setting: _Setting, case: Case, number: int) -> _Running:
    where = setting.cases / str(number)
    where.mkdir()
    reader, writer = os.pipe()
    os.set_blocking(reader, False)
    pid = os.fork()
    if pid == 0:  # the child
        status = 0
        try:
            os.close(reader)
            _in_child(setting, case, where, writer)
        except BaseException:
            status = 70
        finally:
            os._exit(status)
    os.close(writer)
    return _Running(case, pid, reader, where, time.monotonic())


def _poll(job: _Running, setting: _Setting) -> Outcome | None:
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(job.reader, 65536):
            job.chunks.append(chunk)
    elapsed = time.monotonic() - job.started
    resident = _resident(job.pid)
    job.peak = max(job.peak, resident)
    if not job.killed and elapsed > TIME_LIMIT:
        job.killed = "hang"
        os.kill(job.pid, signal.SIGKILL)
    elif not job.killed and resident > MEMORY_LIMIT:
        job.killed = "memory"
        os.kill(job.pid, signal.SIGKILL)
    pid, status, usage = os.wait4(job.pid, os.WNOHANG)
    if pid == 0:
        return None
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(job.reader, 65536):
            job.chunks.append(chunk)
    os.close(job.reader)
    outcome = Outcome(job.case.name, job.case.source, seconds=elapsed)
    outcome.peak_bytes = max(job.peak, usage.ru_maxrss * 1024)
    if job.killed == "hang":
        outcome.hang = True
    elif job.killed == "memory" or outcome.peak_bytes > MEMORY_LIMIT:
        outcome.memory = True
    elif os.WIFSIGNALED(status):
        outcome.crash = f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    elif os.WEXITSTATUS(status) != 0 or not job.chunks:
        outcome.crash = f"the child exited with status {os.WEXITSTATUS(status)}"
    else:
        result = json.loads(b"".join(job.chunks))
        outcome.harmed = result["harmed"]
        outcome.lost = result["lost"]
        outcome.crash = result["crash"]
        outcome.preserved = result["preserved"]
        outcome.memory = result["memory"]
    markers = list(setting.marker.iterdir())
    if markers:
        outcome.code_executed = True
        for marker in markers:
            marker.unlink()
    shutil.rmtree(job.where, ignore_errors=True)
    return outcome


# The report ----------------------------------------------------------------


def summarize(outcomes: list[Outcome], seconds: float) -> dict[str, object]:
    """The figures of a run, and the first few failures of each kind."""

    def names(test: Callable[[Outcome], object]) -> list[str]:
        return [outcome.case for outcome in outcomes if test(outcome)]

    failures = {
        "code executed": names(lambda outcome: outcome.code_executed),
        "crashes": names(lambda outcome: outcome.crash),
        "hangs": names(lambda outcome: outcome.hang),
        "memory over the limit": names(lambda outcome: outcome.memory),
        "later entries harmed": names(lambda outcome: outcome.harmed),
        "files lost": names(lambda outcome: outcome.lost),
    }
    details = {
        outcome.case: {
            key: value
            for key, value in (
                ("crash", outcome.crash),
                ("harmed", outcome.harmed),
                ("lost", outcome.lost),
            )
            if value
        }
        for outcome in outcomes
        if outcome.failed
    }
    slowest = max(outcomes, key=lambda outcome: outcome.seconds, default=None)
    largest = max(outcomes, key=lambda outcome: outcome.peak_bytes, default=None)
    return {
        "cases": len(outcomes),
        "by source": dict(Counter(outcome.source for outcome in outcomes)),
        "paths": list(PATHS),
        **{key: len(value) for key, value in failures.items()},
        "files preserved": len(names(lambda outcome: outcome.preserved)),
        "slowest case (s)": round(slowest.seconds, 2) if outcomes else 0,
        "slowest case": slowest.case if outcomes else "",
        "largest case (MiB)": round(largest.peak_bytes / 2**20, 1) if outcomes else 0,
        "largest case": largest.case if outcomes else "",
        "seconds": round(seconds, 1),
        "failures": {key: value[:20] for key, value in failures.items() if value},
        "details": dict(list(details.items())[:20]),
    }


FAILURE_KEYS = (
    "code executed",
    "crashes",
    "hangs",
    "memory over the limit",
    "later entries harmed",
    "files lost",
)

__all__ = ["FAILURE_KEYS", "HOSTILE", "Harness", "Outcome", "summarize"]

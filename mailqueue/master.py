"""The master: one process per runner slice, restarted when it crashes.

The master reads the ``[runner.*]`` sections, starts a runner process for
each slice of each runner whose ``start`` is yes, and waits.  A runner that
exits abnormally is started again, up to its ``max_restarts``; after that
the master logs that it gives up on it and lets the others run.  Signals to
the master go on to the runners: SIGTERM and SIGINT stop everything (each
runner finishes its current entry), SIGHUP reopens the logs, SIGUSR1
restarts the runners.

Only one master runs per var directory: it holds a lock on
``$VAR_DIR/master.lck``, which also records its pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
from dataclasses import dataclass

from mailqueue.config import config
from mailqueue.logs import reopen_logs
from mailqueue.qfile import write_file

__all__ = ["Master", "MasterRunning", "master_pid", "master_status"]

rlog = logging.getLogger("mailqueue.runner")


class MasterRunning(Exception):
    """Another master already runs on this var directory."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        super().__init__(
            f"a master is already running on {config.VAR_DIR}"
            + (f" (pid {pid})" if pid else "")
        )


def _lock_path() -> str:
    return os.path.join(config.VAR_DIR, "master.lck")


def _status_path() -> str:
    return os.path.join(config.VAR_DIR, "master.json")


def master_pid() -> int | None:
    """The pid of the master running on this var directory, or None."""
    try:
        fd = os.open(_lock_path(), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 64).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        return None
    finally:
        os.close(fd)


def master_status() -> dict:
    """What the running master last wrote about its runners (empty if none)."""
    try:
        with open(_status_path()) as stream:
            return json.load(stream)
    except (FileNotFoundError, ValueError):
        return {}


@dataclass
class _Child:
    name: str
    slice: int
    count: int
    max_restarts: int
    restarts: int = 0
    pid: int | None = None
    restart_expected: bool = False

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.slice}:{self.count}"


class Master:
    """Start, watch and stop the runner processes.

    *command* runs ``mailqueue`` with the master's configuration, for
    example ``[sys.executable, "-m", "mailqueue", "-C", "site.cfg"]``; a
    runner process is ``command + ["runner", "NAME:SLICE:COUNT"]``.
    """

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.children: dict[int, _Child] = {}
        self._stopping = False
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Become this var directory's one master, or raise :exc:`MasterRunning`."""
        os.makedirs(config.VAR_DIR, mode=0o770, exist_ok=True)
        fd = os.open(_lock_path(), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MasterRunning(master_pid()) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def run(self) -> None:
        """Start the runners and look after them until they have all stopped."""
        assert self._lock_fd is not None, "lock() first"
        signal.signal(signal.SIGTERM, self._stop_signal)
        signal.signal(signal.SIGINT, self._stop_signal)
        signal.signal(signal.SIGHUP, self._hangup)
        signal.signal(signal.SIGUSR1, self._restart_all)
        rlog.info("master %d starting on %s", os.getpid(), config.VAR_DIR)
        for section in config.runners.values():
            if section.start:
                for number in range(section.instances):
                    self._spawn(
                        _Child(
                            section.name,
                            number,
                            section.instances,
                            section.max_restarts,
                        )
                    )
        self._write_status()
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            child = self.children.pop(pid, None)
            if child is not None:
                self._reap(child, os.waitstatus_to_exitcode(status))
            self._write_status()
        rlog.info("master %d stopped", os.getpid())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_status_path())
        os.close(self._lock_fd)
        self._lock_fd = None

    def _spawn(self, child: _Child) -> None:
        argv = [*self.command, "runner", child.spec]
        # Not subprocess: the master reaps its children itself, with os.wait().
        child.pid = os.posix_spawnp(argv[0], argv, os.environ)
        child.restart_expected = False
        self.children[child.pid] = child
        rlog.info("master started runner %s (pid %d)", child.spec, child.pid)

    def _reap(self, child: _Child, code: int) -> None:
        how = (
            f"exit status {code}"
            if code >= 0
            else f"signal {signal.Signals(-code).name}"
        )
        if self._stopping:
            rlog.info("runner %s (pid %d) stopped: %s", child.spec, child.pid, how)
        elif child.restart_expected:
            self._spawn(child)
        elif code == 0:
            rlog.info("runner %s (pid %d) exited", child.spec, child.pid)
        elif child.restarts < child.max_restarts:
            child.restarts += 1
            rlog.error(
                "runner %s (pid %d) died (%s); restart %d of %d",
                child.spec,
                child.pid,
                how,
                child.restarts,
                child.max_restarts,
            )
            self._spawn(child)
        else:
            logging.getLogger("mailqueue.error").error(
                "runner %s (pid %d) died (%s) after %d restarts; giving up on it",
                child.spec,
                child.pid,
                how,
                child.restarts,
            )

    def _signal_children(self, signum: int) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _stop_signal(self, signum: int, frame: object) -> None:
        self._stopping = True
        rlog.info("master caught %s; stopping the runners", signal.Signals(signum).name)
        self._signal_children(signal.SIGTERM)

    def _hangup(self, signum: int, frame: object) -> None:
        reopen_logs()
        self._signal_children(signal.SIGHUP)

    def _restart_all(self, signum: int, frame: object) -> None:
        rlog.info("master caught SIGUSR1; restarting the runners")
        for child in self.children.values():
            child.restart_expected = True
        self._signal_children(signal.SIGTERM)

    def _write_status(self) -> None:
        status = {
            "master": os.getpid(),
            "runners": {
                child.spec: {"pid": pid, "restarts": child.restarts}
                for pid, child in sorted(self.children.items(), key=lambda i: i[1].spec)
            },
        }
        write_file(_status_path(), (json.dumps(status, indent=1).encode(),))

"""The master: one process per runner slice, restarted when it crashes.

The master reads the ``[runner.*]`` sections, starts a runner process for
each slice of each runner whose ``start`` is yes, and waits.  A runner that
exits abnormally is started again after a delay that doubles with each
restart (from :data:`FIRST_RESTART_DELAY` up to :data:`MAX_RESTART_DELAY`).
Only restarts within the runner's ``restart_window`` count against its
``max_restarts``; beyond them the master *gives up* on it for a window
(``status`` says so, and exits non-zero) and then tries again, so a slice
never stays down for good.  Signals to the master go on to the runners:
SIGTERM and SIGINT stop everything (each runner finishes its current
entry), SIGHUP reopens the logs, SIGUSR2 wakes them to try their queues at
once (``mailqueue flush``).  SIGUSR1 (``mailqueue restart`` or ``reload``)
makes the master read its configuration file again and replace its runners
with those the file now configures: every runner stops after its current
entry, and once all have stopped the new ones start, so that two never
work on one entry.  A file that cannot be read, or is not a valid
configuration, is logged and changes nothing.

The master records what it runs in ``$VAR_DIR/master.json``: its pid,
version and start time, the configuration file it read (its digest, when,
and why it could not read it again), its queues, and each slice's state.
``mailqueue status`` shows that, not what the caller's configuration says.
With ``[master] metrics_listen`` set, it also serves the metrics
(:mod:`mailqueue.metrics`) on that loopback address, for as long as it runs.

Every runner holds the read end of a pipe whose write end only the master
holds: however the master ends, even by SIGKILL, its runners read the end of
the pipe and stop after their current entry.  A new master's runners wait
for the old ones' slice locks, so two never work on one slice.

Only one master runs per var directory: it holds a lock on
``$VAR_DIR/master.lck``, which also records its pid.  A master whose own
files cannot be written (a full disk) logs it and keeps supervising.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import select
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from mailqueue import __version__
from mailqueue.configuration import (
    Configuration,
    ConfigurationError,
    config,
    config_file_layer,
    read_configuration_file,
)
from mailqueue.errors import MailqueueError
from mailqueue.logs import logging_to, reopen_logs
from mailqueue.metrics import Counters, MetricsError, MetricsServer
from mailqueue.ownership import lock_file, read_holder, write_holder
from mailqueue.qfile import write_file
from mailqueue.runner import MASTER_FD
from mailqueue.runner import SIGNALS as RUNNER_SIGNALS

__all__ = [
    "FIRST_RESTART_DELAY",
    "MAX_RESTART_DELAY",
    "SIGNALS",
    "Master",
    "MasterError",
    "MasterRunning",
    "master_pid",
    "master_status",
    "run_master",
    "running_master",
    "signal_master",
    "start_master",
    "stop_master",
]

#: The delay before a crashed runner's first restart, in seconds; it doubles
#: with each further restart within the runner's ``restart_window``.
FIRST_RESTART_DELAY = 0.1
#: The longest delay before a restart, in seconds.
MAX_RESTART_DELAY = 60.0
#: The signals the master handles.  ``mailqueue start`` starts it with them
#: blocked, and it unblocks them once its handlers are in place.
SIGNALS = frozenset(
    (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
)

#: The class of a queue held for a person (bad, shunt): no runner runs it.
_HELD = "mailqueue.runner.Runner"

rlog = logging.getLogger("mailqueue.runner")
elog = logging.getLogger("mailqueue.error")


class MasterError(MailqueueError):
    """A master could not be started, found or stopped: the message says why."""


class MasterRunning(MasterError):
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
    text = read_holder(_lock_path())
    if text is None:
        return None
    return int(text) if text.isdigit() else 0


def master_status() -> dict[str, Any]:
    """What the running master last wrote about itself (empty if nothing).

    The keys: ``master`` (its pid), ``version``, ``started`` (seconds since
    the epoch), ``host``, ``configuration`` (``file``, ``digest``, ``read``,
    ``error``), ``queue_dir``, ``queues`` (each queue's directory),
    ``runners`` (each slice it runs: ``pid``, ``state``, ``restarts``) and
    ``not_started`` (the slices its configuration does not start).
    """
    try:
        with open(_status_path()) as stream:
            # The object the master's _write_status() wrote.
            status: dict[str, Any] = json.load(stream)
            return status
    except (FileNotFoundError, ValueError):
        return {}


def running_master() -> int:
    """The pid of the master running on this var directory; MasterError if none."""
    pid = master_pid()
    if pid is None:
        raise MasterError(f"no master is running on {config.VAR_DIR}")
    return pid


def signal_master(signum: int) -> int:
    """Send the running master *signum* (it passes it on to its runners)."""
    pid = running_master()
    os.kill(pid, signum)
    return pid


def run_master(command: list[str], config_file: str | None = None) -> None:
    """Be the master in this process until it stops (see :class:`Master`).

    As in a master :func:`start_master` starts, its signals wait until its
    handlers are in place: a service manager or ``mailqueue reopen`` may
    signal it as soon as it holds its lock.
    """
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        master = Master(command, config_file)
        master.lock()
        with logging_to(config.LOG_DIR):
            master.run()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def start_master(command: list[str], timeout: float = 30) -> int:
    """Start a master in a new session, detached; return its pid.

    *command* is as for :class:`Master`.  Return once the master holds its
    lock: from then on ``master_pid()`` names it.  Its output goes to
    ``$LOG_DIR/master.out``.  Raise :exc:`MasterError` if a master runs
    already, if the new one exits at once, or if it is not up in *timeout*
    seconds (then it is killed).
    """
    running = master_pid()
    if running is not None:
        raise MasterRunning(running)
    os.makedirs(config.LOG_DIR, mode=0o770, exist_ok=True)
    output_path = os.path.join(config.LOG_DIR, "master.out")
    with open(output_path, "ab") as output:
        pid = os.posix_spawnp(
            command[0],
            [*command, "start", "--foreground"],
            os.environ,
            setsid=True,
            # Until its handlers are in place: this returns before that, and
            # a ``mailqueue reopen`` at once must not kill it.
            setsigmask=SIGNALS,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, output.fileno(), 1),
                (os.POSIX_SPAWN_DUP2, output.fileno(), 2),
            ],
        )
    deadline = time.monotonic() + timeout
    while master_pid() != pid:
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            raise MasterError(
                f"the master exited at once (status "
                f"{os.waitstatus_to_exitcode(status)}); see {output_path}"
            )
        if time.monotonic() > deadline:
            # Not up, so it started no runner: it must not come up later,
            # after this said it failed.
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise MasterError(
                f"the master (pid {pid}) did not start within {timeout:g} s"
            )
        time.sleep(0.05)
    return pid


def stop_master(timeout: float = 60) -> int:
    """Stop the running master and its runners; return its pid once it is gone.

    Raise :exc:`MasterError` if no master runs, or if it still runs after
    *timeout* seconds (its runners finish the entry each is working on).
    """
    pid = signal_master(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while master_pid() == pid:
        if time.monotonic() > deadline:
            raise MasterError(
                f"the master (pid {pid}) is still running after {timeout:g} s"
            )
        time.sleep(0.05)
    return pid


@dataclass
class _Child:
    name: str
    slice: int
    count: int
    max_restarts: int
    window: float
    restarts: int = 0
    pid: int | None = None
    #: running, restarting (waiting to be started again), given up, or
    #: stopping (to be replaced, on SIGUSR1).
    state: str = "running"
    #: When to start it again (time.monotonic()), while it is not running.
    start_at: float | None = None
    #: When it died abnormally, within its window.
    deaths: collections.deque[float] = field(default_factory=collections.deque)

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.slice}:{self.count}"


class Master:
    """Start, watch and stop the runner processes.

    *command* runs ``mailqueue`` with the master's configuration, for
    example ``[sys.executable, "-m", "mailqueue", "-C", "site.cfg"]``; a
    runner process is ``command + ["runner", "NAME:SLICE:COUNT"]``.
    *config_file* is that file, already pushed as a layer (see
    :func:`~mailqueue.configuration.config_file_layer`): the master reads it
    again as it starts and on SIGUSR1.
    """

    def __init__(self, command: list[str], config_file: str | None = None) -> None:
        self.command = command
        self.config_file = config_file
        #: The file, as it was last read: what ``master.json`` records.
        self.configuration: dict[str, Any] = {
            "file": config_file,
            "digest": None,
            "read": None,
            "error": None,
        }
        self._started = time.time()
        # Every runner slice, by its spec, running or not.
        self.children: dict[str, _Child] = {}
        self._by_pid: dict[int, _Child] = {}
        self._stopping = False
        # SIGUSR1 came; the runners are stopping, to be replaced.
        self._restart_asked = False
        self._replacing = False
        self._lock_fd: int | None = None
        self._pipe: tuple[int, int] | None = None
        self._write_failed: int | None = None
        #: The restarts it counted, for the metrics.
        self._counters = Counters(config.VAR_DIR)
        self._metrics: MetricsServer | None = None

    def lock(self) -> None:
        """Become this var directory's one master, or raise :exc:`MasterRunning`.

        With ``[master] metrics_listen`` set, also bind the address the
        metrics are served on; :exc:`~mailqueue.metrics.MetricsError` if it
        cannot be (then there is no master).
        """
        os.makedirs(config.VAR_DIR, mode=0o770, exist_ok=True)
        fd = lock_file(_lock_path())
        if fd is None:
            raise MasterRunning(master_pid())
        if config.metrics_listen is not None:
            # Before the pid is written: start_master() waits for it, and
            # so fails, as it should, if the address cannot be had.
            try:
                self._metrics = MetricsServer(config.metrics_listen)
            except MetricsError:
                os.close(fd)
                raise
        write_holder(fd, f"{os.getpid()}\n")
        self._lock_fd = fd

    def run(self) -> None:
        """Start the runners and look after them until they have all stopped."""
        assert self._lock_fd is not None, "lock() first"
        wakeup_read, wakeup_write = os.pipe()
        os.set_blocking(wakeup_read, False)
        os.set_blocking(wakeup_write, False)
        signal.set_wakeup_fd(wakeup_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, self._stop_signal)
        signal.signal(signal.SIGINT, self._stop_signal)
        signal.signal(signal.SIGHUP, self._hangup)
        signal.signal(signal.SIGUSR1, self._ask_restart)
        signal.signal(
            signal.SIGUSR2, lambda signum, frame: self._signal_children(signum)
        )
        # ``mailqueue start`` starts the master with these blocked, so that
        # none kills it before its handlers are in place.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        # The runners' lifeline: they hold the read end, only the master the
        # write end, so they see its end when the master ends.
        self._pipe = os.pipe()
        os.set_inheritable(self._pipe[0], True)
        rlog.info("master %d starting on %s", os.getpid(), config.VAR_DIR)
        if self.config_file is not None:
            self._read_configuration()
        self._start_configured()
        self._write_status()
        if self._metrics is not None:
            self._metrics.start()
        try:
            while self._by_pid or (
                not self._stopping and (self.children or self._replacing)
            ):
                select.select([wakeup_read], [], [], self._timeout())
                with contextlib.suppress(BlockingIOError):
                    os.read(wakeup_read, 4096)
                changed = self._reap_all()
                if self._restart_asked:
                    changed |= self._restart()
                if self._replacing and not self._by_pid:
                    # Every old runner is gone: now the new ones.
                    self._replacing = False
                    self._start_configured()
                    changed = True
                changed |= self._start_due()
                if changed:
                    self._write_status()
        finally:
            if self._metrics is not None:
                self._metrics.close()
            signal.set_wakeup_fd(-1)
            for fd in (wakeup_read, wakeup_write, *self._pipe):
                os.close(fd)
        rlog.info("master %d stopped", os.getpid())
        with contextlib.suppress(OSError):
            os.unlink(_status_path())
        os.close(self._lock_fd)
        self._lock_fd = None

    def _start_configured(self) -> None:
        """Start every slice of every runner the configuration starts."""
        for section in config.runners.values():
            if section.start:
                for number in range(section.instances):
                    child = _Child(
                        section.name,
                        number,
                        section.instances,
                        section.max_restarts,
                        section.restart_window.total_seconds(),
                    )
                    self.children[child.spec] = child
                    self._spawn(child)

    def _read_configuration(self) -> bool:
        """Read the configuration file again; False if it cannot be (logged)."""
        path = self.config_file
        assert path is not None
        try:
            text, digest = read_configuration_file(path)
            # Checked on its own first: the var dir is this master's, and
            # cannot move under it.
            probe = Configuration()
            probe.push(config_file_layer(path), text)
            if probe.VAR_DIR != config.VAR_DIR:
                raise ConfigurationError(
                    f"{path} moves the var dir to {probe.VAR_DIR}: stop the master "
                    "and start it again to move it"
                )
        except ConfigurationError as error:
            elog.error(
                "master cannot read its configuration again: %s; it goes on with "
                "what it read before",
                error,
            )
            self.configuration["error"] = str(error)
            return False
        config.replace(config_file_layer(path), text)
        self.configuration = {
            "file": path,
            "digest": digest,
            "read": time.time(),
            "error": None,
        }
        return True

    def _restart(self) -> bool:
        """Replace the runners, on SIGUSR1; True if anything changed."""
        self._restart_asked = False
        if self._stopping:
            return False
        reading = f"reading {self.config_file} again and " if self.config_file else ""
        rlog.info("master caught SIGUSR1; %srestarting the runners", reading)
        if self.config_file is not None and not self._read_configuration():
            return True  # the status says why nothing else changed
        self._replacing = True
        for spec, child in list(self.children.items()):
            if child.pid is None:
                del self.children[spec]  # restarting, or given up: not running
            else:
                child.state = "stopping"
        self._signal_children(signal.SIGTERM)
        return True

    def _timeout(self) -> float | None:
        due = [c.start_at for c in self.children.values() if c.start_at is not None]
        if self._stopping or not due:
            return None
        return max(0.0, min(due) - time.monotonic())

    def _spawn(self, child: _Child) -> None:
        assert self._pipe is not None
        argv = [*self.command, "runner", child.spec]
        environment = os.environ | {MASTER_FD: str(self._pipe[0])}
        # Not subprocess: the master reaps its children itself, with waitpid().
        # Its signals blocked until it can handle them (see runner.SIGNALS).
        child.pid = os.posix_spawnp(
            argv[0], argv, environment, setsigmask=RUNNER_SIGNALS
        )
        child.state = "running"
        child.start_at = None
        self._by_pid[child.pid] = child
        rlog.info("master started runner %s (pid %d)", child.spec, child.pid)

    def _reap_all(self) -> bool:
        reaped = False
        while self._by_pid:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            child = self._by_pid.pop(pid, None)
            if child is not None:
                self._reap(child, os.waitstatus_to_exitcode(status))
                reaped = True
        return reaped

    def _start_due(self) -> bool:
        if self._stopping:
            return False
        now = time.monotonic()
        due = [
            child
            for child in self.children.values()
            if child.start_at is not None and child.start_at <= now
        ]
        for child in due:
            self._spawn(child)
        return bool(due)

    def _reap(self, child: _Child, code: int) -> None:
        how = (
            f"exit status {code}"
            if code >= 0
            else f"signal {signal.Signals(-code).name}"
        )
        pid, child.pid = child.pid, None
        if self._stopping or self._replacing:
            rlog.info("runner %s (pid %d) stopped: %s", child.spec, pid, how)
            del self.children[child.spec]
            return
        if code == 0:
            rlog.info("runner %s (pid %d) exited", child.spec, pid)
            del self.children[child.spec]
            return
        now = time.monotonic()
        child.deaths.append(now)
        while child.deaths and child.deaths[0] < now - child.window:
            child.deaths.popleft()
        if len(child.deaths) <= child.max_restarts:
            child.restarts += 1
            self._counters.add(child.name, "restarts")
            self._counters.flush()
            delay = min(
                FIRST_RESTART_DELAY * 2 ** (len(child.deaths) - 1), MAX_RESTART_DELAY
            )
            child.state = "restarting"
            child.start_at = now + delay
            rlog.error(
                "runner %s (pid %d) died (%s); restart %d of %d in %g s",
                child.spec,
                pid,
                how,
                len(child.deaths),
                child.max_restarts,
                delay,
            )
        else:
            # Not for good: once the window has passed, it is tried again.
            child.state = "given up"
            child.start_at = now + child.window
            child.deaths.clear()
            elog.error(
                "runner %s (pid %d) died (%s) after %d restarts; giving up on it "
                "for %g s",
                child.spec,
                pid,
                how,
                child.max_restarts,
                child.window,
            )

    def _signal_children(self, signum: int) -> None:
        for pid in self._by_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _stop_signal(self, signum: int, frame: object) -> None:
        self._stopping = True
        rlog.info("master caught %s; stopping the runners", signal.Signals(signum).name)
        self._signal_children(signal.SIGTERM)

    def _hangup(self, signum: int, frame: object) -> None:
        reopen_logs()
        self._signal_children(signal.SIGHUP)

    def _ask_restart(self, signum: int, frame: object) -> None:
        # Done in the loop, which the signal wakes: reading a file and
        # parsing it is no work for a handler.
        self._restart_asked = True

    def _write_status(self) -> None:
        status = {
            "master": os.getpid(),
            "version": __version__,
            "started": self._started,
            "host": config.host_name,
            "configuration": self.configuration,
            "queue_dir": config.QUEUE_DIR,
            "queues": {
                name: section.path
                for name, section in sorted(config.runners.items())
                if section.path
            },
            "not_started": [
                f"{name}:{number}:{section.instances}"
                for name, section in sorted(config.runners.items())
                # A held queue (bad, shunt) has no runner to start.
                if not section.start and section.class_path != _HELD
                for number in range(section.instances)
            ],
            "runners": {
                spec: {
                    "pid": child.pid,
                    "state": child.state,
                    "restarts": child.restarts,
                }
                for spec, child in sorted(self.children.items())
            },
        }
        try:
            write_file(_status_path(), (json.dumps(status, indent=1).encode(),))
        except OSError as error:
            # A full or failing disk must not end the supervision: say so
            # once (for each kind of error) and go on.
            if error.errno != self._write_failed:
                elog.error("master cannot write %s: %s", _status_path(), error)
            self._write_failed = error.errno
        else:
            self._write_failed = None

"""A real, running GNU Mailman 3.3.10 site for tests, and the venv it runs in.

Standard library only: this module runs in the test process (which has
``mailqueue`` and must not import ``mailman``).  Mailman itself runs in a venv
of its own (:func:`mailman_venv`), where ``mailqueue`` is not importable, with
an aiosmtpd server on 127.0.0.1 (``smtp_sink.py``) as its MTA::

    bin_dir = mailman_venv("build/mailman-site-venv")
    with MailmanSite(tmp_path / "site", bin_dir) as site:
        address = site.create_list("test@example.com")
        site.start()
        ids = site.inject_many(10, address)
        site.wait_delivered(ids, timeout=60)

Leaving the ``with`` block stops everything the site started (Mailman's master,
its runners and the SMTP server), whatever happened.  The helpers that run on
Mailman's side are ``flaky_runner.py`` (the pipeline runner the site's
mailman.cfg names) and ``site_tool.py``; Mailman finds them through PYTHONPATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

HERE = Path(__file__).resolve().parent
MAILMAN_REQUIREMENTS = ("mailman==3.3.10", "aiosmtpd")
STAMP = ".mailman-site-stamp"
# The runners Mailman 3.3.10's master starts by default (start: yes).
RUNNERS = frozenset(
    {"archive", "bounces", "command", "digest", "in", "lmtp"}
    | {"out", "pipeline", "rest", "retry", "task", "virgin"}
)
# The queues a post passes through on its way to the SMTP server.
DELIVERY_QUEUES = ("in", "pipeline", "out", "retry", "virgin")
DEFAULT_MEMBERS = ("anne@example.org", "bart@example.org", "cris@example.org")
POSTER = "poster@example.net"


def _clean_env(pythonpath: str | None = None) -> dict[str, str]:
    """This process's environment without what would steer a Python or Mailman.

    PYTHON*, MAILMAN_* (MAILMAN_VAR_DIR, MAILMAN_CONFIG_FILE,
    MAILMAN_EXTRA_TESTING_CFG, ...), COVERAGE_* (a runner imports coverage when
    COVERAGE_PROCESS_START is set) and VIRTUAL_ENV are dropped.
    """
    dropped = ("PYTHON", "MAILMAN_", "COVERAGE_", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in the source tree
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return env


def _run(
    command: list[str], what: str, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run *command*, raising with its output when it fails."""
    done = subprocess.run(
        command, capture_output=True, text=True, stdin=subprocess.DEVNULL, **kwargs
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {done.returncode}): {' '.join(command)}\n"
            f"{done.stdout}{done.stderr}"
        )
    return done


def mailman_venv(directory: str) -> str:
    """Make (or reuse, if complete) a venv with GNU Mailman 3.3.10 and aiosmtpd.

    A stamp file in the venv records a completed install; without it the venv is
    made anew (``sys.executable -m venv --clear``).  Returns the venv's bin
    directory.  Raises RuntimeError if the install fails (with pip's output) or
    if ``mailqueue`` is importable in the venv.
    """
    venv = Path(directory).resolve()
    bin_dir = venv / "bin"
    python = str(bin_dir / "python")
    stamp = venv / STAMP
    wanted = "\n".join(MAILMAN_REQUIREMENTS) + "\n"
    complete = (
        stamp.is_file()
        and stamp.read_text() == wanted
        and (bin_dir / "mailman").is_file()
    )
    if not complete:
        env = _clean_env()
        del env["PYTHONDONTWRITEBYTECODE"]
        _run([sys.executable, "-m", "venv", "--clear", str(venv)], "venv", env=env)
        pip = [python, "-m", "pip", "install", "--quiet", *MAILMAN_REQUIREMENTS]
        _run(pip, "pip install", env=env, cwd=venv)
    # The current directory is on sys.path for -c: run where no mailqueue is.
    probe = subprocess.run(
        [python, "-c", "import mailqueue"],
        capture_output=True,
        text=True,
        cwd=venv,
        env=_clean_env(),
        stdin=subprocess.DEVNULL,
    )
    if probe.returncode == 0:
        raise RuntimeError(f"mailqueue is importable in {venv}")
    version = _run(
        [python, "-c", "import aiosmtpd, mailman.version as v; print(v.VERSION)"],
        "checking the venv",
        cwd=venv,
        env=_clean_env(),
    ).stdout.strip()
    if version != "3.3.10":
        raise RuntimeError(f"{venv} has GNU Mailman {version}, not 3.3.10")
    if not complete:
        stamp.write_text(wanted)
    return str(bin_dir)


#: What Mailman's own test suite needs beside Mailman (its tox.ini's deps).
MAILMAN_TEST_REQUIREMENTS = ("nose2", "flufl.testing")
PLUGIN_STAMP = ".mailman-plugin-stamp"


def build_wheel(directory: str) -> Path:
    """Build mailqueue's wheel from this checkout into *directory*; its path."""
    out = Path(directory).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("mailqueue-*.whl"):
        old.unlink()
    root = HERE.parent.parent
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
    _run([*command, "-w", str(out), str(root)], "pip wheel", cwd=out)
    (wheel,) = out.glob("mailqueue-*.whl")
    return wheel


def plugin_venv(directory: str, wheel: Path) -> str:
    """A venv with GNU Mailman 3.3.10, aiosmtpd, Mailman's test needs, and *wheel*.

    Mailman and its needs are installed once (a stamp records it); the wheel
    (mailqueue, built from this checkout) is installed anew each time, so the
    venv runs the code under test.  Returns the venv's bin directory.
    """
    venv = Path(directory).resolve()
    bin_dir = venv / "bin"
    python = str(bin_dir / "python")
    stamp = venv / PLUGIN_STAMP
    wanted = "\n".join(MAILMAN_REQUIREMENTS + MAILMAN_TEST_REQUIREMENTS) + "\n"
    env = _clean_env()
    del env["PYTHONDONTWRITEBYTECODE"]
    if not (stamp.is_file() and stamp.read_text() == wanted):
        _run([sys.executable, "-m", "venv", "--clear", str(venv)], "venv", env=env)
        needs = [*MAILMAN_REQUIREMENTS, *MAILMAN_TEST_REQUIREMENTS]
        pip = [python, "-m", "pip", "install", "--quiet", *needs]
        _run(pip, "pip install", env=env, cwd=venv)
        stamp.write_text(wanted)
    install = [python, "-m", "pip", "install", "--quiet", "--no-deps"]
    _run(
        [*install, "--force-reinstall", str(wheel)],
        "installing mailqueue",
        env=env,
        cwd=venv,
    )
    return str(bin_dir)


def post_text(message_id: str, list_address: str, flaky: bool = False) -> str:
    """A post to *list_address* with this Message-ID (``X-Flaky: fail`` if flaky)."""
    lines = [
        f"From: {POSTER}",
        f"To: {list_address}",
        f"Subject: mailqueue test {message_id}",
        f"Message-ID: {message_id}",
    ]
    if flaky:
        lines.append("X-Flaky: fail")
    return "\n".join([*lines, "", f"The body of {message_id}.", ""])


def _free_ports(count: int) -> list[int]:
    """*count* distinct TCP ports free on 127.0.0.1 (at the time of asking)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class Proc:
    """What /proc says of one process."""

    pid: int
    ppid: int
    state: str
    argv: tuple[str, ...]
    var_dir: str | None  # MAILMAN_VAR_DIR in its environment


def _processes() -> list[Proc]:
    """Every process that /proc shows (those that vanish meanwhile left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            argv = (entry / "cmdline").read_bytes().decode(errors="replace")
            environ = (entry / "environ").read_bytes().decode(errors="replace")
        except OSError:  # gone, or not ours to read
            continue
        fields = dict(
            line.split(":\t", 1) for line in status.splitlines() if ":\t" in line
        )
        var_dir = None
        for item in environ.split("\0"):
            if item.startswith("MAILMAN_VAR_DIR="):
                var_dir = item.partition("=")[2]
        found.append(
            Proc(
                pid=int(entry.name),
                ppid=int(fields.get("PPid", "0")),
                state=fields.get("State", "?")[:1],
                argv=tuple(arg for arg in argv.split("\0") if arg),
                var_dir=var_dir,
            )
        )
    return found


def _alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@dataclass(frozen=True)
class SitePaths:
    """Where a site keeps its files."""

    root: Path
    cfg_file: Path
    var_dir: Path
    queue_dir: Path
    log_dir: Path
    lock_file: Path
    pid_file: Path
    sink_file: Path  # the SMTP server's JSON lines
    flaky_flag: Path
    tempfail_flag: Path


class MailmanSite:
    """A GNU Mailman site under *root_dir*, run by the venv whose bin dir is given.

    Entering starts the SMTP server and writes ``<root>/etc/mailman.cfg``;
    :meth:`start` starts Mailman's master and runners; leaving (or
    :meth:`stop`) stops all of it.  Every Mailman command runs as
    ``<venv_bin>/mailman -C <cfg> ...`` in *root_dir*, with PYTHONPATH this
    directory (for ``flaky_runner`` and ``site_tool``).
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        venv_bin: str,
        extra_cfg: str = "",
        address_space: int | None = None,
    ) -> None:
        """*extra_cfg* is added to the end of mailman.cfg; with *address_space*
        (bytes), Mailman's master and runners may map at most that much."""
        root = Path(root_dir).resolve()
        var_dir = root / "var"
        self.venv_bin = Path(venv_bin)
        self.paths = SitePaths(
            root=root,
            cfg_file=root / "etc" / "mailman.cfg",
            var_dir=var_dir,
            queue_dir=var_dir / "queue",
            log_dir=var_dir / "logs",
            lock_file=var_dir / "locks" / "master.lck",
            pid_file=var_dir / "master.pid",
            sink_file=root / "smtp-received.jsonl",
            flaky_flag=root / "flaky-on",
            tempfail_flag=root / "smtp-tempfail",
        )
        self.smtp_port = self.lmtp_port = self.rest_port = 0
        self.master_pid: int | None = None
        #: Processes :meth:`stop` had to kill -9 (empty after a clean stop).
        self.forced_kills: list[Proc] = []
        self._env = _clean_env(pythonpath=str(HERE))
        self._sink: subprocess.Popen[bytes] | None = None
        self._sink_log: IO[bytes] | None = None
        self._posts = 0
        self._extra_cfg = extra_cfg
        self._address_space = address_space

    # -- life cycle ---------------------------------------------------------

    def __enter__(self) -> MailmanSite:
        try:
            self.paths.root.mkdir(parents=True, exist_ok=True)
            self.smtp_port, self.lmtp_port, self.rest_port = _free_ports(3)
            self._start_sink()
            self._write_cfg()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_sink(self) -> None:
        self._sink_log = open(self.paths.root / "smtp-sink.log", "ab")  # noqa: SIM115
        self._sink = subprocess.Popen(
            [
                str(self.venv_bin / "python"),
                str(HERE / "smtp_sink.py"),
                str(self.smtp_port),
                str(self.paths.sink_file),
                str(self.paths.tempfail_flag),
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._sink_log,
            stderr=subprocess.STDOUT,
            cwd=self.paths.root,
            env=_clean_env(),
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not _accepts(self.smtp_port):
            if self._sink.poll() is not None or time.monotonic() > deadline:
                log = (self.paths.root / "smtp-sink.log").read_text(errors="replace")
                raise RuntimeError(f"the SMTP sink did not start:\n{log}")
            time.sleep(0.1)

    def _write_cfg(self) -> None:
        etc = self.paths.cfg_file.parent
        etc.mkdir(parents=True, exist_ok=True)
        # Mailman's own gunicorn settings, and no control socket: gunicorn >= 25.1
        # would make one in $HOME/.gunicorn/, shared by every site.
        (etc / "gunicorn.cfg").write_text(
            "[gunicorn]\n"
            "graceful_timeout = 30\n"
            "timeout = 360\n"
            "control_socket_disable = true\n"
        )
        self.paths.cfg_file.write_text(
            f"""\
# Written by tests/mailman_site/site.py.
[mailman]
layout: site
site_owner: postmaster@example.com

[paths.site]
var_dir: {self.paths.var_dir}

[devmode]
enabled: no

[mta]
incoming: mailman.mta.null.NullMTA
smtp_host: 127.0.0.1
smtp_port: {self.smtp_port}
lmtp_host: 127.0.0.1
lmtp_port: {self.lmtp_port}

[webservice]
hostname: 127.0.0.1
port: {self.rest_port}
configuration: {etc / "gunicorn.cfg"}

[runner.pipeline]
class: flaky_runner.FlakyPipelineRunner

[runner.retry]
sleep_time: 2s
"""
            + self._extra_cfg
        )

    def start(self, timeout: float = 60.0) -> None:
        """``mailman start``; wait until the master and all its runners are up.

        Up means: the master's pid file names a live process, /proc shows one
        child of it per runner (``--runner=NAME:SLICE:COUNT`` in its command
        line), each runner has logged "NAME runner started." and ``mailman
        status`` says running.  The SMTP sink is started again first if it is
        not running (after :meth:`stop`).
        """
        if self._sink is None or self._sink.poll() is not None:
            self._stop_sink()
            self._start_sink()  # on the port the cfg names
        self.master_pid = None  # until the new master's pid file names it
        mailman_log = self.paths.log_dir / "mailman.log"
        offset = mailman_log.stat().st_size if mailman_log.exists() else 0
        # The master inherits the output of `mailman start`: a pipe would never
        # reach end of file, so it goes to a file.
        with open(self.paths.root / "mailman-start.log", "ab") as out:
            started = subprocess.run(
                self._command("start"),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.paths.root,
                env=self._env,
                timeout=timeout,
                preexec_fn=self._limit,
            )
        if started.returncode != 0:
            raise RuntimeError(f"mailman start failed:\n{self._start_log()}")
        deadline = time.monotonic() + timeout
        while True:
            missing = self._runners_missing(mailman_log, offset)
            if self.master_pid is not None and not missing:
                break
            if self.master_pid is not None and not _alive(self.master_pid):
                raise RuntimeError(f"the Mailman master exited:\n{self._start_log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"Mailman did not start in {timeout} s (missing: {missing}):\n"
                    f"{self._start_log()}"
                )
            time.sleep(0.2)
        status = self.mailman("status", check=False)  # exits 1 when running
        if "GNU Mailman is running" not in status.stdout:
            raise RuntimeError(f"mailman status: {status.stdout}{status.stderr}")

    def _limit(self) -> None:
        # In the child, before it runs `mailman start`: its master and
        # runners inherit the limit.
        if self._address_space is not None:
            limit = (self._address_space, self._address_space)
            resource.setrlimit(resource.RLIMIT_AS, limit)

    def _runners_missing(self, mailman_log: Path, offset: int) -> list[str]:
        try:
            self.master_pid = int(self.paths.pid_file.read_text().strip())
        except (OSError, ValueError):
            return sorted(RUNNERS)
        up = {
            arg.removeprefix("--runner=").split(":")[0]
            for proc in _processes()
            if proc.ppid == self.master_pid and proc.state != "Z"
            for arg in proc.argv
            if arg.startswith("--runner=")
        }
        try:
            with open(mailman_log, "rb") as fp:
                fp.seek(offset)
                logged = fp.read().decode(errors="replace")
        except FileNotFoundError:
            logged = ""
        return sorted(
            name
            for name in RUNNERS
            if name not in up or f"{name} runner started." not in logged
        )

    def _start_log(self) -> str:
        parts = []
        root = self.paths.root
        for path in [
            root / "mailman-start.log",
            root / "smtp-sink.log",
            *self._log_files(),
        ]:
            if not path.exists():
                continue
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop everything the site started; safe to call at any point, twice.

        :meth:`stop_mailman`, then the SMTP sink (SIGTERM, SIGKILL after 5 s),
        whatever the first raised.
        """
        try:
            self.stop_mailman()
        finally:
            self._stop_sink()

    def stop_mailman(self) -> None:
        """Stop Mailman's master and runners (the SMTP sink goes on running).

        ``mailman stop`` and a bounded wait (30 s) for the master to go; then
        kill -9 whatever is left of the site (a process whose command line names
        the cfg file or whose MAILMAN_VAR_DIR is this var dir, and their
        descendants), recorded in :attr:`forced_kills`.  Raises RuntimeError if
        a process survives.  :meth:`start` may follow.
        """
        if self.paths.pid_file.exists() and self.paths.cfg_file.exists():
            with contextlib.suppress(OSError, ValueError):
                self.master_pid = int(self.paths.pid_file.read_text().strip())
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.mailman("stop", check=False, timeout=60)
        if self.master_pid is not None:
            deadline = time.monotonic() + 30
            while _alive(self.master_pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        left = self._kill_leftovers()
        if left:
            raise RuntimeError(f"processes left running: {left}")

    def _site_processes(self) -> list[Proc]:
        """The live processes of this site and their descendants.

        Of the site: those whose command line names the cfg file or whose
        MAILMAN_VAR_DIR (which the master sets for itself and passes on to its
        runners) is this var dir.
        """
        cfg, var_dir = str(self.paths.cfg_file), str(self.paths.var_dir)
        live = [proc for proc in _processes() if proc.state != "Z"]
        ours = {
            proc.pid
            for proc in live
            if proc.var_dir == var_dir or any(cfg in arg for arg in proc.argv)
        }
        ours.discard(os.getpid())
        while grown := {p.pid for p in live if p.ppid in ours and p.pid not in ours}:
            ours |= grown
        return [proc for proc in live if proc.pid in ours]

    def _kill_leftovers(self) -> list[Proc]:
        """kill -9 the site's processes until none is left (10 s at most)."""
        deadline = time.monotonic() + 10
        while (left := self._site_processes()) and time.monotonic() < deadline:
            for proc in left:
                if proc.pid not in {known.pid for known in self.forced_kills}:
                    self.forced_kills.append(proc)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            time.sleep(0.1)
        master_gone = self.master_pid is not None and not _alive(self.master_pid)
        if master_gone and not left:
            # A master that was killed leaves its pid file and lock behind, and
            # `mailman start` would refuse the stale lock.
            self.paths.pid_file.unlink(missing_ok=True)
            for path in self.paths.lock_file.parent.glob(
                self.paths.lock_file.name + "*"
            ):
                path.unlink(missing_ok=True)
        return left

    def _stop_sink(self) -> None:
        if self._sink is not None:
            if self._sink.poll() is None:
                self._sink.terminate()
                try:
                    self._sink.wait(5)
                except subprocess.TimeoutExpired:
                    self._sink.kill()
                    self._sink.wait()
            self._sink = None
        if self._sink_log is not None:
            self._sink_log.close()
            self._sink_log = None

    # -- Mailman commands ---------------------------------------------------

    def _command(self, *args: str) -> list[str]:
        command = [str(self.venv_bin / "mailman"), "-C", str(self.paths.cfg_file)]
        if os.geteuid() == 0:  # Mailman refuses root without this
            command.append("--run-as-root")
        return [*command, *args]

    def mailman(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``mailman -C <cfg> ARGS...`` (output captured; raises if check fails)."""
        done = subprocess.run(
            self._command(*args),
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            text=True,
            cwd=self.paths.root,
            env=self._env,
            timeout=timeout,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"mailman {' '.join(args)} failed (exit {done.returncode}):\n"
                f"{done.stdout}{done.stderr}"
            )
        return done

    def create_list(self, fqdn: str, members: Iterable[str] = DEFAULT_MEMBERS) -> str:
        """Create the list *fqdn* (and its domain), open to every poster, with members.

        Posts from members and nonmembers are accepted without moderation
        (``mailman shell -r site_tool.open_posting``); *members* are added with
        ``mailman addmembers`` and no welcome message.  Returns *fqdn*.
        """
        self.mailman("create", "--quiet", fqdn)
        self.mailman("shell", "--run", "site_tool.open_posting", "--listspec", fqdn)
        addresses = "".join(f"{address}\n" for address in members)
        if addresses:
            self.mailman("addmembers", "--no-welcome-msg", "-", fqdn, input=addresses)
        return fqdn

    def inject(self, text: str, list: str, queue: str = "in") -> None:
        """``mailman inject -q QUEUE LIST`` with *text* on standard input."""
        self.mailman("inject", "--queue", queue, list, input=text)

    def inject_many(
        self, n: int, list: str, fail: bool = False, queue: str = "in"
    ) -> list[str]:
        """Enqueue *n* posts to *list* with one Python; return their Message-IDs.

        Each gets a new Message-ID ``<mq-test-N@example.com>`` (N counts on
        across calls) and, if *fail*, the header ``X-Flaky: fail``.  They go
        through ``mailman.app.inject.inject_text`` as ``mailman inject`` does.
        """
        ids = [f"<mq-test-{self._posts + i}@example.com>" for i in range(1, n + 1)]
        self._posts += n
        batch = self.paths.root / f"inject-{self._posts}.json"
        batch.write_text(json.dumps([post_text(mid, list, fail) for mid in ids]))
        try:
            _run(
                [
                    str(self.venv_bin / "python"),
                    str(HERE / "site_tool.py"),
                    "inject",
                    str(self.paths.cfg_file),
                    list,
                    queue,
                    str(batch),
                ],
                "site_tool.py inject",
                cwd=self.paths.root,
                env=self._env,
                timeout=300,
            )
        finally:
            batch.unlink()
        return ids

    # -- what happened ------------------------------------------------------

    def delivered(self) -> list[dict[str, Any]]:
        """The messages the SMTP server received so far, oldest first.

        Each: ``mail_from``, ``rcpt_tos``, ``message_id``, ``data``.
        """
        try:
            text = self.paths.sink_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        lines = text.split("\n")[:-1]  # a last line without its newline: not yet
        return [json.loads(line) for line in lines if line]

    def wait_delivered(
        self, message_ids: Iterable[str], timeout: float = 60.0
    ) -> Counter[str]:
        """Wait until each Message-ID was received at least once.

        Returns the Counter of the Message-IDs received (all of them, not only
        those asked for); raises TimeoutError naming the missing ones.
        """
        wanted = set(message_ids)
        deadline = time.monotonic() + timeout
        while True:
            received = Counter(entry["message_id"] for entry in self.delivered())
            missing = wanted - set(received)
            if not missing:
                return received
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(missing)} of {len(wanted)} not delivered in {timeout} s: "
                    f"{sorted(missing)[:10]}"
                )
            time.sleep(0.2)

    def queue_files(self, queue: str, suffix: str = ".pck") -> list[Path]:
        """The files of one of Mailman's queue directories with this suffix."""
        return sorted((self.paths.queue_dir / queue).glob("*" + suffix))

    def queue_entries(self, queue: str) -> list[dict[str, Any]]:
        """Each ``.pck`` entry of *queue*: ``file``, ``message_id``, ``metadata``.

        Read by Mailman's venv (the message is a pickled Mailman object);
        metadata values that are not JSON come as their repr.
        """
        done = _run(
            [
                str(self.venv_bin / "python"),
                str(HERE / "site_tool.py"),
                "queue",
                str(self.paths.queue_dir / queue),
            ],
            "site_tool.py queue",
            cwd=self.paths.root,
            env=self._env,
        )
        entries: list[dict[str, Any]] = json.loads(done.stdout)
        return entries

    def wait_queues_empty(
        self, queues: Iterable[str] = DELIVERY_QUEUES, timeout: float = 60.0
    ) -> None:
        """Wait until these queue directories hold no entry (.pck or .bak)."""
        queues = tuple(queues)
        deadline = time.monotonic() + timeout
        while True:
            busy = {
                queue: len(files)
                for queue in queues
                if (files := self.queue_files(queue) + self.queue_files(queue, ".bak"))
            }
            if not busy:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"queues not empty after {timeout} s: {busy}")
            time.sleep(0.2)

    def _log_files(self) -> list[Path]:
        if not self.paths.log_dir.is_dir():
            return []
        return sorted(path for path in self.paths.log_dir.iterdir() if path.is_file())

    def logs(self) -> dict[str, str]:
        """The text of each file in Mailman's log directory, by file name."""
        return {
            path.name: path.read_text(errors="replace") for path in self._log_files()
        }

    # -- switches -----------------------------------------------------------

    def set_flaky(self, on: bool) -> None:
        """Turn the pipeline runner's failures for ``X-Flaky: fail`` on or off."""
        self._flag(self.paths.flaky_flag, on)

    def set_smtp_tempfail(self, on: bool) -> None:
        """Make the SMTP server answer DATA with 451 (on) or accept again (off)."""
        self._flag(self.paths.tempfail_flag, on)

    @staticmethod
    def _flag(path: Path, on: bool) -> None:
        if on:
            path.touch()
        else:
            path.unlink(missing_ok=True)

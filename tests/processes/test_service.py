"""The service files mailqueue ships, run as systemd and logrotate run them.

The unit and the logrotate file assume the layout of docs/service.rst
(/opt/mailqueue, /etc/mailqueue, /var/lib/mailqueue, /var/log/mailqueue).
Here that layout lives under a test's root directory: every path of it in the
files is taken below the root, as a container's or ``systemctl --root``'s
would be.  What else the files say is parsed by the rules systemd and
logrotate read them with, as far as these files use them; anything else in
them fails the test, so that a change to the files brings a change here.
"""

import contextlib
import fcntl
import grp
import importlib.resources
import json
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import textwrap

import pytest
from sites import process_gone, wait_for

from mailqueue.cli import main

#: The directories of the layout the shipped files assume.
LAYOUT = (
    "/etc/mailqueue",
    "/opt/mailqueue",
    "/var/lib/mailqueue",
    "/var/log/mailqueue",
)

#: The environment systemd gives a system service's processes, before its
#: own Environment= settings (systemd.exec(5)).
SYSTEMD_ENVIRONMENT = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


def environment(**settings):
    """systemd's environment with *settings*, and what runs the code under test."""
    return (
        SYSTEMD_ENVIRONMENT
        | settings
        | {
            key: value
            for key, value in os.environ.items()
            if key.startswith(("PYTHON", "COVERAGE_"))
        }
    )


def shipped(name):
    return (importlib.resources.files("mailqueue") / "data" / name).read_text()


def rooted(text, root):
    """*text* with the layout's directories taken below *root*."""
    for directory in LAYOUT:
        text = text.replace(directory, f"{root}{directory}")
    return text


# systemd's unit files (systemd.syntax(7), systemd.service(5)) ---------------


def parse_unit(text):
    """The settings of a unit file: {section: {key: [value, ...]}}.

    Comment lines start with # or ;, a line ending in a backslash goes on on
    the next, a key may be given more than once, and an empty value resets
    what the key had.
    """
    sections = {}
    section = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("#", ";")) or not (line or pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("["):
            assert line.endswith("]"), raw
            section = sections.setdefault(line[1:-1], {})
            continue
        key, equals, value = line.partition("=")
        assert equals and section is not None, raw
        values = section.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return sections


def setting(unit, section, key):
    """The value of a setting given once (the last one counts)."""
    return unit[section][key][-1]


def words(value):
    """The words of a value: whitespace-separated, quotes as in a shell.

    Specifiers (%), environment variables ($) and backslash escapes are not
    emulated here; the shipped files use none.
    """
    assert not set(value) & set("%$\\"), f"not emulated: {value!r}"
    return shlex.split(value)


def command_line(value):
    """An Exec line: its prefixes (- @ : + !), and the argv to execute."""
    prefixes = ""
    while value[:1] in ("-", "@", ":", "+", "!"):
        prefixes, value = prefixes + value[0], value[1:]
    # "+" and "!" are about privileges, which a test cannot take away.
    assert not set(prefixes) & set("+!@"), f"not emulated: {prefixes}"
    argv = words(value)
    assert os.path.isabs(argv[0]), "systemd runs a command by its absolute path"
    return prefixes, argv


class Service:
    """The unit's service, started and stopped as systemd would.

    Its User= and Group= cannot be honoured without a mailqueue user: it
    runs as whoever runs the tests.  The sandbox (NoNewPrivileges=,
    PrivateTmp=, ProtectSystem=) is left out too.  Everything else the
    unit's [Service] says, this does.
    """

    def __init__(self, unit):
        self.unit = unit
        self.environment = environment(
            **dict(
                word.split("=", 1)
                for value in unit["Service"].get("Environment", [])
                for word in words(value)
            )
        )
        self.directory = setting(unit, "Service", "WorkingDirectory")
        self.umask = int(setting(unit, "Service", "UMask"), 8)
        self.process = None

    def run(self, key, **options):
        """Run the unit's ExecStop= (ExecReload=, ...) to its end."""
        prefixes, argv = command_line(setting(self.unit, "Service", key))
        environment = self.environment | {"MAINPID": str(self.process.pid)}
        result = subprocess.run(
            argv,
            env=environment,
            cwd=self.directory,
            umask=self.umask,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return prefixes, result

    def start(self, output):
        """Run ExecStart=, in its own session, as systemd does."""
        prefixes, argv = command_line(setting(self.unit, "Service", "ExecStart"))
        assert prefixes == ""
        self.process = subprocess.Popen(
            argv,
            env=self.environment,
            cwd=self.directory,
            umask=self.umask,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )

    def status(self):
        """``mailqueue status --json``, as an operator would run it beside it."""
        _, argv = command_line(setting(self.unit, "Service", "ExecStart"))
        result = subprocess.run(
            [argv[0], "status", "--json"],
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return json.loads(result.stdout)

    def up(self):
        """Its master runs every runner it starts (and handles signals)."""
        assert self.process.poll() is None, "the master exited"
        runners = self.status()["runners"]
        return bool(runners) and all(
            runner["state"] == "running" for runner in runners.values()
        )


@pytest.fixture
def layout(tmp_path):
    """The layout of docs/service.rst under *tmp_path*, with mailqueue installed.

    The installation is this interpreter's: its ``mailqueue`` command is a
    script that runs it, as a virtual environment's would.
    """
    root = tmp_path / "root"
    for directory in LAYOUT:
        (root / directory.lstrip("/")).mkdir(parents=True)
    script = root / "opt/mailqueue/bin/mailqueue"
    script.parent.mkdir()
    script.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m mailqueue "$@"\n'
    )
    script.chmod(0o755)
    # The configuration the page gives.
    (root / "etc/mailqueue/mailqueue.cfg").write_text(
        rooted(
            textwrap.dedent("""\
                [paths]
                var_dir: /var/lib/mailqueue
                log_dir: /var/log/mailqueue
                """),
            root,
        )
    )
    return root


@contextlib.contextmanager
def running(layout):
    """The unit's service, started, up, and stopped in any case afterwards."""
    unit = parse_unit(rooted(shipped("mailqueue.service"), layout))
    service = Service(unit)
    with open(layout / "master.journal", "wb") as journal:
        service.start(journal)
    try:
        wait_for(service.up, 60, "the service's runners")
        yield service
    finally:
        if service.process.poll() is None:
            service.process.send_signal(signal.SIGTERM)  # as systemd would
            service.process.wait(120)


def log(layout, name):
    try:
        return (layout / "var/log/mailqueue" / name).read_text()
    except FileNotFoundError:
        return ""


def test_the_unit_runs_the_master_and_stops_it_as_systemd_would(layout):
    unit = parse_unit(rooted(shipped("mailqueue.service"), layout))
    assert setting(unit, "Service", "Type") == "exec"  # the master stays in front
    assert setting(unit, "Service", "User") == "mailqueue"
    assert setting(unit, "Service", "Group") == "mailqueue"
    assert setting(unit, "Install", "WantedBy") == "multi-user.target"
    with running(layout) as service:
        status = service.status()
        assert status["master"] == service.process.pid  # ExecStart is the master
        runners = [runner["pid"] for runner in status["runners"].values()]
        # UMask=0007: what the service makes is its group's, not the world's.
        made = os.stat(layout / "var/log/mailqueue/runner.log").st_mode
        assert stat.S_IMODE(made) == 0o660
        prefixes, stop = service.run("ExecStop")
        assert (stop.returncode, stop.stdout) == (
            0,
            f"mailqueue master (pid {service.process.pid}) stopped\n",
        )
        # The master is gone, its runners with it: nothing is left for
        # KillMode=mixed to kill.
        assert service.process.wait(60) == 0  # a clean stop, not a failure
        assert all(process_gone(pid) for pid in runners)
        assert "runner in:0:1 (pid" in log(layout, "runner.log")
        # ExecStop once the master is gone (it died, or was stopped) fails,
        # and its "-" makes that no failure of the stop.
        prefixes, again = service.run("ExecStop")
        assert "-" in prefixes
        assert again.returncode == 1
        assert "no master is running" in again.stderr


def test_the_unit_is_valid_for_systemd(layout, tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "mailqueue.service"
    unit.write_text(rooted(shipped("mailqueue.service"), layout))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_a_signal_as_soon_as_a_foreground_master_holds_its_lock_waits(site):
    # Under systemd (Type=exec) the master may be signalled as soon as it
    # runs: ``systemctl start mailqueue && mailqueue reopen``, logrotate's
    # postrotate.  A SIGHUP just after it took its lock, before its handler
    # was in place, once killed it; now it waits for the handler.
    site = site("[runner.in]\nstart: no\n[runner.out]\nstart: no\n")
    early = textwrap.dedent(f"""\
        import os, signal, sys
        from mailqueue import master
        from mailqueue.cli import main

        lock = master.Master.lock

        def lock_and_be_signalled(self):
            lock(self)
            os.kill(os.getpid(), signal.SIGHUP)

        master.Master.lock = lock_and_be_signalled
        sys.exit(main(["-C", {site.config_file!r}, "start", "--foreground"]))
        """)
    result = subprocess.run(
        [sys.executable, "-c", early], capture_output=True, timeout=120, check=False
    )
    assert result.returncode == 0, result  # not -SIGHUP
    assert "stopped" in site.log("runner.log")


def test_the_foreground_master_leaves_the_callers_signal_mask_as_it_was(var_dir):
    with contextlib.ExitStack() as stack:
        held = os.path.join(var_dir, "master.lck")
        os.makedirs(var_dir, exist_ok=True)
        # Another master holds the lock: this one cannot start.
        fd = os.open(held, os.O_RDWR | os.O_CREAT, 0o660)
        stack.callback(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"12345\n")
        before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert main(["start", "--foreground"]) == 1
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


# logrotate's configuration (logrotate(8)) -----------------------------------


def parse_logrotate(text):
    """The blocks of a logrotate file: [(patterns, directives, scripts)].

    Directives are lists of words; scripts (postrotate ... endscript,
    and the like) are the shell text between the two lines.
    """
    blocks = []
    lines = iter(text.splitlines())
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert line.endswith("{"), f"only blocks are emulated: {raw!r}"
        patterns = words(line[:-1])
        directives, scripts = [], {}
        for raw in lines:
            line = raw.strip()
            if line == "}":
                break
            if line in ("prerotate", "postrotate", "firstaction", "lastaction"):
                script = []
                for raw in lines:
                    if raw.strip() == "endscript":
                        break
                    script.append(raw)
                scripts[line] = textwrap.dedent("\n".join(script))
            elif line and not line.startswith("#"):
                directives.append(line.split())
        blocks.append((patterns, directives, scripts))
    return blocks


def emulated_logrotate(root):
    """Rotate the logs as logrotate does at a first rotation, then postrotate.

    Each log that is there and not empty (missingok, notifempty) becomes
    NAME.1 (delaycompress: compressed only at the next rotation), a new
    empty log is made (create MODE USER GROUP, as the current user), and the
    postrotate script runs once for them all (sharedscripts), by /bin/sh.
    """
    [(patterns, directives, scripts)] = parse_logrotate(shipped("mailqueue.logrotate"))
    assert patterns == ["/var/log/mailqueue/*.log"]
    assert ["su", "mailqueue", "mailqueue"] in directives
    options = {directive[0]: directive[1:] for directive in directives}
    assert {"missingok", "notifempty", "delaycompress", "sharedscripts"} <= set(options)
    mode = int(options["create"][0], 8)
    for pattern in patterns:
        for log in sorted(root.glob(pattern.lstrip("/"))):
            if log.stat().st_size:
                log.rename(f"{log}.1")
                log.touch(mode)
                log.chmod(mode)
    return subprocess.run(
        ["/bin/sh", "-c", rooted(scripts["postrotate"], root), "sh", *patterns],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=120,
        check=False,
    )


def real_logrotate(root):
    """Run logrotate itself on the shipped file, as the current user."""
    command = shutil.which("logrotate", path=f"{os.environ['PATH']}:/usr/sbin")
    if command is None:
        pytest.skip("logrotate is not installed")
    # Without a mailqueue user, its files are the current user's.
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    configuration = root / "logrotate.conf"
    configuration.write_text(
        rooted(shipped("mailqueue.logrotate"), root).replace(
            "mailqueue mailqueue", f"{user} {group}"
        )
    )
    return subprocess.run(
        [command, "--force", "--state", str(root / "logrotate.state"), configuration],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("rotate", [emulated_logrotate, real_logrotate])
def test_after_logrotate_the_master_and_runners_log_to_the_new_files(layout, rotate):
    old = layout / "var/log/mailqueue/runner.log.1"
    reopened = "caught SIGHUP; reopened the logs"
    with running(layout) as service:
        runners = len(service.status()["runners"])
        result = rotate(layout)
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
        assert reopened not in old.read_text()

        def every_runner_reopened():
            return (log(layout, "runner.log") + old.read_text()).count(
                reopened
            ) == runners

        wait_for(every_runner_reopened, 60, "the runners' SIGHUP lines")
        assert reopened not in old.read_text()
        _, stop = service.run("ExecStop")
        assert stop.returncode == 0, stop.stderr
        service.process.wait(60)
    # The master's last lines went to the new file too.
    assert f"master {service.process.pid} stopped" in log(layout, "runner.log")
    assert "stopped" not in old.read_text()
    # With no master, postrotate has nothing to reopen, and that is no error.
    result = rotate(layout)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_service_files_prints_the_shipped_files(capsys):
    for which, name in (
        ("systemd", "mailqueue.service"),
        ("logrotate", "mailqueue.logrotate"),
    ):
        assert main(["service-files", which]) == 0
        assert capsys.readouterr().out == shipped(name)

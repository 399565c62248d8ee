"""The ``mailqueue`` command: run, feed and inspect the queues.

Every command takes the configuration from ``-C FILE`` or the
``MAILQUEUE_CONFIG`` environment variable; with neither, the defaults hold
and all state lives under ``./var``, in the working directory.  A mistake in
what a command was given is reported as one line on standard error, with
exit status 1 (2 for a command line argparse cannot parse): checked at the
door, before anything is done, where it can be (an unknown queue or list, a
var dir or queue directory that is not one).  What is odd in the
configuration but not wrong is said as a ``mailqueue: warning:`` line.

This module holds the parser, the entry point and the master's commands;
:mod:`mailqueue.cli_queues` the commands that feed and inspect the queues;
:mod:`mailqueue.cli_base` what both share (how a command is declared, and
the checks at the door).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from mailqueue import __version__, cli_queues, queuetools
from mailqueue.cli_base import (
    Command,
    CommandError,
    Commands,
    arg,
    check_directories,
    check_site,
    positive_seconds,
)
from mailqueue.configuration import (
    ConfigurationError,
    config,
    config_file_layer,
    read_configuration_file,
)
from mailqueue.conformance import command as conformance
from mailqueue.errors import MailqueueError
from mailqueue.logs import logging_to
from mailqueue.mailman_site import MailmanSite, master_state
from mailqueue.master import (
    master_pid,
    master_status,
    run_master,
    signal_master,
    start_master,
    stop_master,
)
from mailqueue.ownership import slice_states
from mailqueue.runner import parse_runner_spec, runner_class
from mailqueue.seal import KEPT_KEYS

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mailqueue`` command with *argv*; return its exit status."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    if arguments.command_name == "conformance":
        # About another implementation: no site, no configuration.
        return int(arguments.command(arguments, None))
    config_file = arguments.config or os.environ.get("MAILQUEUE_CONFIG")
    try:
        with _configuration(config_file), _mailman_option(arguments.mailman):
            for warning in config.warnings:
                print(f"mailqueue: warning: {warning}", file=sys.stderr)
            check_directories(arguments.command_name)
            check_site(arguments.command_name)
            return arguments.command(arguments, config_file) or 0
    except BrokenPipeError:
        raise  # the reader went away: console_script deals with it
    except (MailqueueError, OSError) as error:
        # The user's to put right (a mistake in what was given or in the
        # configuration, a bad queue file, a full disk): one line.  Anything
        # else is a bug and keeps its traceback.
        print(f"mailqueue: error: {error}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _configuration(path: str | None) -> Iterator[None]:
    if path is None:
        yield
        return
    text, _ = read_configuration_file(path)
    layer = config_file_layer(path)
    config.push(layer, text)
    try:
        yield
    finally:
        config.pop(layer)


@contextlib.contextmanager
def _mailman_option(path: str | None) -> Iterator[None]:
    # --mailman PATH: as [mailman] config: PATH would say.
    if path is None:
        yield
        return
    if "\n" in path or "\r" in path or not path.strip():
        raise CommandError(f"not a configuration file name: {path!r}")
    layer = "command line (--mailman)"
    config.push(layer, f"[mailman]\nconfig: {os.path.abspath(path)}\n")
    try:
        yield
    finally:
        config.pop(layer)


#: The master's commands, in the order ``mailqueue --help`` lists them; the
#: queues' (:mod:`mailqueue.cli_queues`) follow.
_COMMANDS = Commands()


@_COMMANDS.command(
    "start",
    "start the master, which starts the runners",
    arg(
        "--foreground",
        action="store_true",
        help="run the master in this process instead of detaching it",
    ),
)
def _start(arguments: argparse.Namespace, config_file: str | None) -> int:
    command = [sys.executable, "-m", "mailqueue"]
    if config_file:
        command += ["-C", os.path.abspath(config_file)]
    # A runner that cannot even be imported would only die and be given up
    # on: say so now, before anything starts.
    for section in config.runners.values():
        if section.start:
            runner_class(section.name)
    if arguments.foreground:
        run_master(command, os.path.abspath(config_file) if config_file else None)
        return 0
    pid = start_master(command)
    print(f"mailqueue master started (pid {pid}) on {config.VAR_DIR}")
    return 0


@_COMMANDS.command(
    "stop",
    "stop the master and its runners",
    arg(
        "--timeout",
        type=positive_seconds,
        default=60,
        metavar="SECONDS",
        help="how long to wait for them to stop (default: 60)",
    ),
)
def _stop(arguments: argparse.Namespace, config_file: str | None) -> int:
    pid = stop_master(arguments.timeout)
    print(f"mailqueue master (pid {pid}) stopped")
    return 0


@_COMMANDS.command(
    "status",
    "say whether a master runs, what it runs, and how deep its queues are",
    arg("--json", action="store_true", help="print JSON"),
)
def _status(arguments: argparse.Namespace, config_file: str | None) -> int:
    if config.mailman is not None:
        return _mailman_status(config.mailman, arguments.json)
    pid = master_pid()
    # What the master itself wrote: not what this caller's configuration says.
    record = master_status() if pid is not None else {}
    if record.get("master") != pid:
        record = {}  # not written yet (it has just started), or a dead one's
    queues: dict[str, str] = record.get("queues", {})
    slices = slice_states(
        record.get("runners", {}),
        record.get("not_started", []),
        queues,
        record.get("host", config.host_name),
    )
    depths = {
        name: {
            "waiting": queuetools.count_entries(path),
            "held": queuetools.count_entries(
                os.path.join(record["queue_dir"], "hold", name), (".pck",)
            ),
        }
        for name, path in queues.items()
    }
    configuration = _recorded_configuration(record.get("configuration"))
    # A monitoring check can rely on the status: no master, or a slice given
    # up, is a failure.
    status = (
        1 if pid is None or any(runner.state == "given up" for runner in slices) else 0
    )
    started = record.get("started", time.time())
    if arguments.json:
        print(
            json.dumps(
                {
                    "var_dir": config.VAR_DIR,
                    "master": pid,
                    "version": record.get("version"),
                    "started": record.get("started"),
                    "uptime": time.time() - started if record else None,
                    "configuration": configuration,
                    "runners": {runner.spec: runner.as_json() for runner in slices},
                    "queues": depths,
                }
            )
        )
        return status
    if pid is None:
        print(f"no master is running on {config.VAR_DIR}")
        return status
    print(f"mailqueue master running (pid {pid}) on {config.VAR_DIR}")
    if not record:
        print("  starting: it has not yet said what it runs")
        return status
    print(
        f"  version {record.get('version')}, up {_duration(time.time() - started)}, "
        f"configuration {configuration['file'] or '(none: the built-in defaults)'}"
    )
    if configuration["error"]:
        print(f"  it could not read its configuration again: {configuration['error']}")
    elif configuration["changed"]:
        print(
            "  the file has changed since the master read it: mailqueue reload "
            "applies it"
        )
    for runner in slices:
        pid_text = str(runner.pid or "-")
        print(
            f"  runner {runner.spec:<12} {runner.state:<11} pid {pid_text:<8} "
            f"restarts {runner.restarts:<3} owner: {runner.owner_text}"
        )
    shown = [
        f"{name} {depth['waiting']}"
        + (f" ({depth['held']} held)" if depth["held"] else "")
        for name, depth in depths.items()
    ]
    print(f"  queues: {', '.join(shown)}")
    return status


def _recorded_configuration(recorded: dict[str, Any] | None) -> dict[str, Any]:
    """The configuration file the master read, and whether it changed since."""
    recorded = recorded or {"file": None, "digest": None, "read": None, "error": None}
    changed = False
    if recorded["file"] is not None:
        try:
            _, digest = read_configuration_file(recorded["file"])
        except ConfigurationError:
            digest = None  # gone, or unreadable: not what the master read
        changed = digest != recorded["digest"]
    return recorded | {"changed": changed}


def _duration(seconds: float) -> str:
    """*seconds* in the two largest units: ``45s``, ``12m 5s``, ``3h 2m``, ``2d 1h``."""
    seconds = int(seconds)
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for index, (unit, size) in enumerate(units[:-1]):
        if seconds >= size:
            smaller, small = units[index + 1]
            return f"{seconds // size}{unit} {seconds % size // small}{smaller}"
    return f"{seconds}s"


def _mailman_status(site: MailmanSite, as_json: bool) -> int:
    """``status`` on a GNU Mailman site: its master, and each runner it starts."""
    state = master_state(site)
    runners = {}
    for section in sorted(config.runners.values(), key=lambda s: s.name):
        for number in range(section.instances):
            spec = f"{section.name}:{number}:{section.instances}"
            pid = state.runners.get(spec)
            if pid is not None:
                runner = {"state": "running", "pid": pid}
            elif not section.start:
                runner = {"state": "not started", "pid": None}
            else:
                runner = {"state": "not running", "pid": None}
            runners[spec] = runner
    # A monitoring check can rely on it: no master, or a runner it should
    # run that does not run, is a failure.
    status = (
        0
        if state.alive
        and all(runner["state"] != "not running" for runner in runners.values())
        else 1
    )
    lock = None
    if state.lock is not None:
        lock = {"host": state.lock[0], "pid": state.lock[1]}
    if as_json:
        print(
            json.dumps(
                {
                    "mailman": site.cfg_file,
                    "var_dir": site.paths["VAR_DIR"],
                    "master": state.pid if state.alive else None,
                    "pid_file": site.paths["PID_FILE"],
                    "stale_pid": None if state.alive else state.pid,
                    "lock": lock,
                    "runners": runners,
                }
            )
        )
        return status
    var_dir = site.paths["VAR_DIR"]
    if state.alive:
        print(f"GNU Mailman master running (pid {state.pid}) on {var_dir}")
    elif state.pid is not None:
        print(
            f"no GNU Mailman master is running on {var_dir}: its pid file "
            f"{site.paths['PID_FILE']} names pid {state.pid}, which is not "
            "Mailman's master (stale)"
        )
    else:
        print(f"no GNU Mailman master is running on {var_dir}")
    if state.lock is not None:
        host, pid = state.lock
        print(f"  master lock {site.paths['LOCK_FILE']}: held by pid {pid} on {host}")
    for spec, runner in runners.items() if state.alive else ():
        pid_text = str(runner["pid"] or "-")
        print(f"  runner {spec:<14} {runner['state']:<11} pid {pid_text}")
    return status


@_COMMANDS.command("reopen", "make the master and its runners reopen their logs")
def _reopen(arguments: argparse.Namespace, config_file: str | None) -> int:
    pid = signal_master(signal.SIGHUP)
    print(f"mailqueue master (pid {pid}) and its runners are reopening their logs")
    return 0


@_COMMANDS.command(
    "rotate-key",
    "seal new entries with a new key of the site's (the newest "
    f"{KEPT_KEYS} are kept, so entries sealed before are still trusted)",
)
def _rotate_key(arguments: argparse.Namespace, config_file: str | None) -> int:
    seal = config.seal
    assert seal is not None  # refused on a Mailman site, the one without
    seal.rotate()
    print(f"entries are sealed with a new key now ({seal.path})")
    return 0


@_COMMANDS.command(
    "reload",
    "the same as restart, by the name postfix gives it: the master reads its "
    "configuration file again and replaces its runners with what it configures",
)
@_COMMANDS.command(
    "restart",
    "make the master read its configuration file again and restart its runners "
    "(each after its current entry)",
)
def _restart(arguments: argparse.Namespace, config_file: str | None) -> int:
    pid = signal_master(signal.SIGUSR1)
    file = master_status().get("configuration", {}).get("file")
    reading = f"reading {file} again and " if file else ""
    print(
        f"mailqueue master (pid {pid}) is {reading}restarting its runners, each "
        "after its current entry"
    )
    return 0


@_COMMANDS.command(
    "runner",
    "run one runner in this process",
    arg(
        "spec",
        metavar="NAME[:SLICE:COUNT]",
        help="the runner, and which slice of how many",
    ),
    arg("--once", action="store_true", help="make one pass over the queue, then exit"),
)
def _runner(arguments: argparse.Namespace, config_file: str | None) -> int:
    name, slice = parse_runner_spec(arguments.spec)
    chosen = runner_class(name)
    with logging_to(config.LOG_DIR):
        runner = chosen(name, slice)
        if arguments.once:
            found = runner.run_once()
            print(f"{name}: {found} {'entry' if found == 1 else 'entries'}")
            return 0
        runner.set_signals()
        runner.run()
    return 0


#: What ``service-files`` prints: files of the package's ``data`` directory.
_SERVICE_FILES = {"systemd": "mailqueue.service", "logrotate": "mailqueue.logrotate"}


@_COMMANDS.command(
    "service-files",
    "print the systemd unit or the logrotate file that mailqueue ships",
    arg(
        "which",
        choices=sorted(_SERVICE_FILES),
        help="systemd: the master's unit; logrotate: the rotation of its logs",
    ),
)
def _service_files(arguments: argparse.Namespace, config_file: str | None) -> int:
    # From the package, so that an installed wheel has them wherever it is.
    shipped = importlib.resources.files("mailqueue") / "data"
    text = (shipped / _SERVICE_FILES[arguments.which]).read_text(encoding="utf-8")
    print(text, end="")
    return 0


def _conformance(arguments: argparse.Namespace, config_file: str | None) -> int:
    return conformance.run(arguments)


#: About another implementation, not this site: listed last.
_CONFORMANCE = Command(
    "conformance",
    "check an implementation against the spec, through its adapter",
    _conformance,
    (),
    {},
    conformance.add_arguments,
)


# The command line -----------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailqueue",
        description="Run, feed and inspect GNU Mailman-style message queues.",
    )
    parser.add_argument(
        "-C",
        "--config",
        metavar="FILE",
        help="the configuration file (default: $MAILQUEUE_CONFIG, else built-in "
        "defaults with all state under ./var)",
    )
    parser.add_argument(
        "--mailman",
        metavar="FILE",
        help="work the queues of the GNU Mailman site this mailman.cfg describes "
        "(as [mailman] config does)",
    )
    parser.add_argument(
        "--version", action="version", version=f"mailqueue {__version__}"
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for command in (*_COMMANDS, *cli_queues.COMMANDS, _CONFORMANCE):
        sub = commands.add_parser(
            command.name, help=command.text, description=command.text
        )
        sub.set_defaults(
            command=command.function, command_name=command.name, **command.defaults
        )
        for flags, options in command.arguments:
            sub.add_argument(*flags, **options)
        if command.setup is not None:
            command.setup(sub)
    return parser


def console_script() -> None:
    """The entry point of the ``mailqueue`` console script."""
    try:
        status = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # Whoever read the output stopped reading (``| head``): not an error
        # of ours, and nothing more to say.  Python must not flush again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 0
    sys.exit(status)

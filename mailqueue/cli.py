"""The ``mailqueue`` command: run, feed and inspect the queues.

Every command takes the configuration from ``-C FILE`` or the
``MAILQUEUE_CONFIG`` environment variable; with neither, the defaults hold
and all state lives under ``./var``, in the working directory.  A mistake in
what a command was given is reported as one line on standard error, with
exit status 1 (2 for a command line argparse cannot parse): checked at the
door, before anything is done, where it can be (an unknown queue or list, a
var dir or queue directory that is not one).  What is odd in the
configuration but not wrong is said as a ``mailqueue: warning:`` line.
"""

from __future__ import annotations

import argparse
import contextlib
import email.errors
import importlib.resources
import io
import json
import os
import pwd
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mailqueue import __version__, entry_format, metrics, qfile, queuetools
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
from mailqueue.message import message_from_string
from mailqueue.ownership import slice_states
from mailqueue.runner import parse_runner_spec, runner_class
from mailqueue.seal import KEPT_KEYS

__all__ = ["CommandError", "main"]


class CommandError(MailqueueError):
    """A mistake in what the command was given: reported in one line."""


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
            _check_directories(arguments.command_name)
            _check_site(arguments.command_name)
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


#: The commands a GNU Mailman site leaves to Mailman, and why.
_LEFT_TO_MAILMAN = {
    "start": "GNU Mailman's master runs its runners: use mailman start",
    "stop": "GNU Mailman's master runs its runners: use mailman stop",
    "restart": "GNU Mailman's master runs its runners: use mailman restart",
    "reload": "GNU Mailman's master runs its runners: use mailman restart",
    "reopen": "GNU Mailman's master runs its runners: use mailman reopen",
    "runner": "only GNU Mailman's runners work its queues (mailqueue's know none "
    "of its lists)",
    "inject": "GNU Mailman's lists are not mailqueue's: use mailman inject",
    "lists": "the lists are GNU Mailman's: use mailman lists",
    "rotate-key": "GNU Mailman's runners read its queues, and mailqueue seals "
    "no entry there",
}

#: The commands that move, write or delete queue entries.
_CHANGING = frozenset({"hold", "release", "requeue", "delete", "unshunt", "inject"})


def _check_site(command: str) -> None:
    """Refuse what *command* must not do here, in one line."""
    if config.mailman is not None and command in _LEFT_TO_MAILMAN:
        raise CommandError(
            f"{command} is refused on a GNU Mailman site: {_LEFT_TO_MAILMAN[command]}"
        )
    if command not in _CHANGING:
        return
    # A file written by another user than the queues' owner may be one its
    # runners cannot read (Mailman's runners are not root).
    queues = config.mailman.paths["QUEUE_DIR"] if config.mailman else config.QUEUE_DIR
    try:
        owner = os.stat(queues).st_uid
    except FileNotFoundError:
        return
    if owner != os.geteuid():
        raise CommandError(
            f"{queues} belongs to {_user(owner)}, and this runs as "
            f"{_user(os.geteuid())}: run it as {_user(owner)}, so that what it "
            "writes the runners can read"
        )


#: The commands that read what a site's runs left in its var dir: one that
#: is not there is a mistake (a wrong var_dir, or the wrong directory).
_READING = frozenset(
    {"queues", "list", "hold", "release", "requeue", "delete", "unshunt"}
)
#: The commands that never look into a queue directory.
_NO_QUEUES = frozenset(
    {"stop", "restart", "reload", "reopen", "flush", "lists", "qfile", "rotate-key"}
)


def _check_directories(command: str) -> None:
    """Refuse, naming it, a var dir or queue directory that is not a directory.

    And, for a command that reads the queues, a var dir that is not there.
    On a GNU Mailman site mailqueue's own var dir may well not be there yet.
    """
    var_dir = config.VAR_DIR
    if not os.path.isdir(var_dir):
        if os.path.lexists(var_dir):
            raise CommandError(f"the var dir {var_dir} is not a directory")
        if command in _READING and config.mailman is None:
            where = config.origin("paths", "var_dir")
            told = (
                f"[paths] var_dir in {where}"
                if where
                else f"the default, var in the working directory {os.getcwd()}"
            )
            raise CommandError(
                f"the var dir {var_dir} does not exist: nothing has run there ({told})"
            )
    if command in _NO_QUEUES:
        return
    queue_dir = config.mailman.paths["QUEUE_DIR"] if config.mailman else None
    places = {
        queue_dir or config.QUEUE_DIR: "the queue dir",
        os.path.join(config.QUEUE_DIR, "hold"): "the directory of held entries",
    }
    for name, section in sorted(config.runners.items()):
        if section.path:
            places[section.path] = f"the directory of the {name} queue"
            places[queuetools.hold_directory(name)] = (
                f"the directory of the entries held from {name}"
            )
    for path, what in places.items():
        if os.path.lexists(path) and not os.path.isdir(path):
            raise CommandError(f"{what}, {path}, is not a directory")


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


# The commands: each is a function, with its arguments declared above it ------


_Argument = tuple[tuple[str, ...], dict[str, Any]]
_Function = Callable[[argparse.Namespace, "str | None"], int]


@dataclass(frozen=True)
class _Command:
    name: str
    text: str
    function: _Function
    arguments: tuple[_Argument, ...]
    defaults: dict[str, Any]
    setup: Callable[[argparse.ArgumentParser], None] | None


#: The commands, in the order ``mailqueue --help`` lists them.
_COMMANDS: list[_Command] = []


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def _positive_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a duration such as 15m: {text!r}")
    return value


def _arg(*flags: str, **options: Any) -> _Argument:
    """An argument of a command: what ``add_argument`` is given."""
    return flags, options


def _command(
    name: str,
    text: str,
    *arguments: _Argument,
    setup: Callable[[argparse.ArgumentParser], None] | None = None,
    **defaults: Any,
) -> Callable[[_Function], _Function]:
    """Make the decorated function the command *name*, with *arguments*."""

    def register(function: _Function) -> _Function:
        _COMMANDS.append(_Command(name, text, function, arguments, defaults, setup))
        return function

    return register


@_command(
    "start",
    "start the master, which starts the runners",
    _arg(
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


@_command(
    "stop",
    "stop the master and its runners",
    _arg(
        "--timeout",
        type=_positive_seconds,
        default=60,
        metavar="SECONDS",
        help="how long to wait for them to stop (default: 60)",
    ),
)
def _stop(arguments: argparse.Namespace, config_file: str | None) -> int:
    pid = stop_master(arguments.timeout)
    print(f"mailqueue master (pid {pid}) stopped")
    return 0


@_command(
    "status",
    "say whether a master runs, what it runs, and how deep its queues are",
    _arg("--json", action="store_true", help="print JSON"),
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


@_command("reopen", "make the master and its runners reopen their logs")
def _reopen(arguments: argparse.Namespace, config_file: str | None) -> int:
    pid = signal_master(signal.SIGHUP)
    print(f"mailqueue master (pid {pid}) and its runners are reopening their logs")
    return 0


@_command(
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


@_command(
    "reload",
    "the same as restart, by the name postfix gives it: the master reads its "
    "configuration file again and replaces its runners with what it configures",
)
@_command(
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


@_command(
    "runner",
    "run one runner in this process",
    _arg(
        "spec",
        metavar="NAME[:SLICE:COUNT]",
        help="the runner, and which slice of how many",
    ),
    _arg("--once", action="store_true", help="make one pass over the queue, then exit"),
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


@_command(
    "service-files",
    "print the systemd unit or the logrotate file that mailqueue ships",
    _arg(
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


@_command(
    "inject",
    "put a message into a queue",
    _arg("-q", "--queue", default="in", help="the queue (default: in)"),
    _arg(
        "-l",
        "--list",
        required=True,
        help="the list the message is for: posting address or list-id",
    ),
    _arg(
        "file",
        nargs="?",
        default="-",
        metavar="FILE",
        help="the message, RFC 5322 (default: standard input)",
    ),
)
def _inject(arguments: argparse.Namespace, config_file: str | None) -> int:
    if arguments.queue not in config.switchboards:
        known = ", ".join(sorted(config.switchboards))
        raise CommandError(f"no queue is called {arguments.queue!r} (queues: {known})")
    mlist = config.lists.get(arguments.list) or config.lists.get_by_list_id(
        arguments.list
    )
    if mlist is None:
        raise CommandError(f"no list is called {arguments.list!r}")
    if arguments.file == "-":
        data = sys.stdin.buffer.read()
        source = "standard input"
    else:
        try:
            with open(arguments.file, "rb") as stream:
                data = stream.read()
        except OSError as error:
            raise CommandError(
                f"cannot read {arguments.file}: {error.strerror}"
            ) from None
        source = arguments.file
    msg = _parse_message(data, source)
    filebase = config.switchboards[arguments.queue].enqueue(msg, listid=mlist.list_id)
    print(f"queued {filebase} in {arguments.queue} for {mlist.fqdn_listname}")
    return 0


def _parse_message(data: bytes, source: str) -> Any:
    text = data.decode("utf-8", errors="surrogateescape")
    msg = message_from_string(text)
    headerless = any(
        isinstance(defect, email.errors.MissingHeaderBodySeparatorDefect)
        for defect in msg.defects
    )
    if not data.strip() or not msg.keys():
        raise CommandError(f"{source} is not an RFC 5322 message (no header fields)")
    if headerless:
        # The parser stopped at a line that is neither a header field, nor its
        # continuation, nor the blank line before the body: name it.  Lines are
        # split and told apart as the parser does (str.splitlines would also
        # end one at a form feed, str.isspace take any white space for a
        # continuation), so there always is such a line: the one it stopped
        # at, or before it one with no field name (":x").
        number, line = next(
            (number, line)
            for number, line in enumerate(_LINE_END.split(text), 1)
            if not _HEADER_LINE.match(line)
        )
        raise CommandError(
            f"{source}, line {number}: not a header field: {line[:60]!r}"
        )
    return msg


# The line ends the email parser knows (it reads text with newline="").
_LINE_END = re.compile(r"\r\n|\r|\n")
# A header field (its name: printable ASCII but the colon, RFC 5322), a
# continuation line (space or tab first), or the mbox "From " line.
_HEADER_LINE = re.compile(r"[!-9;-~]+:|[ \t]|From ")


@_command(
    "qfile",
    "show queue files' message and metadata, safely",
    _arg("files", nargs="+", metavar="FILE"),
    _arg("--json", action="store_true", help="print JSON"),
)
def _qfile(arguments: argparse.Namespace, config_file: str | None) -> int:
    status = 0
    entries = []
    for path in arguments.files:
        path = _entry_path(path)
        try:
            msg, metadata, _ = _load_queue_file(path)
            entries.append(_shown(path, msg, metadata, arguments.json))
        except FileNotFoundError:
            print(f"mailqueue: error: no such file: {path}", file=sys.stderr)
            status = 1
        except qfile.QueueFileError as error:
            print(f"mailqueue: error: {error}", file=sys.stderr)
            status = 1
    if arguments.json:
        print(json.dumps(entries, indent=2))
    else:
        print("\n".join(entries), end="\n" if entries else "")
    return status


def _entry_path(name: str) -> str:
    """*name* as a path: a file base names its entry in whichever queue has it."""
    if os.sep in name or qfile.parse_filebase(name) is None:
        return name
    for queue in sorted(config.runners):
        directory = config.runners[queue].path
        for extension in (".pck", ".bak", ".psv"):
            path = os.path.join(directory or "", name + extension)
            if directory and os.path.lexists(path):
                return path
    for queue in sorted(config.runners):
        path = os.path.join(queuetools.hold_directory(queue), name + ".pck")
        if os.path.lexists(path):
            return path
    return name


#: How every queue file begins: the pickle opcode PROTO, and a protocol
#: from 2 (GNU Mailman 2's) to 5.
_PICKLE_START = re.compile(rb"\x80[\x02-\x05]")


def _load_queue_file(path: str) -> tuple[Any, dict[str, Any], memoryview]:
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


def _shown(path: str, msg: Any, metadata: dict[str, Any], as_json: bool) -> Any:
    """An entry as qfile shows it; what cannot be shown is a QueueFileError."""
    # The objects are those of a checked file, but a message can be put
    # together in ways that its own methods cannot write out.
    try:
        text = msg if isinstance(msg, str) else msg.as_string()
        if as_json:
            return {"file": path, "message": text, "metadata": _jsonable(metadata)}
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            queuetools.dump_msgdata(_readable(metadata))
    except Exception as error:
        raise qfile.QueueFileError(
            f"{os.path.basename(path)}: cannot be shown ({type(error).__name__}: "
            f"{error!s:.80})"
        ) from None
    shown = [f"== {path}", text.rstrip("\n"), "-- metadata", printed.getvalue()]
    return "\n".join(shown).rstrip("\n")


def _readable(metadata: dict[str, Any]) -> dict[str, Any]:
    """*metadata* with its first-queued time also written as a date, for a person."""
    when = metadata.get(entry_format.FIRST_QUEUED)
    if when is None:
        return metadata
    try:
        date = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))
    except (OverflowError, OSError):
        return metadata  # a time no calendar has: as it is
    return metadata | {entry_format.FIRST_QUEUED: f"{when} ({date})"}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_jsonable(item) for item in value), key=repr)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


@_command(
    "unshunt",
    "move every shunted message back to the queue it came from",
    _arg("--discard", action="store_true", help="delete the shunted messages instead"),
)
def _unshunt(arguments: argparse.Namespace, config_file: str | None) -> int:
    status = 0
    with logging_to(config.LOG_DIR):
        for done in queuetools.unshunt(discard=arguments.discard):
            if done.ok:
                print(done.text)
            else:
                print(f"mailqueue: error: {done.text}", file=sys.stderr)
                status = 1
    return status


@_command(
    "queues",
    "count the entries of every queue",
    _arg("--json", action="store_true", help="print JSON"),
    _arg(
        "--watch",
        nargs="?",
        const=2.0,
        type=_positive_seconds,
        metavar="SECONDS",
        help="refresh in place (default: every 2 s)",
    ),
)
def _queues(arguments: argparse.Namespace, config_file: str | None) -> int:
    if arguments.watch is None:
        _print_queues(arguments.json)
        return 0
    terminal = sys.stdout.isatty()
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            if arguments.json:
                # One JSON document a line, for a program to read as it comes.
                print(
                    json.dumps(
                        {"time": time.time(), "queues": queuetools.queue_counts()}
                    )
                )
            else:
                frame = io.StringIO()
                with contextlib.redirect_stdout(frame):
                    print(
                        time.strftime("%H:%M:%S"),
                        f"every {arguments.watch:g} s; Ctrl-C to stop",
                    )
                    _print_queues(False)
                    if not terminal:
                        print()
                # One write a frame: Ctrl-C never leaves half of one.  On a
                # terminal, clear the screen and draw from its top-left corner.
                sys.stdout.write(
                    ("\033[H\033[2J" if terminal else "") + frame.getvalue()
                )
            sys.stdout.flush()
            time.sleep(arguments.watch)
    return 0


def _print_queues(as_json: bool) -> None:
    counts = queuetools.queue_counts()
    if as_json:
        print(json.dumps(counts, indent=2))
        return
    print(f"{'queue':<10}{'.pck':>8}{'.bak':>8}{'.psv':>8}{'.tmp':>8}{'held':>8}")
    for name, count in counts.items():
        print(
            f"{name:<10}{count['pck']:>8}{count['bak']:>8}{count['psv']:>8}"
            f"{count['tmp']:>8}{count['held']:>8}"
        )
    site = config.mailman
    var_dir = site.paths["VAR_DIR"] if site else config.VAR_DIR
    queue_dir = site.paths["QUEUE_DIR"] if site else config.QUEUE_DIR
    print(f"-- var dir {var_dir}, queues in {queue_dir}")


@_command(
    "metrics",
    "print the queues' metrics in Prometheus's text format",
    _arg(
        "--output",
        metavar="FILE",
        help="write them to FILE instead, atomically (for node_exporter's "
        "textfile collector)",
    ),
)
def _metrics(arguments: argparse.Namespace, config_file: str | None) -> int:
    text = metrics.render()
    if arguments.output is None:
        sys.stdout.write(text)
        return 0
    try:
        metrics.write_file_atomically(arguments.output, text)
    except OSError as error:
        raise CommandError(
            f"cannot write {arguments.output}: {error.strerror}"
        ) from None
    return 0


@_command(
    "list",
    "list the entries waiting in the queues, oldest first",
    _arg("-q", "--queue", action="append", help="only this queue (again for more)"),
    _arg("--json", action="store_true", help="print JSON"),
)
def _list(arguments: argparse.Namespace, config_file: str | None) -> int:
    _check_queues(arguments.queue or ())
    entries = queuetools.list_entries(arguments.queue or None)
    now = time.time()
    if arguments.json:
        print(
            json.dumps(
                [
                    {
                        "queue": entry.queue,
                        "filebase": entry.filebase,
                        "age": round(now - entry.first_queued, 3),
                        "size": entry.size,
                        "list": entry.list,
                        "sender": entry.sender,
                        "subject": entry.subject,
                        "problem": entry.problem,
                        "first_queued": entry.first_queued,
                        "attempts": entry.attempts,
                        "reason": entry.reason,
                    }
                    for entry in entries
                ],
                indent=2,
            )
        )
        return 0
    for entry in entries:
        described = entry.problem or "  ".join(
            (entry.list or "-", entry.sender or "-", entry.subject or "-")
        )
        print(
            f"{entry.queue:<10} {entry.filebase}  {queuetools.age(entry, now):>4} "
            f"{entry.size:>8}  {described}"
        )
        if entry.attempts or entry.reason:
            # Why it is here, on a line of its own, as mailq says it.
            why = f"failed {entry.attempts} time{'s' * (entry.attempts != 1)}"
            print(" " * 11 + f"({why}{': ' * bool(entry.reason)}{entry.reason})")
    print(f"-- {len(entries)} {'entry' if len(entries) == 1 else 'entries'} waiting")
    return 0


_SELECTION = (
    _arg("filebases", nargs="*", metavar="FILEBASE"),
    _arg("--all", action="store_true", help="every entry it can"),
    _arg("-q", "--queue", action="append", help="only from this queue"),
    _arg("--list", help="only the entries for this list (list-id)"),
    _arg(
        "--older-than",
        type=_positive_duration,
        metavar="DURATION",
        help="only entries older than this (30s, 15m, 2h, 1d)",
    ),
    _arg(
        "--force",
        action="store_true",
        help="on a GNU Mailman site, act on entries of a queue whose runner runs "
        "(see the docs for the race this leaves)",
    ),
)


@_command(
    "requeue",
    "move entries (queued, preserved in bad, or held) to a queue",
    _arg("--to", required=True, metavar="QUEUE", help="the queue"),
    _arg(
        "--reset-count",
        action="store_true",
        help="start the count of recoveries (_bak_count) again",
    ),
    *_SELECTION,
    act="requeue",
)
@_command(
    "release",
    "put held entries back in the queue they were held from",
    *_SELECTION,
    act="release",
)
@_command(
    "hold",
    "hold queued entries: no runner sees them until they are released",
    *_SELECTION,
    act="hold",
)
@_command("delete", "delete entries for good", *_SELECTION, act="delete")
def _act(arguments: argparse.Namespace, config_file: str | None) -> int:
    action = arguments.act
    # Everything that can be said before the first entry is acted on, once.
    _check_queues(arguments.queue or ())
    if action == "requeue":
        _check_queues([arguments.to], held=False)
    if action == "hold" and "bad" in (arguments.queue or ()):
        raise CommandError(
            "entries in bad are not held: no runner takes them from there "
            "(requeue them instead)"
        )
    if not (
        arguments.filebases or arguments.all or arguments.list or arguments.older_than
    ):
        raise CommandError(
            "name the entries (file bases), or choose them with --all, --list "
            "or --older-than"
        )
    lists = _list_names(arguments.list) if arguments.list else set()
    waiting = queuetools.list_entries(arguments.queue or None)
    entries = [
        entry
        for entry in waiting
        if entry.held == (action == "release") or action in ("delete", "requeue")
    ]
    if arguments.filebases:
        named = set(arguments.filebases)
        chosen = [entry for entry in entries if entry.filebase in named]
        missing = named - {entry.filebase for entry in chosen}
    else:
        # Chosen in bulk, hold passes over what it could only refuse.
        chosen, missing = entries, set()
        if action == "hold":
            chosen = [e for e in chosen if e.queue != "bad" and not e.preserved]
    if arguments.list:
        chosen = [entry for entry in chosen if entry.list in lists]
    if arguments.older_than:
        now = time.time()
        chosen = [e for e in chosen if now - e.first_queued > arguments.older_than]
    status = 0
    for filebase in sorted(missing):
        print(
            f"mailqueue: error: no {_WAITING[action]} entry {filebase}"
            + _taken(filebase),
            file=sys.stderr,
        )
        status = 1
    if config.mailman is not None and not arguments.force:
        chosen, left = _not_worked(config.mailman, chosen)
        status |= left
    with logging_to(config.LOG_DIR):
        for entry in chosen:
            try:
                if action == "requeue":
                    queuetools.requeue(entry, arguments.to, arguments.reset_count)
                else:
                    getattr(queuetools, action)(entry)
            except queuetools.EntryError as error:
                print(f"mailqueue: error: {error}", file=sys.stderr)
                status = 1
                continue
            where = f" to {arguments.to}" if action == "requeue" else ""
            print(f"{_DONE[action]} {entry.filebase} ({entry.queue}){where}")
    return status


def _taken(filebase: str) -> str:
    """Which queue's runner has the entry *filebase* in hand (a ``.bak``), if one."""
    for name, section in sorted(config.runners.items()):
        if section.path and os.path.lexists(
            os.path.join(section.path, filebase + ".bak")
        ):
            return f": a runner has it in hand in {name}, and it is left to it"
    return ""


def _check_queues(names: Sequence[str], held: bool = True) -> None:
    """Refuse, in one line, a name among *names* that is not a queue's.

    ``hold/NAME`` names the entries held from NAME, unless *held* is false.
    """
    for name in names:
        queue = name.removeprefix("hold/") if held else name
        if queue not in config.switchboards:
            known = ", ".join(sorted(config.switchboards))
            raise CommandError(f"no queue is called {name!r} (queues: {known})")


def _list_names(name: str) -> set[str]:
    """What the entries for the list *name* say they are for.

    Its posting address and list-id, for a list there is; the name alone if
    only entries are for it (its list was deleted, or is GNU Mailman's).
    Raise :exc:`CommandError` if neither is.
    """
    url = config.database_url
    found = None
    # Looking creates nothing: no database yet means no lists yet.
    if not url.startswith("sqlite:///") or os.path.exists(url[len("sqlite:///") :]):
        found = config.lists.get(name) or config.lists.get_by_list_id(name)
    if found is not None:
        return {name, found.list_id, found.fqdn_listname}
    if not any(entry.list == name for entry in queuetools.list_entries()):
        raise CommandError(f"no list is called {name!r}, and no entry is for it")
    return {name}


def _not_worked(
    site: MailmanSite, entries: list[queuetools.QueueEntry]
) -> tuple[list[queuetools.QueueEntry], int]:
    """The *entries* no live runner of Mailman's works, and 1 if some are left.

    Mailman's runners take no lock: an entry moved or deleted just as one
    of them takes it makes it log an error.  So, without --force, the
    entries of a queue whose runner runs are left alone, one line a queue.
    """
    state = master_state(site)
    kept: list[queuetools.QueueEntry] = []
    left: dict[str, tuple[list[int], list[queuetools.QueueEntry]]] = {}
    for entry in entries:
        pids = [] if entry.held else state.running(entry.queue)
        if pids:
            left.setdefault(entry.queue, (pids, []))[1].append(entry)
        else:
            kept.append(entry)
    for queue, (pids, skipped) in sorted(left.items()):
        which = ", ".join(map(str, pids))
        print(
            f"mailqueue: error: {len(skipped)} "
            f"{'entry' if len(skipped) == 1 else 'entries'} of {queue} left alone: "
            f"GNU Mailman's {queue} runner (pid {which}) works that queue; stop it "
            f"first (kill -TERM {which}), or use --force",
            file=sys.stderr,
        )
    return kept, 1 if left else 0


_WAITING = {
    "delete": "waiting",
    "hold": "queued",
    "release": "held",
    "requeue": "waiting",
}
_DONE = {
    "delete": "deleted",
    "hold": "held",
    "release": "released",
    "requeue": "requeued",
}


@_command("flush", "make the runners try their queues (retry too) now")
def _flush(arguments: argparse.Namespace, config_file: str | None) -> int:
    if config.mailman is not None:
        retry = config.runners.get("retry")
        every = f"every {retry.sleep_time.total_seconds():g} s" if retry else "in time"
        raise CommandError(
            "flush cannot be done on a GNU Mailman site: Mailman's master has no "
            "signal that makes its runners try now; its retry runner moves "
            f"deferred entries back to out {every}"
        )
    pid = signal_master(signal.SIGUSR2)
    print(
        f"mailqueue master (pid {pid}) woke its runners: deferred entries are tried now"
    )
    return 0


def _list_actions(lists: argparse.ArgumentParser) -> None:
    actions = lists.add_subparsers(dest="action", metavar="ACTION")
    for action, text in (("create", "create a list"), ("delete", "delete a list")):
        sub = actions.add_parser(action, help=text, description=text)
        sub.add_argument("name", metavar="NAME@DOMAIN")


@_command("lists", "show, create or delete mailing lists", setup=_list_actions)
def _lists(arguments: argparse.Namespace, config_file: str | None) -> int:
    if arguments.action is None:
        # Listing creates nothing: no database yet means no lists yet.
        url = config.database_url
        if not url.startswith("sqlite:///") or os.path.exists(url[len("sqlite:///") :]):
            for mlist in config.lists:
                print(mlist.fqdn_listname)
        return 0
    if arguments.action == "create":
        mlist = config.lists.create(arguments.name)
        print(f"created {mlist.fqdn_listname} (list-id {mlist.list_id})")
        return 0
    found = config.lists.get(arguments.name)
    if found is None:
        raise CommandError(f"no list is called {arguments.name!r}")
    config.lists.delete(found)
    print(f"deleted {found.fqdn_listname}")
    return 0


@_command(
    "conformance",
    "check an implementation against the spec, through its adapter",
    setup=conformance.add_arguments,
)
def _conformance(arguments: argparse.Namespace, config_file: str | None) -> int:
    return conformance.run(arguments)


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
    for command in _COMMANDS:
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

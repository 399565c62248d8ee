"""The ``mailqueue`` commands that feed and inspect the queues.

``inject`` puts a message in; ``qfile``, ``queues``, ``metrics`` and
``list`` show what waits; ``hold``, ``release``, ``requeue``, ``delete``
and ``unshunt`` move entries, through :mod:`mailqueue.queuetools`;
``flush`` makes the runners try their queues now; ``lists`` shows, creates
and deletes mailing lists.  Each command parses and prints; what it does is
the library's.  :mod:`mailqueue.cli` adds them to its parser, after the
master's commands.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sys
import time
from typing import Any

from mailqueue import entry_format, metrics, qfile, queuetools
from mailqueue.cli_base import (
    CommandError,
    Commands,
    arg,
    check_queues,
    positive_duration,
    positive_seconds,
)
from mailqueue.configuration import config
from mailqueue.logs import logging_to
from mailqueue.mailman_site import MailmanSite, master_state
from mailqueue.master import signal_master
from mailqueue.message import parse_message

__all__ = ["COMMANDS"]

#: The queue commands, in the order ``mailqueue --help`` lists them.
COMMANDS = Commands()


@COMMANDS.command(
    "inject",
    "put a message into a queue",
    arg("-q", "--queue", default="in", help="the queue (default: in)"),
    arg(
        "-l",
        "--list",
        required=True,
        help="the list the message is for: posting address or list-id",
    ),
    arg(
        "file",
        nargs="?",
        default="-",
        metavar="FILE",
        help="the message, RFC 5322 (default: standard input)",
    ),
)
def _inject(arguments: argparse.Namespace, config_file: str | None) -> int:
    check_queues([arguments.queue], held=False)
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
    msg = parse_message(data, source)
    filebase = config.switchboards[arguments.queue].enqueue(msg, listid=mlist.list_id)
    print(f"queued {filebase} in {arguments.queue} for {mlist.fqdn_listname}")
    return 0


@COMMANDS.command(
    "qfile",
    "show queue files' message and metadata, safely",
    arg("files", nargs="+", metavar="FILE"),
    arg("--json", action="store_true", help="print JSON"),
)
def _qfile(arguments: argparse.Namespace, config_file: str | None) -> int:
    status = 0
    entries = []
    for path in arguments.files:
        path = queuetools.entry_path(path)
        try:
            msg, metadata, _ = queuetools.load_queue_file(path)
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


@COMMANDS.command(
    "unshunt",
    "move every shunted message back to the queue it came from",
    arg("--discard", action="store_true", help="delete the shunted messages instead"),
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


@COMMANDS.command(
    "queues",
    "count the entries of every queue",
    arg("--json", action="store_true", help="print JSON"),
    arg(
        "--watch",
        nargs="?",
        const=2.0,
        type=positive_seconds,
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


@COMMANDS.command(
    "metrics",
    "print the queues' metrics in Prometheus's text format",
    arg(
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


@COMMANDS.command(
    "list",
    "list the entries waiting in the queues, oldest first",
    arg("-q", "--queue", action="append", help="only this queue (again for more)"),
    arg("--json", action="store_true", help="print JSON"),
)
def _list(arguments: argparse.Namespace, config_file: str | None) -> int:
    check_queues(arguments.queue or ())
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
    arg("filebases", nargs="*", metavar="FILEBASE"),
    arg("--all", action="store_true", help="every entry it can"),
    arg("-q", "--queue", action="append", help="only from this queue"),
    arg("--list", help="only the entries for this list (list-id)"),
    arg(
        "--older-than",
        type=positive_duration,
        metavar="DURATION",
        help="only entries older than this (30s, 15m, 2h, 1d)",
    ),
    arg(
        "--force",
        action="store_true",
        help="on a GNU Mailman site, act on entries of a queue whose runner runs "
        "(see the docs for the race this leaves)",
    ),
)


@COMMANDS.command(
    "requeue",
    "move entries (queued, preserved in bad, or held) to a queue",
    arg("--to", required=True, metavar="QUEUE", help="the queue"),
    arg(
        "--reset-count",
        action="store_true",
        help="start the count of recoveries (_bak_count) again",
    ),
    *_SELECTION,
    act="requeue",
)
@COMMANDS.command(
    "release",
    "put held entries back in the queue they were held from",
    *_SELECTION,
    act="release",
)
@COMMANDS.command(
    "hold",
    "hold queued entries: no runner sees them until they are released",
    *_SELECTION,
    act="hold",
)
@COMMANDS.command("delete", "delete entries for good", *_SELECTION, act="delete")
def _act(arguments: argparse.Namespace, config_file: str | None) -> int:
    action = arguments.act
    # Everything that can be said before the first entry is acted on, once.
    check_queues(arguments.queue or ())
    if action == "requeue":
        check_queues([arguments.to], held=False)
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
    """What "no such entry" adds if a runner has *filebase* in hand: where."""
    queue = queuetools.in_hand(filebase)
    if queue is None:
        return ""
    return f": a runner has it in hand in {queue}, and it is left to it"


def _lists_may_exist() -> bool:
    """False if there is no list database yet, so no lists: looking creates none."""
    url = config.database_url
    return not url.startswith("sqlite:///") or os.path.exists(
        url.removeprefix("sqlite:///")
    )


def _list_names(name: str) -> set[str]:
    """What the entries for the list *name* say they are for.

    Its posting address and list-id, for a list there is; the name alone if
    only entries are for it (its list was deleted, or is GNU Mailman's).
    Raise :exc:`CommandError` if neither is.
    """
    found = None
    if _lists_may_exist():
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


@COMMANDS.command("flush", "make the runners try their queues (retry too) now")
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


@COMMANDS.command("lists", "show, create or delete mailing lists", setup=_list_actions)
def _lists(arguments: argparse.Namespace, config_file: str | None) -> int:
    if arguments.action is None:
        if _lists_may_exist():
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

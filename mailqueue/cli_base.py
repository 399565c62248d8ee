"""What the ``mailqueue`` command's modules share: how a command is declared,
the types of its arguments, and the checks made at the door.

A command is a function declared with :meth:`Commands.command`, which says
its name, its help text and its arguments; :mod:`mailqueue.cli` makes the
parser of every command so declared, there and in :mod:`mailqueue.cli_queues`.
Before a command runs, :func:`check_directories` and :func:`check_site`
refuse what it must not do on this site, in one line: a
:exc:`CommandError`, as is every mistake in what a command was given.
"""

from __future__ import annotations

import argparse
import os
import pwd
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from mailqueue import queuetools
from mailqueue.configuration import config
from mailqueue.errors import MailqueueError

__all__ = [
    "Argument",
    "Command",
    "CommandError",
    "Commands",
    "Function",
    "arg",
    "check_directories",
    "check_queues",
    "check_site",
    "positive_duration",
    "positive_seconds",
]


class CommandError(MailqueueError):
    """A mistake in what the command was given: reported in one line."""


# How a command is declared -------------------------------------------------------


class Argument(NamedTuple):
    """An argument of a command: the flags and options ``add_argument`` is given."""

    flags: tuple[str, ...]
    options: dict[str, Any]


#: A command's function: it is given the parsed arguments and the
#: configuration file's name, and returns the exit status.
Function = Callable[[argparse.Namespace, "str | None"], int]


@dataclass(frozen=True)
class Command:
    """A command: its name, help text, function and arguments."""

    name: str
    text: str
    function: Function
    arguments: tuple[Argument, ...]
    #: What the parser sets besides the arguments (``act="hold"``, say).
    defaults: dict[str, Any]
    #: Adds to the command's parser what arguments cannot say (subcommands).
    setup: Callable[[argparse.ArgumentParser], None] | None


class Commands(list[Command]):
    """Commands, in the order they were declared (``--help`` lists them so)."""

    def command(
        self,
        name: str,
        text: str,
        *arguments: Argument,
        setup: Callable[[argparse.ArgumentParser], None] | None = None,
        **defaults: Any,
    ) -> Callable[[Function], Function]:
        """Make the decorated function the command *name*, with *arguments*."""

        def register(function: Function) -> Function:
            self.append(Command(name, text, function, arguments, defaults, setup))
            return function

        return register


def arg(*flags: str, **options: Any) -> Argument:
    """An argument of a command: what ``add_argument`` is given."""
    return Argument(flags, options)


def positive_seconds(text: str) -> float:
    """*text* as a positive number of seconds (for argparse)."""
    try:
        value = float(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def positive_duration(text: str) -> float:
    """*text*, such as ``30s``, ``15m``, ``2h`` or ``1d``, in seconds (for argparse)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        value = float(number) * units[unit]
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a duration such as 15m: {text!r}")
    return value


# The checks at the door ------------------------------------------------------


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


def check_site(command: str) -> None:
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


def check_directories(command: str) -> None:
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


def check_queues(names: Sequence[str], held: bool = True) -> None:
    """Refuse, in one line, a name among *names* that is not a queue's.

    ``hold/NAME`` names the entries held from NAME, unless *held* is false.
    """
    for name in names:
        queue = name.removeprefix("hold/") if held else name
        if queue not in config.switchboards:
            known = ", ".join(sorted(config.switchboards))
            raise CommandError(f"no queue is called {name!r} (queues: {known})")

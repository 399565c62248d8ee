"""Shell sessions on a page, run as tests.

A page that has the reST comment ``.. console-sessions: run`` (on a line of
its own; Sphinx shows nothing of it) runs its ``.. code-block:: console``
blocks, and its ``.. invisible-code-block: console`` ones, which are run but
not shown.  In a block, a line ``$ COMMAND`` is a command; lines ``> MORE``
right after it go on with it, as a shell's second prompt shows them (a
here-document, a line ending in a backslash); the lines up to the next
command are what the command must print, its standard output and error
together as a terminal shows them, where ``...`` stands for any text.
Blank lines at the end of what it prints do not count, and neither does its
exit status: a page shows that with ``echo $?`` where it matters.

The commands of a page run in order in one shell (``bash``), so a ``cd`` or
an ``export`` holds for the commands after it, as in a terminal.  The shell
starts in a new, empty directory (also its ``HOME``), with ``mailqueue`` on
its ``PATH`` running the implementation under test (this interpreter's
mailqueue) and ``MAILQUEUE_CONFIG`` naming a file that gives the page's var
directory and list database, so that the page's shell sessions and its
Python examples see the same queues and lists.
"""

from __future__ import annotations

import doctest
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sybil import Document, Example, Region
from sybil.parsers.rest import CodeBlockParser

from mailqueue.configuration import config

__all__ = [
    "COMMAND_TIMEOUT",
    "Command",
    "ConsoleParser",
    "SessionError",
    "ShellSession",
    "end_session",
    "parse_session",
]

#: How long one command may take, in seconds, before it fails its example.
COMMAND_TIMEOUT = 120.0

#: The comment by which a page asks for its shell sessions to be run.
_MARKER = re.compile(r"^\.\. console-sessions: run[ \t]*$", re.MULTILINE)

#: Where a page's shell session is kept, in the page's namespace.
_SESSION = "_console_session"


class SessionError(Exception):
    """A shell session could not run a command: it took too long, or ended."""


@dataclass(frozen=True)
class Command:
    """One command of a session block, and what it must print."""

    #: Its first line's number, counted from the block's first line (0).
    line: int
    #: The command, as the shell is given it (its lines without prompts).
    text: str
    #: What it must print: each line ends with a newline.
    expected: str


def parse_session(source: str) -> list[Command]:
    """The commands of a session block's text, and what each must print."""
    commands: list[Command] = []
    command: list[str] = []
    expected: list[str] = []
    first = 0

    def finish() -> None:
        if command:
            printed = "".join(f"{line}\n" for line in expected).rstrip("\n")
            commands.append(
                Command(first, "\n".join(command), printed and f"{printed}\n")
            )

    for number, line in enumerate(source.splitlines()):
        if line.startswith("$ ") or line == "$":
            finish()
            command, expected, first = [line[2:]], [], number
        elif command and not expected and (line.startswith("> ") or line == ">"):
            command.append(line[2:])
        elif command:
            expected.append(line)
        elif line.strip():
            raise ValueError(
                f"line {number + 1} of the session comes before any command: {line!r}"
            )
    finish()
    return commands


class ShellSession:
    """One shell that runs a page's commands in turn.

    It starts in *start* (by default *directory*), a directory in
    *directory*, which :meth:`close` removes.
    """

    def __init__(
        self, directory: str, environment: Mapping[str, str], start: str | None = None
    ) -> None:
        self.directory = directory
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=start or directory,
            env=dict(environment),
            # Its own process group, so that a command that hangs goes with it.
            start_new_session=True,
        )

    def run(self, command: str, timeout: float = COMMAND_TIMEOUT) -> str:
        """What *command* prints, standard output and error together.

        Raise :exc:`SessionError` if it does not end within *timeout*
        seconds, or if the shell ends; the session is of no use after that.
        """
        assert self.process.stdin is not None and self.process.stdout is not None
        end = f"mailqueue-console-{uuid.uuid4().hex}"
        # The command reads no input of the shell's (that is the next
        # command); a line of its own, after it, says where its output ends.
        self.process.stdin.write(
            f"{{ :\n{command}\n}} < /dev/null 2>&1\nprintf '\\n{end}\\n'\n".encode()
        )
        self.process.stdin.flush()
        output = self.process.stdout.fileno()
        found = b""
        marker = f"\n{end}\n".encode()
        deadline = time.monotonic() + timeout
        while marker not in found:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SessionError(f"it did not end within {timeout:g} s")
            if select.select([output], [], [], left)[0]:
                chunk = os.read(output, 65536)
                if not chunk:
                    raise SessionError(
                        f"the shell ended (exit status {self.process.wait()})"
                    )
                found += chunk
        return found[: found.index(marker)].decode(errors="replace")

    def close(self) -> None:
        """End the shell and whatever command it runs; remove its directory."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.stdout.close()
        shutil.rmtree(self.directory, ignore_errors=True)


def _new_session() -> ShellSession:
    """A shell for a page: a new directory, this mailqueue, the page's state."""
    directory = tempfile.mkdtemp(prefix="mailqueue-console-")
    tools = os.path.join(directory, "bin")
    home = os.path.join(directory, "home")
    os.mkdir(tools)
    os.mkdir(home)
    script = os.path.join(tools, "mailqueue")
    with open(script, "w", encoding="utf-8") as stream:
        stream.write(
            f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m mailqueue "$@"\n'
        )
    os.chmod(script, 0o755)
    configuration = os.path.join(directory, "mailqueue.cfg")
    with open(configuration, "w", encoding="utf-8") as stream:
        stream.write(
            f"[paths]\nvar_dir: {config.VAR_DIR}\n"
            f"[database]\nurl: {config.database_url}\n"
        )
    environment = os.environ | {
        "PATH": f"{tools}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
        "HOME": home,
        "MAILQUEUE_CONFIG": configuration,
    }
    return ShellSession(directory, environment, start=home)


def end_session(namespace: dict[str, Any]) -> None:
    """Sybil's teardown of a document: end its shell session, if it has one."""
    session = namespace.pop(_SESSION, None)
    if session is not None:
        session.close()


class ConsoleParser(CodeBlockParser):
    """Sybil's parser of shell sessions (see the module's description)."""

    language = "console"

    def __call__(self, document: Document) -> Iterable[Region]:
        if _MARKER.search(document.text) is None:
            return
        for region in super().__call__(document):
            source = region.parsed
            region.parsed = (source.line_offset, parse_session(source))
            yield region

    def evaluate(self, example: Example) -> str | None:
        """Run the block's commands in the page's shell; say how one differed."""
        offset, commands = example.parsed
        checker = doctest.OutputChecker()
        # <BLANKLINE> is the Python prompt's; a session's blank line is blank.
        flags = doctest.ELLIPSIS | doctest.DONT_ACCEPT_BLANKLINE
        for command in commands:
            session = example.namespace.get(_SESSION)
            if session is None:
                session = example.namespace[_SESSION] = _new_session()
            # (Sybil counts the source's lines from the one after the directive.)
            line = example.line + offset + 1 + command.line
            try:
                printed = session.run(command.text)
            except SessionError as error:
                end_session(example.namespace)
                return f"line {line}: $ {command.text}\n{error}"
            got = printed.rstrip("\n") and printed.rstrip("\n") + "\n"
            if not checker.check_output(command.expected, got, flags):
                shown = doctest.Example(command.text, command.expected)
                difference = checker.output_difference(
                    shown, got, flags | doctest.REPORT_NDIFF
                )
                return f"line {line}: $ {command.text}\n{difference}"
        return None

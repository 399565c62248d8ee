"""The structure of a spec document: its sections and requirement levels.

A document marks its requirement levels with ``.. level:: MUST`` (or
``SHOULD``) lines.  A marker applies to every example after it, up to the
next marker, whatever the sections.  A document with no marker at all is
not part of the spec: it describes the reference implementation's own
tools, and its examples have the level ``reference``.  Sections are reST
titles: a line of text underlined with one repeated punctuation character.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LEVELS",
    "SPEC_DOCUMENTS",
    "Place",
    "SpecDocument",
    "SpecNotFoundError",
    "documents_directory",
]

#: The requirement levels, in the meaning of RFC 2119.
LEVELS = ("MUST", "SHOULD")

#: The documents of the spec: the pages of docs/ that mark requirement
#: levels.  The wheel carries them in ``mailqueue/conformance/documents/``.
SPEC_DOCUMENTS = ("queue-files.rst", "runner.rst", "switchboard.rst")

_PACKAGED = Path(__file__).resolve().parent / "documents"
_CHECKOUT = Path(__file__).resolve().parents[2] / "docs"


class SpecNotFoundError(Exception):
    """Neither the installed package nor a checkout holds the spec documents."""


def documents_directory() -> Path:
    """Where the spec documents are: in the installed package, or a checkout's docs/.

    A wheel carries them in the package; an editable install or a checkout
    runs them from docs/, where the published site is built from the same
    files.
    """
    for directory in (_PACKAGED, _CHECKOUT):
        if all((directory / name).is_file() for name in SPEC_DOCUMENTS):
            return directory
    raise SpecNotFoundError(
        f"the spec documents are neither in {_PACKAGED} nor in {_CHECKOUT}: "
        "reinstall mailqueue"
    )


_MARKER = re.compile(r"^\.\. level:: *(\S+) *$")
_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+])\1+ *$")


@dataclass(frozen=True)
class Place:
    """Where an example stands: its section's title and its requirement level."""

    section: str
    level: str


class SpecDocument:
    """The sections and level markers of one document, by line number."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        lines = self.path.read_text(encoding="utf-8").splitlines()
        self._titles: list[tuple[int, str]] = []
        self._markers: list[tuple[int, str]] = []
        for index, line in enumerate(lines):
            number = index + 1
            marker = _MARKER.match(line)
            if marker:
                level = marker[1]
                if level not in LEVELS:
                    raise ValueError(
                        f"{self.path}:{number}: unknown requirement level {level!r};"
                        f" use one of {', '.join(LEVELS)}"
                    )
                self._markers.append((number, level))
            following = lines[index + 1] if index + 1 < len(lines) else ""
            text = line.strip()
            if (
                text
                and not _UNDERLINE.match(line)
                and _UNDERLINE.match(following)
                and len(following.rstrip()) >= len(text)
            ):
                self._titles.append((number, text))

    @property
    def is_spec(self) -> bool:
        """True if the document marks requirement levels: it is part of the spec."""
        return bool(self._markers)

    def place(self, line: int) -> Place:
        """The section and level of an example that starts on *line*."""
        default = "unmarked" if self.is_spec else "reference"
        return Place(
            self._last_before(self._titles, line, "(untitled)"),
            self._last_before(self._markers, line, default),
        )

    @staticmethod
    def _last_before(entries: list[tuple[int, str]], line: int, default: str) -> str:
        position = bisect_right([number for number, _ in entries], line)
        return entries[position - 1][1] if position else default

"""The configuration file's syntax, and the values its keys take.

A layer of the configuration is INI text; :func:`read_layer` reads it into
sections, remembering the line each section and key is on, so that an error
about a value can say where it was set.  The functions after it turn one
value's text into what it means (a duration, a size, an address, slices),
each raising :exc:`~mailqueue.configuration.ConfigurationError` that names
the place it was given.
What the sections and keys are, and their defaults, is
:mod:`mailqueue.configuration`'s.
"""

from __future__ import annotations

import configparser
import difflib
import ipaddress
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from mailqueue.errors import MailqueueError

__all__ = [
    "Layer",
    "boolean",
    "duration",
    "expand",
    "loopback",
    "near",
    "read_layer",
    "size",
    "slices",
]


class ConfigurationError(MailqueueError, ValueError):
    """A mistake in the configuration: where it is, and what is wrong.

    An unknown section or key, a value that is not what the key takes, a
    ``$VARIABLE`` that is not defined, text that is not INI, a file that
    cannot be read.
    """

    # Its public name, which tracebacks and the documents show: the
    # configuration's error, raised here only because the syntax is read here.
    __module__ = "mailqueue.configuration"


@dataclass(frozen=True)
class Layer:
    """One layer's sections, and the line each section and key is on."""

    name: str
    sections: dict[str, dict[str, str]]
    lines: dict[tuple[str, str | None], int]

    def where(self, section: str, key: str | None = None) -> str:
        """Where *key* of *section* (or the section) is: the layer, its line."""
        source = (
            self.name
            if self.name.startswith("config file ")
            else (f"configuration {self.name!r}")
        )
        line = self.lines.get((section, key))
        return f"{source}, line {line}" if line else source


_SECTION = re.compile(r"\s*\[(?P<name>[^\]]+)\]")
_KEY = re.compile(r"(?P<key>[^\s:=#;][^:=]*?)\s*[:=]")

_WHAT_WENT_WRONG = {
    "MissingSectionHeader": "a line before any [section]",
    "Parsing": "a line that is not 'key: value'",
    "DuplicateSection": "a section given twice",
    "DuplicateOption": "a key given twice in one section",
}


def read_layer(name: str, text: str) -> Layer:
    """The INI *text* of the layer called *name*, read into sections.

    Raise :exc:`~mailqueue.configuration.ConfigurationError`, naming the
    layer and the line, if it is not INI text.  Which sections and keys
    there may be is not checked.
    """
    parser = configparser.ConfigParser(interpolation=None, default_section="\0")
    lines: dict[tuple[str, str | None], int] = {}
    try:
        parser.read_string(text, source=name)
    except configparser.Error as error:
        line = getattr(error, "lineno", None)
        what = type(error).__name__.removesuffix("Error")
        where = Layer(name, {}, {}).where("")
        raise ConfigurationError(
            f"{where}{f', line {line}' if line else ''}: not a valid configuration "
            f"({_WHAT_WENT_WRONG.get(what, what)})"
        ) from None
    section = None
    for number, line in enumerate(text.splitlines(), 1):
        if match := _SECTION.match(line):
            section = match["name"]
            lines.setdefault((section, None), number)
        elif (
            section is not None
            and not line[:1].isspace()
            and (match := _KEY.match(line))
        ):
            lines.setdefault((section, match["key"].strip().lower()), number)
    return Layer(name, {s: dict(parser[s]) for s in parser.sections()}, lines)


def near(word: str, candidates: Iterable[str]) -> str:
    """``" (did you mean X?)"`` for the candidate *word* is a near miss of."""
    close = difflib.get_close_matches(word, sorted(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def expand(value: str, substitutions: dict[str, str], where: str) -> str:
    """*value* with its ``$VARIABLES`` replaced from *substitutions*."""
    try:
        return string.Template(value).substitute(substitutions)
    except KeyError as error:
        raise ConfigurationError(
            f"{where} uses ${error.args[0]}, which is not defined"
            + near(error.args[0], substitutions)
        ) from None
    except ValueError as error:
        raise ConfigurationError(
            f"{where}: cannot expand {value!r} ({error})"
        ) from None


_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*(ms|s|m|h|d|w)?\s*")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def duration(value: str, where: str) -> timedelta:
    """*value*, such as ``1s``, ``500ms`` or ``15m`` (seconds without a unit)."""
    match = _DURATION.fullmatch(value)
    if match is None:
        raise ConfigurationError(
            f"{where} must be a duration such as 1s, 500ms or 15m, not {value!r}"
        )
    return timedelta(seconds=float(match[1]) * _SECONDS[match[2] or "s"])


_SIZE = re.compile(r"\s*([0-9]+)\s*([a-zA-Z]*)\s*")
# K, M and G alone are binary, as in most mail tools; KB, MB and GB decimal.
_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3}
_SIZE_UNITS |= {"m": 2**20, "mib": 2**20, "mb": 10**6}
_SIZE_UNITS |= {"g": 2**30, "gib": 2**30, "gb": 10**9}


def size(value: str, where: str) -> int:
    """*value*, such as ``32MiB``, ``500KB`` or ``1048576``, in bytes."""
    match = _SIZE.fullmatch(value)
    factor = _SIZE_UNITS.get(match[2].lower()) if match else None
    if match is None or factor is None or int(match[1]) == 0:
        raise ConfigurationError(
            f"{where} must be a size such as 32MiB, 500KB or 1048576, not {value!r}"
        )
    return int(match[1]) * factor


_BOOLEANS = {
    "yes": True,
    "true": True,
    "on": True,
    "1": True,
    "no": False,
    "false": False,
    "off": False,
    "0": False,
}


def boolean(value: str, where: str) -> bool:
    """*value*: yes or no (or true, on, 1; false, off, 0)."""
    found = _BOOLEANS.get(value.strip().lower())
    if found is None:
        raise ConfigurationError(f"{where} must be yes or no, not {value!r}")
    return found


def loopback(value: str, where: str) -> tuple[str, int] | None:
    """*value*, ``HOST:PORT`` on this host's loopback; None if it is empty.

    HOST is an IP address (IPv6 in brackets).
    """
    text = value.strip()
    if not text:
        return None
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if (
        address is None
        or not re.fullmatch(r"[0-9]{1,5}", port)
        or not (0 < int(port) < 65536)
    ):
        raise ConfigurationError(
            f"{where} must be a loopback address and a port, such as "
            f"127.0.0.1:9436 or [::1]:9436, not {value!r}"
        )
    if not address.is_loopback:
        raise ConfigurationError(
            f"{where}: {host} is not a loopback address: the metrics are served "
            "to this host only (a proxy or an exporter can pass them on)"
        )
    return str(address), int(port)


def slices(text: str, instances: int, where: str) -> frozenset[int]:
    """*text*, such as ``0-1, 3``: slice numbers and ranges, each below *instances*."""
    found: set[int] = set()
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        match = re.fullmatch(r"([0-9]+)(?:\s*-\s*([0-9]+))?", part)
        if match is None:
            raise ConfigurationError(
                f"{where} must be slice numbers and ranges (like 0-1, 3), not {text!r}"
            )
        first, last = int(match[1]), int(match[2] or match[1])
        if first > last or last >= instances:
            raise ConfigurationError(
                f"{where}: {part} is not a range of slices 0 to {instances - 1}"
            )
        found.update(range(first, last + 1))
    return frozenset(found)

"""The configuration: layers of INI text, and what they define.

The configuration is a stack of named layers.  The bottom one holds the
defaults; :meth:`Configuration.push` adds a layer whose keys override those
below it, and :meth:`Configuration.pop` takes one away.  Two kinds of
section matter:

``[paths]``
    ``var_dir``, under which all state lives, and ``queue_dir``,
    ``data_dir`` and ``log_dir``, which default to directories below it.
    Pushing ``var_dir`` alone moves every queue and the list database.

``[queues]``
    ``max_entry_size``: the largest queue entry that is written or read, in
    bytes or with a unit (``32MiB``, ``500KB``); a larger file is set aside
    in the ``bad`` queue.  ``stale_tmp_after``: how old a ``.tmp`` file
    must be before the owner of its slice removes it (a writer that died
    left it).

``[runner.NAME]``
    One per runner, and so one per queue.  Keys not given take the
    defaults in :data:`RUNNER_DEFAULTS`.  An empty ``path`` makes a runner
    that manages no queue.
"""

from __future__ import annotations

import configparser
import os
import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from mailqueue.qfile import QFILE_SCHEMA_VERSION

if TYPE_CHECKING:
    from mailqueue.lists import ListManager
    from mailqueue.switchboard import Switchboard

__all__ = ["RUNNER_DEFAULTS", "Configuration", "RunnerConfig", "config"]

#: The keys every ``[runner.NAME]`` section has, and their default values.
RUNNER_DEFAULTS = {
    "class": "mailqueue.runner.Runner",
    "path": "$QUEUE_DIR/$name",
    "instances": "1",
    "max_restarts": "10",
    "restart_window": "10m",
    "sleep_time": "1s",
    "start": "yes",
}

DEFAULTS = """
[paths]
var_dir: var
queue_dir: $VAR_DIR/queue
data_dir: $VAR_DIR/data
log_dir: $VAR_DIR/logs

[queues]
max_entry_size: 32MiB
stale_tmp_after: 1h

[runner.in]
class: mailqueue.runners.IncomingRunner
[runner.out]
class: mailqueue.runners.OutgoingRunner
[runner.virgin]
class: mailqueue.runners.VirginRunner
[runner.retry]
class: mailqueue.runners.RetryRunner
sleep_time: 15m

# These two only hold messages for a person to look at; nothing runs them.
[runner.bad]
start: no
[runner.shunt]
start: no
"""

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*(ms|s|m|h|d|w)?\s*")
_SIZE = re.compile(r"\s*([0-9]+)\s*([a-zA-Z]*)\s*")
# K, M and G alone are binary, as in most mail tools; KB, MB and GB decimal.
_SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3}
_SIZE_UNITS |= {"m": 2**20, "mib": 2**20, "mb": 10**6}
_SIZE_UNITS |= {"g": 2**30, "gib": 2**30, "gb": 10**9}
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
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


@dataclass(frozen=True)
class RunnerConfig:
    """The settings of one ``[runner.NAME]`` section, checked and expanded."""

    name: str
    class_path: str
    #: The queue directory, or None for a runner that manages no queue.
    path: str | None
    #: The number of runner processes, one per slice: a power of two.
    instances: int
    max_restarts: int
    sleep_time: timedelta
    start: bool
    #: Restarts count against ``max_restarts`` for this long after them.
    restart_window: timedelta


class Configuration:
    """The global configuration: a stack of named layers of INI text."""

    #: The metadata schema version stamped on every queue entry.
    QFILE_SCHEMA_VERSION = QFILE_SCHEMA_VERSION

    def __init__(self) -> None:
        self._layers: list[tuple[str, dict[str, dict[str, str]]]] = [
            ("defaults", _parse("defaults", DEFAULTS))
        ]
        self._lists: ListManager | None = None
        self._apply()

    # The stack ---------------------------------------------------------

    @property
    def layers(self) -> tuple[str, ...]:
        """The names of the layers, bottom first."""
        return tuple(name for name, _ in self._layers)

    def push(self, name: str, text: str) -> None:
        """Add a layer called *name* holding the INI *text* on top.

        Raise :exc:`ValueError`, leaving the configuration as it was, if the
        name is taken or the text is not valid.
        """
        if name in self.layers:
            raise ValueError(f"a configuration layer is already called {name!r}")
        self._layers.append((name, _parse(name, text)))
        try:
            self._apply()
        except ValueError:
            self._layers.pop()
            self._apply()
            raise

    def pop(self, name: str) -> None:
        """Remove the layer called *name*, wherever it is in the stack."""
        if name == "defaults":
            raise ValueError("the defaults layer cannot be popped")
        for index, (layer, _) in enumerate(self._layers):
            if layer == name:
                del self._layers[index]
                self._apply()
                return
        raise KeyError(f"no configuration layer is called {name!r}")

    def _apply(self) -> None:
        merged: dict[str, dict[str, str]] = {}
        for _, sections in self._layers:
            for section, values in sections.items():
                merged.setdefault(section, {}).update(values)
        paths = merged.get("paths", {})
        var_dir = os.path.abspath(os.path.expanduser(paths.get("var_dir", "var")))
        substitutions = {"VAR_DIR": var_dir}
        for key in ("queue_dir", "data_dir", "log_dir"):
            substitutions[key.upper()] = os.path.abspath(
                _expand(paths.get(key, ""), substitutions, f"[paths] {key}")
            )
        runners = {}
        for section in merged:
            if section.startswith("runner."):
                name = section.removeprefix("runner.")
                values = RUNNER_DEFAULTS | merged[section]
                runners[name] = _runner_config(name, values, substitutions)
        queues = merged.get("queues", {})
        max_entry_size = _size(
            queues.get("max_entry_size", "32MiB"), "[queues] max_entry_size"
        )
        stale_tmp_after = _duration(
            queues.get("stale_tmp_after", "1h"), "[queues] stale_tmp_after"
        )
        self._merged = merged
        self._paths = substitutions
        #: The largest queue entry written or read, in bytes.
        self.max_entry_size = max_entry_size
        #: How old, in seconds, a ``.tmp`` file is before its slice's owner
        #: removes it.
        self.stale_tmp_after = stale_tmp_after.total_seconds()
        self.runners: dict[str, RunnerConfig] = runners
        self.switchboards: Mapping[str, Switchboard] = _Switchboards(
            runners, max_entry_size
        )
        if self._lists is not None and self._lists.path != self._database_path:
            self._lists.close()
            self._lists = None

    # What the layers define --------------------------------------------

    @property
    def VAR_DIR(self) -> str:
        """The directory under which all state lives."""
        return self._paths["VAR_DIR"]

    @property
    def QUEUE_DIR(self) -> str:
        """The directory that holds one directory per queue."""
        return self._paths["QUEUE_DIR"]

    @property
    def DATA_DIR(self) -> str:
        """The directory that holds the list database."""
        return self._paths["DATA_DIR"]

    @property
    def LOG_DIR(self) -> str:
        """The directory that holds the log files."""
        return self._paths["LOG_DIR"]

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        """The raw value of *key* in *section*, after all layers."""
        return self._merged.get(section, {}).get(key, default)

    @property
    def _database_path(self) -> str:
        return os.path.join(self.DATA_DIR, "lists.sqlite3")

    @property
    def lists(self) -> ListManager:
        """The mailing lists, kept in a database under :attr:`DATA_DIR`."""
        if self._lists is None or not self._lists.usable:
            from mailqueue.lists import ListManager

            self._lists = ListManager(self._database_path)
        return self._lists


class _Switchboards(Mapping[str, "Switchboard"]):
    """One switchboard per queue runner, made (with its directory) when first used."""

    def __init__(self, runners: dict[str, RunnerConfig], max_entry_size: int) -> None:
        self._paths = {name: r.path for name, r in runners.items() if r.path}
        self._max_entry_size = max_entry_size
        self._made: dict[str, Switchboard] = {}

    def __getitem__(self, name: str) -> Switchboard:
        if name not in self._made:
            from mailqueue.switchboard import Switchboard

            self._made[name] = Switchboard(
                name, self._paths[name], max_entry_size=self._max_entry_size
            )
        return self._made[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def _parse(name: str, text: str) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None, default_section="\0")
    try:
        parser.read_string(text, source=name)
    except configparser.Error as error:
        raise ValueError(f"configuration {name!r}: {error}") from None
    return {section: dict(parser[section]) for section in parser.sections()}


def _expand(value: str, substitutions: dict[str, str], where: str) -> str:
    try:
        return string.Template(value).substitute(substitutions)
    except KeyError as error:
        raise ValueError(
            f"{where}: {value!r} uses ${error.args[0]}, which is not defined"
        ) from None
    except ValueError as error:
        raise ValueError(f"{where}: cannot expand {value!r} ({error})") from None


def _duration(value: str, where: str) -> timedelta:
    match = _DURATION.fullmatch(value)
    if match is None:
        raise ValueError(
            f"{where} must be a duration such as 1s, 500ms or 15m, not {value!r}"
        )
    return timedelta(seconds=float(match[1]) * _SECONDS[match[2] or "s"])


def _size(value: str, where: str) -> int:
    match = _SIZE.fullmatch(value)
    factor = _SIZE_UNITS.get(match[2].lower()) if match else None
    if match is None or factor is None or int(match[1]) == 0:
        raise ValueError(
            f"{where} must be a size such as 32MiB, 500KB or 1048576, not {value!r}"
        )
    return int(match[1]) * factor


def _runner_config(
    name: str, values: dict[str, str], substitutions: dict[str, str]
) -> RunnerConfig:
    where = f"[runner.{name}]"

    def integer(key: str, minimum: int) -> int:
        try:
            number = int(values[key])
        except ValueError:
            number = minimum - 1
        if number < minimum:
            raise ValueError(
                f"{where} {key} must be a whole number of at least {minimum}, "
                f"not {values[key]!r}"
            )
        return number

    instances = integer("instances", 1)
    if instances & (instances - 1):
        raise ValueError(f"{where} instances must be a power of two, not {instances}")
    sleep_time = _duration(values["sleep_time"], f"{where} sleep_time")
    start = _BOOLEANS.get(values["start"].strip().lower())
    if start is None:
        raise ValueError(f"{where} start must be yes or no, not {values['start']!r}")
    path = _expand(
        values["path"].strip(), substitutions | {"name": name}, f"{where} path"
    )
    return RunnerConfig(
        name=name,
        class_path=values["class"].strip(),
        path=os.path.abspath(path) if path else None,
        instances=instances,
        max_restarts=integer("max_restarts", 0),
        sleep_time=sleep_time,
        restart_window=_duration(values["restart_window"], f"{where} restart_window"),
        start=start,
    )


#: The configuration of this process.
config = Configuration()

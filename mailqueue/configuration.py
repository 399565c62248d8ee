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
    left it).  ``max_queue_lifetime``: how long a message may wait for its
    delivery, counted from when it was first queued, before a failed
    delivery gives up on it (Postfix's ``maximal_queue_lifetime``).

``[runner.NAME]``
    One per runner, and so one per queue.  Keys not given take the
    defaults in :data:`RUNNER_DEFAULTS`.  An empty ``path`` makes a runner
    that manages no queue.  A section for a queue that nothing sends to,
    whose name is a near miss of a built-in one, is kept, with a warning
    (``Configuration.warnings``).

A configuration file is read with :func:`read_configuration_file` and
pushed as the layer :func:`config_file_layer` names, which
:meth:`Configuration.replace` can swap for the file's new text.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import os
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta

from mailqueue.configfile import (
    ConfigurationError,
    Layer,
    boolean,
    duration,
    expand,
    loopback,
    near,
    read_layer,
    size,
    slices,
)
from mailqueue.entry_format import QFILE_SCHEMA_VERSION
from mailqueue.lists import ListManager, MailingList
from mailqueue.mailman_site import MailmanSite, MailmanSiteError, read_site
from mailqueue.seal import Seal
from mailqueue.switchboard import Switchboard

__all__ = [
    "RUNNER_DEFAULTS",
    "Configuration",
    "ConfigurationError",
    "RunnerConfig",
    "Switchboards",
    "config",
    "config_file_layer",
    "create_list",
    "read_configuration_file",
]

#: The keys every ``[runner.NAME]`` section has, and their default values.
RUNNER_DEFAULTS = {
    "class": "mailqueue.runner.Runner",
    "path": "$QUEUE_DIR/$name",
    "instances": "1",
    "max_restarts": "10",
    "restart_window": "10m",
    "sleep_time": "1s",
    "start": "yes",
    "prefer": "",
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
max_queue_lifetime: 5d

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


#: The keys of the sections other than ``[runner.NAME]``.
SECTION_KEYS = {
    "paths": {"var_dir", "queue_dir", "data_dir", "log_dir"},
    "queues": {"max_entry_size", "stale_tmp_after", "max_queue_lifetime"},
    "host": {"name"},
    "database": {"url"},
    "mailman": {"config"},
    "master": {"metrics_listen"},
}


def config_file_layer(path: str) -> str:
    """The name of the layer that holds the configuration file at *path*."""
    return f"config file {os.path.abspath(path)}"


def read_configuration_file(path: str) -> tuple[str, str]:
    """The text of the configuration file at *path*, and its SHA-256 digest.

    Raise :exc:`ConfigurationError`, in one line, if it cannot be read or
    is not UTF-8 text.  The digest tells whether the file changed since.
    """
    try:
        with open(path, "rb") as stream:
            data = stream.read()
        return data.decode("utf-8"), hashlib.sha256(data).hexdigest()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read the configuration {path}: {error.strerror}"
        ) from None
    except UnicodeDecodeError as error:
        raise ConfigurationError(
            f"the configuration {path} is not UTF-8 text (byte {error.start:,})"
        ) from None


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
    #: The slices this host prefers to work when every host is up.
    prefer: frozenset[int] = frozenset()


class Configuration:
    """The global configuration: a stack of named layers of INI text."""

    #: The metadata schema version stamped on every queue entry.
    QFILE_SCHEMA_VERSION = QFILE_SCHEMA_VERSION

    def __init__(self) -> None:
        self._layers: list[tuple[str, Layer]] = [
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
        name is taken, and :exc:`ConfigurationError` (naming the layer, the
        line and the key) if the text is not a valid configuration.
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

    def replace(self, name: str, text: str) -> None:
        """Give the layer called *name* the INI *text* instead, where it is.

        As :meth:`push`, raise :exc:`ConfigurationError` (and keep the layer
        as it was) if the text is not a valid configuration.
        """
        index = self.layers.index(name)
        old = self._layers[index]
        self._layers[index] = (name, _parse(name, text))
        try:
            self._apply()
        except ValueError:
            self._layers[index] = old
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
        origins: dict[tuple[str, str], str] = {}
        given: set[tuple[str, str]] = set()  # by a layer above the defaults
        for number, (_, layer) in enumerate(self._layers):
            for section, values in layer.sections.items():
                merged.setdefault(section, {}).update(values)
                for key in values:
                    origins[section, key] = layer.where(section, key)
                    if number:
                        given.add((section, key))

        def at(section: str, key: str) -> str:
            # Where a value came from, for an error about it.
            return f"{origins.get((section, key), 'the defaults')}: [{section}] {key}"

        site = _mailman_site(merged, given, at)
        paths = merged.get("paths", {})
        var_dir = paths.get("var_dir", "var")
        if site is not None and ("paths", "var_dir") not in given:
            # Beside Mailman's var dir, never in it.
            var_dir = os.path.join(os.path.dirname(site.paths["VAR_DIR"]), "mailqueue")
        var_dir = os.path.abspath(
            os.path.expanduser(expand(var_dir, {}, at("paths", "var_dir")))
        )
        substitutions = {"VAR_DIR": var_dir}
        for key in ("queue_dir", "data_dir", "log_dir"):
            substitutions[key.upper()] = os.path.abspath(
                expand(paths.get(key, ""), substitutions, at("paths", key))
            )
        runners = {}
        if site is None:
            for section in merged:
                if section.startswith("runner."):
                    name = section.removeprefix("runner.")
                    values = RUNNER_DEFAULTS | merged[section]
                    runners[name] = _runner_config(
                        name, values, substitutions, functools.partial(at, section)
                    )
        else:
            _outside_mailman(site, substitutions, at)
            for name, keys in site.runners.items():
                values = RUNNER_DEFAULTS | {
                    key: value for key, value in keys.items() if key in RUNNER_DEFAULTS
                }
                runners[name] = _runner_config(
                    name,
                    values,
                    dict(site.paths),
                    functools.partial(_in_site, site, name),
                )
        #: The GNU Mailman site whose queues these are, or None.
        self.mailman: MailmanSite | None = site
        queues = merged.get("queues", {})
        max_entry_size = size(
            queues.get("max_entry_size", "32MiB"), at("queues", "max_entry_size")
        )
        stale_tmp_after = duration(
            queues.get("stale_tmp_after", "1h"), at("queues", "stale_tmp_after")
        )
        max_queue_lifetime = duration(
            queues.get("max_queue_lifetime", "5d"), at("queues", "max_queue_lifetime")
        )
        #: What is odd but not wrong, one line each: a ``[runner.NAME]``
        #: section that makes a queue nothing sends to, named as a built-in
        #: queue misspelled.
        self.warnings: list[str] = (
            _near_misses(runners, self._layers) if site is None else []
        )
        self._merged = merged
        self._origins = {place: origins[place] for place in given}
        self._paths = substitutions
        #: The largest queue entry written or read, in bytes.
        self.max_entry_size = max_entry_size
        #: How old, in seconds, a ``.tmp`` file is before its slice's owner
        #: removes it.
        self.stale_tmp_after = stale_tmp_after.total_seconds()
        #: How long, in seconds from its first queuing, a message may wait
        #: for its delivery: a delivery that fails after that gives up on it.
        self.max_queue_lifetime = max_queue_lifetime.total_seconds()
        self.runners: dict[str, RunnerConfig] = runners
        #: This host's name in owner files: ``[host] name``, or the system's.
        self.host_name = (
            merged.get("host", {}).get("name", "").strip() or socket.gethostname()
        )
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,255}", self.host_name):
            raise ConfigurationError(
                f"{at('host', 'name')} must be a host name, not {self.host_name!r}"
            )
        #: Where the master serves the metrics (``[master] metrics_listen``):
        #: a loopback address and a port, or None for nowhere.
        self.metrics_listen = loopback(
            merged.get("master", {}).get("metrics_listen", ""),
            at("master", "metrics_listen"),
        )
        #: This site's seal (see :mod:`mailqueue.seal`), its keys in
        #: DATA_DIR; none on a GNU Mailman site, whose runners read the queues.
        self.seal = (
            Seal(os.path.join(substitutions["DATA_DIR"], "seal.keys"))
            if self.mailman is None
            else None
        )
        self.switchboards = Switchboards(
            runners, max_entry_size, self.host_name, self.seal
        )
        url = merged.get("database", {}).get("url", "").strip()
        default = os.path.join(substitutions["DATA_DIR"], "lists.sqlite3")
        self._database_url = url or f"sqlite:///{default}"
        if not self._database_url.startswith(("sqlite:///", "postgresql://")):
            raise ConfigurationError(
                f"{at('database', 'url')} must be sqlite:///PATH or "
                f"postgresql://..., not {url!r}"
            )
        if self._lists is not None and self._lists.url != self._database_url:
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

    def origin(self, section: str, key: str) -> str | None:
        """Where the value of *key* in *section* was set; None for a default."""
        return self._origins.get((section, key))

    def get(self, section: str, key: str, default: str | None = None) -> str | None:
        """The raw value of *key* in *section*, after all layers."""
        return self._merged.get(section, {}).get(key, default)

    @property
    def database_url(self) -> str:
        """The list database: ``[database] url``, else an SQLite file in DATA_DIR."""
        return self._database_url

    @property
    def lists(self) -> ListManager:
        """The mailing lists, in the database ``[database] url`` names.

        By default that is an SQLite file under :attr:`DATA_DIR`.
        """
        if self._lists is None or not self._lists.usable:
            self._lists = ListManager(self._database_url)
        return self._lists


class Switchboards(Mapping[str, Switchboard]):
    """The configured queues' switchboards, by name, each made when first used.

    ``config.switchboards['bad']`` is the ``bad`` queue's switchboard, as in
    GNU Mailman.  :meth:`make` makes a new one (a slice of a queue, say),
    wired the same way: the configured entry size limit, host name,
    ``bad`` directory and seal.
    """

    def __init__(
        self,
        runners: dict[str, RunnerConfig],
        max_entry_size: int,
        host: str,
        seal: Seal | None = None,
    ) -> None:
        self._paths = {name: r.path for name, r in runners.items() if r.path}
        self._seal = seal
        self._max_entry_size = max_entry_size
        self._host = host
        self._made: dict[str, Switchboard] = {}

    def make(
        self,
        name: str,
        slice: int | None = None,
        numslices: int = 1,
        recover: bool = False,
    ) -> Switchboard:
        """A new switchboard for the queue *name*.

        See :class:`~mailqueue.switchboard.Switchboard` for the arguments.
        """
        return Switchboard(
            name,
            self._paths[name],
            slice,
            numslices,
            recover=recover,
            max_entry_size=self._max_entry_size,
            host=self._host,
            bad_directory=self._paths.get("bad"),
            seal=self._seal,
        )

    def __getitem__(self, name: str) -> Switchboard:
        if name not in self._made:
            self._made[name] = self.make(name)
        return self._made[name]

    def __contains__(self, name: object) -> bool:
        # Without making the switchboard (and so its directory).
        return name in self._paths

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


def _mailman_site(
    merged: dict[str, dict[str, str]],
    given: set[tuple[str, str]],
    at: Callable[[str, str], str],
) -> MailmanSite | None:
    # [mailman] config: the Mailman site whose runners and queues these are.
    path = merged.get("mailman", {}).get("config", "").strip()
    if not path:
        return None
    try:
        site = read_site(os.path.expanduser(path))
    except MailmanSiteError as error:
        raise ConfigurationError(f"{at('mailman', 'config')}: {error}") from None
    for section, key in sorted(given):
        if section.startswith("runner."):
            raise ConfigurationError(
                f"{at(section, key)}: on a GNU Mailman site the runners are "
                f"Mailman's: set [{section}] in {site.cfg_file}"
            )
    return site


def _in_site(site: MailmanSite, runner: str, key: str) -> str:
    # Where a Mailman runner's value came from, for an error about it.
    return f"{site.origins[runner]} {key}"


def _outside_mailman(
    site: MailmanSite, paths: dict[str, str], at: Callable[[str, str], str]
) -> None:
    # mailqueue's own state (logs, holds, the list database) stays out of
    # every directory Mailman writes in.
    for key, path in paths.items():
        for directory in site.directories:
            if os.path.commonpath([path, directory]) == directory:
                raise ConfigurationError(
                    f"{at('paths', key.lower())}: {path} is inside GNU Mailman's "
                    f"{directory}; mailqueue's own state goes elsewhere (by "
                    "default beside Mailman's var dir)"
                )


def _parse(name: str, text: str) -> Layer:
    # The layer's text, read, and checked against the sections and keys
    # there are.
    layer = read_layer(name, text)
    for section, values in layer.sections.items():
        for key, value in values.items():
            if "\0" in value:
                # No path, name or URL has one, and the system refuses it.
                raise ConfigurationError(
                    f"{layer.where(section, key)}: [{section}] {key} holds a NUL"
                )
        if section.startswith("runner.") and len(section) > len("runner."):
            known = set(RUNNER_DEFAULTS)
        elif section in SECTION_KEYS:
            known = SECTION_KEYS[section]
        else:
            raise ConfigurationError(
                f"{layer.where(section)}: unknown section [{section}]"
                + near(section, [*SECTION_KEYS, *_RUNNER_SECTIONS])
            )
        for key in values:
            if key not in known:
                raise ConfigurationError(
                    f"{layer.where(section, key)}: [{section}] unknown key "
                    f"{key!r}" + near(key, known)
                )
    return layer


# Near misses of a runner section are of the built-in ones.
_RUNNER_SECTIONS = [f"runner.{name}" for name in ("in", "out", "virgin", "retry")]

#: The built-in queues, and the classes that send only to them: a queue of
#: another name that one of these runs is one nothing sends to (but
#: ``mailqueue inject``).
_BUILT_IN_QUEUES = ("bad", "in", "out", "retry", "shunt", "virgin")
_BUILT_IN_CLASSES = "mailqueue.runner.Runner", "mailqueue.runners."


def _near_misses(
    runners: dict[str, RunnerConfig], layers: list[tuple[str, Layer]]
) -> list[str]:
    """A warning for each queue nothing sends to whose name is a near miss."""
    warnings = []
    for name, runner in sorted(runners.items()):
        if name in _BUILT_IN_QUEUES or runner.path is None:
            continue
        if not runner.class_path.startswith(_BUILT_IN_CLASSES):
            continue  # its own class: it may well have senders of its own
        close = difflib.get_close_matches(name, _BUILT_IN_QUEUES, n=1, cutoff=0.6)
        if close:
            section = f"runner.{name}"
            where = next(
                layer.where(section)
                for _, layer in reversed(layers)
                if section in layer.sections
            )
            warnings.append(
                f"{where}: [{section}] makes a queue {name!r} that nothing sends "
                f"to (did you mean [runner.{close[0]}]?)"
            )
    return warnings


def _runner_config(
    name: str,
    values: dict[str, str],
    substitutions: dict[str, str],
    at: Callable[[str], str],
) -> RunnerConfig:
    def integer(key: str, minimum: int) -> int:
        try:
            number = int(values[key])
        except ValueError:
            number = minimum - 1
        if number < minimum:
            raise ConfigurationError(
                f"{at(key)} must be a whole number of at least {minimum}, "
                f"not {values[key]!r}"
            )
        return number

    instances = integer("instances", 1)
    if instances & (instances - 1):
        raise ConfigurationError(
            f"{at('instances')} must be a power of two, not {instances}"
        )
    sleep_time = duration(values["sleep_time"], at("sleep_time"))
    start = boolean(values["start"], at("start"))
    path = expand(values["path"].strip(), substitutions | {"name": name}, at("path"))
    prefer = slices(values["prefer"], instances, at("prefer"))
    return RunnerConfig(
        name=name,
        class_path=values["class"].strip(),
        path=os.path.abspath(path) if path else None,
        instances=instances,
        max_restarts=integer("max_restarts", 0),
        sleep_time=sleep_time,
        restart_window=duration(values["restart_window"], at("restart_window")),
        start=start,
        prefer=prefer,
    )


#: The configuration of this process.
config = Configuration()


def create_list(fqdn_listname: str, preferred_language: str = "en") -> MailingList:
    """Create a mailing list in the configured database and return it."""
    return config.lists.create(fqdn_listname, preferred_language)

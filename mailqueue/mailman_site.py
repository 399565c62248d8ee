"""A GNU Mailman 3 site, as its configuration file describes it.

:func:`read_site` reads a Mailman configuration file (``mailman.cfg``) the
way Mailman 3.3 does, without importing Mailman: the defaults of Mailman's
``schema.cfg`` and of its own ``mailman.cfg``, then the file's sections
over them.  From ``[mailman] layout`` and the ``[paths.LAYOUT]`` section it
works out Mailman's directories (``$var_dir``, ``$cwd``, ``$cfg_file`` and
the other paths expanded until none is left, and ``MAILMAN_VAR_DIR`` taken
before the file's ``var_dir``, as Mailman does); from the ``[runner.NAME]``
sections, every runner and its queue.  Nothing here writes anything.
"""

from __future__ import annotations

import configparser
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass

from mailqueue.errors import MailqueueError

__all__ = [
    "MailmanSite",
    "MailmanSiteError",
    "MasterState",
    "master_state",
    "read_site",
]


class MailmanSiteError(MailqueueError, ValueError):
    """A Mailman configuration file that cannot be read, or says what cannot be."""


# Mailman 3.3's schema.cfg, [paths.master]: what a layout does not say.
_PATH_DEFAULTS = {
    "var_dir": "/var/tmp/mailman",
    "queue_dir": "$var_dir/queue",
    "bin_dir": "$argv",
    "list_data_dir": "$var_dir/lists",
    "log_dir": "$var_dir/logs",
    "lock_dir": "$var_dir/locks",
    "data_dir": "$var_dir/data",
    "cache_dir": "$var_dir/cache",
    "etc_dir": "$var_dir/etc",
    "ext_dir": "$var_dir/ext",
    "messages_dir": "$var_dir/messages",
    "archive_dir": "$var_dir/archives",
    "template_dir": "$var_dir/templates",
    "pid_file": "$var_dir/master.pid",
    "lock_file": "$lock_dir/master.lck",
}

# Mailman 3.3's own mailman.cfg: its layouts ...
_LAYOUTS = {
    "local": {},
    "dev": {"var_dir": "$cfg_file/../.."},
    "here": {"var_dir": "$cwd/var"},
    "fhs": {
        "bin_dir": "/sbin",
        "var_dir": "/var/lib/mailman",
        "queue_dir": "/var/spool/mailman",
        "log_dir": "/var/log/mailman",
        "lock_dir": "/var/lock/mailman",
        "etc_dir": "/etc",
        "ext_dir": "/etc/mailman.d",
        "pid_file": "/var/run/mailman/master.pid",
    },
}

# ... schema.cfg's [runner.master], which every runner starts from ...
_RUNNER_DEFAULTS = {
    "class": "mailman.core.runner.Runner",
    "path": "$QUEUE_DIR/$name",
    "instances": "1",
    "start": "yes",
    "max_restarts": "10",
    "sleep_time": "1s",
}

# ... and its runners.
_RUNNERS: dict[str, dict[str, str]] = {
    "archive": {"class": "mailman.runners.archive.ArchiveRunner"},
    "bad": {"class": "mailman.runners.fake.BadRunner", "start": "no"},
    "bounces": {"class": "mailman.runners.bounce.BounceRunner", "sleep_time": "2m"},
    "command": {"class": "mailman.runners.command.CommandRunner"},
    "in": {"class": "mailman.runners.incoming.IncomingRunner"},
    "lmtp": {"class": "mailman.runners.lmtp.LMTPRunner", "path": ""},
    "nntp": {"class": "mailman.runners.nntp.NNTPRunner", "start": "no"},
    "out": {"class": "mailman.runners.outgoing.OutgoingRunner"},
    "pipeline": {"class": "mailman.runners.pipeline.PipelineRunner"},
    "rest": {"class": "mailman.runners.rest.RESTRunner", "path": ""},
    "retry": {"class": "mailman.runners.retry.RetryRunner", "sleep_time": "15m"},
    "shunt": {"class": "mailman.runners.fake.ShuntRunner", "start": "no"},
    "task": {
        "class": "mailman.runners.task.TaskRunner",
        "sleep_time": "1m",
        "path": "",
    },
    "virgin": {"class": "mailman.runners.virgin.VirginRunner"},
    "digest": {"class": "mailman.runners.digest.DigestRunner"},
}

#: The largest configuration file read, in bytes.
MAX_CONFIG_SIZE = 1 << 20


@dataclass(frozen=True)
class MailmanSite:
    """What mailqueue needs to know of a Mailman site."""

    #: The configuration file, as an absolute path.
    cfg_file: str
    layout: str
    #: Mailman's paths, by the names its runner paths use: ``VAR_DIR``,
    #: ``QUEUE_DIR``, ``LOG_DIR``, ``LOCK_DIR`` ... and ``PID_FILE`` and
    #: ``LOCK_FILE``; each absolute.
    paths: Mapping[str, str]
    #: Each runner's keys (``class``, ``path``, ``instances``, ``start``,
    #: ``sleep_time``...), as the file gives them, defaults filled in.
    runners: Mapping[str, Mapping[str, str]]
    #: Where each runner section's values come from, for an error about one.
    origins: Mapping[str, str]

    @property
    def directories(self) -> tuple[str, ...]:
        """The directories Mailman writes in, which mailqueue's state stays out of."""
        keys = ("VAR_DIR", "QUEUE_DIR", "LOG_DIR", "LOCK_DIR", "DATA_DIR")
        return tuple(sorted({self.paths[key] for key in keys}))


def read_site(path: str, environ: Mapping[str, str] | None = None) -> MailmanSite:
    """Read the Mailman configuration file at *path*; see the module's text.

    Raise :exc:`MailmanSiteError` (one line, naming the file) for a file
    that cannot be read, is not INI text, or names a layout it lacks.
    """
    environ = os.environ if environ is None else environ
    cfg_file = os.path.abspath(path)
    parser = configparser.RawConfigParser(
        interpolation=None, strict=False, default_section="\0"
    )
    try:
        with open(cfg_file, "rb") as stream:
            data = stream.read(MAX_CONFIG_SIZE + 1)
        if len(data) > MAX_CONFIG_SIZE:
            raise MailmanSiteError(
                f"GNU Mailman's configuration {cfg_file} is larger than "
                f"{MAX_CONFIG_SIZE:,} bytes"
            )
        parser.read_string(data.decode("utf-8"), source=cfg_file)
    except OSError as error:
        raise MailmanSiteError(
            f"cannot read GNU Mailman's configuration {cfg_file}: {error.strerror}"
        ) from None
    except UnicodeDecodeError as error:
        raise MailmanSiteError(
            f"GNU Mailman's configuration {cfg_file} is not UTF-8 text "
            f"(byte {error.start:,})"
        ) from None
    except configparser.Error as error:
        line = getattr(error, "lineno", None)
        raise MailmanSiteError(
            f"GNU Mailman's configuration {cfg_file}"
            f"{f', line {line}' if line else ''}: not INI text "
            f"({type(error).__name__})"
        ) from None
    if parser.has_option("meta", "extends"):
        raise MailmanSiteError(
            f"GNU Mailman's configuration {cfg_file}: [meta] extends is not "
            "followed; name the file that holds the paths and runners"
        )
    layout = parser.get("mailman", "layout", fallback="here").strip()
    section = f"paths.{layout}"
    if layout not in _LAYOUTS and not parser.has_section(section):
        raise MailmanSiteError(
            f"GNU Mailman's configuration {cfg_file}: [mailman] layout {layout!r} "
            f"has no [{section}] section"
        )
    given = _PATH_DEFAULTS | _LAYOUTS.get(layout, {})
    if parser.has_section(section):
        given |= {k: v.strip() for k, v in parser.items(section) if k in given}
    paths = _expand_paths(given, cfg_file, environ)
    runners: dict[str, dict[str, str]] = {}
    origins: dict[str, str] = {}
    for name, values in _RUNNERS.items():
        runners[name] = _RUNNER_DEFAULTS | values
        origins[name] = "GNU Mailman's defaults"
    for name in parser.sections():
        if name.startswith("runner.") and name != "runner.master":
            runner = name.removeprefix("runner.")
            values = {k: v.strip() for k, v in parser.items(name)}
            runners[runner] = runners.get(runner, _RUNNER_DEFAULTS) | values
            origins[runner] = f"{cfg_file}, [{name}]"
    return MailmanSite(cfg_file, layout, paths, runners, origins)


def _expand_paths(
    given: dict[str, str], cfg_file: str, environ: Mapping[str, str]
) -> dict[str, str]:
    substitutions = dict(given)
    substitutions["var_dir"] = environ.get("MAILMAN_VAR_DIR", given["var_dir"])
    substitutions["cwd"] = os.getcwd()
    substitutions["cfg_file"] = cfg_file
    # Mailman's own bin directory and templates are no path of its state.
    substitutions["argv"] = "/nonexistent"
    if substitutions["template_dir"] == ":source:":
        substitutions["template_dir"] = "/nonexistent"
    # As Mailman does: substitute until nothing is left to substitute.
    for _ in range(len(substitutions) + 1):
        expanded = {
            key: string.Template(value).safe_substitute(substitutions)
            for key, value in substitutions.items()
        }
        if expanded == substitutions:
            break
        substitutions = expanded
    left = sorted(key for key in given if "$" in substitutions[key])
    if left:
        raise MailmanSiteError(
            f"GNU Mailman's configuration {cfg_file}: cannot expand "
            f"[paths] {left[0]} ({substitutions[left[0]]!r})"
        )
    return {key.upper(): os.path.abspath(substitutions[key]) for key in given}


# Mailman's master and its runners, as the system shows them ------------------


@dataclass(frozen=True)
class MasterState:
    """What Mailman's pid file, lock file and process table say of its master."""

    #: The pid the pid file names, or None (no file, or not a pid).
    pid: int | None
    #: True if that process lives and is a Mailman master.
    alive: bool
    #: Who holds the master lock, as ``(host, pid)``, or None.
    lock: tuple[str, int] | None
    #: Each running runner process, by its ``NAME:SLICE:COUNT``.
    runners: Mapping[str, int]

    def running(self, queue: str) -> list[int]:
        """The pids of the live runner processes that work *queue*."""
        return [
            pid for spec, pid in self.runners.items() if spec.split(":")[0] == queue
        ]


def master_state(site: MailmanSite, proc: str = "/proc") -> MasterState:
    """Look at *site*'s master: its pid file and lock, and its runner children.

    This only reads: the pid file, the lock file (flufl.lock's, which holds
    the name of its claim file, ``master.lck|HOST|PID|RANDOM``) and the
    process table under *proc*.  A runner is a child of the master with a
    ``--runner=NAME:SLICE:COUNT`` argument, as Mailman's master starts them.
    """
    pid = _number(_small_text(site.paths["PID_FILE"]))
    alive = pid is not None and "master" in " ".join(_cmdline(proc, pid)[:3])
    lock = None
    claim = _small_text(site.paths["LOCK_FILE"]).rsplit("|", 3)
    if len(claim) == 4 and (holder := _number(claim[2])) is not None:
        lock = (claim[1], holder)
    runners = {}
    if pid is not None and alive:
        for child in _children(proc, pid):
            for argument in _cmdline(proc, child):
                if argument.startswith("--runner="):
                    runners[argument.removeprefix("--runner=")] = child
    return MasterState(pid, alive, lock, dict(sorted(runners.items())))


def _small_text(path: str) -> str:
    try:
        with open(path, "rb") as stream:
            return stream.read(4096).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() and 0 < int(text) < 2**31 else None


def _cmdline(proc: str, pid: int) -> list[str]:
    # A process that is gone (or cannot be looked at) has no command line.
    arguments = _small_text(os.path.join(proc, str(pid), "cmdline"))
    return [argument for argument in arguments.split("\0") if argument]


def _children(proc: str, parent: int) -> list[int]:
    found = []
    for name in os.listdir(proc):
        if name.isdigit():
            stat = _small_text(os.path.join(proc, name, "stat"))
            # pid (comm) state ppid ...: comm may hold spaces and parentheses.
            fields = stat.rpartition(")")[2].split()
            if len(fields) > 1 and fields[1] == str(parent):
                found.append(int(name))
    return sorted(found)

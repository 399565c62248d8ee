"""The queues' metrics, in Prometheus's text format, and the counts behind them.

:func:`render` reads the queue directories and returns the text
``mailqueue metrics`` prints (the text exposition format, version 0.0.4):
each queue's entries by state and the age of its oldest, a qshape-like
count of its entries by age, the runners' counts of deliveries, failed
deliveries and shunts, the master's count of restarts, and who owns each
runner slice.  :data:`FAMILIES` names every family, with its type and help
text.  :func:`write_file_atomically` writes the text for node_exporter's
textfile collector, and :class:`MetricsServer` serves it over HTTP on a
loopback address (the master runs one when ``[master] metrics_listen`` is
set).

The counts are kept in ``$VAR_DIR/counters.json``.  A process adds what it
counted (:class:`Counters`) under a lock on ``$VAR_DIR/counters.lck``,
rewriting the file atomically and durably (a runner: before it sleeps, and
at most once a second while it works), so a count survives the process and
the master; and
every process's counts add up, whichever slice, process or master made
them.  A file that cannot be read is taken as no counts yet: Prometheus
reads a counter that goes down as a reset.
"""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import json
import logging
import os
import signal
import socket
import socketserver
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

from mailqueue import qfile
from mailqueue.configuration import config
from mailqueue.errors import MailqueueError
from mailqueue.ownership import slice_owner
from mailqueue.queuetools import entry_files, hold_directory

__all__ = [
    "AGE_BUCKETS",
    "CONTENT_TYPE",
    "COUNTERS",
    "FAMILIES",
    "STATES",
    "Counters",
    "MetricsError",
    "MetricsServer",
    "read_counters",
    "render",
    "write_file_atomically",
]

dlog = logging.getLogger("mailqueue.debug")
elog = logging.getLogger("mailqueue.error")

#: The media type of the text exposition format.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: An entry's states: where its file is, and its extension.
STATES = {
    "queued": ".pck",  # waiting for its runner (in shunt: shunted)
    "in_progress": ".bak",  # a runner has taken it
    "held": ".pck",  # in $QUEUE_DIR/hold/QUEUE, until released
    "preserved": ".psv",  # set aside, in bad
}

#: The upper bounds of the age counts, in seconds: 1, 2, 4, ... 8192 minutes
#: (five days and a half), as qshape's buckets double; then ``+Inf``.
AGE_BUCKETS = tuple(60 * 2**power for power in range(14))

#: What the runners and the master count, by name in ``counters.json``:
#: the family each is shown as, and its help text.
COUNTERS = {
    "deliveries": (
        "mailqueue_deliveries_total",
        "Messages the queue's runner delivered (out: to a list's Maildir).",
    ),
    "delivery_failures": (
        "mailqueue_delivery_failures_total",
        "Deliveries that failed, the message queued for retry.",
    ),
    "shunts": (
        "mailqueue_shunts_total",
        "Entries the queue's runner moved to shunt: it failed on them, or "
        "their list is gone.",
    ),
    "restarts": (
        "mailqueue_runner_restarts_total",
        "Times the master restarted a process of the queue's runner after it died.",
    ),
}

#: Every family :func:`render` writes, in order: its type and help text.
FAMILIES = {
    "mailqueue_queue_entries": (
        "gauge",
        "Entries in the queue, by state: queued (.pck; in shunt, shunted), "
        "in_progress (.bak), held (hold/QUEUE), preserved (.psv).",
    ),
    "mailqueue_queue_oldest_entry_age_seconds": (
        "gauge",
        "Age of the queue's oldest entry in that state (0 if none), from the "
        "time in its file base.",
    ),
    "mailqueue_queue_entries_by_age": (
        "gauge",
        "Entries in the queue, any state, at most le seconds old "
        "(cumulative, as a histogram's buckets).",
    ),
    **{name: ("counter", text) for name, text in COUNTERS.values()},
    "mailqueue_slice_owner": (
        "gauge",
        "1 while a process, on this host or another, owns the runner slice "
        "(its host and pid as labels); 0 while none does.",
    ),
}

#: The runner class that runs nothing: its queue is held for a person.
_HELD_QUEUE = "mailqueue.runner.Runner"


class MetricsError(MailqueueError):
    """The metrics cannot be served where the configuration says."""


# The text ------------------------------------------------------------------


def render(now: float | None = None) -> str:
    """The metrics of the configured queues, in the text exposition format.

    Ages are counted up to *now* (the current time by default).  Reading
    creates nothing: a queue whose directory is not there has no entries.
    On a GNU Mailman site the queues are Mailman's; its runners keep no
    counts and own no slices, so those families have no samples there.
    """
    now = time.time() if now is None else now
    samples: dict[str, list[tuple[dict[str, str], int | float]]] = {
        name: [] for name in FAMILIES
    }
    for queue, section in sorted(config.runners.items()):
        if section.path is None:
            continue
        ages = _entry_ages(queue, section.path, now)
        for state, found in ages.items():
            labels = {"queue": queue, "state": state}
            samples["mailqueue_queue_entries"].append((labels, len(found)))
            samples["mailqueue_queue_oldest_entry_age_seconds"].append(
                (labels, max(found, default=0))
            )
        every = sorted(age for found in ages.values() for age in found)
        counted = 0
        for bound in AGE_BUCKETS:
            while counted < len(every) and every[counted] <= bound:
                counted += 1
            samples["mailqueue_queue_entries_by_age"].append(
                ({"queue": queue, "le": str(bound)}, counted)
            )
        samples["mailqueue_queue_entries_by_age"].append(
            ({"queue": queue, "le": "+Inf"}, len(every))
        )
    if config.mailman is None:
        _add_runner_samples(samples)
    lines = []
    for name, (kind, text) in FAMILIES.items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for labels, value in samples[name]:
            shown = ",".join(
                f'{key}="{_escaped(item)}"' for key, item in labels.items()
            )
            number = f"{value:.3f}" if isinstance(value, float) else str(value)
            lines.append(f"{name}{{{shown}}} {number}")
    return "\n".join(lines) + "\n"


def _entry_ages(queue: str, directory: str, now: float) -> dict[str, list[float]]:
    """The ages of *queue*'s entries in seconds, by state."""
    ages: dict[str, list[float]] = {state: [] for state in STATES}
    for where, states in (
        (directory, ("queued", "in_progress", "preserved")),
        (hold_directory(queue), ("held",)),
    ):
        wanted = {STATES[state]: state for state in states}
        for _, extension, parsed in entry_files(where, wanted):
            ages[wanted[extension]].append(max(0.0, now - parsed.when))
    return ages


def _add_runner_samples(
    samples: dict[str, list[tuple[dict[str, str], int | float]]],
) -> None:
    """The counts of every runner that runs, and the owner of each slice."""
    counts = read_counters(config.VAR_DIR)
    for name, section in sorted(config.runners.items()):
        if section.class_path == _HELD_QUEUE:
            continue
        for counter, (family, _) in COUNTERS.items():
            value = counts.get(name, {}).get(counter, 0)
            samples[family].append(({"queue": name}, value))
        if section.path is None:
            continue
        for number in range(section.instances):
            owner = slice_owner(
                section.path, number, section.instances, config.host_name
            )
            host, pid = owner if owner is not None else ("", "")
            labels = {"queue": name, "slice": str(number)}
            labels |= {"host": host, "pid": str(pid)}
            samples["mailqueue_slice_owner"].append((labels, int(owner is not None)))


def _escaped(value: str) -> str:
    # A label value's escapes in the text format.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def write_file_atomically(path: str, text: str) -> None:
    """Write *text* to *path* as node_exporter's textfile collector needs.

    The text goes to a temporary name beside *path* (a dot first, ``.tmp``
    last: never a ``.prom`` file the collector would read) and is then
    renamed to *path*, so a reader sees the old file or the new one, whole.
    The file is readable by everyone (mode 0644): the collector runs as
    another user.  On an error nothing is left but what *path* was.
    """
    directory, name = os.path.split(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            os.fchmod(stream.fileno(), 0o644)
            stream.write(text)
        os.rename(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


# The counts ------------------------------------------------------------------


def _counters_path(var_dir: str) -> str:
    return os.path.join(var_dir, "counters.json")


def read_counters(var_dir: str) -> dict[str, dict[str, int]]:
    """The counts kept in *var_dir*, by runner and counter name.

    A file that is missing or is not such counts holds none; a value that
    is not a count is left out.
    """
    try:
        with open(_counters_path(var_dir), encoding="utf-8") as stream:
            found: Any = json.load(stream)
    except (FileNotFoundError, ValueError):
        return {}
    if not isinstance(found, dict):
        return {}
    return {
        runner: {
            name: value
            for name, value in counts.items()
            if type(value) is int and value >= 0
        }
        for runner, counts in found.items()
        if isinstance(counts, dict)
    }


class Counters:
    """What one process counted and has not yet added to *var_dir*'s counts."""

    def __init__(self, var_dir: str) -> None:
        self.var_dir = var_dir
        self._pending: dict[str, dict[str, int]] = {}
        self._flushed = 0.0
        self._failed: int | None = None

    def add(self, runner: str, name: str, amount: int = 1) -> None:
        """Count *amount* more of *name* (a key of :data:`COUNTERS`) for *runner*."""
        counts = self._pending.setdefault(runner, {})
        counts[name] = counts.get(name, 0) + amount

    def flush(self, every: float = 0.0) -> None:
        """Add the pending counts to the file, unless it was done *every* s ago.

        The file is rewritten under the lock, durably.  If it cannot be
        (a full disk, say), the error is logged once and the counts stay
        pending for the next flush: counting never stops a runner.
        """
        now = time.monotonic()
        if not self._pending or now - self._flushed < every:
            return
        self._flushed = now
        path = _counters_path(self.var_dir)
        try:
            with _locked(os.path.join(self.var_dir, "counters.lck")):
                counts = read_counters(self.var_dir)
                for runner, pending in self._pending.items():
                    kept = counts.setdefault(runner, {})
                    for name, amount in pending.items():
                        kept[name] = kept.get(name, 0) + amount
                text = json.dumps(counts, indent=1, sort_keys=True) + "\n"
                qfile.write_file(path, (text.encode(),))
        except OSError as error:
            if error.errno != self._failed:
                elog.error(
                    "cannot add to the counts in %s (kept for later): %s", path, error
                )
            self._failed = error.errno
            return
        self._failed = None
        self._pending.clear()


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# Serving them ------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    # A client that stops sending or reading cannot hold the server longer.
    timeout = 10

    def do_GET(self) -> None:
        if urllib.parse.urlsplit(self.path).path != "/metrics":
            self._answer(404, "text/plain; charset=utf-8", "see /metrics\n")
            return
        try:
            text = render()
        except OSError as error:
            self._answer(500, "text/plain; charset=utf-8", f"{error}\n")
            return
        self._answer(200, CONTENT_TYPE, text)

    def _answer(self, status: int, content_type: str, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *arguments: Any) -> None:
        # Not to standard error (the master's master.out): a scrape every
        # few seconds is no news.
        dlog.debug("metrics: %s %s", self.address_string(), format % arguments)


class _Server(socketserver.TCPServer):
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serve :func:`render`'s text at ``/metrics`` on *address*, in a thread.

    *address* is a host (an IP address) and a port; the configuration lets
    only loopback addresses through.  The socket is bound and listening once
    this returns (:exc:`MetricsError` if it cannot be); :meth:`start` starts
    answering, :meth:`close` stops and closes it.  One request is answered
    at a time.
    """

    def __init__(self, address: tuple[str, int]) -> None:
        host, port = address
        server = _Server6 if ":" in host else _Server
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self._server = server((host, port), _Handler)
        except OSError as error:
            raise MetricsError(
                f"cannot serve the metrics on {where}: {error.strerror}"
            ) from None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The host and port it listens on."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Answer requests in a thread of this process, until :meth:`close`."""
        self._thread = threading.Thread(
            target=self._serve, name="mailqueue-metrics", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        # Signals are the main thread's (the master's handlers run there).
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        self._server.serve_forever(poll_interval=0.2)

    def close(self) -> None:
        """Stop answering (after the request being answered) and close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

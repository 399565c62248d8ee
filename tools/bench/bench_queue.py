"""What a queue costs, side by side: run with ``make bench``.

mailqueue, GNU Mailman 3.3.10 and a bare system-call floor run in one
process, on one directory's file system, *interleaved round by round*, so
that a machine that drifts (these shared machines drift by 30 %) drifts for
all of them alike; every figure is a median of rounds with its [min-max],
and every comparison is the median of the same-round ratios.

- a durable cycle (enqueue, dequeue, finish) of a 1 KB, 100 KB and 5 MB
  message, and the same with ``fsync`` turned into a no-op (the CPU cost);
- listing 1,000, 10,000 and 100,000 entries, whole and one slice of four;
- the peak memory of listing 1,000,000 entries, each in a fresh process;
- a runner draining a queue through its real run loop, mailqueue's and GNU
  Mailman's, each against its switchboard drained by hand;
- as the queue grows from 1,000 to 100,000 entries: the cost an entry of a
  listing and of a drain, the time to a runner's first message and its
  memory.

It prints the machine, warns when the machine is busy or creating files is
slow, writes JSON to build/bench/bench.json, and asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import email
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mailqueue import Runner, Switchboard, config, create_list, message_from_string
from mailqueue.testing import isolated_state

HEADERS = (
    "From: aperson@example.com\nTo: test@example.com\nSubject: benchmark\n"
    "Message-ID: <bench@example.com>\n\n"
)
SIZES = {"1 KB": 1_000, "100 KB": 100_000, "5 MB": 5_000_000}


# The peak of this process's memory in KiB.  Not ru_maxrss: on Linux that
# includes what the parent held when it started the child.
PEAK_KIB = """
def PEAK_KIB(what="VmHWM:"):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(what):
                return int(line.split()[1])
"""


def text_of(size: int) -> str:
    line = "A line of the body, as a message has many.\n"
    return HEADERS + line * max(1, (size - len(HEADERS)) // len(line))


# The three implementations of one cycle ----------------------------------------


class Floor:
    """The same cycle as bare system calls: what no implementation can beat."""

    def __init__(self, directory: str, payload: bytes) -> None:
        self.directory = directory
        self.payload = payload
        self.number = 0

    def cycle(self) -> None:
        self.number += 1
        base = os.path.join(self.directory, str(self.number))
        fd = os.open(base + ".pck.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o660)
        os.write(fd, self.payload)
        os.fsync(fd)
        os.close(fd)
        os.rename(base + ".pck.tmp", base + ".pck")
        directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(directory)
        os.close(directory)
        os.rename(base + ".pck", base + ".bak")
        fd = os.open(base + ".bak", os.O_RDONLY)
        while os.read(fd, 1 << 20):
            pass
        os.close(fd)
        os.unlink(base + ".bak")


def switchboard_cycle(queue: object, msg: object) -> Callable[[], None]:
    """One cycle through *queue*, mailqueue's or Mailman's: the same calls."""

    def cycle() -> None:
        filebase = queue.enqueue(msg, listid="test.example.com")
        queue.dequeue(filebase)
        queue.finish(filebase)

    return cycle


# Running things side by side ------------------------------------------------------


def interleaved(
    contenders: dict[str, Callable[[], None]], rounds: int, per_round: int
) -> dict[str, list[float]]:
    """Seconds per call of each contender, one figure a round, in rotating order."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for number in range(rounds):
        order = names[number % len(names) :] + names[: number % len(names)]
        for name in order:
            call = contenders[name]
            start = time.perf_counter()
            for _ in range(per_round):
                call()
            times[name].append((time.perf_counter() - start) / per_round)
    return times


def summary(
    times: dict[str, list[float]],
    unit: float,
    label: str,
    reference: str = "mailqueue",
) -> dict:
    """Medians [min-max] and same-round ratios of *reference* to the others."""
    figures = {
        name: {
            "median": statistics.median(values) / unit,
            "min": min(values) / unit,
            "max": max(values) / unit,
        }
        for name, values in times.items()
    }
    ratios = {}
    for name, values in times.items():
        if name != reference:
            per_round = [
                ours / theirs
                for ours, theirs in zip(times[reference], values, strict=True)
            ]
            ratios[f"{reference} / {name}"] = {
                "median": statistics.median(per_round),
                "min": min(per_round),
                "max": max(per_round),
            }
    return {"unit": label, "figures": figures, "ratios": ratios}


@contextlib.contextmanager
def fsync_disabled() -> Iterator[None]:
    real = os.fsync
    os.fsync = lambda fd: None
    try:
        yield
    finally:
        os.fsync = real


@functools.cache
def start_mailman() -> tuple[type, type]:
    from mailqueue.conformance.mailman import MailmanAdapter

    MailmanAdapter().start()
    from mailman.core.switchboard import Switchboard as MailmanSwitchboard
    from mailman.email.message import Message as MailmanMessage

    return MailmanSwitchboard, MailmanMessage


def cycles(root: str, rounds: int, per_round: int, fsync: bool) -> dict[str, dict]:
    mailman_switchboard, mailman_message = start_mailman()
    results = {}
    for label, size in SIZES.items():
        text = text_of(size)
        # Sealed, as every switchboard of a site is (config.seal: its key).
        ours = Switchboard("cycle", os.path.join(root, "mq-cycle"), seal=config.seal)
        theirs = mailman_switchboard("cycle", os.path.join(root, "mm-cycle"))
        floor_directory = os.path.join(root, "floor-cycle")
        os.makedirs(floor_directory, exist_ok=True)
        contenders = {
            "mailqueue": switchboard_cycle(ours, message_from_string(text)),
            "mailman": switchboard_cycle(
                theirs, email.message_from_string(text, _class=mailman_message)
            ),
            "floor": Floor(floor_directory, text.encode() + bytes(300)).cycle,
        }
        few = max(1, per_round // (10 if size > 1_000_000 else 1))
        with fsync_disabled() if not fsync else contextlib.nullcontext():
            times = interleaved(contenders, rounds, few)
        results[label] = summary(times, 1e-6, "µs a cycle")
    return results


def make_names(directory: str, entries: int, mixed: bool) -> None:
    """Empty entries with today's times, or one in seven a time of nine digits."""
    os.makedirs(directory, exist_ok=True)
    for number in range(entries):
        early = mixed and number % 7 == 0
        when = (999_999_000 if early else 1_700_000_000) + number * 0.001
        name = f"{when!r}+{number * 2654435761 % 2**160:040x}.pck"
        os.close(os.open(os.path.join(directory, name), os.O_CREAT | os.O_WRONLY))


def listings(root: str, sizes: list[int], rounds: int) -> dict[str, dict]:
    mailman_switchboard, _ = start_mailman()
    results = {}
    cases = [(entries, False) for entries in sizes] + [(max(sizes), True)]
    for entries, mixed in cases:
        directory = os.path.join(root, f"listing-{entries}-{mixed}")
        make_names(directory, entries, mixed)
        for slice, count in ((None, 1), (0, 4)):
            ours = Switchboard("listing", directory, slice, count)
            theirs = mailman_switchboard("listing", directory, slice, count)
            contenders = {
                "mailqueue": lambda ours=ours: ours.files,
                "mailman": lambda theirs=theirs: theirs.files,
                "floor": lambda directory=directory: sorted(os.listdir(directory)),
            }
            times = interleaved(contenders, rounds, 1)
            where = f"{entries:,} entries" + (", 1 in 7 of 9 digits" if mixed else "")
            where += "" if slice is None else ", slice 0 of 4"
            results[where] = summary(times, 1e-3, "ms a listing")
            results[where]["per entry (µs)"] = {
                name: figures["median"] * 1e3 / entries
                for name, figures in results[where]["figures"].items()
            }
    return results


class Drain(Runner):
    def _dispose(self, mlist, msg, msgdata):
        return False

    def _snooze(self, filecnt):
        if not filecnt:
            self.stop()


def plugged(run: Callable[[], None]) -> Callable[[], None]:
    """*run*, with mailqueue's Mailman plugin installed while it runs."""
    from mailqueue import mailman as plugin

    def with_the_plugin() -> None:
        plugin.install()
        try:
            run()
        finally:
            plugin.uninstall()

    return with_the_plugin


@functools.cache
def mailman_drain_runner() -> type:
    from mailman.core.runner import Runner as MailmanRunner

    class MailmanDrain(MailmanRunner):
        def _dispose(self, mlist, msg, msgdata):
            return False

        def _snooze(self, filecnt):
            if not filecnt:
                self.stop()

    return MailmanDrain


#: The drains: the message size, and how many entries a drain takes.
DRAINS = {"1 KB": (1_000, 1_000), "100 KB": (100_000, 300)}


def drains(rounds: int, scale: float = 1.0) -> dict[str, dict]:
    """The same drain four ways, interleaved round by round, at each size of DRAINS.

    Each round, for each contender, the queue is filled as a site fills it
    (every entry flushed, as each implementation flushes it), then drained,
    and only the drain is timed, per entry:

    - *runner drain*: a ``Runner`` whose ``_dispose`` does nothing and
      returns False, through its real run loop (the list and the sender
      looked up for each message, the entry dequeued and finished), until
      the queue is empty: mailqueue's and GNU Mailman's;
    - *bare switchboard drain*: the queue's switchboard by hand, ``dequeue``
      and ``finish`` of each file base the listing gives: mailqueue's and
      GNU Mailman's;
    - *Mailman's runner drain with the plugin*: GNU Mailman's runner as
      above, with mailqueue's Mailman plugin installed (:mod:`mailqueue.mailman`:
      every file read through the verified loader) for that drain only.
    """
    from mailqueue.conformance.mailman import MailmanAdapter

    start_mailman()
    results: dict[str, dict] = {}
    config.push("bench-drain", "[runner.drain]\n")
    mlist = create_list("drain@example.com")
    queue = config.switchboards["drain"]
    with MailmanAdapter().document_state() as mailman:
        mailman["config"].push("bench-drain", "[runner.mmdrain]\n")
        mm_list = mailman["create_list"]("drain@example.com")
        mm_queue = mailman["config"].switchboards["mmdrain"]
        for size, (length, entries) in DRAINS.items():
            entries = max(10, int(entries * scale))
            msg = message_from_string(text_of(length))
            mm_msg = mailman["message_from_string"](text_of(length))

            def timed(fill: Callable[[], None], drain: Callable[[], None]) -> float:
                fill()
                start = time.perf_counter()
                drain()
                return (time.perf_counter() - start) / entries  # noqa: B023

            def by_hand(board: object) -> None:
                for filebase in board.files:
                    board.dequeue(filebase)
                    board.finish(filebase)

            def fill(msg=msg) -> None:
                for _ in range(entries):  # noqa: B023
                    queue.enqueue(msg, listid=mlist.list_id)

            def mm_fill(mm_msg=mm_msg) -> None:
                for _ in range(entries):  # noqa: B023
                    mm_queue.enqueue(mm_msg, listid=mm_list.list_id)

            contenders = {
                "runner mailqueue": lambda: timed(fill, Drain("drain").run),
                "runner mailman": lambda: timed(
                    mm_fill, mailman_drain_runner()("mmdrain").run
                ),
                "bare mailqueue": lambda: timed(fill, lambda: by_hand(queue)),
                "bare mailman": lambda: timed(mm_fill, lambda: by_hand(mm_queue)),
                "runner mailman with the plugin": lambda: timed(
                    mm_fill, plugged(mailman_drain_runner()("mmdrain").run)
                ),
            }
            times: dict[str, list[float]] = {name: [] for name in contenders}
            names = list(contenders)
            for number in range(rounds):
                turn = number % len(names)
                for name in names[turn:] + names[:turn]:
                    times[name].append(contenders[name]())
            for kind, title in (
                ("runner", "runner drain"),
                ("bare", "bare switchboard drain"),
            ):
                results[f"{title}, {size}"] = summary(
                    {
                        "mailqueue": times[f"{kind} mailqueue"],
                        "mailman": times[f"{kind} mailman"],
                    },
                    1e-6,
                    "µs an entry",
                )
            results[f"GNU Mailman's runner drain with the plugin, {size}"] = summary(
                {
                    "with the plugin": times["runner mailman with the plugin"],
                    "without": times["runner mailman"],
                },
                1e-6,
                "µs an entry",
                reference="with the plugin",
            )
    config.pop("bench-drain")
    return results


SCALE = (
    PEAK_KIB
    + """
import json, os, sys, time
sys.path.insert(0, sys.argv[2])
import bench_queue as b
from mailqueue import config, create_list, message_from_string
from mailqueue.testing import isolated_state
entries = int(sys.argv[1])
with isolated_state():
    config.push("scale", "[runner.drain]\\n")
    mlist = create_list("drain@example.com")
    msg = message_from_string(b.text_of(1_000))
    queue = config.switchboards["drain"]
    with b.fsync_disabled():
        for _ in range(entries):
            queue.enqueue(msg, listid=mlist.list_id)
    start = time.perf_counter()
    listing = time.perf_counter()
    queue.files
    listing = time.perf_counter() - listing
    before = PEAK_KIB("VmRSS:")
    first = []

    class Timed(b.Drain):
        def _dispose(self, mlist, msg, msgdata):
            if not first:
                first.append(time.perf_counter() - start)
                first.append(PEAK_KIB("VmRSS:") - before)
            return False

    start = time.perf_counter()
    Timed("drain").run()
    drained = time.perf_counter() - start
    peak = PEAK_KIB()
print(json.dumps({
    "listing (µs an entry)": listing / entries * 1e6,
    "drain (µs an entry)": drained / entries * 1e6,
    "first message (ms)": first[0] * 1e3,
    "peak memory (MiB)": peak / 1024,
    "memory the backlog takes (MiB)": first[1] / 1024,
}))
"""
)


def scaling(sizes: list[int]) -> dict[str, dict]:
    """A listing and a runner's drain of 1k to 100k entries, each in a fresh process.

    The cost an entry should stay flat as the queue grows; the runner's
    first message and its memory show how it meets a backlog.
    """
    import subprocess

    results = {}
    for entries in sizes:
        out = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", SCALE, str(entries), HERE],
            capture_output=True,
            text=True,
            check=True,
            timeout=1800,
        ).stdout
        results[f"{entries:,} entries"] = json.loads(out)
    return results


HERE = os.path.dirname(os.path.abspath(__file__))


PEAK = (
    PEAK_KIB
    + """
import os, sys
kind, directory = sys.argv[1], sys.argv[2]
if kind == "mailqueue":
    from mailqueue import Switchboard
    found = len(Switchboard("peak", directory).files)
elif kind == "mailman":
    from mailman.core.switchboard import Switchboard
    found = len(Switchboard("peak", directory).files)
else:
    found = len(sorted(os.listdir(directory)))
print(found, PEAK_KIB())
"""
)


def peak_memory(entries: int, rounds: int) -> dict:
    """The peak memory of listing *entries* entries, each in a fresh process.

    The entries are made in memory (/dev/shm where there is one): a million
    files on this disk would take minutes to make and slow it for minutes
    after they are removed, and the memory a listing takes does not depend
    on the file system.
    """
    import subprocess
    import tempfile

    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(dir=base) as directory:
        for number in range(entries):
            when = 1_700_000_000 + number * 0.001
            name = f"{when!r}+{number * 2654435761 % 2**160:040x}.pck"
            os.close(os.open(os.path.join(directory, name), os.O_CREAT | os.O_WRONLY))

        def measure(kind: str) -> Callable[[], None]:
            def run() -> None:
                out = subprocess.run(
                    [sys.executable, "-W", "ignore", "-c", PEAK, kind, directory],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=600,
                ).stdout.split()
                assert int(out[0]) == entries, out
                peaks[kind].append(int(out[1]) * 1024)

            return run

        peaks: dict[str, list[float]] = {"mailqueue": [], "mailman": [], "floor": []}
        # A fresh process a round: its peak, not its time, is the figure.
        interleaved({kind: measure(kind) for kind in peaks}, rounds, 1)
    return summary(peaks, 2**20, "MiB at the peak")


def machine(root: str) -> dict:
    """The machine, and warnings about what makes figures unreliable."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    probe = os.path.join(root, "probe")
    for number in range(200):
        open(f"{probe}-{number}", "wb").close()
    created = (time.perf_counter() - start) / 200
    for number in range(200):
        os.unlink(f"{probe}-{number}")
    # After a burst of removals this disk is slow to allocate and flush new
    # files for minutes, which the create probe above barely shows.
    start = time.perf_counter()
    for number in range(30):
        fd = os.open(f"{probe}-durable-{number}", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, bytes(1000))
        os.fsync(fd)
        os.close(fd)
    durable = (time.perf_counter() - start) / 30
    for number in range(30):
        os.unlink(f"{probe}-durable-{number}")
    warnings = []
    if load > 0.5 * (os.cpu_count() or 1):
        warnings.append(f"the machine is busy (load {load:.1f})")
    if created > 200e-6:
        warnings.append(
            f"creating a file takes {created * 1e6:.0f} µs: the disk is slow"
        )
    if durable > 600e-6:
        warnings.append(
            f"creating and flushing a file takes {durable * 1e6:.0f} µs: the disk "
            "is slow (after many removals it is, for minutes)"
        )
    return {
        "python": platform.python_version(),
        "system": platform.platform(),
        "cpus": os.cpu_count(),
        "load": round(load, 2),
        "file creation (µs)": round(created * 1e6, 1),
        "durable file creation (µs)": round(durable * 1e6, 1),
        "warnings": warnings,
    }


def table(title: str, results: dict[str, dict]) -> list[str]:
    lines = [title]
    for what, result in results.items():
        figures = "; ".join(
            f"{name} {f['median']:,.1f} [{f['min']:,.1f}-{f['max']:,.1f}]"
            for name, f in result["figures"].items()
        )
        ratios = "; ".join(
            f"{name} {r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]"
            for name, r in result["ratios"].items()
        )
        lines.append(f"  {what:<24} {result['unit']}: {figures}")
        lines.append(f"  {'':<24} {ratios}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--cycles", type=int, default=40, help="cycles a round")
    parser.add_argument(
        "--entries", type=int, nargs="+", default=[1_000, 10_000, 100_000]
    )
    parser.add_argument(
        "--drain-scale",
        type=float,
        default=1.0,
        help="a drain takes this times its usual number of entries",
    )
    parser.add_argument(
        "--peak-entries", type=int, default=1_000_000, help="listed for peak memory"
    )
    parser.add_argument(
        "--scale",
        type=int,
        nargs="*",
        default=[1_000, 10_000, 100_000],
        help="queue sizes a runner drains, each in a fresh process",
    )
    parser.add_argument("--json", type=Path, default=Path("build/bench/bench.json"))
    arguments = parser.parse_args()
    with isolated_state() as root:
        report = {
            "date": time.strftime("%Y-%m-%d"),
            "command": "make bench",
            "machine": machine(root),
        }
        for warning in report["machine"]["warnings"]:
            print(f"warning: {warning}; the figures may not hold", file=sys.stderr)
        report["durable cycle"] = cycles(root, arguments.rounds, arguments.cycles, True)
        report["cycle, fsync off"] = cycles(
            root, arguments.rounds, arguments.cycles, False
        )
        report["listing"] = listings(
            root, arguments.entries, max(3, arguments.rounds // 3)
        )
        report["peak memory"] = {
            f"listing {arguments.peak_entries:,} entries": peak_memory(
                arguments.peak_entries, 3
            )
        }
        report["drain"] = drains(arguments.rounds, arguments.drain_scale)
        # Last: draining 100,000 entries removes as many files, after which
        # this disk is slow to create files for minutes.
        report["as the queue grows"] = scaling(arguments.scale)
    print(
        f"{report['machine']['system']}, {report['machine']['cpus']} CPUs, "
        f"Python {report['machine']['python']}, load {report['machine']['load']}"
    )
    for title in (
        "durable cycle",
        "cycle, fsync off",
        "listing",
        "peak memory",
        "drain",
    ):
        print("\n".join(table(title, report[title])))
    print("as the queue grows (mailqueue alone, a fresh process each)")
    for size, figures in report["as the queue grows"].items():
        shown = "; ".join(f"{name} {value:,.1f}" for name, value in figures.items())
        print(f"  {size:<24} {shown}")
    arguments.json.parent.mkdir(parents=True, exist_ok=True)
    arguments.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"(JSON in {arguments.json})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Kill -9 soak: the master and its runners under load, killed at random.

A site with two slices of ``in`` and two of ``out`` gets messages with
unique Message-IDs while a random runner is SIGKILLed every ~0.2 s, the
master is SIGKILLed (and started again) a few times, and ``inject``
processes are SIGKILLed while they write (and their message injected
again, as a caller who saw no ``queued`` line would).  At the end, with
everything delivered and the master stopped, it counts what was delivered,
lost and duplicated, and what was left behind.

A duplicate is *explained* when the message was in the hands of a killed
process: an entry the victim had taken (its ``.bak``, looked at while the
victim is stopped with SIGSTOP, just before SIGKILL: only the owner of a
slice takes entries, so its slice's ``.bak`` files are exactly the
victim's), or the message of a killed ``inject``.  Any other duplicate is a
defect.

:func:`churn` does the same to the runners of one slice without a master:
a new runner is started (it stands by) and then the old one is killed or
stopped, again and again, while the ``out`` runner works.

Run ``python tools/soak/soak.py`` (``make soak``) for the full run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import email.parser
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mailqueue
from mailqueue import Switchboard, config, message_from_string
from mailqueue.entry_format import load_entry
from mailqueue.qfile import QueueFileError

LIST = "soak@example.com"
LIST_ID = "soak.example.com"

#: The churn's ``in`` runner: slower, so that an entry is in flight longer,
#: and a runner that works on a slice it does not own is caught in the act.
SLOW_RUNNER = """
import time
from mailqueue.runners import IncomingRunner

class SlowIncomingRunner(IncomingRunner):
    def _dispose(self, mlist, msg, msgdata):
        time.sleep(0.005)
        return super()._dispose(mlist, msg, msgdata)
"""


@dataclass
class Tally:
    """What a run did and found."""

    sent: set[str] = field(default_factory=set)
    explained: set[str] = field(default_factory=set)
    runner_kills: int = 0
    master_kills: int = 0
    inject_kills: int = 0
    pids: set[int] = field(default_factory=set)

    def figures(self, site: Site, seconds: float) -> dict[str, object]:
        delivered = collections.Counter(site.delivered_ids())
        duplicates = {mid for mid, count in delivered.items() if count > 1}
        unexplained = duplicates - self.explained
        alive = [pid for pid in self.pids if not _gone(pid)]
        leftovers = site.leftovers()
        return {
            "messages": len(self.sent),
            "delivered": len(set(delivered) & self.sent),
            "lost": len(self.sent - set(delivered)),
            "duplicates": len(duplicates),
            "duplicates explained by a killed process": len(
                duplicates & self.explained
            ),
            "duplicates not explained": len(unexplained),
            "runners killed": self.runner_kills,
            "masters killed": self.master_kills,
            "injects killed": self.inject_kills,
            "in bad or shunt": leftovers["bad or shunt"],
            "leftover .bak": leftovers[".bak"],
            "leftover .tmp": leftovers[".tmp"],
            "orphaned processes": len(alive),
            "seconds": round(seconds, 1),
            "unexplained": sorted(unexplained)[:20],
            "lost ids": sorted(self.sent - set(delivered))[:20],
        }


def _gone(pid: int) -> bool:
    """True once *pid* is no process of ours (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"mailqueue" not in cmdline.read()
    except FileNotFoundError:
        return True


class Site:
    """A var directory (in memory where the system has one) and its command."""

    def __init__(self, root: Path, extra: str = "") -> None:
        self.root = root
        self.config_file = root / "site.cfg"
        self.config_file.write_text(
            f"[paths]\nvar_dir: {root}\n"
            "[queues]\nstale_tmp_after: 2s\n"
            "[runner.in]\ninstances: 2\nsleep_time: 0.05s\n"
            "max_restarts: 1000\nrestart_window: 1s\n"
            "[runner.out]\ninstances: 2\nsleep_time: 0.05s\n"
            "max_restarts: 1000\nrestart_window: 1s\n"
            "[runner.retry]\nstart: no\n[runner.virgin]\nstart: no\n" + extra
        )
        (root / "slow_runners.py").write_text(SLOW_RUNNER)
        self.environment = os.environ | {"PYTHONPATH": str(root)}
        self.layer = f"soak {root}"
        config.push(self.layer, self.config_file.read_text())
        config.lists.create(LIST)
        config.lists.close()

    def close(self) -> None:
        config.pop(self.layer)

    def command(self, *arguments: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mailqueue",
            "-C",
            str(self.config_file),
            *arguments,
        ]

    def run(self, *arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(*arguments),
            capture_output=True,
            text=True,
            timeout=120,
            env=self.environment,
        )

    def start(self, *arguments: str) -> subprocess.Popen:
        return subprocess.Popen(self.command(*arguments), env=self.environment)

    def status(self) -> dict:
        with contextlib.suppress(OSError, ValueError):
            return json.loads((self.root / "master.json").read_text())
        return {}

    def queue(self, name: str, slice: int | None = None, count: int = 1) -> Switchboard:
        return Switchboard(name, str(self.root / "queue" / name), slice, count)

    def delivered_ids(self) -> list[str]:
        parser = email.parser.BytesHeaderParser()
        found = []
        for folder in ("new", "cur"):
            directory = self.root / "lists" / LIST_ID / folder
            if directory.is_dir():
                for path in directory.iterdir():
                    with open(path, "rb") as stream:
                        found.append(str(parser.parse(stream)["message-id"]))
        return found

    def leftovers(self) -> dict[str, int]:
        counts = {".bak": 0, ".tmp": 0, "bad or shunt": 0}
        for queue in (self.root / "queue").iterdir():
            if not queue.is_dir():
                continue
            for name in os.listdir(queue):
                if queue.name in ("bad", "shunt"):
                    counts["bad or shunt"] += 1
                elif name.endswith(".bak"):
                    counts[".bak"] += 1
                elif name.endswith(".tmp"):
                    counts[".tmp"] += 1
        return counts

    def pending(self) -> int:
        """Entries not yet delivered, and temporary files not yet removed."""
        total = 0
        for name in ("in", "out"):
            with contextlib.suppress(FileNotFoundError):
                total += len(os.listdir(self.root / "queue" / name))
        return total

    def in_flight(self, name: str, slice: int, count: int) -> set[str]:
        """The Message-IDs of the entries this slice's owner has taken."""
        queue = self.queue(name, slice, count)
        ids = set()
        for filebase in queue.get_files(".bak"):
            with contextlib.suppress(OSError, QueueFileError):
                msg, _, _ = load_entry(
                    os.path.join(queue.queue_directory, filebase + ".bak")
                )
                ids.add(str(msg["message-id"]))
        return ids


def _new_root(prefix: str) -> Path:
    """A new directory for a site: in memory where the system has it."""
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


def message(number: int) -> tuple[str, str]:
    mid = f"<soak-{number}@example.com>"
    headers = f"From: a@example.com\nTo: {LIST}\nMessage-ID: {mid}\n"
    return mid, f"{headers}Subject: {number}\n\nHi\n"


def kill_runner(
    site: Site, tally: Tally, name: str, slice: int, count: int, pid: int
) -> None:
    """Stop *pid*, note the entries it holds (if it owns its slice), SIGKILL it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
        if site.queue(name, slice, count).owner_id().startswith(f"pid {pid} "):
            tally.explained |= site.in_flight(name, slice, count)
        os.kill(pid, signal.SIGKILL)
        tally.runner_kills += 1


def soak(
    messages: int = 10_000,
    runner_kills: int = 250,
    master_kills: int = 2,
    inject_kills: int = 20,
    seed: int = 1,
    deadline: float = 900.0,
) -> dict[str, object]:
    """Run the soak; return its figures."""
    rng = random.Random(seed)
    started = time.monotonic()
    root = _new_root("mailqueue-soak-")
    site = Site(root)
    tally = Tally()
    inbox = site.queue("in")
    try:
        site.run("start").check_returncode()
        next_number = 0
        # Kill the master at evenly spread points, and injects in between.
        master_at = {
            round(runner_kills * (k + 1) / (master_kills + 1))
            for k in range(master_kills)
        }
        inject_at = {rng.randrange(runner_kills) for _ in range(inject_kills)}
        per_kill = max(1, messages // max(runner_kills, 1))
        for kill in range(runner_kills):
            if time.monotonic() - started > deadline:
                raise TimeoutError("the soak ran out of time")
            for _ in range(per_kill):
                if next_number < messages:
                    mid, text = message(next_number)
                    inbox.enqueue(message_from_string(text), listid=LIST_ID)
                    tally.sent.add(mid)
                    next_number += 1
            if kill in inject_at and next_number < messages:
                mid, text = message(next_number)
                next_number += 1
                kill_inject(site, tally, mid, text, rng)
            if kill in master_at:
                kill_master(site, tally)
            time.sleep(rng.uniform(0.1, 0.3))
            runners = {
                spec: r["pid"]
                for spec, r in site.status().get("runners", {}).items()
                if r.get("pid")
            }
            tally.pids |= set(runners.values())
            if runners:
                victim = rng.choice(sorted(runners))
                name, slice, count = victim.split(":")
                kill_runner(site, tally, name, int(slice), int(count), runners[victim])
        while next_number < messages:
            mid, text = message(next_number)
            inbox.enqueue(message_from_string(text), listid=LIST_ID)
            tally.sent.add(mid)
            next_number += 1
        # Everything delivered, and what killed writers left removed.
        end = time.monotonic() + 300
        while site.pending() and time.monotonic() < end:
            tally.pids |= {
                r["pid"]
                for r in site.status().get("runners", {}).values()
                if r.get("pid")
            }
            time.sleep(0.2)
        master = site.status().get("master")
        stopped = site.run("stop", "--timeout", "60")
        if master:
            tally.pids.add(master)
        if stopped.returncode:
            raise RuntimeError(stopped.stderr)
        time.sleep(0.5)
        return tally.figures(site, time.monotonic() - started)
    finally:
        with contextlib.suppress(Exception):
            site.run("stop", "--timeout", "30")
        site.close()
        subprocess.run(["pkill", "-9", "-f", str(site.config_file)], check=False)
        shutil.rmtree(root, ignore_errors=True)


def kill_master(site: Site, tally: Tally) -> None:
    status = site.status()
    master = status.get("master")
    if not master:
        return
    tally.pids.add(master)
    tally.pids |= {r["pid"] for r in status.get("runners", {}).values() if r.get("pid")}
    os.kill(master, signal.SIGKILL)
    tally.master_kills += 1
    deadline = time.monotonic() + 30
    while not _gone(master) and time.monotonic() < deadline:
        time.sleep(0.01)
    # Its runners stop by themselves; a new master starts at once, and its
    # runners stand by until the old ones are gone.
    site.run("start").check_returncode()


def kill_inject(
    site: Site, tally: Tally, mid: str, text: str, rng: random.Random
) -> None:
    process = subprocess.Popen(
        site.command("inject", "-l", LIST),
        env=site.environment,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdin is not None
    process.stdin.write(text.encode())
    process.stdin.close()
    time.sleep(rng.uniform(0.05, 0.4))  # Python starts in about 0.1 to 0.3 s
    process.kill()
    process.wait()
    assert process.stdout is not None
    out = process.stdout.read()
    process.stdout.close()
    tally.inject_kills += 1
    if out.startswith(b"queued"):
        tally.sent.add(mid)  # it said so before it was killed: queued
        return
    # No "queued" line: the caller cannot know, and sends it again.
    tally.explained.add(mid)
    site.queue("in").enqueue(message_from_string(text), listid=LIST_ID)
    tally.sent.add(mid)


def churn(
    messages: int = 2_000, replacements: int = 60, seed: int = 1
) -> dict[str, object]:
    """Runners of one slice started and killed in turn while ``out`` works."""
    rng = random.Random(seed)
    started = time.monotonic()
    root = _new_root("mailqueue-churn-")
    site = Site(root)
    config.push("churn", "[runner.in]\ninstances: 1\n[runner.out]\ninstances: 1\n")
    site.config_file.write_text(
        site.config_file.read_text()
        .replace("instances: 2", "instances: 1")
        .replace(
            "[runner.in]\n", "[runner.in]\nclass: slow_runners.SlowIncomingRunner\n"
        )
    )
    tally = Tally()
    inbox = site.queue("in")
    processes: list[subprocess.Popen] = []
    try:
        out = site.start("runner", "out")
        tally.pids.add(out.pid)
        for number in range(messages):
            mid, text = message(number)
            inbox.enqueue(message_from_string(text), listid=LIST_ID)
            tally.sent.add(mid)
        processes.append(site.start("runner", "in"))
        tally.pids.add(processes[0].pid)
        for _ in range(replacements):
            # The successor starts while the old one works: it must stand by.
            successor = site.start("runner", "in")
            tally.pids.add(successor.pid)
            time.sleep(rng.uniform(0.2, 0.6))
            old = processes.pop(0)
            if rng.random() < 0.7:
                kill_runner(site, tally, "in", 0, 1, old.pid)
            else:
                old.send_signal(signal.SIGTERM)
            old.wait(timeout=60)
            processes.append(successor)
        end = time.monotonic() + 300
        while site.pending() and time.monotonic() < end:
            time.sleep(0.2)
        for process in [*processes, out]:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        return tally.figures(site, time.monotonic() - started)
    finally:
        for process in [*processes]:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        config.pop("churn")
        site.close()
        subprocess.run(["pkill", "-9", "-f", str(site.config_file)], check=False)
        shutil.rmtree(root, ignore_errors=True)


FAILURES = (
    "lost",
    "duplicates not explained",
    "in bad or shunt",
    "leftover .bak",
    "leftover .tmp",
    "orphaned processes",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--kills", type=int, default=250, help="runner SIGKILLs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--report", type=Path, help="write the figures here, as JSON")
    arguments = parser.parse_args()
    from mailqueue.testing import isolated_state

    with isolated_state():
        report = {
            "soak": soak(arguments.messages, arguments.kills, seed=arguments.seed),
            "churn": churn(seed=arguments.seed),
        }
    report["run"] = {
        "command": f"make soak (tools/soak/soak.py --messages {arguments.messages} "
        f"--kills {arguments.kills} --seed {arguments.seed})",
        "date": datetime.date.today().isoformat(),
        "mailqueue": mailqueue.__version__,
        "python": platform.python_version(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if arguments.report:
        arguments.report.write_text(text + "\n")
    failed = any(report[part][key] for part in ("soak", "churn") for key in FAILURES)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

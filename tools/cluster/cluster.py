"""Two hosts on one queue, for real: run with ``make cluster-test``.

A one-brick GlusterFS volume on 127.0.1.1 is mounted twice; each mount is
one host ("alpha" and "beta"), with its own var directory (logs, locks,
status, Maildirs) and its master, sharing the queue directory on its own
mount and the lists in one throwaway PostgreSQL server.  ``in`` and ``out``
have four slices each; alpha prefers 0-1, beta 2-3.  Then:

1. beta alone delivers a batch: messages a second with one host;
2. alpha starts, takes its preferred slices, and both deliver the main
   batch, injected through both mounts: messages a second with two hosts,
   every message delivered exactly once, both hosts taking part;
3. alpha crashes in the middle of a batch (its master, its runners and its
   Gluster client are killed at once): how long until beta owns every slice,
   the ``.bak`` files alpha left, and the messages delivered twice (only
   those alpha had in flight may be);
4. alpha comes back (a new mount, a new master) and takes its slices back
   while a last batch is delivered, each message exactly once.

Everything started is stopped, whatever fails.  The figures go to the
report (``--report``), and the exit status is 1 if any check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tools" / "servers"), str(ROOT / "tests")]

import servers  # noqa: E402
from sites import Site, process_gone  # noqa: E402

from mailqueue import Switchboard, message_from_string  # noqa: E402

SLICES = 4
QUEUES = ("in", "out")


class Failed(Exception):
    pass


def wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


class Host:
    def __init__(self, root: str, name: str, mount: str, url: str, prefer: str):
        self.name = name
        self.mount = mount
        var_dir = os.path.join(root, name)
        os.makedirs(var_dir, exist_ok=True)
        runners = "".join(
            f"[runner.{queue}]\ninstances: {SLICES}\nsleep_time: 0.1s\n"
            f"prefer: {prefer}\n"
            for queue in QUEUES
        )
        self.site = Site(
            var_dir,
            f"[host]\nname: {name}\n[database]\nurl: {url}\n{runners}",
            paths=f"queue_dir: {mount}/queue\n",
        )
        self._seen: dict[str, int] = {}

    def run(self, *arguments: str, check: bool = True):
        return self.site.run(*arguments, check=check)

    def owners(self) -> dict[str, str | None]:
        shown = json.loads(self.run("status", "--json", check=False).stdout)
        return {
            spec: (runner.get("owner") or {}).get("host")
            for spec, runner in shown.get("runners", {}).items()
            if spec.split(":")[0] in QUEUES
        }

    def pids(self) -> list[int]:
        status = self.site.status()
        return [status["master"], *(r["pid"] for r in status["runners"].values())]

    def delivered(self) -> list[int]:
        """The numbers of the messages this host delivered, repeats kept."""
        new = os.path.join(self.site.var_dir, "lists", "test.example.com", "new")
        for name in os.listdir(new) if os.path.isdir(new) else []:
            if name not in self._seen:
                with open(os.path.join(new, name)) as stream:
                    for line in stream:
                        if line.lower().startswith("message-id:"):
                            number = line.split("<", 1)[1].split("@", 1)[0]
                            self._seen[name] = int(number)
                            break
        return list(self._seen.values())


def spread(owner_of) -> dict[str, str]:
    return {
        f"{queue}:{number}:{SLICES}": owner_of(number)
        for queue in QUEUES
        for number in range(SLICES)
    }


def settled(host: Host) -> bool:
    """True once in and out hold no entry, queued or in progress, on *host*'s mount.

    An entry is a ``.pck`` or ``.bak`` file from the moment it is queued
    until it is finished, after its delivery; so what has been delivered
    then is all that ever will be, repeats too.  (A ``.tmp`` a killed runner
    left is no entry.)
    """
    return not any(
        name.endswith((".pck", ".bak"))
        for queue in QUEUES
        for name in os.listdir(os.path.join(host.mount, "queue", queue))
    )


def inject(host: Host, numbers: range) -> None:
    queue = Switchboard("in", os.path.join(host.mount, "queue", "in"))
    for number in numbers:
        msg = message_from_string(
            f"From: sender{number}@example.com\nTo: test@example.com\n"
            f"Message-ID: <{number}@cluster.example.com>\nSubject: {number}\n\n"
            f"Message {number}.\n"
        )
        queue.enqueue(msg, listid="test.example.com")


def run(volume, url: str, root: str, messages: int) -> dict:
    alpha = Host(root, "alpha", volume.mounts[0], url, "0-1")
    beta = Host(root, "beta", volume.mounts[1], url, "2-3")
    hosts = (alpha, beta)
    report: dict = {"messages": messages}

    def everything() -> list[int]:
        return alpha.delivered() + beta.delivered()

    def all_of(numbers: range) -> bool:
        return set(numbers) <= set(everything())

    try:
        beta.run("lists", "create", "test@example.com")
        # 1. One host.
        beta.run("start")
        wait(lambda: beta.owners() == spread(lambda n: "beta"), 60, "beta to own all")
        first = range(0, messages // 5)
        start = time.monotonic()
        inject(beta, first)
        wait(lambda: all_of(first), 600, "the first batch")
        report["messages a second, one host"] = round(
            len(first) / (time.monotonic() - start), 1
        )

        # 2. Two hosts.
        alpha.run("start")
        preferred = spread(lambda n: "alpha" if n < 2 else "beta")
        wait(lambda: beta.owners() == preferred, 60, "alpha to take slices 0-1")
        main = range(first.stop, first.stop + messages)
        start = time.monotonic()
        half = main.start + len(main) // 2
        inject(alpha, range(main.start, half))
        inject(beta, range(half, main.stop))
        wait(lambda: all_of(main), 900, "the main batch")
        report["messages a second, two hosts"] = round(
            len(main) / (time.monotonic() - start), 1
        )
        delivered = everything()
        if len(delivered) != main.stop or set(delivered) != set(range(main.stop)):
            raise Failed(f"{len(delivered) - main.stop} delivered twice before a crash")
        by_alpha = sum(1 for n in alpha.delivered() if n in main)
        report["delivered by alpha, main batch"] = by_alpha
        report["delivered by beta, main batch"] = len(main) - by_alpha
        if not 0 < by_alpha < len(main):
            raise Failed("one host did all the work")

        # 3. Alpha crashes in the middle of a batch.
        crash = range(main.stop, main.stop + messages // 5)
        inject(beta, crash)
        wait(
            lambda: sum(1 for n in alpha.delivered() if n in crash) >= 20,
            120,
            "alpha to be busy",
        )
        pids = alpha.pids()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        volume.crash(alpha.mount)
        crashed = time.monotonic()
        wait(lambda: all(map(process_gone, pids)), 60, "alpha to be gone")
        wait(lambda: beta.owners() == spread(lambda n: "beta"), 60, "beta to own all")
        report["takeover (s)"] = round(time.monotonic() - crashed, 2)
        # What beta's runners found when they took alpha's slices.
        recovered = re.findall(
            r"now owns its slice and recovered (\d+) entries",
            beta.site.log("runner.log"),
        )
        report[".bak files alpha left, recovered by beta"] = sum(map(int, recovered))
        wait(lambda: all_of(crash) and settled(beta), 600, "the batch alpha crashed in")
        delivered = everything()
        twice = len(delivered) - len(set(delivered))
        report["delivered twice after the crash"] = twice
        # Each of alpha's runners (two slices of in, two of out) had at
        # most one entry in flight.
        if twice > 4:
            raise Failed(f"{twice} messages delivered twice after the crash")

        # 4. Alpha comes back, and takes its slices back.
        volume.unmount(alpha.mount)
        volume.mount(alpha.mount)
        alpha.run("start")
        back = range(crash.stop, crash.stop + messages // 5)
        inject(beta, back)
        start = time.monotonic()
        wait(lambda: beta.owners() == preferred, 120, "alpha to take its slices back")
        report["handed back (s)"] = round(time.monotonic() - start, 2)
        wait(lambda: all_of(back) and settled(beta), 600, "the last batch")
        again = [n for n in everything() if n in back]
        report["delivered twice while handing back"] = len(again) - len(back)
        if len(again) != len(back):
            raise Failed(f"{len(again) - len(back)} delivered twice while handing back")
        for queue in ("bad", "shunt"):
            directory = os.path.join(beta.mount, "queue", queue)
            if os.path.isdir(directory) and os.listdir(directory):
                raise Failed(f"entries in {queue}")
        report["in bad or shunt"] = 0
        return report
    finally:
        for host in hosts:
            host.run("stop", "--timeout", "60", check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--report", type=Path, default=Path("build/cluster-run.json"))
    arguments = parser.parse_args()
    with (
        servers.glusterfs() as volume,
        servers.postgresql() as url,
        tempfile.TemporaryDirectory(prefix="mailqueue-cluster-") as root,
    ):
        try:
            report = run(volume, url, root, arguments.messages)
        except Failed as failure:
            print(f"cluster test FAILED: {failure}", file=sys.stderr)
            return 1
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "command": f"make cluster-test (tools/cluster/cluster.py "
        f"--messages {arguments.messages})",
        "python": sys.version.split()[0],
    } | report
    arguments.report.parent.mkdir(parents=True, exist_ok=True)
    arguments.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Two hosts on one queue, on one machine: slices fail over and are handed back.

Each "host" is a master with its own var directory (logs, locks, status,
Maildirs) and its own host name, sharing the queue directory and the list
database.  ``make cluster-test`` runs the same on GlusterFS and PostgreSQL.
"""

import json
import os
import signal
import time

import pytest
from sites import Site, process_gone, wait_for  # this directory is on sys.path

from mailqueue import Switchboard, message_from_string

SLICES = 4


@pytest.fixture
def hosts(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    made = {}

    def host(name, prefer):
        var_dir = tmp_path / name
        var_dir.mkdir(exist_ok=True)
        made[name] = Site(
            str(var_dir),
            f"[host]\nname: {name}\n"
            f"[database]\nurl: sqlite:///{shared}/lists.sqlite3\n"
            "[runner.in]\nstart: no\n"
            f"[runner.out]\ninstances: {SLICES}\nsleep_time: 0.1s\nprefer: {prefer}\n",
            paths=f"queue_dir: {shared}/queue\n",
        )
        return made[name]

    yield host, shared
    for site in made.values():
        site.run("stop", "--timeout", "30", check=False)


def owners(site):
    """Who owns each slice of out, as the host's status says."""
    shown = json.loads(site.run("status", "--json", check=False).stdout)
    return {
        spec: (runner["owner"] or {}).get("host")
        for spec, runner in shown["runners"].items()
        if spec.startswith("out:")
    }


def send(shared, first, count):
    queue = Switchboard("out", str(shared / "queue" / "out"))
    for number in range(first, first + count):
        msg = message_from_string(
            f"From: a@example.com\nMessage-ID: <{number}@test>\n\nMessage {number}\n"
        )
        queue.enqueue(msg, listid="test.example.com")


def settled(shared):
    """True once out holds no entry, queued or in progress: none is still to come.

    An entry is a file in out from the moment it is queued until it is
    finished, after its delivery; so what has been delivered then is all
    that ever will be, repeats too.
    """
    return not os.listdir(shared / "queue" / "out")


def delivered(sites):
    """Message numbers delivered, with repeats, by each host."""
    found = {}
    for site in sites:
        new = os.path.join(site.var_dir, "lists", "test.example.com", "new")
        numbers = []
        for name in os.listdir(new) if os.path.isdir(new) else []:
            with open(os.path.join(new, name)) as stream:
                for line in stream:
                    if line.lower().startswith("message-id:"):
                        numbers.append(int(line.split("<")[1].split("@")[0]))
        found[site] = numbers
    return found


def test_slices_fail_over_to_a_live_host_and_come_back(hosts):
    host, shared = hosts
    alpha, beta = host("alpha", "0-1"), host("beta", "2-3")
    alpha.run("lists", "create", "test@example.com")
    alpha.run("start")
    beta.run("start")
    spread = {"out:0:4": "alpha", "out:1:4": "alpha", "out:2:4": "beta"}
    spread["out:3:4"] = "beta"
    wait_for(lambda: owners(beta) == spread, 30, "each host to own its slices")
    assert owners(alpha) == spread

    send(shared, 0, 200)
    wait_for(lambda: sum(map(len, delivered([alpha, beta]).values())) == 200, 60, "200")
    by_host = delivered([alpha, beta])
    assert sorted(by_host[alpha] + by_host[beta]) == list(range(200))
    assert by_host[alpha] and by_host[beta]

    # Host alpha crashes: its master and its runners are killed at once.
    send(shared, 200, 300)
    pids = [alpha.status()["master"]]
    pids += [runner["pid"] for runner in alpha.status()["runners"].values()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    crashed = time.monotonic()
    wait_for(lambda: all(process_gone(pid) for pid in pids), 30, "alpha to die")
    wait_for(lambda: set(owners(beta).values()) == {"beta"}, 30, "beta to own all")
    takeover = time.monotonic() - crashed
    print(f"beta owned every slice {takeover:.2f} s after alpha crashed")
    assert takeover < 10
    wait_for(
        lambda: (
            set().union(*map(set, delivered([alpha, beta]).values())) == set(range(500))
            and settled(shared)
        ),
        120,
        "every message after the crash",
    )
    # Only what alpha had in flight (one entry a slice at most) comes twice.
    everything = [n for ns in delivered([alpha, beta]).values() for n in ns]
    print(f"delivered twice after the crash: {len(everything) - 500}")
    assert len(everything) - 500 <= 2
    assert "now owns its slice" in beta.log("runner.log")

    # Alpha comes back: it takes its slices back, between two entries.
    before = len(everything)
    alpha.run("start")
    send(shared, 500, 300)
    wait_for(lambda: owners(beta) == spread, 60, "alpha to take its slices back")
    wait_for(
        lambda: (
            len([n for ns in delivered([alpha, beta]).values() for n in ns])
            >= before + 300
            and settled(shared)
        ),
        120,
        "every message after alpha came back",
    )
    everything = [n for ns in delivered([alpha, beta]).values() for n in ns]
    handed_over = [number for number in everything if number >= 500]
    assert sorted(handed_over) == list(range(500, 800))  # each exactly once
    assert "hands its slice over" in beta.log("runner.log")
    for name in ("out", "bad", "shunt"):
        directory = shared / "queue" / name
        assert not directory.exists() or not os.listdir(directory)


def test_a_slice_let_go_of_closes_its_lock_once(tmp_path):
    import gc

    board = Switchboard("q", str(tmp_path / "q"), recover=True)
    assert board.owner
    board.release_ownership()
    assert not board.owner
    # The lock's descriptor number is free again, and now another file's:
    # collecting the switchboard must not close it a second time.
    with open(tmp_path / "other", "w") as other:
        del board
        gc.collect()
        other.write("still open\n")
        other.flush()
        os.fstat(other.fileno())
    assert (tmp_path / "other").read_text() == "still open\n"

"""The master and its runner processes, for real: start, kill, restart, stop."""

import collections
import mailbox
import os
import signal
import sys

import pytest
from sites import process_gone, wait_for  # this directory is on sys.path

from mailqueue import config, create_list, message_from_string
from mailqueue.master import SIGNALS as MASTER_SIGNALS
from mailqueue.master import (
    MasterError,
    master_status,
    signal_master,
    start_master,
    stop_master,
)
from mailqueue.runners import maildir

MESSAGES = 1000


def test_a_killed_runner_is_restarted_and_every_message_is_delivered(site):
    site = site(
        "[runner.in]\ninstances: 2\nsleep_time: 0.1s\n"
        "[runner.out]\ninstances: 2\nsleep_time: 0.1s\n"
    )
    mlist = create_list("test@example.com")
    inbox = config.switchboards["in"]
    for number in range(MESSAGES):
        msg = message_from_string(
            f"From: aperson@example.com\nMessage-ID: <{number}@example.com>\n\nHi\n"
        )
        inbox.enqueue(msg, listid=mlist.list_id)

    started = site.run("start")
    assert "mailqueue master started" in started.stdout
    master = site.status()["master"]
    wait_for(lambda: len(site.status()["runners"]) == 4, 30, "four runners")
    box = maildir(mlist)

    def delivered():
        # The out runner makes the Maildir's directory, then new/ and cur/:
        # count what is there, whenever this looks.
        folders = [os.path.join(box, folder) for folder in ("new", "cur")]
        return sum(len(os.listdir(f)) for f in folders if os.path.isdir(f))

    wait_for(lambda: delivered() >= 100, 60, "the first deliveries")

    runners = site.status()["runners"]
    victim = runners["out:1:2"]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: site.status()["runners"]["out:1:2"]["pid"] != victim,
        30,
        "the master to restart the killed runner",
    )
    assert site.status()["runners"]["out:1:2"]["restarts"] == 1
    wait_for(
        lambda: (
            delivered() >= MESSAGES
            and not config.switchboards["in"].files
            and not config.switchboards["out"].files
        ),
        120,
        "every delivery",
    )

    pids = [runner["pid"] for runner in site.status()["runners"].values()]
    stopped = site.run("stop")
    assert f"(pid {master}) stopped" in stopped.stdout
    for pid in [master, *pids]:
        wait_for(lambda pid=pid: process_gone(pid), 10, f"pid {pid} to exit")

    ids = collections.Counter(
        msg["message-id"] for msg in mailbox.Maildir(box, create=False)
    )
    duplicates = sum(ids.values()) - len(ids)
    print(f"\n{len(ids)} messages delivered, {duplicates} duplicate(s)")
    assert set(ids) == {f"<{number}@example.com>" for number in range(MESSAGES)}
    # Only the entry the killed runner was working on can be delivered twice.
    assert duplicates <= 1
    for name in ("in", "out", "bad", "shunt"):
        queue = config.switchboards[name]
        assert (queue.files, queue.get_files(".bak"), queue.get_files(".psv")) == (
            [],
            [],
            [],
        ), name
    assert f"out:1:2 (pid {victim}) died (signal SIGKILL); restart 1 of 10" in (
        site.log("error.log") + site.log("runner.log")
    )


BROKEN = """
from mailqueue.runners import IncomingRunner

class BrokenRunner(IncomingRunner):
    def __init__(self, *arguments, **keywords):
        raise RuntimeError("this runner cannot start")
"""


def test_a_runner_that_crashes_on_start_is_restarted_max_restarts_times(site, tmp_path):
    (tmp_path / "broken.py").write_text(BROKEN)
    site = site(
        "[runner.broken]\nclass: broken.BrokenRunner\nmax_restarts: 2\n"
        "[runner.out]\nstart: no\n"
    )
    site.run("start", env=os.environ | {"PYTHONPATH": str(tmp_path)})
    wait_for(lambda: "giving up" in site.log("error.log"), 60, "the master to give up")
    log = site.log("error.log") + site.log("runner.log")
    # Started once and restarted twice, each after a longer delay; died
    # three times; then given up on (for its restart window).
    assert log.count("master started runner broken:0:1 ") == 3
    assert log.count(") died (exit status 1)") == 3
    assert "restart 1 of 2 in 0.1 s" in log and "restart 2 of 2 in 0.2 s" in log
    assert log.count("after 2 restarts; giving up on it for 600 s") == 1
    # The others keep running; the one given up is shown, and status fails.
    wait_for(
        lambda: site.status()["runners"]["broken:0:1"]["state"] == "given up",
        10,
        "the status to say so",
    )
    runners = site.status()["runners"]
    assert runners["in:0:1"]["state"] == "running"
    assert not process_gone(runners["in:0:1"]["pid"])
    status = site.run("status", check=False)
    assert status.returncode == 1
    assert "runner in:0:1       running" in status.stdout
    assert "runner broken:0:1   given up    pid -" in status.stdout


def test_a_second_master_is_refused_and_signals_reach_the_runners(site):
    site = site("[runner.out]\nstart: no\n")
    site.run("start")
    master = site.status()["master"]
    wait_for(lambda: len(site.status()["runners"]) == 1, 30, "the runner")
    second = site.run("start", check=False)
    assert second.returncode == 1
    running = f"a master is already running on {site.var_dir} (pid {master})"
    assert second.stderr == f"mailqueue: error: {running}\n"
    foreground = site.run("start", "--foreground", check=False)
    assert foreground.returncode == 1 and f"(pid {master})" in foreground.stderr

    # SIGHUP: every runner reopens its logs (after rotation, a new file).
    runner_log = os.path.join(site.var_dir, "logs", "runner.log")
    wait_for(lambda: os.path.exists(runner_log), 10, "the runner log")
    os.rename(runner_log, runner_log + ".1")
    os.kill(master, signal.SIGHUP)
    wait_for(lambda: "caught SIGHUP" in site.log("runner.log"), 10, "the reopened log")

    # restart (SIGUSR1): new runner processes, not counted as crashes.
    before = site.status()["runners"]["in:0:1"]["pid"]
    assert "restarting its runners" in site.run("restart").stdout
    wait_for(
        lambda: (
            site.status()["runners"].get("in:0:1", {}).get("pid") not in (None, before)
        ),
        30,
        "the restarted runner",
    )
    assert site.status()["runners"]["in:0:1"]["restarts"] == 0


def test_the_master_functions_say_what_went_wrong(var_dir, tmp_path):
    # What the command's start, stop, reopen and restart stand on, called
    # directly: each failure is a MasterError that says why.
    with pytest.raises(MasterError, match="no master is running on "):
        signal_master(signal.SIGHUP)
    with pytest.raises(MasterError, match="no master is running on "):
        stop_master(1)
    # A command that is not a master: it exits at once.
    with pytest.raises(MasterError, match=r"the master exited at once \(status 3\)"):
        start_master([sys.executable, "-c", "import sys; sys.exit(3)"])
    # One that never takes the lock: not up in time, and not left behind.
    with pytest.raises(MasterError, match=r"did not start within 0.5 s") as failed:
        start_master([sys.executable, "-c", "import time; time.sleep(60)"], 0.5)
    pid = int(str(failed.value).split("pid ")[1].split(")")[0])
    assert process_gone(pid)


def test_a_signal_just_after_start_waits_for_the_masters_handler(site):
    # start_master returns once the master holds its lock, a moment before
    # its handlers are in place: a SIGHUP then (``mailqueue start &&
    # mailqueue reopen``) once killed it.  Now it waits, and is handled.
    site = site("[runner.out]\nstart: no\n")
    command = [sys.executable, "-m", "mailqueue", "-C", site.config_file]
    master = start_master(command)
    assert signal_master(signal.SIGHUP) == master
    wait_for(lambda: "started runner in:0:1" in site.log("runner.log"), 30, "in")
    assert not process_gone(master)
    assert stop_master(30) == master


def test_a_master_starts_with_its_signals_blocked(var_dir, tmp_path):
    # What makes the test above hold whatever the timing: the new process
    # starts with the master's signals blocked (it unblocks them once it
    # handles them).  A stand-in for the master reports its mask and exits.
    report = tmp_path / "mask"
    stand_in = (
        "import signal, sys\n"
        "blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])\n"
        f"open({str(report)!r}, 'w').write(' '.join(sorted(s.name for s in blocked)))\n"
        "sys.exit(3)\n"
    )
    with pytest.raises(MasterError, match="exited at once"):
        start_master([sys.executable, "-c", stand_in])
    assert set(report.read_text().split()) >= {s.name for s in MASTER_SIGNALS}


def test_a_status_file_that_is_not_json_is_no_status(var_dir):
    with open(os.path.join(var_dir, "master.json"), "w") as stream:
        stream.write("{half a status")
    assert master_status() == {}

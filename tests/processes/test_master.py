"""The master and its runner processes, for real: start, kill, restart, stop.

A master started by the ``site`` fixture (or a stand-in process), watched
through its status, its logs and what it delivers.
"""

import collections
import json
import mailbox
import os
import signal
import subprocess
import sys

import pytest
from helpers import BROKEN, master_lock, queued
from sites import Site, process_gone, wait_for

from mailqueue import (
    __version__,
    config,
    create_list,
    message_from_string,
)
from mailqueue.master import SIGNALS as MASTER_SIGNALS
from mailqueue.master import (
    MasterError,
    signal_master,
    start_master,
    stop_master,
)
from mailqueue.runners import maildir


def test_stop_gives_up_on_a_master_that_does_not_stop(var_dir):
    # A stand-in for a stuck master: it ignores SIGTERM (inherited through
    # exec), and the test holds the lock in its name.
    ignored = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        stuck = subprocess.Popen(["sleep", "60"])
    finally:
        signal.signal(signal.SIGTERM, ignored)
    try:
        with master_lock(stuck.pid):
            with pytest.raises(MasterError) as failed:
                stop_master(0.3)
            assert str(failed.value) == (
                f"the master (pid {stuck.pid}) is still running after 0.3 s"
            )
            assert not process_gone(stuck.pid)
    finally:
        stuck.kill()
        stuck.wait()


def status_of(site):
    return json.loads(site.run("status", "--json", check=False).stdout)


def running(site):
    """The specs of the slices the master says are running."""
    report = status_of(site)
    return sorted(
        spec
        for spec, runner in report["runners"].items()
        if runner["state"] == "running"
    )


def status_with(config_file):
    """status --json, read with *config_file*: for when the site's is broken."""
    shown = subprocess.run(
        [sys.executable, "-m", "mailqueue", "-C", str(config_file), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return json.loads(shown.stdout)


def test_status_shows_what_the_master_runs_until_it_reads_the_file_again(site):
    create_list("test@example.com")
    site = site(
        "[runner.in]\nsleep_time: 0.1s\nstart: no\n"
        "[runner.out]\ninstances: 2\nsleep_time: 0.1s\n"
    )
    for number in range(3):
        queued(subject=str(number))
    held = queued(subject="held")
    assert site.run("hold", held).returncode == 0
    site.run("start")
    wait_for(lambda: running(site) == ["out:0:2", "out:1:2"], 30, "two out slices")
    report = status_of(site)
    assert report["version"] == __version__
    assert report["configuration"]["file"] == site.config_file
    assert report["configuration"]["changed"] is False
    assert report["queues"]["in"] == {"waiting": 3, "held": 1}
    assert report["runners"]["in:0:1"]["state"] == "not started"
    text = site.run("status").stdout.splitlines()
    assert text[1].startswith(f"  version {__version__}, up ")
    assert text[1].endswith(f"configuration {site.config_file}")
    assert (
        text[-1] == "  queues: bad 0, in 3 (1 held), out 0, retry 0, shunt 0, virgin 0"
    )

    # The file changes: out in four slices.  The master still runs two, and
    # status says so (not four slices "starting"), and that the file changed.
    Site(site.var_dir, "[runner.in]\nstart: no\n[runner.out]\ninstances: 4\n")
    report = status_of(site)
    assert [spec for spec in report["runners"] if spec.startswith("out")] == [
        "out:0:2",
        "out:1:2",
    ]
    assert running(site) == ["out:0:2", "out:1:2"]
    assert report["configuration"]["changed"] is True
    shown = site.run("status")
    assert shown.returncode == 0
    assert "  the file has changed since the master read it: mailqueue reload " in (
        shown.stdout
    )

    # restart reads it again: the runners are replaced with four.
    old = {runner["pid"] for runner in report["runners"].values()} - {None}
    restarted = site.run("restart")
    master = report["master"]
    assert restarted.stdout == (
        f"mailqueue master (pid {master}) is reading {site.config_file} again and "
        "restarting its runners, each after its current entry\n"
    )
    wait_for(
        lambda: running(site) == ["out:0:4", "out:1:4", "out:2:4", "out:3:4"],
        30,
        "four out slices",
    )
    for pid in old:
        wait_for(lambda pid=pid: process_gone(pid), 30, f"old runner {pid}")
    assert status_of(site)["configuration"]["changed"] is False

    # reload, Postfix's name for it, too: back to one slice, and in started.
    Site(site.var_dir, "[runner.in]\nsleep_time: 0.1s\n")
    reloaded = site.run("reload")
    assert "is reading" in reloaded.stdout
    wait_for(lambda: running(site) == ["in:0:1", "out:0:1"], 30, "in and one out")
    wait_for(lambda: status_of(site)["queues"]["in"]["waiting"] == 0, 30, "delivery")


def test_a_master_that_cannot_read_its_file_again_goes_on(site, tmp_path):
    site = site("[runner.in]\nsleep_time: 0.1s\n[runner.out]\nstart: no\n")
    site.run("start")
    wait_for(lambda: running(site) == ["in:0:1"], 30, "the in runner")
    report = status_of(site)
    master, pid = report["master"], report["runners"]["in:0:1"]["pid"]
    # The commands read another file, while the master's is broken.
    good = tmp_path / "good.cfg"
    with open(site.config_file) as stream:
        good.write_text(stream.read())
    try:
        Site(site.var_dir, "[runner.in]\ninstances: 3\n")
        os.kill(master, signal.SIGUSR1)  # as restart would, could it read the file

        def error():
            return status_with(good)["configuration"]["error"] or ""

        wait_for(lambda: error(), 30, "the master to say why")
        assert "[runner.in] instances must be a power of two, not 3" in error()
        assert status_with(good)["runners"]["in:0:1"]["pid"] == pid  # left running
        shown = subprocess.run(
            [sys.executable, "-m", "mailqueue", "-C", str(good), "status"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "  it could not read its configuration again: " in shown.stdout
        assert "master cannot read its configuration again: " in site.log("error.log")

        # Nor can its var dir move under it.
        with open(site.config_file, "w") as stream:
            stream.write(f"[paths]\nvar_dir: {tmp_path / 'elsewhere'}\n")
        os.kill(master, signal.SIGUSR1)
        wait_for(lambda: "moves the var dir to " in error(), 30, "the refusal")
        assert status_with(good)["runners"]["in:0:1"]["pid"] == pid
    finally:
        os.replace(good, site.config_file)  # for the fixture's stop


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

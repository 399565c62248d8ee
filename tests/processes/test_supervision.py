"""Supervision that cannot be wedged: one test for each way it could be.

Each runs real processes: the master, runners and the command.  A test of a
race waits for the state it asserts (a process gone, an entry moved), never
for a log line alone.
"""

import gc
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sites import process_gone, recorded, wait_for, watched_environment

from mailqueue import Switchboard, config, create_list, message_from_string
from mailqueue.runner import FIRST_BACKOFF


def runner_pids(site):
    return [runner["pid"] for runner in site.status()["runners"].values()]


def post(subject="hi"):
    msg = message_from_string(f"From: a@example.com\nSubject: {subject}\n\nHi\n")
    return config.switchboards["in"].enqueue(msg, listid="test.example.com")


def test_runners_stop_when_their_master_is_killed(site):
    site = site("[runner.in]\nsleep_time: 0.1s\n[runner.out]\nsleep_time: 0.1s\n")
    site.run("start")
    wait_for(lambda: len(runner_pids(site)) == 2, 30, "two runners")
    master, pids = site.status()["master"], runner_pids(site)
    os.kill(master, signal.SIGKILL)  # as the OOM killer would
    for pid in pids:
        wait_for(lambda pid=pid: process_gone(pid), 15, f"runner {pid} to stop")
    # And a new master starts a new set, with nothing left of the old one.
    site.run("start")
    wait_for(lambda: len(runner_pids(site)) == 2, 30, "two new runners")
    assert set(runner_pids(site)).isdisjoint(pids)
    assert "its master is gone; stopping" in site.log("runner.log")


def test_a_runner_works_only_while_it_owns_its_slice(site, tmp_path):
    site = site("[runner.in]\nclass: sites.WatchedIncomingRunner\nsleep_time: 0.1s\n")
    create_list("test@example.com")
    queue = config.switchboards["in"]
    owner = Switchboard("in", queue.queue_directory, recover=True)
    assert owner.owner
    posted = {post(str(number)) for number in range(3)}
    record = tmp_path / "record"
    environment = watched_environment(record)
    runner = subprocess.Popen(
        [sys.executable, "-m", "mailqueue", "-C", site.config_file, "runner", "in"],
        env=environment,
    )
    try:
        # Standing by, the runner asks for its slice, adds its counts and
        # sleeps a second, over and over: at the second time it added them,
        # it had asked again after a whole second, and taken nothing.
        wait_for(lambda: len(recorded(record, "counts")) >= 2, 30, "a second ask")
        assert set(queue.files) == posted
        assert "in runner standing by: its slice is owned by pid " in (
            site.log("runner.log")
        )
        assert f"owned by pid {os.getpid()} on " in site.log("runner.log")
        once = site.run("runner", "in", "--once", check=False, env=environment)
        assert once.returncode == 1
        assert "in: its slice is owned by pid " in once.stderr
        assert set(queue.files) == posted
        del owner  # the owner goes away: the one standing by takes over
        gc.collect()
        wait_for(lambda: not queue.files, 30, "the entries to be taken")
    finally:
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(timeout=30) == 0
    assert "in runner now owns its slice" in site.log("runner.log")


FLAKY = """
import os
from mailqueue.runners import IncomingRunner

class FlakyRunner(IncomingRunner):
    def __init__(self, *arguments, **keywords):
        if os.path.exists(os.environ["FLAKY_FAULT"]):
            raise RuntimeError("a transient fault")
        super().__init__(*arguments, **keywords)
"""


def test_a_slice_given_up_is_shown_and_recovers_by_itself(site, tmp_path):
    (tmp_path / "flaky.py").write_text(FLAKY)
    fault = tmp_path / "fault"
    fault.touch()
    site = site(
        "[runner.in]\nclass: flaky.FlakyRunner\nmax_restarts: 2\n"
        "restart_window: 3s\nsleep_time: 0.1s\n[runner.out]\nstart: no\n"
    )
    environment = os.environ | {
        "PYTHONPATH": str(tmp_path),
        "FLAKY_FAULT": str(fault),
    }
    subprocess.run(
        [sys.executable, "-m", "mailqueue", "-C", site.config_file, "start"],
        env=environment,
        check=True,
        timeout=60,
    )

    def state():
        return site.status()["runners"]["in:0:1"]["state"]

    wait_for(lambda: state() == "given up", 30, "the master to give up")
    status = site.run("status", check=False)
    assert status.returncode == 1 and "given up" in status.stdout
    fault.unlink()  # the fault goes away; nobody does anything else
    wait_for(lambda: state() == "running", 30, "the slice to come back")
    assert site.run("status").returncode == 0
    log = site.log("error.log") + site.log("runner.log")
    assert "restart 1 of 2 in 0.1 s" in log and "restart 2 of 2 in 0.2 s" in log
    assert "giving up on it for 3 s" in log


def test_the_master_survives_when_it_cannot_write_its_status(site):
    site = site("[runner.out]\nstart: no\n")
    status = Path(site.var_dir, "master.json")
    status.mkdir()  # a write that fails, as on a full disk
    (status / "in the way").touch()
    started = site.run("start")
    master = int(started.stdout.split("(pid ")[1].split(")")[0])

    def runner():
        found = subprocess.run(
            ["pgrep", "-f", "-P", str(master), "runner in"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        return int(found[0]) if found else None

    wait_for(lambda: runner() is not None, 30, "the runner")
    first = runner()
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: runner() not in (None, first), 30, "a new runner")
    assert not process_gone(master)
    log = site.log("error.log")
    assert log.count(f"master cannot write {status}") == 1


def test_a_pass_that_makes_no_progress_backs_off(var_dir):
    create_list("test@example.com")
    for number in range(3):
        post(str(number))
    # The runner runs as nobody; the queue directory is root's, so it can
    # see the entries but never take one.
    queue = Path(config.switchboards["in"].queue_directory)
    for path in (Path(var_dir), queue.parent, Path(var_dir, "logs")):
        path.mkdir(exist_ok=True)
        path.chmod(0o777)
    queue.chmod(0o755)
    config_file = Path(var_dir, "site.cfg")
    config_file.write_text(
        f"[paths]\nvar_dir: {var_dir}\n"
        "[runner.in]\nclass: sites.WatchedIncomingRunner\nsleep_time: 0\n"
    )
    as_nobody = (
        "import os, shutil, sys\n"  # the interpreter's modules are under /root
        "import mailqueue.runners, sites\n"  # everything imported, as root
        "from mailqueue.cli import main\n"
        "os.setgid(65534)\n"
        "os.setuid(65534)\n"
        f"sys.exit(main(['-C', {str(config_file)!r}, 'runner', 'in']))\n"
    )
    record = Path(var_dir, "record")  # where nobody may write
    runner = subprocess.Popen(
        [sys.executable, "-c", as_nobody], env=watched_environment(record)
    )
    # A pass that could take nothing ends with a wait: 0.2 s the first time,
    # twice as long each next time.  Four passes end three waits apart.
    wait_for(lambda: len(recorded(record, "pass")) >= 4, 60, "four passes")
    runner.send_signal(signal.SIGTERM)
    assert runner.wait(timeout=30) == 0
    passes = recorded(record, "pass")
    assert {found for found, _ in passes} == {3}  # every pass saw the three
    ends = [ended for _, ended in passes]
    waits = [later - earlier for earlier, later in itertools.pairwise(ends)]
    for number, waited in enumerate(waits[:3], start=2):
        assert waited >= FIRST_BACKOFF * 2**number, waits
    log = Path(var_dir, "logs", "error.log").read_text().splitlines()
    # Once, then how often it repeated: three entries a pass, and the runner
    # stopped during or just after the pass that followed the last it ended.
    assert len(log) == 2, log
    assert log[0].endswith(
        f"in runner cannot take entries from {queue}: Permission denied"
    )
    repeats = int(log[1].split("(")[-1].split()[0])
    assert 3 * len(passes) - 1 <= repeats <= 3 * len(passes) + 2, (passes, log)
    assert len(config.switchboards["in"].files) == 3


def test_stale_temporary_files_are_shown_then_removed_by_the_owner(var_dir, capsys):
    from mailqueue.cli import main

    queue = config.switchboards["in"]
    stale = Path(queue.queue_directory, "1600000000.0+" + "1" * 40 + ".pck.tmp")
    fresh = Path(queue.queue_directory, "1600000000.0+" + "2" * 40 + ".bak.tmp")
    for path in (stale, fresh):
        path.write_bytes(b"half an entry")
    hour_ago = time.time() - 3601
    os.utime(stale, (hour_ago, hour_ago))
    assert main(["queues", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["in"]["tmp"] == 2
    owner = Switchboard("in", queue.queue_directory, recover=True)
    assert owner.owner
    assert not stale.exists() and fresh.exists()
    assert main(["queues", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["in"]["tmp"] == 1


def test_inject_says_queued_only_once_the_entry_is_durable(
    var_dir, capsys, tmp_path, monkeypatch
):
    from mailqueue import qfile
    from mailqueue.cli import main

    create_list("test@example.com")
    message = tmp_path / "message.eml"
    message.write_text("From: a@example.com\nSubject: hi\n\nHi\n")

    def fails(directory):
        raise OSError(5, "Input/output error")

    # The last step, flushing the directory, fails: no "queued" line.
    monkeypatch.setattr(qfile, "fsync_directory", fails)
    assert main(["inject", "-l", "test@example.com", str(message)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Input/output error" in err
    monkeypatch.undo()
    assert main(["inject", "-l", "test@example.com", str(message)]) == 0
    assert capsys.readouterr().out.startswith("queued ")

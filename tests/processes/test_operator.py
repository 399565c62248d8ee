"""What an operator sees: the mailqueue command's views and controls.

Each test asserts the exact line and exit status the operator gets.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sites import (
    interruptible,
    process_gone,
    recorded,
    wait_for,
    watched_environment,
)

from mailqueue import Switchboard, __version__, config, create_list, message_from_string
from mailqueue.cli import main


def run(capsys, *arguments):
    status = main(list(arguments))
    out, err = capsys.readouterr()
    return status, out, err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"mailqueue {__version__}\n"


def test_start_checks_every_runner_class_before_it_detaches(site):
    site = site("[runner.broken]\nclass: nosuch.module.Runner\n")
    started = site.run("start", check=False)
    assert (started.returncode, started.stdout, started.stderr) == (
        1,
        "",
        "mailqueue: error: [runner.broken] class nosuch.module.Runner: "
        "No module named 'nosuch'\n",
    )
    assert site.run("status", check=False).returncode == 1  # no master


@pytest.mark.parametrize("queue", ["bad", "shunt"])
def test_a_held_queue_has_no_runner_to_run(capsys, var_dir, queue):
    held = config.switchboards[queue]
    filebase = held.enqueue(message_from_string("Subject: held\n\nHi\n"))
    assert run(capsys, "runner", queue, "--once") == (
        1,
        "",
        f"mailqueue: error: the {queue} queue is held: [runner.{queue}] names no "
        "runner class to run\n",
    )
    assert held.files == [filebase]


def test_status_shows_every_slice_and_a_slice_standing_by(site):
    site = site("[runner.out]\nstart: no\n[runner.in]\nsleep_time: 0.1s\n")
    # This process owns the in slice: the master's in runner must stand by.
    owner = Switchboard("in", config.switchboards["in"].queue_directory, recover=True)
    assert owner.owner
    site.run("start")
    wait_for(lambda: "standing by" in site.log("runner.log"), 30, "standing by")
    status = site.run("status", "--json")
    report = json.loads(status.stdout)
    assert report["master"] == site.status()["master"]
    assert report["runners"]["in:0:1"]["state"] == "standing by"
    assert report["runners"]["out:0:1"]["state"] == "not started"
    assert "bad:0:1" not in report["runners"]  # held: nothing runs it
    text = site.run("status").stdout.splitlines()
    assert text[2].startswith("  runner in:0:1       standing by pid ")
    del owner
    wait_for(
        lambda: (
            json.loads(site.run("status", "--json").stdout)["runners"]["in:0:1"][
                "state"
            ]
            == "running"
        ),
        30,
        "the runner to take over",
    )
    assert site.run("stop").returncode == 0
    stopped = site.run("status", "--json", check=False)
    assert stopped.returncode == 1 and json.loads(stopped.stdout)["master"] is None


def test_reopen_sends_the_master_sighup(site):
    site = site("[runner.out]\nstart: no\n")
    site.run("start")
    master = site.status()["master"]
    log = os.path.join(site.var_dir, "logs", "runner.log")
    wait_for(lambda: "master started runner in:0:1" in site.log("runner.log"), 30, "in")
    os.rename(log, log + ".1")
    reopened = site.run("reopen")
    assert reopened.stdout == (
        f"mailqueue master (pid {master}) and its runners are reopening their logs\n"
    )
    wait_for(lambda: "caught SIGHUP" in site.log("runner.log"), 30, "a new log")


def test_a_signal_while_a_runner_starts_waits_for_its_handler(site):
    # The master logs a runner's start as soon as it has spawned it; the new
    # process needs a tenth of a second or more before its handlers are in
    # place.  A SIGHUP in that time (logrotate's ``mailqueue reopen`` just
    # after a restart) once killed it; now it is handled when the runner is
    # ready, and the runner lives on.
    site = site("[runner.out]\nstart: no\n")
    site.run("start")
    started = re.compile(r"master started runner in:0:1 \(pid (\d+)\)")
    deadline = time.monotonic() + 30
    while not (found := started.search(site.log("runner.log"))):
        assert time.monotonic() < deadline, "the master did not start the runner"
        time.sleep(0.001)
    runner = int(found.group(1))
    os.kill(runner, signal.SIGHUP)
    wait_for(lambda: "in runner caught SIGHUP" in site.log("runner.log"), 30, "SIGHUP")
    assert not process_gone(runner)
    assert site.status()["runners"]["in:0:1"]["restarts"] == 0
    assert "died" not in site.log("error.log")


def test_qfile_by_file_base_on_a_directory_and_into_a_closed_pipe(capsys, var_dir):
    create_list("test@example.com")
    queue = config.switchboards["in"]
    body = "A long line of text.\n" * 20_000  # far more than a pipe holds
    filebase = queue.enqueue(
        message_from_string(f"Subject: long\n\n{body}"), listid="test.example.com"
    )
    status, out, _ = run(capsys, "qfile", filebase)
    assert status == 0
    assert out.startswith(f"== {queue.queue_directory}/{filebase}.pck\nSubject: long\n")
    assert run(capsys, "qfile", queue.queue_directory) == (
        1,
        "",
        "mailqueue: error: in: not a regular file (a directory)\n",
    )
    config_file = os.path.join(var_dir, "site.cfg")
    with open(config_file, "w") as stream:
        stream.write(f"[paths]\nvar_dir: {var_dir}\n")
    reader = subprocess.Popen(
        [sys.executable, "-m", "mailqueue", "-C", config_file, "qfile", filebase],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert reader.stdout.read(10) == b"== " + var_dir.encode()[:7]
    reader.stdout.close()  # as `| head -c 10` would
    assert reader.wait(timeout=60) == 0
    with reader.stderr:
        assert reader.stderr.read() == b""


def test_unshunt_recovers_interrupted_entries_first(capsys, var_dir):
    create_list("test@example.com")
    shunt = config.switchboards["shunt"]
    msg = message_from_string("Subject: shunted\n\nHi\n")
    interrupted = shunt.enqueue(msg, listid="test.example.com", whichq="in")
    shunt.dequeue(interrupted)  # an unshunt killed here left a .bak
    status, out, err = run(capsys, "unshunt")
    assert (status, err) == (0, "")
    assert out.startswith(f"moved {interrupted} to in as ")
    assert shunt.get_files(".bak") == [] and len(config.switchboards["in"].files) == 1


def test_queues_watch_for_a_program(var_dir):
    config_file = os.path.join(var_dir, "site.cfg")
    with open(config_file, "w") as stream:
        stream.write(f"[paths]\nvar_dir: {var_dir}\n")
    for arguments, check in (
        (["--json"], lambda line: json.loads(line)["queues"]["in"]["pck"] == 0),
        ([], lambda line: "\033" not in line),
    ):
        watcher = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mailqueue",
                "-C",
                config_file,
                "queues",
                "--watch",
                "0.1",
                *arguments,
            ],
            stdout=subprocess.PIPE,
            text=True,
            preexec_fn=interruptible,
        )
        with watcher.stdout:
            try:
                lines = [watcher.stdout.readline() for _ in range(3)]
                watcher.send_signal(signal.SIGINT)
                assert watcher.wait(timeout=30) == 0
            finally:
                watcher.kill()
                watcher.wait()
        assert all(check(line) for line in lines if line.strip()), lines


def test_inject_names_a_malformed_header_line(capsys, var_dir, tmp_path):
    create_list("test@example.com")
    message = tmp_path / "broken.eml"
    message.write_text("From: a@example.com\nThis is not a header\nSubject: x\n\nHi\n")
    assert run(capsys, "inject", "-l", "test@example.com", str(message)) == (
        1,
        "",
        f"mailqueue: error: {message}, line 2: not a header field: "
        "'This is not a header'\n",
    )
    assert config.switchboards["in"].files == []


def entry(subject, listid="test.example.com", queue="in"):
    msg = message_from_string(f"From: a@example.com\nSubject: {subject}\n\nHi\n")
    return config.switchboards[queue].enqueue(msg, listid=listid)


def test_list_shows_every_waiting_entry_and_never_a_taken_one(capsys, var_dir):
    first, taken = entry("first"), entry("taken")
    config.switchboards["in"].dequeue(taken)  # a runner has it in hand
    bad = config.switchboards["bad"]
    Path(bad.queue_directory, "1600000000.0+" + "b" * 40 + ".psv").write_bytes(b"x")
    status, out, _ = run(capsys, "list", "--json")
    listed = json.loads(out)
    assert status == 0
    assert [(e["queue"], e["filebase"]) for e in listed] == [
        ("bad", "1600000000.0+" + "b" * 40),
        ("in", first),
    ]
    assert listed[0]["problem"].startswith("1600000000.0+" + "b" * 40 + ".psv: ")
    assert (listed[1]["list"], listed[1]["sender"], listed[1]["subject"]) == (
        "test.example.com",
        "a@example.com",
        "first",
    )
    # Acting on everything leaves the taken entry alone.
    status, out, _ = run(capsys, "delete", "--all", "-q", "in")
    assert (status, out) == (0, f"deleted {first} (in)\n")
    assert config.switchboards["in"].get_files(".bak") == [taken]


def test_selection_by_list_and_age(capsys, var_dir):
    old = config.switchboards["in"].enqueue(
        message_from_string("Subject: old\n\nHi\n"), listid="other.example.com"
    )
    os.rename(
        os.path.join(config.switchboards["in"].queue_directory, old + ".pck"),
        os.path.join(
            config.switchboards["in"].queue_directory,
            "1600000000.0+" + old.split("+")[1] + ".pck",
        ),
    )
    old = "1600000000.0+" + old.split("+")[1]
    new = entry("new")
    assert run(capsys, "hold", "--older-than", "1d") == (0, f"held {old} (in)\n", "")
    assert run(capsys, "release", "--list", "test.example.com") == (0, "", "")
    assert run(capsys, "release", "--list", "other.example.com") == (
        0,
        f"released {old} (hold/in)\n",
        "",
    )
    assert sorted(config.switchboards["in"].files) == sorted([old, new])
    assert run(capsys, "hold") == (
        1,
        "",
        "mailqueue: error: name the entries (file bases), or choose them with "
        "--all, --list or --older-than\n",
    )


def test_requeue_out_of_bad_and_the_mistakes(capsys, var_dir):
    preserved = entry("preserved")
    queue = config.switchboards["in"]
    queue.dequeue(preserved)
    queue.finish(preserved, preserve=True)
    assert run(capsys, "hold", preserved) == (
        1,
        "",
        f"mailqueue: error: {preserved} is preserved in bad: requeue it instead\n",
    )
    assert run(capsys, "requeue", "--to", "nosuch", preserved) == (
        1,
        "",
        "mailqueue: error: no queue is called 'nosuch' (queues: bad, in, out, "
        "retry, shunt, virgin)\n",
    )
    assert run(capsys, "release", preserved) == (
        1,
        "",
        f"mailqueue: error: no held entry {preserved}\n",
    )
    assert run(capsys, "requeue", "--to", "in", preserved) == (
        0,
        f"requeued {preserved} (bad) to in\n",
        "",
    )
    assert queue.files == [preserved]
    with open(os.path.join(config.LOG_DIR, "admin.log")) as log:
        assert log.read().endswith(f"requeued {preserved} from bad to in\n")


def test_flush_wakes_the_retry_runner(site, tmp_path):
    site = site(
        "[runner.retry]\nclass: sites.WatchedRetryRunner\nstart: yes\nsleep_time: 1h\n"
    )
    create_list("test@example.com")
    record = tmp_path / "record"
    site.run("start", env=watched_environment(record))
    # Its first pass found nothing: the retry runner sleeps now, for an hour.
    wait_for(lambda: recorded(record, "pass"), 30, "the retry runner's first pass")
    entry("deferred", queue="retry")
    out = config.switchboards["out"]
    flushed = site.run("flush")
    assert flushed.stdout.startswith("mailqueue master (pid ")
    # The out runner delivers what retry passes on.
    wait_for(lambda: not config.switchboards["retry"].files, 30, "the retry runner")
    wait_for(lambda: not out.files, 30, "the delivery")
    assert "retry runner woken: trying its queue now" in site.log("runner.log")
    # The pass after the first took the entry: the flush, not the hour, woke it.
    assert [found for found, _ in recorded(record, "pass")] == [0, 1]


def test_reading_commands_create_nothing(capsys, tmp_path):
    var_dir = tmp_path / "var"
    site = tmp_path / "site.cfg"
    site.write_text(f"[paths]\nvar_dir: {var_dir}\n")
    for command in (["queues"], ["lists"], ["list"], ["status"]):
        run(capsys, "-C", str(site), *command)
    assert not var_dir.exists()


def test_writing_to_a_read_only_var_dir_is_one_line(var_dir):
    create_list("test@example.com")
    config.lists.close()
    # Root writes anywhere: the command runs as nobody, on root's files.
    for directory, _, files in os.walk(var_dir):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)
    site = os.path.join(var_dir, "site.cfg")
    with open(site, "w") as stream:
        stream.write(f"[paths]\nvar_dir: {var_dir}\n")
    as_nobody = (
        # The interpreter's own modules are under /root here, where nobody
        # cannot read: import what the command imports late, first.
        "import os, shutil, sys\n"
        "from mailqueue.cli import main\n"
        "os.setgid(65534)\n"
        "os.setuid(65534)\n"
        f"sys.exit(main(['-C', {site!r}, 'lists', 'create', 'new@example.com']))\n"
    )
    created = subprocess.run(
        [sys.executable, "-c", as_nobody], capture_output=True, text=True, timeout=60
    )
    database = os.path.join(config.DATA_DIR, "lists.sqlite3")
    assert (created.returncode, created.stdout) == (1, "")
    assert created.stderr == (
        f"mailqueue: error: the list database {database}: "
        "attempt to write a readonly database\n"
    )

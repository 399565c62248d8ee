"""What an operator sees: the mailqueue command's views and controls.

Each test asserts the exact line and exit status the operator gets.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
from sites import wait_for

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
    text = site.run("status").stdout.splitlines()
    assert text[1].startswith("  runner in:0:1       standing by pid ")
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
        )
        with watcher.stdout:
            try:
                lines = [watcher.stdout.readline() for _ in range(3)]
            finally:
                watcher.send_signal(signal.SIGINT)
                watcher.wait(timeout=30)
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

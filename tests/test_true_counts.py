"""Every entry reachable, every count true (issue 25, part 2).

Entries of any state in any queue are listed and can be acted on, or are
refused in one line; ``queues`` counts held entries; ``status`` shows what
the running master runs, from what the master recorded, and ``restart`` and
``reload`` make it read its configuration file again.
"""

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys

import pytest
from sites import Site, process_gone, wait_for

from mailqueue import (
    __version__,
    cli,
    config,
    create_list,
    message_from_string,
    queuetools,
)
from mailqueue.cli import main
from mailqueue.master import Master, _Child


def run(capsys, *arguments):
    status = main(list(arguments))
    out, err = capsys.readouterr()
    return status, out, err


def queued(queue="in", subject="hi", listid="test.example.com"):
    msg = message_from_string(f"From: a@example.com\nSubject: {subject}\n\nHi\n")
    return config.switchboards[queue].enqueue(msg, listid=listid)


# Entries in bad: queued there (.pck) as well as preserved (.psv) ---------------


def test_a_queued_entry_in_bad_is_listed_counted_moved_and_deleted(
    capsys, var_dir, tmp_path
):
    create_list("test@example.com")
    message = tmp_path / "hello.eml"
    message.write_text("From: a@example.com\nSubject: to bad\n\nHi\n")
    status, out, _ = run(
        capsys, "inject", "-q", "bad", "-l", "test@example.com", str(message)
    )
    assert status == 0
    injected = out.split()[1]
    moved = queued(subject="moved")
    assert run(capsys, "requeue", "--to", "bad", moved) == (
        0,
        f"requeued {moved} (in) to bad\n",
        "",
    )
    # Both wait in bad as .pck files: queues counts them, and list shows them.
    assert queuetools.queue_counts()["bad"]["pck"] == 2
    status, out, _ = run(capsys, "list", "--json")
    assert [(e["queue"], e["filebase"]) for e in json.loads(out)] == [
        ("bad", injected),
        ("bad", moved),
    ]
    # They can be requeued and deleted like any other entry.
    assert run(capsys, "requeue", "--to", "in", injected) == (
        0,
        f"requeued {injected} (bad) to in\n",
        "",
    )
    assert run(capsys, "delete", moved) == (0, f"deleted {moved} (bad)\n", "")
    assert config.switchboards["in"].files == [injected]
    assert os.listdir(config.runners["bad"].path) == []


def test_hold_passes_over_what_it_can_only_refuse(capsys, var_dir):
    waiting = queued()
    in_bad = queued("bad")
    preserved = queued(subject="preserved")
    config.switchboards["in"].finish(preserved, preserve=True)
    # Chosen in bulk, what waits in bad is not held, and that is no error.
    assert run(capsys, "hold", "--all") == (0, f"held {waiting} (in)\n", "")
    # Named, it is refused, saying why; and bad as the queue, at the door.
    assert run(capsys, "hold", in_bad) == (
        1,
        "",
        f"mailqueue: error: {in_bad} is preserved in bad: requeue it instead\n",
    )
    assert run(capsys, "hold", "-q", "bad", "--all") == (
        1,
        "",
        "mailqueue: error: entries in bad are not held: no runner takes them from "
        "there (requeue them instead)\n",
    )
    # A preserved entry outside bad (moved there by hand) is refused the same.
    bad, inbox = config.runners["bad"].path, config.runners["in"].path
    os.rename(
        os.path.join(bad, preserved + ".psv"), os.path.join(inbox, preserved + ".psv")
    )
    [entry] = [e for e in queuetools.list_entries(["in"]) if e.filebase == preserved]
    assert entry.preserved and not entry.held
    with pytest.raises(queuetools.EntryError, match="is preserved in in: requeue"):
        queuetools.hold(entry)


def test_queues_counts_held_entries(capsys, var_dir):
    first, second = queued(subject="first"), queued(subject="second")
    assert run(capsys, "hold", first)[0] == 0
    _, out, _ = run(capsys, "queues", "--json")
    counts = json.loads(out)
    assert (counts["in"]["pck"], counts["in"]["held"]) == (1, 1)
    assert counts["out"]["held"] == 0
    # The table has a column for them, and says which var dir it read.
    _, out, _ = run(capsys, "queues")
    lines = out.splitlines()
    assert lines[0].split() == ["queue", ".pck", ".bak", ".psv", ".tmp", "held"]
    assert lines[2].split() == ["in", "1", "0", "0", "0", "1"]
    assert lines[-1] == f"-- var dir {var_dir}, queues in {config.QUEUE_DIR}"
    # And list, what it counts.
    _, out, _ = run(capsys, "list")
    assert out.endswith("-- 2 entries waiting\n") and second in out


def test_qfile_finds_a_held_entry_by_its_file_base(capsys, var_dir):
    held = queued(subject="held")
    assert run(capsys, "hold", held)[0] == 0
    status, out, _ = run(capsys, "qfile", held)
    assert status == 0
    assert out.startswith(f"== {queuetools.hold_directory('in')}/{held}.pck\n")


def test_an_entry_a_runner_has_in_hand_is_named_as_such(capsys, var_dir):
    taken = queued()
    config.switchboards["in"].dequeue(taken)  # a runner has it: a .bak
    assert run(capsys, "delete", taken, "1000000000.0+" + "f" * 40) == (
        1,
        "",
        f"mailqueue: error: no waiting entry 1000000000.0+{'f' * 40}\n"
        f"mailqueue: error: no waiting entry {taken}: a runner has it in hand in "
        "in, and it is left to it\n",
    )
    assert config.switchboards["in"].get_files(".bak") == [taken]


# status: what the running master runs ------------------------------------------


@contextlib.contextmanager
def master_lock(pid):
    """Hold the master's lock, saying it is *pid*'s: what a master leaves."""
    fd = os.open(os.path.join(config.VAR_DIR, "master.lck"), os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, f"{pid}\n".encode())
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_record(**record):
    with open(os.path.join(config.VAR_DIR, "master.json"), "w") as stream:
        json.dump(record, stream)


def test_status_of_a_master_that_has_not_said_what_it_runs(capsys, var_dir):
    # Just started (no master.json yet), or one left by a master now dead.
    write_record(master=1, runners={})
    with master_lock(4321):
        assert run(capsys, "status") == (
            0,
            f"mailqueue master running (pid 4321) on {var_dir}\n"
            "  starting: it has not yet said what it runs\n",
            "",
        )
        status, out, _ = run(capsys, "status", "--json")
    assert (status, json.loads(out)["runners"], json.loads(out)["uptime"]) == (
        0,
        {},
        None,
    )


def test_status_says_when_the_masters_file_is_gone_or_it_has_none(
    capsys, var_dir, tmp_path
):
    record = {
        "master": 4321,
        "version": "0.0.1",
        "started": 1_000_000_000.0,
        "host": "alpha",
        "queue_dir": config.QUEUE_DIR,
        "queues": {"in": config.runners["in"].path},
        "not_started": [],
        "runners": {},
    }
    gone = str(tmp_path / "gone.cfg")
    with master_lock(4321):
        write_record(
            **record,
            configuration={"file": gone, "digest": "0", "read": 1.0, "error": None},
        )
        status, out, _ = run(capsys, "status")
        assert out.splitlines()[2] == (
            "  the file has changed since the master read it: mailqueue reload "
            "applies it"
        )
        write_record(
            **record,
            configuration={"file": None, "digest": None, "read": None, "error": None},
        )
        status, out, _ = run(capsys, "status")
    assert status == 0
    assert out.splitlines()[1].startswith("  version 0.0.1, up ")
    assert out.splitlines()[1].endswith("configuration (none: the built-in defaults)")
    assert out.splitlines()[2] == "  queues: in 0"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (59.9, "59s"), (61, "1m 1s"), (3720, "1h 2m"), (90000, "1d 1h")],
)
def test_durations(seconds, shown):
    assert cli._duration(seconds) == shown


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


def test_restart_without_a_configuration_file(tmp_path):
    # No -C, no MAILQUEUE_CONFIG: the defaults, and ./var in the working
    # directory.  restart restarts the runners, with nothing to read.
    environment = {
        key: value for key, value in os.environ.items() if key != "MAILQUEUE_CONFIG"
    }

    def mailqueue(*arguments):
        return subprocess.run(
            [sys.executable, "-m", "mailqueue", *arguments],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    started = mailqueue("start")
    assert started.stdout.startswith("mailqueue master started (pid ")
    assert started.stdout.endswith(f" on {tmp_path / 'var'}\n")
    try:
        wait_for(
            lambda: (
                len(json.loads(mailqueue("status", "--json").stdout)["runners"]) == 4
            ),
            30,
            "four runners",
        )
        before = json.loads(mailqueue("status", "--json").stdout)
        assert before["configuration"]["file"] is None
        restarted = mailqueue("restart")
        assert restarted.stdout == (
            f"mailqueue master (pid {before['master']}) is restarting its runners, "
            "each after its current entry\n"
        )
        old = {runner["pid"] for runner in before["runners"].values()}
        wait_for(
            lambda: (
                (
                    {
                        runner["pid"]
                        for runner in json.loads(mailqueue("status", "--json").stdout)[
                            "runners"
                        ].values()
                        if runner["state"] == "running"
                    }
                    - old
                ).__len__()
                == 4
            ),
            30,
            "four new runners",
        )
    finally:
        mailqueue("stop", "--timeout", "30")


# The master's restart, in this process -----------------------------------------


def test_a_restart_while_stopping_changes_nothing_and_drops_what_does_not_run(
    var_dir,
):
    master = Master(["mailqueue"])
    given_up = _Child("in", 0, 1, max_restarts=10, window=600.0, state="given up")
    master.children[given_up.spec] = given_up
    master._stopping = True
    master._restart_asked = True
    assert not master._restart()
    assert master.children == {given_up.spec: given_up}
    master._stopping = False
    master._restart_asked = True
    assert master._restart()
    # Nothing to stop: the slice that was given up is replaced at once.
    assert master.children == {} and master._replacing

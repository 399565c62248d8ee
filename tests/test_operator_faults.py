"""The operator's side when something is odd: a message whose header ends
early, a master that will not stop, runners that end or vanish, queue
files that cannot say who sent them, moves and unshunts that fail.

Most of these are called in-process, with the fault injected into the one
call that meets it, or with the state a master would leave built on disk.
"""

import contextlib
import errno
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys

import pytest
from sites import process_gone

from mailqueue import config, create_list, message_from_string, queuetools
from mailqueue import runner as runner_module
from mailqueue.cli import main
from mailqueue.lists import ListManager
from mailqueue.master import Master, MasterError, _Child, master_status, stop_master
from mailqueue.runner import MASTER_FD, SIGNALS, Runner, _RepeatedErrors

# A runner that manages no queue (its class is never imported here).
TICKER = "[runner.ticker]\nclass: tickers.Ticker\npath:\n"


def run(capsys, *arguments):
    status = main(list(arguments))
    out, err = capsys.readouterr()
    return status, out, err


@contextlib.contextmanager
def master_lock(pid):
    """Hold the master's lock on the var directory, saying it is *pid*'s.

    What a running master leaves for the commands to find: they look only
    at the lock and at master.json.
    """
    fd = os.open(os.path.join(config.VAR_DIR, "master.lck"), os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, f"{pid}\n".encode())
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# The inject command: naming the line where the header ends early -------------


@pytest.mark.parametrize(
    ("text", "number", "line"),
    [
        # A form feed ends no line for the parser; str.splitlines broke this
        # header there and named "b", on the wrong line.
        ("Subject: a\x0cb\nno field\n\nbody\n", 2, "no field"),
        # A line of a form feed alone is no blank line: it once passed for
        # the end of the header, and the message was queued.
        ("Subject: a\n\x0c\nno field\n", 2, "\x0c"),
        # Only a space or a tab makes a continuation line: these, too, were
        # queued with the line taken into the body.
        ("Subject: a\n\x1fno field\n", 2, "\x1fno field"),
        ("Subject: a\n\xa0no field\n", 2, "\xa0no field"),
        # A line of spaces is a continuation, not the blank line (queued too).
        ("Subject: a\n   \nno field\n", 3, "no field"),
        # A bare carriage return ends a line, as for the parser.
        ("Subject: a\rno field\r\rbody\r", 2, "no field"),
        # An mbox From line is taken as the parser takes it.
        (
            "From a@example.com Mon Jan  1 00:00:00 2024\nSubject: a\nno field\n",
            3,
            "no field",
        ),
    ],
    ids=[
        "form feed in a field",
        "form feed line",
        "unit separator",
        "no-break space",
        "line of spaces",
        "carriage returns",
        "mbox From line",
    ],
)
def test_inject_names_the_line_where_the_parser_ended_the_header(
    capsys, var_dir, tmp_path, text, number, line
):
    create_list("test@example.com")
    message = tmp_path / "odd.eml"
    message.write_bytes(text.encode())
    assert run(capsys, "inject", "-l", "test@example.com", str(message)) == (
        1,
        "",
        f"mailqueue: error: {message}, line {number}: not a header field: {line!r}\n",
    )
    assert config.switchboards["in"].files == []


def test_inject_still_takes_odd_characters_in_a_header_and_the_body(
    capsys, var_dir, tmp_path
):
    # Characters that ended a line for str.splitlines, where they are fine.
    create_list("test@example.com")
    message = tmp_path / "fine.eml"
    message.write_bytes(b"Subject: a\x0cb\n continued\x1c\n\n\x0c\nbody\x85\n")
    status, out, _ = run(capsys, "inject", "-l", "test@example.com", str(message))
    assert status == 0 and out.startswith("queued ")
    [filebase] = config.switchboards["in"].files
    msg, _ = config.switchboards["in"].dequeue(filebase)
    assert msg["subject"] == "a\x0cb\n continued\x1c"


# The status command ---------------------------------------------------------


def test_status_shows_a_runner_without_a_queue_owned_by_nobody(capsys, var_dir):
    # It has no slice to lock: nobody owns one, and it is never standing by.
    config.push("ticker", TICKER)
    status = {
        "master": 4321,
        "runners": {"ticker:0:1": {"pid": 4322, "state": "running", "restarts": 0}},
    }
    with open(os.path.join(var_dir, "master.json"), "w") as stream:
        json.dump(status, stream)
    with master_lock(4321):
        shown, out, _ = run(capsys, "status")
        assert (
            "  runner ticker:0:1   running     pid 4322     restarts 0   "
            "owner: nobody\n" in out
        )
        _, out, _ = run(capsys, "status", "--json")
    assert shown == 0
    assert json.loads(out)["runners"]["ticker:0:1"] == {
        "pid": 4322,
        "state": "running",
        "restarts": 0,
        "owner": None,
    }


# The master ---------------------------------------------------------------


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


@pytest.fixture
def master(var_dir, monkeypatch):
    """A master in this process that started one runner, pid 4242.

    Its children are never real: each test says what ``os.waitpid`` finds.
    """
    made = Master(["mailqueue"])
    child = _Child("in", 0, 1, max_restarts=10, window=600.0, pid=4242)
    made.children[child.spec] = child
    made._by_pid[4242] = child

    def waitpid_finds(*found):
        results = list(found)

        def waitpid(pid, options):
            assert (pid, options) == (-1, os.WNOHANG)
            result = results.pop(0)
            if isinstance(result, BaseException):
                raise result
            return result

        monkeypatch.setattr(os, "waitpid", waitpid)

    made.waitpid_finds = waitpid_finds
    return made


def test_a_runner_that_ends_by_itself_is_not_restarted(master, caplog):
    master.waitpid_finds((4242, 0), (0, 0))
    with caplog.at_level(logging.INFO, logger="mailqueue"):
        assert master._reap_all()
    assert caplog.messages == ["runner in:0:1 (pid 4242) exited"]
    assert master.children == {} and master._by_pid == {}
    assert not master._start_due()
    master._write_status()
    assert master_status()["runners"] == {}


def test_a_child_the_master_did_not_start_is_reaped_and_passed_over(master, caplog):
    # A process that exec'd the master may leave it children of its own.
    master.waitpid_finds((4999, 0), (0, 0))
    with caplog.at_level(logging.INFO, logger="mailqueue"):
        assert not master._reap_all()
    assert caplog.messages == []
    assert master._by_pid == {4242: master.children["in:0:1"]}
    assert master.children["in:0:1"].state == "running"


def test_a_master_whose_children_someone_else_reaped_goes_on(master, caplog):
    master.waitpid_finds(ChildProcessError(errno.ECHILD, "No child processes"))
    with caplog.at_level(logging.INFO, logger="mailqueue"):
        assert not master._reap_all()
    assert caplog.messages == []
    assert list(master.children) == ["in:0:1"]


# Runners --------------------------------------------------------------------


class Ticker(Runner):
    """A runner without a queue: it counts its passes, and stops after three."""

    is_queue_runner = False

    def __init__(self, *arguments):
        super().__init__(*arguments)
        self.passes = 0

    def _do_periodic(self):
        self.passes += 1
        if self.passes == 3:
            self.stop()


@pytest.fixture
def signals_restored():
    saved = {signum: signal.getsignal(signum) for signum in SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_sigusr2_wakes_a_sleeping_runner_and_leaves_a_working_one_be(
    var_dir, monkeypatch, caplog, signals_restored
):
    # `mailqueue flush` (SIGUSR2; raise_signal runs the handler before it
    # returns) while the runner works, then as it lies down for a minute.
    class Flushed(Ticker):
        def _do_periodic(self):
            signal.raise_signal(signal.SIGUSR2)  # nothing to cut short
            super()._do_periodic()

        def _snooze(self, filecnt):
            signal.raise_signal(signal.SIGUSR2)
            super()._snooze(filecnt)

    monkeypatch.delenv(MASTER_FD, raising=False)
    config.push("ticker", TICKER + "sleep_time: 60s\n")
    ticker = Flushed("ticker")
    ticker.set_signals()
    with caplog.at_level(logging.INFO, logger="mailqueue.runner"):
        ticker.run()  # three passes, never a minute's sleep
    # Each pass's work was finished; each sleep between them was cut short.
    assert (ticker.passes, ticker.status) == (3, 0)
    assert caplog.messages == ["ticker runner woken: trying its queue now"] * 2


def test_a_runner_whose_master_is_gone_says_so_once(var_dir, monkeypatch, caplog):
    class Napper(Ticker):
        def _snooze(self, filecnt):
            # A snooze in short naps: each looks at the master's pipe.
            for _ in range(3):
                self._sleep(10)

    reading, writing = os.pipe()
    os.close(writing)  # the master is gone
    monkeypatch.setenv(MASTER_FD, str(reading))
    config.push("ticker", TICKER)
    try:
        napper = Napper("ticker")
        with caplog.at_level(logging.INFO, logger="mailqueue.runner"):
            napper.run()
    finally:
        os.close(reading)
    # The pass after the snooze, and it stops.
    assert napper.passes == 2
    assert caplog.messages == ["ticker runner: its master is gone; stopping"]


def test_a_repeated_error_is_counted_and_said_again_each_minute(monkeypatch, caplog):
    class Clock:
        now = 1000.0

        @classmethod
        def monotonic(cls):
            return cls.now

    monkeypatch.setattr(runner_module, "time", Clock)
    errors = _RepeatedErrors(logging.getLogger("mailqueue.error"))
    with caplog.at_level(logging.INFO, logger="mailqueue.error"):
        for second in range(0, 61, 10):  # seven times in a minute
            Clock.now = 1000.0 + second
            errors.error("the disk is %s", "failing")
        Clock.now += 1
        errors.error("the disk is %s", "failing")
        errors.flush()
    assert caplog.messages == [
        "the disk is failing",
        "the disk is failing (6 more times)",
        "the disk is failing (1 more times)",
    ]


# Queue tools ------------------------------------------------------------------


def test_empty_metadata_is_shown_as_empty(capsys):
    queuetools.dump_msgdata({})
    queuetools.dump_msgdata({"version": 3}, "version")
    assert capsys.readouterr().out == "*Empty*\n*Empty*\n"


def test_a_runner_without_a_queue_is_no_place_entries_wait(var_dir):
    config.push("ticker", TICKER)
    msg = message_from_string("From: a@example.com\nSubject: hi\n\nHi.\n")
    filebase = config.switchboards["in"].enqueue(msg, listid="test.example.com")
    assert queuetools.list_entries(["ticker"]) == []
    assert [(e.queue, e.filebase) for e in queuetools.list_entries()] == [
        ("in", filebase)
    ]


def test_an_entry_whose_headers_cannot_be_read_is_still_listed(capsys, var_dir):
    # Pickled as it was put together: a header entry of three parts.
    msg = message_from_string("From: a@example.com\nSubject: hi\n\nHi.\n")
    msg._headers.append(("X-Odd", "one", "too many"))
    filebase = config.switchboards["in"].enqueue(msg, listid="test.example.com")
    [entry] = queuetools.list_entries()
    assert (entry.filebase, entry.list, entry.sender, entry.subject) == (
        filebase,
        "test.example.com",
        "",
        "(unreadable headers)",
    )
    assert entry.problem == ""
    status, out, _ = run(capsys, "list")
    assert status == 0
    assert "test.example.com  -  (unreadable headers)\n" in out


def test_a_move_the_disk_refuses_is_one_line_and_leaves_the_entry(
    capsys, var_dir, monkeypatch
):
    msg = message_from_string("From: a@example.com\nSubject: hi\n\nHi.\n")
    filebase = config.switchboards["in"].enqueue(msg, listid="test.example.com")
    queued = os.path.join(config.runners["in"].path, filebase + ".pck")
    held = os.path.join(queuetools.hold_directory("in"), filebase + ".pck")

    def failing(source, target, **keywords):
        raise OSError(errno.EIO, os.strerror(errno.EIO), source, None, target)

    # A move between directories begins with a link (then the old name goes).
    monkeypatch.setattr(os, "link", failing)
    status, out, err = run(capsys, "hold", filebase)
    monkeypatch.undo()
    assert (status, out) == (1, "")
    assert err == (
        f"mailqueue: error: [Errno 5] Input/output error: {queued!r} -> {held!r}\n"
    )
    assert os.path.exists(queued) and not os.path.exists(held)
    assert not os.path.exists(os.path.join(config.LOG_DIR, "admin.log"))


def shunted(subject, **metadata):
    msg = message_from_string(f"From: a@example.com\nSubject: {subject}\n\nHi.\n")
    return config.switchboards["shunt"].enqueue(msg, whichq="in", **metadata)


def test_unshunt_passes_over_an_entry_another_process_took(var_dir, monkeypatch):
    shunt = config.switchboards["shunt"]
    taken, left = shunted("taken"), shunted("left")
    real = queuetools._take

    def taken_first(path):
        if os.path.basename(path) == taken + ".pck":
            # A runner or a tool of another site, just after this one listed
            # the queue.
            os.rename(path, shunt._path(taken, ".bak"))
        return real(path)

    monkeypatch.setattr(queuetools, "_take", taken_first)
    done = list(queuetools.unshunt())
    assert [(item.filebase, item.ok) for item in done] == [(left, True)]
    # The other process's entry is left to it.
    assert shunt.get_files(".bak") == [taken]
    assert [e.subject for e in queuetools.list_entries(["in"])] == ["left"]


def test_unshunt_moves_an_entry_with_its_bytes(var_dir):
    # Shunted as text, it fits the limit exactly; it goes back as it is,
    # never parsed and pickled again (which would make it larger).
    shunt = config.switchboards["shunt"]
    filebase = shunted("x" * 400, _plaintext=True)
    path = os.path.join(shunt.queue_directory, filebase + ".pck")
    with open(path, "rb") as stream:
        stored = stream.read()
    config.push("small", f"[queues]\nmax_entry_size: {len(stored)}\n")
    [done] = queuetools.unshunt()
    assert done.ok, done.text
    [entry] = queuetools.list_entries()
    with open(entry.path, "rb") as stream:
        assert (entry.queue, entry.filebase, stream.read()) == ("in", filebase, stored)


# The list database -----------------------------------------------------------


def test_postgresql_without_its_driver_is_one_line(var_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    with pytest.raises(OSError) as failed:
        ListManager("postgresql://mailqueue:secret@db.example.com/lists")
    assert str(failed.value) == (
        "the list database postgresql://db.example.com/lists needs PostgreSQL's "
        "driver: pip install 'mailqueue[postgresql]'"
    )

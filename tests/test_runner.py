"""The runner (mailqueue.runner) beyond the narrative.

Every stop signal, stray files, slices, what a runner refuses to read, the
history it keeps on an entry it shunts or keeps, the error log once per
cause.
"""

import fcntl
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from entries import (  # tools/hostile, on sys.path (conftest.py)
    laughs,
    text,
    with_metadata,
)
from entries import metadata as pickled_metadata  # metadata is this file's helper
from helpers import (
    FILEBASE,
    TICKER,
    block_delivery,
    errors_logged,
    in_child,
    message,
    place,
    run,
)

from mailqueue import (
    Runner,
    config,
    create_list,
    message_from_string,
)
from mailqueue import runner as runner_module
from mailqueue.configuration import ConfigurationError
from mailqueue.entry_format import parse_entry
from mailqueue.logs import logging_to
from mailqueue.qfile import parse_filebase
from mailqueue.runner import MASTER_FD, SIGNALS, RunnerError, _RepeatedErrors
from mailqueue.runners import OutgoingRunner


class Recorder(Runner):
    def __init__(self, name, slice=None):
        super().__init__(name, slice)
        self.disposed = []

    def _dispose(self, mlist, msg, msgdata):
        self.disposed.append(msg["subject"])
        return False

    def _snooze(self, filecnt):
        if not filecnt:
            self.stop()


@pytest.fixture
def mlist(var_dir):
    config.push(
        "runner-tests", "[runner.test]\nsleep_time: 0\n[runner.sliced]\ninstances: 2\n"
    )
    return create_list("test@example.com")


def post(queue, mlist, subject):
    msg = message_from_string(f"From: aperson@example.com\nSubject: {subject}\n\nHi.\n")
    return config.switchboards[queue].enqueue(msg, listid=mlist.list_id)


@pytest.fixture
def restore_signals():
    signums = (
        signal.SIGTERM,
        signal.SIGINT,
        signal.SIGUSR1,
        signal.SIGHUP,
        signal.SIGUSR2,
    )
    saved = {signum: signal.getsignal(signum) for signum in signums}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize(
    "signum, disposed, status",
    [
        # A stop signal lets the current entry finish, then stops the runner.
        (signal.SIGTERM, ["one"], signal.SIGTERM),
        (signal.SIGINT, ["one"], signal.SIGINT),
        (signal.SIGUSR1, ["one"], signal.SIGUSR1),
        # SIGHUP only reopens the logs.
        (signal.SIGHUP, ["one", "two"], 0),
    ],
)
def test_a_signal_during_an_entry(mlist, restore_signals, signum, disposed, status):
    class Signalled(Recorder):
        def _dispose(self, mlist, msg, msgdata):
            os.kill(os.getpid(), signum)
            return super()._dispose(mlist, msg, msgdata)

    for subject in ("one", "two"):
        post("test", mlist, subject)
    runner = Signalled("test")
    runner.set_signals()
    runner.run()
    assert runner.disposed == disposed
    assert runner.status == status
    queue = config.switchboards["test"]
    assert len(queue.files) == 2 - len(disposed)
    assert queue.get_files(".bak") == []


@pytest.mark.timeout(15)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_stop_signal_wakes_a_sleeping_runner(mlist, restore_signals, signum):
    config.push("sleepy", "[runner.sleepy]\nsleep_time: 1m\n")
    runner = Runner("sleepy")
    runner.set_signals()
    threading.Timer(0.1, os.kill, (os.getpid(), signum)).start()
    started = time.monotonic()
    runner.run()  # would sleep out its minute if the signal did not cut it short
    assert runner.status == signum
    assert time.monotonic() - started < 10


def test_stray_files_do_not_stop_a_running_runner(mlist):
    queue = config.switchboards["test"]
    for name in (
        "garbage.pck",
        "x+y.pck",
        "1.0+nothex.pck",
        "1.0+" + "a" * 39 + ".pck",
    ):
        open(os.path.join(queue.queue_directory, name), "w").close()
    post("test", mlist, "real")
    runner = Recorder("test")
    runner.run()
    assert runner.disposed == ["real"]
    assert len(os.listdir(queue.queue_directory)) == 4


def test_a_sliced_runner_processes_only_its_slice(mlist):
    for number in range(40):
        post("sliced", mlist, str(number))
    queue = config.switchboards["sliced"]
    halves = [Recorder("sliced", number) for number in (0, 1)]
    halves[0].run()
    mine = set(halves[0].disposed)
    assert 0 < len(mine) < 40  # 40 random digests all in one half: 2 in 10**12
    assert len(queue.files) == 40 - len(mine)
    halves[1].run()
    assert mine | set(halves[1].disposed) == {str(n) for n in range(40)}
    assert not mine & set(halves[1].disposed)


def test_a_sliced_runner_needs_its_slice(mlist):
    with pytest.raises(
        ValueError, match="slice must be an integer from 0 to 1, not None"
    ):
        Runner("sliced")


@pytest.mark.parametrize(
    "section, message",
    [
        ("instances: 3", "instances must be a power of two, not 3"),
        ("instances: two", "instances must be a whole number of at least 1, not 'two'"),
        ("max_restarts: -1", "max_restarts must be a whole number of at least 0"),
        ("sleep_time: soon", "sleep_time must be a duration such as 1s"),
        ("start: maybe", "start must be yes or no, not 'maybe'"),
        ("path: $NOWHERE/x", "path uses $NOWHERE, which is not defined"),
    ],
)
def test_bad_runner_settings_are_refused_with_the_key_named(var_dir, section, message):
    before = config.layers
    with pytest.raises(
        ValueError, match=r"\[runner.bad-settings\] .*" + message.replace("$", r"\$")
    ):
        config.push("bad", f"[runner.bad-settings]\n{section}\n")
    assert config.layers == before


def test_an_unknown_runner_is_a_clear_error(var_dir):
    with pytest.raises(ValueError, match=r"no \[runner.nosuch\] section"):
        Runner("nosuch")


def test_a_queue_runner_needs_a_path(var_dir):
    config.push("pathless", "[runner.pathless]\npath:\n")
    with pytest.raises(ConfigurationError, match=r"\[runner.pathless\] has no path"):
        Runner("pathless")


def test_a_slice_another_process_owns_is_not_run_once(mlist):
    config.push("preferring", "[runner.sliced]\nprefer: 1\n")
    # Held through files this process opened itself, as another process
    # would hold them: the owner lock, and the preference.
    first = Runner("sliced", 1)
    assert first.preferred
    second = Runner("sliced", 1)
    assert not second.preferred  # another "process" prefers it already
    del first, second
    board = config.switchboards.make("sliced", 1, 2)
    with open(board.owner_file, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(RunnerError, match=r"^sliced:1:2: its slice is owned by"):
            Runner("sliced", 1).run_once()


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


@pytest.fixture
def clock(monkeypatch):
    """The runner module's clock, which the test sets (``clock.now``)."""

    class Clock:
        now = 1000.0

        @classmethod
        def monotonic(cls):
            return cls.now

    monkeypatch.setattr(runner_module, "time", Clock)
    return Clock


def test_a_repeated_error_is_counted_and_said_again_each_minute(clock, caplog):
    errors = _RepeatedErrors(logging.getLogger("mailqueue.error"))
    with caplog.at_level(logging.INFO, logger="mailqueue.error"):
        for second in range(0, 61, 10):  # seven times in a minute
            clock.now = 1000.0 + second
            errors.error("the disk is %s", "failing")
        clock.now += 1
        errors.error("the disk is %s", "failing")
        errors.flush()
    assert caplog.messages == [
        "the disk is failing",
        "the disk is failing (6 more times)",
        "the disk is failing (1 more times)",
    ]


@pytest.fixture
def queue(var_dir):
    create_list("test@example.com")
    return config.switchboards["in"]


def test_a_runner_refuses_a_list_id_of_shared_references(queue, var_dir):
    place(queue, with_metadata(pickled_metadata((text("listid"), laughs(10)))))
    assert len(Path(queue.queue_directory, FILEBASE + ".pck").read_bytes()) < 2000
    child = in_child(
        var_dir,
        """
        import logging, resource
        logging.basicConfig()
        from mailqueue.runners import IncomingRunner
        IncomingRunner('in').run_once()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
        """,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert "would expand to more than" in child.stderr
    assert "MemoryError" not in child.stderr
    assert int(child.stdout) < 200  # MiB at the most, of a 1 GiB limit
    assert config.switchboards["bad"].get_files(".psv") == [FILEBASE]


def test_a_runner_is_not_blocked_by_a_symlink_to_a_fifo(queue, var_dir, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    Path(queue.queue_directory, FILEBASE + ".pck").symlink_to(tmp_path / "fifo")
    later = queue.enqueue(
        message_from_string("Subject: later\n\nHi.\n"), listid="test.example.com"
    )
    child = in_child(
        var_dir,
        "from mailqueue.runners import IncomingRunner\n"
        "print(IncomingRunner('in').run_once())\n",
        timeout=30,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert config.switchboards["bad"].get_files(".psv") == [FILEBASE]
    assert later not in queue.files  # it went on to out
    assert len(config.switchboards["out"].files) == 1


def metadata(queue, filebase, extension=".pck"):
    path = os.path.join(config.runners[queue].path, filebase + extension)
    with open(path, "rb") as stream:
        return parse_entry(stream.read(), filebase)[1]


@pytest.fixture
def plain_list(var_dir):
    """A list, and no runner sections of the tests' own (unlike mlist)."""
    return create_list("test@example.com")


def test_a_shunted_entry_keeps_its_reason_and_first_queuing(plain_list, capsys):
    class Fragile(Runner):
        def _dispose(self, mlist, msg, msgdata):
            raise RuntimeError("cannot handle this one")

    config.push("fragile", "[runner.fragile]\n")
    try:
        queued = config.switchboards["fragile"].enqueue(
            message(), listid=plain_list.list_id
        )
        first = parse_filebase(queued).when
        with logging_to(config.LOG_DIR):
            Fragile("fragile").run_once()
            [shunted] = config.switchboards["shunt"].files
            data = metadata("shunt", shunted)
            assert data["mq_reason"] == "RuntimeError: cannot handle this one"
            assert (data["mq_attempts"], data["mq_first_queued"]) == (1, first)
            # Back where it came from and shunted again: a second attempt,
            # first queued as ever.
            assert run(capsys, "unshunt")[0] == 0
            Fragile("fragile").run_once()
        [again] = config.switchboards["shunt"].files
        data = metadata("shunt", again)
        assert (data["mq_attempts"], data["mq_first_queued"]) == (2, first)
        with open(os.path.join(config.LOG_DIR, "error.log")) as log:
            shunts = [line for line in log if "shunted" in line]
        assert shunts[0].endswith(
            f"fragile runner shunted {queued} <m1@example.com> as {shunted}: "
            "RuntimeError: cannot handle this one\n"
        )
        # Requeued by hand, it keeps its history too.
        assert run(capsys, "requeue", "--to", "fragile", again)[0] == 0
        assert metadata("fragile", again) == data
    finally:
        config.pop("fragile")


def test_a_runner_that_keeps_an_entry_queued_carries_its_first_queuing(plain_list):
    class Patient(Runner):
        def _dispose(self, mlist, msg, msgdata):
            return True  # not yet

    config.push("patient", "[runner.patient]\n")
    try:
        board = config.switchboards["patient"]
        first = parse_filebase(board.enqueue(message(), listid=plain_list.list_id)).when
        Patient("patient").run_once()
        [requeued] = board.files
        assert metadata("patient", requeued)["mq_first_queued"] == first
        board.finish(requeued)
        # An entry whose name is not a file base (put there by hand) was
        # first queued when it is taken.
        unlisted = {"listid": plain_list.list_id}
        os.rename(
            os.path.join(
                board.queue_directory, board.enqueue(message(), unlisted) + ".pck"
            ),
            os.path.join(board.queue_directory, "by-hand.pck"),
        )
        before = time.time()
        # A pass lists only file bases: the entry is taken by its name.
        Patient("patient")._process_filebase("by-hand")
        [requeued] = board.files
        assert metadata("patient", requeued)["mq_first_queued"] >= before
    finally:
        config.pop("patient")


def test_the_error_log_names_the_entry_once_per_cause(plain_list, caplog):
    block_delivery(plain_list)
    board = config.switchboards["out"]
    first = board.enqueue(message(1), listid=plain_list.list_id)
    for number in range(2, 6):
        board.enqueue(message(number), listid=plain_list.list_id)
    sixth = board.enqueue(message(6, message_id=False), listid=plain_list.list_id)
    with caplog.at_level(logging.INFO, logger="mailqueue.error"):
        assert OutgoingRunner("out").run_once() == 6
    assert len(config.switchboards["retry"].files) == 6
    # One line naming the first entry and its Message-ID; then, as the
    # runner ends, how many more failed the same way, and the last of them.
    logged = errors_logged(caplog)
    assert len(logged) == 2
    assert logged[0].startswith(
        f"out runner: delivery of {first} <m1@example.com> to test@example.com "
        "failed, will retry: [Errno 17] File exists: "
    )
    assert logged[1] == (
        "out runner: delivery to test@example.com failed again, will retry: "
        f"File exists; the last was {sixth} <> (5 more times)"
    )


def test_repeated_errors_are_counted_per_cause_and_forgotten(
    clock, monkeypatch, caplog
):
    errors = _RepeatedErrors(logging.getLogger("mailqueue.error"))
    with caplog.at_level(logging.INFO, logger="mailqueue.error"):
        for entry in ("a", "b", "c"):  # two causes, interleaved
            errors.error("%s failed", entry, key="disk", again=f"again, last {entry}")
            errors.error("%s is odd", entry, key="odd")
        errors.tick()  # too early: nothing said
        clock.now += 60
        errors.tick()
        assert caplog.messages == [
            "a failed",
            "a is odd",
            "again, last c (2 more times)",
            "c is odd (2 more times)",
        ]
        clock.now += 60
        errors.tick()  # no repeats in that minute: both forgotten
        errors.error("d failed", key="disk")
        assert caplog.messages[-1] == "d failed"
        # Never more than so many causes remembered: the counts are said first.
        monkeypatch.setattr(runner_module, "_KEYS_KEPT", 2)
        errors.error("d failed again", key="disk")
        errors.error("e", key="e")
        errors.error("f", key="f")
        assert caplog.messages[-3:] == ["e", "d failed again (1 more times)", "f"]

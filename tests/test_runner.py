"""Runner behaviour beyond the narrative: every stop signal, stray files, slices."""

import fcntl
import os
import signal
import threading
import time

import pytest

from mailqueue import Runner, config, create_list, message_from_string
from mailqueue.configuration import ConfigurationError
from mailqueue.runner import RunnerError


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

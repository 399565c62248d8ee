"""Who works a slice: lock files, owners, standing by, and each slice's state.

A lock held through another open file of this process is held as another
process's would be, so these tests hold locks with plain files, not processes.
"""

import errno
import fcntl
import logging
import os
import socket

import pytest

import mailqueue.ownership as ownership_module
from mailqueue import Switchboard, message_from_string
from mailqueue.ownership import (
    SliceState,
    Standby,
    lock_file,
    owner_file,
    read_holder,
    slice_owner,
    slice_states,
    write_holder,
)

TEXT = "From: aperson@example.com\nTo: test@example.com\nSubject: hi\n\nHello.\n"


@pytest.fixture
def directory(tmp_path):
    """A queue directory of its own, with nothing beside it."""
    return str(tmp_path / "test")


def no_locks(fd, operation):
    raise OSError(errno.ENOLCK, "No locks available")


# A lock file ------------------------------------------------------------------


def test_a_held_lock_file_names_its_holder_until_it_is_let_go_of(tmp_path):
    path = str(tmp_path / "some.lck")
    assert read_holder(path) is None  # no file: nobody
    fd = lock_file(path)
    assert fd is not None
    write_holder(fd, "first holder\n")
    write_holder(fd, "4242\n")  # all it holds: nothing of the first is left
    assert read_holder(path) == "4242"
    assert lock_file(path) is None  # held
    os.close(fd)
    assert read_holder(path) is None  # the text is there, but nobody holds it
    second = lock_file(path)
    assert second is not None
    os.close(second)


def test_where_locks_cannot_be_tested_only_a_reader_that_asks_trusts_the_file(
    tmp_path, monkeypatch
):
    path = str(tmp_path / "some.lck")
    with open(path, "w") as stale:
        stale.write("4242\n")
    monkeypatch.setattr(ownership_module.fcntl, "flock", no_locks)
    # The master's lock: a stale pid must not be signalled, so the error is
    # raised.  A slice's owner file: only the file can tell, so it does.
    with pytest.raises(OSError, match="No locks available"):
        read_holder(path)
    assert read_holder(path, file_if_no_locks=True) == "4242"


def test_an_owner_file_that_cannot_be_opened_names_nobody(directory):
    Switchboard("test", directory)
    path = owner_file(directory, None, 1)
    os.symlink(path, path)  # a loop: opening it fails, and not as missing
    assert slice_owner(directory) is None


def test_the_owner_and_preference_files_are_beside_the_queue(directory):
    parent = os.path.dirname(directory)
    assert owner_file(directory, None, 1) == os.path.join(parent, ".test.owner")
    assert owner_file(directory, 0, 1) == os.path.join(parent, ".test.owner")
    assert owner_file(directory + "/", 3, 4, ".prefer") == os.path.join(
        parent, ".test-3-of-4.prefer"
    )


# Standing by and handing over ------------------------------------------------------


def test_a_runner_stands_by_until_the_owner_is_gone_and_then_recovers(
    directory, caplog
):
    board = Switchboard("test", directory)
    filebase = board.enqueue(message_from_string(TEXT))
    board.dequeue(filebase)  # and never finished: a .bak to recover
    naps = []
    with (
        open(board.owner_file, "w") as held,
        caplog.at_level(logging.INFO, logger="mailqueue.runner"),
    ):
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("elsewhere 4242\n")
        held.flush()

        def nap(seconds):
            naps.append(seconds)
            held.close()  # the owner goes while this runner stands by

        standby = Standby("test", board, preferred=False)
        assert not board.owner  # not taken as it was made: it is held
        standby.stand_by(lambda: False, nap)
    assert naps == [ownership_module.STANDBY_INTERVAL]
    assert board.owner
    assert board.files == [filebase]  # recovered as the slice was taken
    assert caplog.messages == [
        "test runner standing by: its slice is owned by pid 4242 on elsewhere",
        "test runner now owns its slice and recovered 1 entries",
    ]


def test_a_runner_asked_to_stop_while_it_stands_by_stops_waiting(directory):
    board = Switchboard("test", directory)
    with open(board.owner_file, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        naps = []

        def nap(seconds):
            assert len(naps) < 2, "still standing by after it was stopped"
            naps.append(seconds)

        standby = Standby("test", board, preferred=False)
        standby.stand_by(lambda: len(naps) == 2, nap)
        assert naps == [ownership_module.STANDBY_INTERVAL] * 2
        assert not board.owner


def test_a_slice_another_process_prefers_is_left_and_handed_over(
    directory, caplog, monkeypatch
):
    now = [1000.0]
    monkeypatch.setattr(ownership_module.time, "monotonic", lambda: now[0])
    board = Switchboard("test", directory)
    standby = Standby("test", board, preferred=False)
    assert board.owner  # nobody prefers it yet: taken at once
    assert not standby.hand_over()  # and nobody waits for it
    now[0] += ownership_module.HAND_OVER_CHECK
    with open(board.prefer_file, "w") as preferring:
        fcntl.flock(preferring, fcntl.LOCK_EX)
        with caplog.at_level(logging.INFO, logger="mailqueue.runner"):
            assert standby.hand_over()
        assert not board.owner
        assert caplog.messages == [
            "test runner hands its slice over to a process that prefers it"
        ]
        assert not standby.may_work()  # left to the one that prefers it
        assert not standby.hand_over()  # nothing to hand over now
    assert standby.may_work()  # the one that preferred it is gone
    # Looked at once a second at most: a preference that comes between two
    # looks is seen at the next.
    with open(board.prefer_file, "w") as preferring:
        fcntl.flock(preferring, fcntl.LOCK_EX)
        now[0] += ownership_module.HAND_OVER_CHECK / 2
        assert not standby.hand_over()
        assert board.owner
        now[0] += ownership_module.HAND_OVER_CHECK / 2
        assert standby.hand_over()


def test_a_preferred_runner_keeps_its_slice(directory):
    board = Switchboard("test", directory)
    standby = Standby("test", board, preferred=True)
    assert standby.preferred and board.owner
    assert not board.preferred_elsewhere()  # its own preference
    assert not standby.hand_over()


# Each slice's state, as status shows it --------------------------------------------


def test_each_slice_s_state_says_who_owns_it(tmp_path):
    queues = {name: str(tmp_path / name) for name in ("in", "out")}
    mine = Switchboard("in", queues["in"], recover=True)
    with open(owner_file(queues["out"], 1, 2), "w") as elsewhere:
        fcntl.flock(elsewhere, fcntl.LOCK_EX)
        elsewhere.write("beta 4242\n")
        elsewhere.flush()
        states = slice_states(
            {
                "out:1:2": {"pid": 7, "state": "running", "restarts": 2},
                "in:0:1": {"pid": os.getpid(), "state": "running", "restarts": 0},
                "held:0:1": {"pid": None, "state": "given up", "restarts": 3},
            },
            ["out:0:2"],
            queues,
            socket.gethostname(),
        )
    host = socket.gethostname()
    assert states == [
        SliceState("held:0:1", "given up", None, 3, None, False),  # no path
        SliceState("in:0:1", "running", os.getpid(), 0, (host, os.getpid()), True),
        SliceState("out:0:2", "not started", None, 0, None, False),
        SliceState("out:1:2", "standing by", 7, 2, ("beta", 4242), False),
    ]
    assert [state.owner_text for state in states] == [
        "nobody",
        "this runner",
        "nobody",
        "pid 4242 on beta",
    ]
    assert states[3].as_json() == {
        "pid": 7,
        "state": "standing by",
        "restarts": 2,
        "owner": {"host": "beta", "pid": 4242},
    }
    assert states[0].as_json()["owner"] is None
    del mine


def test_slices_are_in_the_order_of_their_numbers(tmp_path):
    running = {"pid": None, "state": "restarting", "restarts": 1}
    specs = ["out:10:16", "in:0:1", "out:2:16"]
    states = slice_states(dict.fromkeys(specs, running), [], {}, "alpha")
    assert [state.spec for state in states] == ["in:0:1", "out:2:16", "out:10:16"]


def test_without_locks_the_owner_file_names_the_owner(tmp_path, monkeypatch):
    directory = str(tmp_path / "test")
    owner = Switchboard("test", directory, recover=True)

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    # A file system without locks (an NFS mount without its lock daemon).
    monkeypatch.setattr(ownership_module.fcntl, "flock", no_locks)
    assert slice_owner(directory) == (socket.gethostname(), os.getpid())
    assert owner.owner_id() == f"pid {os.getpid()} on {socket.gethostname()}"
    owner.release_ownership()  # which empties the file
    assert slice_owner(directory) is None


def test_an_owner_of_another_user_is_alive_though_it_cannot_be_signalled(
    tmp_path, monkeypatch
):
    directory = str(tmp_path / "test")
    owner_file = Switchboard("test", directory).owner_file
    fd = os.open(owner_file, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"here 4242\n")

        def not_yours(pid, signal):
            raise PermissionError(errno.EPERM, "Operation not permitted")

        # As seen by a user who may not signal that process; root may.
        monkeypatch.setattr(ownership_module.os, "kill", not_yours)
        assert slice_owner(directory, host="here") == ("here", 4242)
    finally:
        os.close(fd)

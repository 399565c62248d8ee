"""The master (mailqueue.master), in this process: its children, its restart.

The master with real runner processes is in tests/processes/test_master.py.
"""

import errno
import logging
import os

from mailqueue.master import (
    Master,
    _Child,
    master_status,
)


def test_a_status_file_that_is_not_json_is_no_status(var_dir):
    with open(os.path.join(var_dir, "master.json"), "w") as stream:
        stream.write("{half a status")
    assert master_status() == {}


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

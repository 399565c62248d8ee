"""The operator's queue tools, called directly: each refusal says why."""

import errno
import os
import time

import pytest
from helpers import DAY, TICKER, message, run

from mailqueue import (
    config,
    message_from_string,
    qfile,
    queuetools,
)
from mailqueue.queuetools import EntryError


def queued(queue="in", subject="hi", **metadata):
    msg = message_from_string(f"From: a@example.com\nSubject: {subject}\n\nHi.\n")
    filebase = config.switchboards[queue].enqueue(msg, metadata)
    [entry] = [e for e in queuetools.list_entries([queue]) if e.filebase == filebase]
    return entry


def test_an_entry_can_be_acted_on_once(var_dir):
    entry = queued()
    queuetools.delete(entry)
    with pytest.raises(EntryError, match="is gone"):
        queuetools.delete(entry)
    with pytest.raises(EntryError, match="is gone"):
        queuetools.hold(entry)


def test_what_hold_release_and_requeue_refuse(var_dir):
    entry = queued()
    with pytest.raises(EntryError, match="is not held"):
        queuetools.release(entry)
    with pytest.raises(EntryError, match="no queue is called 'nowhere'"):
        queuetools.requeue(entry, "nowhere")
    with pytest.raises(EntryError, match="is in in already"):
        queuetools.requeue(entry, "in")
    queuetools.hold(entry)
    [held] = queuetools.list_entries(["in"])
    assert held.held and held.queue == "hold/in"
    with pytest.raises(EntryError, match="is held already"):
        queuetools.hold(held)
    # Something else in the way of its way back: nothing is replaced.
    in_the_way = os.path.join(config.runners["in"].path, held.filebase + ".pck")
    open(in_the_way, "w").close()
    with pytest.raises(EntryError, match="exists already"):
        queuetools.release(held)
    os.remove(in_the_way)
    queuetools.release(held)
    assert [e.queue for e in queuetools.list_entries(["in"])] == ["in"]


def test_a_preserved_entry_is_requeued_not_held(var_dir):
    entry = queued()
    config.switchboards["in"].finish(entry.filebase, preserve=True)
    [preserved] = queuetools.list_entries(["bad"])
    with pytest.raises(EntryError, match="is preserved in bad: requeue it instead"):
        queuetools.hold(preserved)
    queuetools.requeue(preserved, "in")
    assert [e.queue for e in queuetools.list_entries()] == ["in"]


def test_a_queue_on_another_file_system_is_said_so(var_dir, tmp_path):
    # /dev/shm is a tmpfs; the var directory is not: a rename cannot cross.
    if os.stat("/dev/shm").st_dev == os.stat(var_dir).st_dev:
        pytest.fail("this test needs /dev/shm on another file system than /tmp")
    elsewhere = os.path.join("/dev/shm", os.path.basename(var_dir) + "-far")
    config.push("far", f"[runner.far]\npath: {elsewhere}\n")
    try:
        entry = queued()
        with pytest.raises(EntryError, match="is on another file system"):
            queuetools.requeue(entry, "far")
        assert queuetools.list_entries(["in"]) == [entry]
    finally:
        config.pop("far")
        os.rmdir(elsewhere)


def test_what_an_entry_says_of_itself(var_dir):
    as_text = config.switchboards["in"].enqueue(
        message_from_string("Subject: x\n\nx\n"), _plaintext=True, listname="l@x.org"
    )
    [entry] = queuetools.list_entries(["in"])
    assert (entry.filebase, entry.subject, entry.list) == (
        as_text,
        "(stored as text)",
        "l@x.org",
    )
    # Which cannot be read, says why, and still shows its size.
    with open(entry.path, "wb") as stream:
        stream.write(b"not a pickle")
    [unreadable] = queuetools.list_entries(["in"])
    assert "not a queue entry" in unreadable.problem and unreadable.size == 12


@pytest.mark.parametrize(
    ("waited", "shown"),
    [(0, "0s"), (59, "59s"), (60, "1m"), (3599, "59m"), (3600, "1h"), (259200, "3d")],
)
def test_ages(var_dir, waited, shown):
    entry = queued()
    assert queuetools.age(entry, now=entry.when + waited) == shown


def test_an_entry_gone_between_the_listing_and_its_reading_says_so(
    var_dir, monkeypatch
):
    # A runner took it just after the directory was listed.
    directory = config.runners["in"].path
    filebase = queued().filebase
    real = os.listdir

    def listed_then_taken(path):
        names = real(path)
        if path == directory:
            os.rename(
                os.path.join(directory, filebase + ".pck"),
                os.path.join(directory, filebase + ".bak"),
            )
        return names

    monkeypatch.setattr(queuetools.os, "listdir", listed_then_taken)
    (entry,) = queuetools.list_entries(["in"])
    assert (entry.filebase, entry.size) == (filebase, 0)
    assert "No such file or directory" in entry.problem


def shunted(subject, **metadata):
    msg = message_from_string(f"From: a@example.com\nSubject: {subject}\n\nHi.\n")
    return config.switchboards["shunt"].enqueue(msg, whichq="in", **metadata)


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


def test_unshunt_passes_over_an_entry_another_process_took(var_dir, monkeypatch):
    shunt = config.switchboards["shunt"]
    taken, left = shunted("taken"), shunted("left")
    real = queuetools._take

    def taken_first(path):
        if os.path.basename(path) == taken + ".pck":
            # A runner or a tool of another site, just after this one listed
            # the queue.
            os.rename(path, os.path.join(shunt.queue_directory, taken + ".bak"))
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


TEXT = "From: aperson@example.com\nTo: test@example.com\nSubject: fault\n\nHello.\n"


def test_an_operator_move_onto_a_name_made_meanwhile_replaces_nothing(
    var_dir, monkeypatch
):
    board = config.switchboards["in"]
    filebase = board.enqueue(message_from_string(TEXT), listid="test.example.com")
    (entry,) = queuetools.list_entries(["in"])

    def made_meanwhile(source, target):
        raise FileExistsError(errno.EEXIST, "File exists", target)

    monkeypatch.setattr(qfile, "move_file", made_meanwhile)
    with pytest.raises(queuetools.EntryError, match="exists already"):
        queuetools.hold(entry)
    shunt = config.switchboards["shunt"]
    shunted = shunt.enqueue(message_from_string(TEXT), whichq="in")
    (result,) = queuetools.unshunt()
    assert not result.ok and "exists already" in result.text
    assert os.path.exists(os.path.join(board.queue_directory, filebase + ".pck"))
    assert shunted in os.listdir(shunt.queue_directory)[0]


def test_age_counts_from_the_first_queuing(mlist, capsys):
    # Queued again into retry a moment ago, first queued two days ago.
    two_days_ago = time.time() - 2 * DAY
    config.switchboards["retry"].enqueue(
        message(), listid=mlist.list_id, mq_first_queued=two_days_ago
    )
    status, out, _ = run(capsys, "list")
    assert out.split()[2] == "2d"
    [entry] = queuetools.list_entries()
    assert queuetools.age(entry) == "2d"
    # And --older-than selects by that age too.
    status, out, _ = run(capsys, "delete", "--older-than", "1d")
    assert (status, out) == (0, f"deleted {entry.filebase} (retry)\n")

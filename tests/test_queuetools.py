"""The operator's queue tools, called directly: each refusal says why."""

import os

import pytest

from mailqueue import config, message_from_string, queuetools
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

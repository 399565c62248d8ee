"""The flushes the crash test (tests/crash) showed a power loss needs.

A new directory is flushed into its parent; a move between directories is
a link, a flush of the new directory, the removal and a flush of the old
one; a spare is written over only once the removal of its old name is on
disk.  These tests pin the order of those calls and every way they fail.
"""

import errno
import os

import pytest

from mailqueue import Switchboard, message_from_string, qfile, queuetools
from mailqueue.configuration import config

TEXT = "From: aperson@example.com\nTo: test@example.com\nSubject: moved\n\nHello.\n"


@pytest.fixture
def calls(monkeypatch):
    """The directory flushes, links, unlinks and writes made, in order."""
    made = []
    flush = qfile.fsync_directory

    def fsync_directory(directory):
        made.append(("flush", directory))
        flush(directory)

    def recording(name, real):
        def call(*arguments, **keywords):
            made.append((name, arguments[0]))
            return real(*arguments, **keywords)

        return call

    monkeypatch.setattr(qfile, "fsync_directory", fsync_directory)
    for name in ("link", "unlink", "rename", "pwritev", "mkdir"):
        monkeypatch.setattr(qfile.os, name, recording(name, getattr(os, name)))
    return made


def test_new_directories_are_flushed_into_their_parents(tmp_path, calls):
    target = tmp_path / "a" / "b"
    qfile.make_directories(str(target))
    assert target.is_dir()
    flushes = [where for call, where in calls if call == "flush"]
    assert flushes == [str(tmp_path), str(tmp_path / "a")]
    calls.clear()
    qfile.make_directories(str(target))  # there already: nothing to flush
    assert [call for call, _ in calls if call == "flush"] == []


def test_a_directory_made_meanwhile_by_another_process_is_fine(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b"
    real = os.mkdir

    def racing(path, mode=0o777):
        if path == str(target) and not target.exists() and (tmp_path / "a").exists():
            real(path, mode)  # another process, just before this one
        return real(path, mode)

    monkeypatch.setattr(qfile.os, "mkdir", racing)
    qfile.make_directories(str(target))
    assert target.is_dir()


def test_no_directory_at_all_is_an_error():
    with pytest.raises(FileNotFoundError):
        qfile.make_directories("")


def test_a_move_links_flushes_then_removes(tmp_path, calls):
    (tmp_path / "from").mkdir()
    (tmp_path / "to").mkdir()
    source, target = tmp_path / "from" / "x", tmp_path / "to" / "x"
    source.write_bytes(b"entry")
    calls.clear()
    qfile.move_file(str(source), str(target))
    assert target.read_bytes() == b"entry" and not source.exists()
    assert calls == [
        ("link", str(source)),
        ("flush", str(tmp_path / "to")),
        ("unlink", str(source)),
        ("flush", str(tmp_path / "from")),
    ]


def test_a_move_replaces_nothing_and_needs_its_source(tmp_path):
    source, target = tmp_path / "x", tmp_path / "y"
    source.write_bytes(b"entry")
    target.write_bytes(b"another")
    with pytest.raises(FileExistsError):
        qfile.move_file(str(source), str(target))
    assert source.read_bytes() == b"entry" and target.read_bytes() == b"another"
    with pytest.raises(FileNotFoundError):
        qfile.move_file(str(tmp_path / "gone"), str(tmp_path / "z"))


def test_a_source_taken_meanwhile_is_the_other_process_s(tmp_path, monkeypatch):
    source, target = tmp_path / "x.pck", tmp_path / "held.pck"
    source.write_bytes(b"entry")
    real = os.unlink

    def taken_first(path, *arguments, **keywords):
        if path == str(source):
            os.rename(source, tmp_path / "x.bak")  # a runner took it
        return real(path, *arguments, **keywords)

    monkeypatch.setattr(qfile.os, "unlink", taken_first)
    with pytest.raises(FileNotFoundError):
        qfile.move_file(str(source), str(target))
    assert sorted(os.listdir(tmp_path)) == ["x.bak"]


@pytest.mark.parametrize("number", [errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP])
def test_without_hard_links_a_move_is_a_rename(tmp_path, monkeypatch, calls, number):
    def no_links(*arguments, **keywords):
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr(qfile.os, "link", no_links)
    (tmp_path / "to").mkdir()
    source, target = tmp_path / "x", tmp_path / "to" / "x"
    source.write_bytes(b"entry")
    calls.clear()
    qfile.move_file(str(source), str(target))
    assert target.read_bytes() == b"entry" and not source.exists()
    assert calls == [
        ("rename", str(source)),
        ("flush", str(tmp_path / "to")),
        ("flush", str(tmp_path)),
    ]
    # And still replaces nothing.
    source.write_bytes(b"another")
    with pytest.raises(FileExistsError):
        qfile.move_file(str(source), str(target))
    assert target.read_bytes() == b"entry"


def test_another_failure_of_the_link_is_raised(tmp_path, monkeypatch):
    def elsewhere(*arguments, **keywords):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(qfile.os, "link", elsewhere)
    source = tmp_path / "x"
    source.write_bytes(b"entry")
    with pytest.raises(OSError, match="cross-device"):
        qfile.move_file(str(source), str(tmp_path / "y"))
    assert source.exists()


@pytest.fixture
def queue(tmp_path):
    return Switchboard("test", str(tmp_path / "test"))


def cycle(queue):
    filebase = queue.enqueue(message_from_string(TEXT))
    queue.dequeue(filebase)
    queue.finish(filebase)


def test_a_spare_is_written_over_only_after_the_queue_directory_is_flushed(
    queue, calls
):
    cycle(queue)
    calls.clear()
    queue.enqueue(message_from_string(TEXT))
    names = [call for call, _ in calls]
    # Taken (renamed in), the directory flushed, and only then written.
    assert names[:3] == ["rename", "flush", "pwritev"], calls
    assert calls[1] == ("flush", queue.queue_directory)


def test_a_spare_whose_flush_fails_is_given_up_for_a_new_file(queue, monkeypatch):
    cycle(queue)
    flush = qfile.fsync_directory
    failed = []

    def failing_once(directory):
        if not failed:
            failed.append(directory)
            raise OSError(errno.EIO, "Input/output error")
        flush(directory)

    monkeypatch.setattr(qfile, "fsync_directory", failing_once)
    filebase = queue.enqueue(message_from_string(TEXT))
    assert failed == [queue.queue_directory]
    assert os.listdir(queue.queue_directory) == [filebase + ".pck"]
    assert os.listdir(queue._spares.directory) == []


def test_a_preserved_entry_is_moved_into_bad_by_a_link(queue, calls):
    filebase = queue.enqueue(message_from_string(TEXT))
    queue.dequeue(filebase)
    calls.clear()
    queue.finish(filebase, preserve=True)
    bad = queue.bad_directory
    assert [call for call, _ in calls if call in ("link", "rename")] == ["link"]
    assert os.listdir(bad) == [filebase + ".psv"]


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


# The rename that takes an entry, never over a .bak --------------------------


def test_rename_no_replace_moves_and_never_replaces(tmp_path):
    source, target = tmp_path / "a", tmp_path / "b"
    source.write_text("entry")
    target.write_text("stray")
    with pytest.raises(FileExistsError):
        qfile.rename_no_replace(str(source), str(target))
    assert target.read_text() == "stray"
    with pytest.raises(FileNotFoundError):
        qfile.rename_no_replace(str(tmp_path / "gone"), str(tmp_path / "c"))
    target.unlink()
    qfile.rename_no_replace(str(source), str(target))
    assert target.read_text() == "entry" and not source.exists()


@pytest.mark.parametrize("system", ["no renameat2", "ENOSYS", "EINVAL"])
def test_without_renameat2_the_target_is_looked_for_first(
    tmp_path, monkeypatch, system
):
    if system == "no renameat2":
        monkeypatch.setattr(qfile, "_renameat2", lambda: None)
    else:
        number = getattr(errno, system)
        monkeypatch.setattr(
            qfile, "_renameat2", lambda: (lambda *a: -1, lambda: number)
        )
    source, target = tmp_path / "a", tmp_path / "b"
    source.write_text("entry")
    target.write_text("stray")
    with pytest.raises(FileExistsError):
        qfile.rename_no_replace(str(source), str(target))
    target.unlink()
    qfile.rename_no_replace(str(source), str(target))
    assert target.read_text() == "entry" and not source.exists()


def test_a_c_library_without_renameat2_is_done_without(monkeypatch):
    def no_library(*arguments, **keywords):
        raise OSError("no C library")

    monkeypatch.setattr(qfile.ctypes, "CDLL", no_library)
    assert qfile._renameat2.__wrapped__() is None

"""Queue files (mailqueue.qfile): reading, writing, moving, the entry format.

Reads that a file's growth or a short write cannot fool; a new directory
flushed into its parent; a move between directories that links, flushes,
removes and flushes (the order the crash test, tools/crash, showed a power
loss needs), and every way those calls fail; what parse_entry refuses.
"""

import errno
import math
import os
import pickle

import pytest
from helpers import listing, message, once

from mailqueue import (
    QueueFileError,
    config,
    entry_format,
    message_from_string,
    qfile,
)
from mailqueue.entry_format import parse_entry

TEXT = "From: aperson@example.com\nTo: test@example.com\nSubject: fault\n\nHello.\n"


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


def entry_parts():
    return (
        entry_format.dump_checked(message_from_string(TEXT), "message"),
        entry_format.dump_checked(
            {"version": entry_format.QFILE_SCHEMA_VERSION}, "metadata"
        ),
    )


def growing(monkeypatch, path, extra):
    """Make *path* grow by *extra* bytes just after the reader looks at its size."""
    inode = os.stat(path).st_ino
    real_fstat = os.fstat

    def append(fd):
        found = real_fstat(fd)
        with open(path, "ab") as stream:
            stream.write(extra)
        return found

    def reading(fd):
        return real_fstat(fd).st_ino == inode

    monkeypatch.setattr(qfile.os, "fstat", once(real_fstat, reading, append))


def test_a_stray_name_is_left_out_even_with_nobody_to_tell(tmp_path):
    a, b = "a" * 40, "B" * 40
    for name in [f"5.0+{a}.pck", "junk.pck", f"0004.50+{b}.pck", "notes.txt"]:
        (tmp_path / name).touch()
    # Without on_stray the stray is dropped silently, and the entries are
    # still in queue order (the non-canonical name parsed by value).
    assert qfile.list_queue(str(tmp_path)) == [f"0004.50+{b}", f"5.0+{a}"]


def test_a_short_write_is_finished_by_further_writes(tmp_path, monkeypatch):
    parts = entry_parts()
    whole = b"".join(parts)
    real_pwrite = os.pwrite

    def short_pwritev(fd, buffers, offset):
        return real_pwrite(fd, b"".join(buffers)[:7], offset)

    def short_pwrite(fd, data, offset):
        return real_pwrite(fd, bytes(data[:64]), offset)

    monkeypatch.setattr(qfile.os, "pwritev", short_pwritev)
    monkeypatch.setattr(qfile.os, "pwrite", short_pwrite)
    path = str(tmp_path / "1.0+entry.pck")
    qfile.write_file(path, parts)
    monkeypatch.undo()
    assert qfile.read_file(path) == whole
    assert entry_format.load_entry(path)[0]["subject"] == "fault"
    assert listing(tmp_path) == ["1.0+entry.pck"]


@pytest.mark.parametrize(
    "name, code",
    [("entry.pck/inside", errno.ENOTDIR), ("x" * 300, errno.ENAMETOOLONG)],
)
def test_a_path_the_system_cannot_open_is_the_systems_error(tmp_path, name, code):
    (tmp_path / "entry.pck").write_bytes(b"".join(entry_parts()))
    # Not a verdict on the file (not a QueueFileError): the system's own error.
    with pytest.raises(OSError) as raised:
        qfile.read_file(str(tmp_path / name))
    assert raised.value.errno == code


def test_a_file_that_grows_while_it_is_read_is_read_to_its_end(tmp_path, monkeypatch):
    path = str(tmp_path / "entry.pck")
    with open(path, "wb") as stream:
        stream.write(b"x" * 100)
    growing(monkeypatch, path, b"y" * 50)
    assert qfile.read_file(path, max_size=1000) == b"x" * 100 + b"y" * 50


def test_a_file_that_grows_past_the_limit_while_it_is_read_is_refused(
    tmp_path, monkeypatch
):
    path = str(tmp_path / "entry.pck")
    with open(path, "wb") as stream:
        stream.write(b"x" * 100)
    growing(monkeypatch, path, b"y" * 50)
    with pytest.raises(QueueFileError) as raised:
        qfile.read_file(path, max_size=120)
    assert str(raised.value) == "entry.pck: more than the limit of 120 bytes"


def test_a_pickle_the_checker_misjudged_is_refused_all_the_same(monkeypatch):
    # Defence in depth: the checker and the unpickler are two layers, and the
    # reader does not take the checker's word for what was built.
    data = pickle.dumps(5, 4) + pickle.dumps({"version": 3}, 4)
    real_check = entry_format.safepickle.check

    def misjudged(data, position=0):
        made, end = real_check(data, position)
        return ("message" if position == 0 else made), end

    monkeypatch.setattr(entry_format.safepickle, "check", misjudged)
    with pytest.raises(QueueFileError) as raised:
        entry_format.parse_entry(data, "x.pck")
    assert str(raised.value) == "x.pck: not a message and its metadata"


def test_what_read_file_and_parse_entry_refuse(var_queue, tmp_path):
    assert qfile.parse_filebase("not-a-file-base") is None
    with pytest.raises(QueueFileError, match="not a regular file"):
        qfile.read_file(str(tmp_path))
    big = tmp_path / "big.pck"
    big.write_bytes(b"x" * 100)
    with pytest.raises(QueueFileError, match="100 bytes, more than the limit of 10"):
        qfile.read_file(str(big), max_size=10)
    msg = pickle.dumps(message_from_string(TEXT))
    for data, refusal in (
        (msg + pickle.dumps({}) + b"more", "4 bytes follow the metadata"),
        (pickle.dumps(1) + pickle.dumps({}), "the message is not a message"),
        (msg + pickle.dumps({"_parsemsg": "yes"}), "_parsemsg is not a flag"),
    ):
        with pytest.raises(QueueFileError, match=refusal):
            entry_format.parse_entry(data, "entry.pck")


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        ({"mq_attempts": "2"}, "mq_attempts is not a count: '2'"),
        ({"mq_attempts": -1}, "mq_attempts is not a count: -1"),
        ({"mq_attempts": True}, "mq_attempts is not a count: True"),
        ({"mq_first_queued": "yesterday"}, "mq_first_queued is not a time"),
        ({"mq_first_queued": math.nan}, "mq_first_queued is not a time"),
        ({"mq_reason": b"bytes"}, "mq_reason is not text"),
    ],
)
def test_history_keys_of_another_type_are_refused(var_dir, values, refusal):
    data = pickle.dumps(message()) + pickle.dumps({"version": 3} | values)
    with pytest.raises(QueueFileError, match=refusal):
        parse_entry(data, "entry.pck")
    with pytest.raises(TypeError, match=f"cannot queue this metadata: {refusal}"):
        config.switchboards["in"].enqueue(message(), values)
    assert config.switchboards["in"].files == []

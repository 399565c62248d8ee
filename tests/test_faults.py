"""Queue files and switchboards when the system fails them, or a race is lost.

Each fault is made to happen on cue: the system call that would fail (or
that another process would win a race against) is replaced for one call,
and the test checks what a user or an operator would see.
"""

import errno
import fcntl
import logging
import os
import pickle
import socket

import pytest

import mailqueue.ownership as ownership_module
import mailqueue.switchboard as switchboard_module
from mailqueue import (
    QueueFileError,
    Switchboard,
    entry_format,
    message_from_string,
    qfile,
    spares,
)
from mailqueue.ownership import slice_owner

TEXT = "From: aperson@example.com\nTo: test@example.com\nSubject: fault\n\nHello.\n"
ERRORS = "mailqueue.error"


@pytest.fixture
def queue(tmp_path):
    return Switchboard("test", str(tmp_path / "test"))


def listing(directory):
    return sorted(os.listdir(directory))


def open_descriptors():
    return len(os.listdir("/proc/self/fd"))


def payload(queue, filebase):
    path = os.path.join(queue.queue_directory, filebase + ".pck")
    return entry_format.load_entry(path)[0].get_payload()


def entry_parts():
    return (
        entry_format.dump_checked(message_from_string(TEXT), "message"),
        entry_format.dump_checked(
            {"version": entry_format.QFILE_SCHEMA_VERSION}, "metadata"
        ),
    )


def once(real, when, fault):
    """Wrap the system call *real*: the first call *when* accepts gets *fault*.

    *fault* is called with the same arguments and its result returned.
    """
    done = []

    def call(*args):
        if not done and when(*args):
            done.append(args)
            return fault(*args)
        return real(*args)

    call.done = done
    return call


# Listing a queue ------------------------------------------------------------


def test_a_stray_name_is_left_out_even_with_nobody_to_tell(tmp_path):
    a, b = "a" * 40, "B" * 40
    for name in [f"5.0+{a}.pck", "junk.pck", f"0004.50+{b}.pck", "notes.txt"]:
        (tmp_path / name).touch()
    # Without on_stray the stray is dropped silently, and the entries are
    # still in queue order (the non-canonical name parsed by value).
    assert qfile.list_queue(str(tmp_path)) == [f"0004.50+{b}", f"5.0+{a}"]


# Writing an entry -----------------------------------------------------------


def test_an_entry_nested_too_deeply_to_pickle_is_refused(queue):
    nested: list = []
    for _ in range(100_000):  # far past what the pickler can recurse through
        nested = [nested]
    with pytest.raises(TypeError) as raised:
        queue.enqueue(message_from_string(TEXT), deep=nested)
    assert str(raised.value) == (
        "cannot queue this metadata: nested more than 100 levels deep"
    )
    assert listing(queue.queue_directory) == []


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


# Reading an entry -----------------------------------------------------------


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


# Spare files ----------------------------------------------------------------


def finished_spare(queue):
    """Put one finished entry in the pool; return its slot's path."""
    filebase = queue.enqueue(message_from_string(TEXT + "A longer body.\n" * 20))
    queue.dequeue(filebase)
    queue.finish(filebase)
    slot = os.path.join(queue._spares.directory, "0")
    assert listing(queue._spares.directory) == ["0"]
    return slot


def test_where_hard_links_are_refused_a_finished_entry_is_just_removed(
    queue, monkeypatch
):
    def no_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(qfile.os, "link", no_links)
    filebase = queue.enqueue(message_from_string(TEXT))
    queue.dequeue(filebase)
    queue.finish(filebase)
    assert listing(queue.queue_directory) == []
    assert not os.path.exists(queue._spares.directory)


@pytest.mark.parametrize("swap", ["symbolic link", "hard link"])
def test_a_spare_swapped_after_it_was_looked_at_is_never_written_over(
    queue, tmp_path, monkeypatch, swap
):
    # Between looking at a slot and taking it, a hostile process (or a
    # crash of another implementation) puts a link to another file there.
    slot = finished_spare(queue)
    outside = tmp_path / "outside"
    outside.write_text("precious\n")

    def look_then_swap(path):
        found = os.lstat(path)
        os.unlink(path)
        if swap == "symbolic link":
            os.symlink(outside, path)
        else:
            os.link(outside, path)
        return found

    lstat = once(os.lstat, lambda path: path == slot, look_then_swap)
    monkeypatch.setattr(qfile.os, "lstat", lstat)
    before = open_descriptors()
    filebase = queue.enqueue(message_from_string(TEXT))
    monkeypatch.undo()
    assert lstat.done  # the race was run
    assert open_descriptors() == before
    assert outside.read_text() == "precious\n"
    assert os.stat(outside).st_nlink == 1  # its other name went with the slot
    assert payload(queue, filebase) == "Hello.\n"
    assert listing(queue.queue_directory) == [filebase + ".pck"]


def test_a_spare_that_goes_stale_as_it_is_opened_is_given_up(queue, monkeypatch):
    slot = finished_spare(queue)
    spare = os.stat(slot).st_ino

    def stale(fd):
        raise OSError(errno.ESTALE, "Stale file handle")

    real_fstat = os.fstat
    fstat = once(real_fstat, lambda fd: real_fstat(fd).st_ino == spare, stale)
    monkeypatch.setattr(qfile.os, "fstat", fstat)
    before = open_descriptors()
    filebase = queue.enqueue(message_from_string(TEXT))
    monkeypatch.undo()
    assert fstat.done
    assert open_descriptors() == before
    # The spare was dropped, and the entry written to a new file instead.
    assert listing(queue._spares.directory) == []
    assert payload(queue, filebase) == "Hello.\n"
    assert listing(queue.queue_directory) == [filebase + ".pck"]


@pytest.mark.parametrize(
    "content",
    [
        None,  # no mountinfo to read
        "22 1 252:0 / /\n",  # a line cut short
        "22 1 252:0 / / rw,relatime shared:1 ext4 /dev/vda rw\n",  # no "-"
    ],
)
def test_spares_are_off_when_the_mounts_cannot_be_read(tmp_path, content):
    mountinfo = tmp_path / "mountinfo"
    if content is not None:
        mountinfo.write_text(content)
    assert spares.is_local_file_system(str(tmp_path), str(mountinfo)) is False


# Dequeuing ------------------------------------------------------------------


def test_text_too_deeply_nested_to_parse_is_not_a_message(queue):
    # A hostile entry stored as text: multipart inside multipart, deeper than
    # the parser can recurse.
    text = "Subject: nested\n"
    for depth in range(5000):
        text += f'Content-Type: multipart/mixed; boundary="b{depth}"\n\n--b{depth}\n'
    filebase = qfile.make_filebase(b"", "--nolist--")
    path = os.path.join(queue.queue_directory, filebase + ".pck")
    metadata = {"version": entry_format.QFILE_SCHEMA_VERSION, "_parsemsg": True}
    qfile.write_file(path, (pickle.dumps(text, 4), pickle.dumps(metadata, 4)))
    with pytest.raises(QueueFileError) as raised:
        queue.dequeue(filebase)
    assert str(raised.value) == (
        f"{filebase}: the text is not a message (RecursionError)"
    )
    # Left as a .bak, for finish() to preserve.
    assert listing(queue.queue_directory) == [filebase + ".bak"]


def test_sizes_of_entries_never_finished_are_forgotten_past_a_bound(queue, monkeypatch):
    monkeypatch.setattr(switchboard_module, "_SIZES_KEPT", 2)
    filebases = [queue.enqueue(message_from_string(TEXT)) for _ in range(3)]
    for filebase in filebases:
        queue.dequeue(filebase)
    # Dequeuing the third forgot the first two: they are removed when
    # finished, not kept as spares (their size is not known); the third is.
    for filebase in filebases:
        queue.finish(filebase)
    assert listing(queue.queue_directory) == []
    assert listing(queue._spares.directory) == ["0"]


# Stale temporary files ------------------------------------------------------


def temporary(directory, digest, name=None):
    path = os.path.join(directory, name or f"1700000000.5+{digest * 40}.pck.tmp")
    open(path, "wb").close()
    os.utime(path, (1, 1))  # older than any writer takes
    return os.path.basename(path)


def test_only_the_slices_own_temporary_files_are_removed(tmp_path):
    directory = str(tmp_path / "test")
    half = Switchboard("test", directory, slice=0, numslices=2)
    mine = temporary(directory, "0")
    theirs = temporary(directory, "f")
    notes = temporary(directory, "", "notes.tmp")
    assert half.get_temporary_files() == [mine]
    assert half.remove_stale_temporary_files() == 1
    assert listing(directory) == sorted([theirs, notes])


def test_a_temporary_file_removed_by_someone_else_first_is_passed_over(
    queue, monkeypatch, caplog
):
    directory = queue.queue_directory
    names = [temporary(directory, digit) for digit in "123"]
    gone = os.path.join(directory, names[1])

    def removed_first(path):
        os.unlink(path)  # as another process would, just after the listing
        return os.lstat(path)

    monkeypatch.setattr(
        switchboard_module.os,
        "lstat",
        once(os.lstat, lambda path: path == gone, removed_first),
    )
    with caplog.at_level(logging.INFO, logger=ERRORS):
        assert queue.remove_stale_temporary_files() == 2
    assert listing(directory) == []
    assert f"Removed 2 stale temporary file(s) from {queue!r}" in caplog.messages


# Recovering .bak files ------------------------------------------------------


def backups(queue, count):
    filebases = [
        queue.enqueue(message_from_string(TEXT.replace("fault", str(number))))
        for number in range(count)
    ]
    for filebase in filebases:
        queue.dequeue(filebase)
    return filebases


def test_a_backup_gone_before_it_is_recovered_is_passed_over(
    queue, monkeypatch, caplog
):
    first, second = backups(queue, 2)
    real_load = entry_format.load_entry

    def gone_first(path, *arguments):
        os.unlink(path)  # finished by its runner just after the listing
        return real_load(path, *arguments)

    monkeypatch.setattr(
        entry_format,
        "load_entry",
        once(real_load, lambda path, *arguments: first in path, gone_first),
    )
    with caplog.at_level(logging.INFO, logger=ERRORS):
        queue.recover_backup_files()
    assert queue.recovered == 2
    assert listing(queue.queue_directory) == [second + ".pck"]
    assert not os.path.exists(queue.bad_directory)
    assert caplog.messages == []


def test_a_backup_that_cannot_be_written_back_is_preserved_and_recovery_goes_on(
    queue, monkeypatch, caplog
):
    first, second = backups(queue, 2)

    def disk_full(fd, buffers, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(
        qfile.os, "pwritev", once(os.pwritev, lambda *args: True, disk_full)
    )
    with caplog.at_level(logging.INFO, logger=ERRORS):
        queue.recover_backup_files()
    monkeypatch.undo()
    assert caplog.messages == [
        f"Preserving backup {first}: cannot recover it: "
        "[Errno 28] No space left on device"
    ]
    assert listing(queue.bad_directory) == [first + ".psv"]
    assert listing(queue.queue_directory) == [second + ".pck"]
    # The preserved entry is whole, not counted: nothing was half written.
    path = os.path.join(queue.bad_directory, first + ".psv")
    msg, metadata, _ = entry_format.load_entry(path)
    assert msg["subject"] == "0"
    assert "_bak_count" not in metadata


# Who owns a slice -----------------------------------------------------------


def test_an_owner_letting_go_after_its_lock_file_was_replaced_leaves_the_new_owner(
    tmp_path,
):
    directory = str(tmp_path / "test")
    old = Switchboard("test", directory, recover=True)
    os.unlink(old.owner_file)  # by an operator cleaning up, say
    new = Switchboard("test", directory, recover=True)
    assert new.owner  # a new file, so a new lock
    old.release_ownership()
    assert not old.owner
    assert new.owner
    assert Switchboard("test", directory).owned_here
    assert slice_owner(directory) == (socket.gethostname(), os.getpid())


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

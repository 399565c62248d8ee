"""Spare files: finished entries written over by new ones, and never anything else.

The pool is a directory beside the queue directory.  Whatever is put there
(by a crash, another implementation or someone hostile), a writer writes
over nothing but a regular file of its own with one name, never follows a
link, never waits on a FIFO, and leaves no byte of an old entry in a new one.
"""

import errno
import os
import stat

import pytest
from helpers import listing, once

import mailqueue.switchboard as switchboard_module
from mailqueue import (
    Switchboard,
    entry_format,
    message_from_string,
    qfile,
    spares,
)

TEXT = "From: aperson@example.com\nTo: test@example.com\nSubject: spare\n\nHello.\n"


@pytest.fixture
def queue(tmp_path):
    return Switchboard("test", str(tmp_path / "test"))


def cycle(queue, text=TEXT):
    filebase = queue.enqueue(message_from_string(text))
    queue.dequeue(filebase)
    queue.finish(filebase)
    return filebase


def slots(queue):
    return sorted(os.listdir(queue._spares.directory))


def entry(queue, filebase):
    path = os.path.join(queue.queue_directory, filebase + ".pck")
    return entry_format.load_entry(path)[0]


def test_a_finished_entry_becomes_the_next_ones_file(queue):
    cycle(queue, TEXT + "A longer body.\n" * 20)
    assert slots(queue) == ["0"]
    inode = os.stat(os.path.join(queue._spares.directory, "0")).st_ino
    filebase = queue.enqueue(message_from_string(TEXT))
    path = os.path.join(queue.queue_directory, filebase + ".pck")
    assert os.stat(path).st_ino == inode
    assert slots(queue) == []
    # Cut to the new entry's length: nothing of the longer one is left.
    assert entry(queue, filebase).get_payload() == "Hello.\n"
    _, _, message_pickle = entry_format.load_entry(path)
    assert os.path.getsize(path) == len(qfile.read_file(path))
    assert len(message_pickle) < os.path.getsize(path)
    # The queue directory itself holds entries only.
    assert os.listdir(queue.queue_directory) == [filebase + ".pck"]


def test_the_pool_holds_a_few_small_files_and_no_more(queue):
    filebases = [queue.enqueue(message_from_string(TEXT)) for _ in range(12)]
    for filebase in filebases:
        queue.dequeue(filebase)
    for filebase in filebases:
        queue.finish(filebase)
    assert len(slots(queue)) == spares.SparePool.slots
    assert os.listdir(queue.queue_directory) == []
    # An entry larger than a spare may be is removed, not kept.
    big = queue.enqueue(message_from_string(TEXT + "x" * spares.SparePool.max_size))
    queue.dequeue(big)
    for name in slots(queue):
        os.unlink(os.path.join(queue._spares.directory, name))
    queue.finish(big)
    assert slots(queue) == []


def test_an_entry_finished_without_being_dequeued_is_removed_all_the_same(queue):
    filebase = queue.enqueue(message_from_string(TEXT))
    queue.finish(filebase)
    assert os.listdir(queue.queue_directory) == []


def plant(queue, make):
    os.makedirs(queue._spares.directory, exist_ok=True)
    make(os.path.join(queue._spares.directory, "0"))


def test_a_link_in_the_pool_is_never_written_through(queue, tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("precious\n")
    plant(queue, lambda slot: os.symlink(outside, slot))
    filebase = queue.enqueue(message_from_string(TEXT))
    assert outside.read_text() == "precious\n"
    assert entry(queue, filebase).get_payload() == "Hello.\n"


def test_a_file_with_another_name_is_never_written_over(queue, tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("precious\n")
    plant(queue, lambda slot: os.link(outside, slot))
    filebase = queue.enqueue(message_from_string(TEXT))
    assert outside.read_text() == "precious\n"
    assert entry(queue, filebase).get_payload() == "Hello.\n"


def test_a_fifo_or_a_directory_in_the_pool_neither_blocks_nor_breaks(queue):
    plant(queue, os.mkfifo)
    filebase = queue.enqueue(message_from_string(TEXT))
    assert entry(queue, filebase).get_payload() == "Hello.\n"
    plant(queue, lambda slot: os.path.exists(slot) or os.mkdir(slot))
    queue._spares._empty_at = float("-inf")
    filebase = queue.enqueue(message_from_string(TEXT))
    assert entry(queue, filebase).get_payload() == "Hello.\n"
    assert stat.S_ISDIR(os.lstat(os.path.join(queue._spares.directory, "0")).st_mode)


def test_someone_elses_file_is_never_written_over(queue, monkeypatch):
    cycle(queue)
    slot = os.path.join(queue._spares.directory, "0")
    with open(slot, "rb") as spare:  # keeps the file, and its number, taken
        before = spare.read()
        # The spare is this process's own; seen as another user's, it is not one.
        monkeypatch.setattr(qfile.os, "geteuid", lambda: os.stat(slot).st_uid + 1)
        filebase = queue.enqueue(message_from_string(TEXT))
        path = os.path.join(queue.queue_directory, filebase + ".pck")
        assert os.stat(path).st_ino != os.fstat(spare.fileno()).st_ino
        spare.seek(0)
        assert spare.read() == before
    assert entry(queue, filebase).get_payload() == "Hello.\n"


def test_a_spare_that_fails_is_given_up_for_a_new_file(queue, monkeypatch):
    cycle(queue)
    real = os.pwritev
    calls = []

    def stale_once(fd, buffers, offset):
        calls.append(fd)
        if len(calls) == 1:  # the spare: gone stale on a network file system
            raise OSError(116, "Stale file handle")
        return real(fd, buffers, offset)

    monkeypatch.setattr(qfile.os, "pwritev", stale_once)
    filebase = queue.enqueue(message_from_string(TEXT))
    assert len(calls) == 2
    assert entry(queue, filebase).get_payload() == "Hello.\n"
    assert os.listdir(queue.queue_directory) == [filebase + ".pck"]


MOUNTINFO = """\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
40 22 0:35 / /srv/shared rw,relatime shared:20 - fuse.glusterfs 127.0.1.1:/mq rw
41 22 0:36 / /srv/shared/local rw - tmpfs tmpfs rw
42 22 0:37 / /mnt/nfs rw - nfs4 server:/export rw
"""


@pytest.mark.parametrize(
    "directory, local",
    [
        ("/var/lib/mailqueue/queue", True),
        ("/srv/shared/queue", False),  # GlusterFS: spares would be read stale
        ("/srv/shared/local/queue", True),  # the longest mount point decides
        ("/srv/sharedness", True),  # a prefix of the name is not a mount
        ("/mnt/nfs/queue", False),
    ],
)
def test_spares_only_on_a_local_file_system(tmp_path, directory, local):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    assert spares.is_local_file_system(directory, str(mountinfo)) is local


def test_no_spares_where_the_file_system_is_not_local(queue, monkeypatch):
    queue._spares.enabled = False
    cycle(queue)
    assert not os.path.exists(queue._spares.directory)


def test_a_subclass_without_spares_makes_a_new_file_for_every_entry(tmp_path):
    class NoSpares(Switchboard):
        keep_spares = False

    queue = NoSpares("test", str(tmp_path / "test"))
    filebase = cycle(queue)
    assert not os.path.exists(queue._spares.directory)
    assert os.listdir(queue.queue_directory) == []
    # The next entry is a new file, whatever the pool holds.
    os.mkdir(queue._spares.directory)
    spare = os.path.join(queue._spares.directory, "0")
    with open(spare, "w") as stream:
        stream.write("an old entry")
    second = queue.enqueue(message_from_string(TEXT))
    assert second != filebase
    assert os.path.exists(spare)
    written = os.path.join(queue.queue_directory, second + ".pck")
    assert os.stat(written).st_ino != os.stat(spare).st_ino


def open_descriptors():
    return len(os.listdir("/proc/self/fd"))


def payload(queue, filebase):
    path = os.path.join(queue.queue_directory, filebase + ".pck")
    return entry_format.load_entry(path)[0].get_payload()


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

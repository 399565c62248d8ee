"""Spare files: finished entries written over by new ones, and never anything else.

The pool is a directory beside the queue directory.  Whatever is put there
(by a crash, another implementation or someone hostile), a writer writes
over nothing but a regular file of its own with one name, never follows a
link, never waits on a FIFO, and leaves no byte of an old entry in a new one.
"""

import os
import stat

import pytest

from mailqueue import Switchboard, entry_format, message_from_string, qfile, spares

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

"""Queue files: safe loading, refusing what cannot be read back, durable writes."""

import email.message
import errno
import fcntl
import os
import pickle
import sys
import types

import pytest

from mailqueue import (
    Message,
    QueueFileError,
    Switchboard,
    config,
    entry_format,
    message_from_string,
    qfile,
)
from mailqueue.ownership import slice_owner

TEXT = "From: aperson@example.com\nTo: test@example.com\nSubject: hi\n\nHello.\n"


@pytest.fixture
def queue(var_dir):
    return Switchboard("test", os.path.join(config.QUEUE_DIR, "test"))


def write_entry(queue, payload, filebase="1700000000.0+" + "a" * 40):
    with open(os.path.join(queue.queue_directory, filebase + ".pck"), "wb") as entry:
        entry.write(payload)
    return filebase


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_is_read(queue, protocol):
    msg = message_from_string(TEXT)
    metadata = {"version": 3, "data": b"\x00\xff", "tags": {"a"}, "n": 1.5}
    filebase = write_entry(
        queue, pickle.dumps(msg, protocol) + pickle.dumps(metadata, protocol)
    )
    got, msgdata = queue.dequeue(filebase)
    assert isinstance(got, Message)
    assert got.as_string() == msg.as_string()
    assert msgdata == metadata


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "not a queue entry"),
        (b"garbage bytes, not a pickle", "not a queue entry"),
        (pickle.dumps(message_from_string(TEXT))[:-20], "not a queue entry"),
        (pickle.dumps(message_from_string(TEXT)), "not a queue entry"),  # no metadata
        (pickle.dumps(os.system) + pickle.dumps({}), "refused to load posix.system"),
        (pickle.dumps(message_from_string(TEXT)) + pickle.dumps([]), "not a dict"),
        (pickle.dumps(42) + pickle.dumps({}), "not a message"),
    ],
    ids=["empty", "garbage", "truncated", "no-metadata", "code", "list", "number"],
)
def test_what_cannot_be_read_is_refused_and_stays_for_preserving(
    queue, payload, reason
):
    filebase = write_entry(queue, payload)
    with pytest.raises(QueueFileError, match=reason):
        queue.dequeue(filebase)
    assert queue.get_files(".bak") == [filebase]


def test_the_metadata_pickle_cannot_run_code_either(queue, capsys):
    class Exploit:
        def __reduce__(self):
            return (print, ("this code ran",))

    payload = pickle.dumps(message_from_string(TEXT)) + pickle.dumps({"x": Exploit()})
    filebase = write_entry(queue, payload)
    with pytest.raises(QueueFileError, match=r"builtins\.print"):
        queue.dequeue(filebase)
    assert "this code ran" not in capsys.readouterr().out


def test_recovery_preserves_an_unreadable_backup_without_running_it(queue, capsys):
    class Exploit:
        def __reduce__(self):
            return (print, ("this code ran",))

    filebase = "1700000000.0+" + "b" * 40
    path = os.path.join(queue.queue_directory, filebase + ".bak")
    with open(path, "wb") as entry:
        entry.write(pickle.dumps(Exploit()) + pickle.dumps({}))
    queue.recover_backup_files()
    assert "this code ran" not in capsys.readouterr().out
    assert config.switchboards["bad"].get_files(".psv") == [filebase]


def test_gnu_mailman_messages_are_read_without_importing_mailman(queue):
    # Pickle a message whose class claims to be Mailman's, as Mailman writes it.
    module = types.ModuleType("mailman.email.message")
    fake = type("Message", (email.message.Message,), {"__module__": module.__name__})
    module.Message = fake
    names = ["mailman", "mailman.email", "mailman.email.message"]
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update(dict.fromkeys(names, module))
    try:
        msg = email.message_from_string(TEXT, _class=fake)
        payload = pickle.dumps(msg, 4) + pickle.dumps({"version": 3}, 4)
    finally:
        for name, value in saved.items():
            if value is None:
                del sys.modules[name]
            else:
                sys.modules[name] = value
    assert b"mailman.email.message" in payload
    filebase = write_entry(queue, payload)
    got, _ = queue.dequeue(filebase)
    assert type(got) is Message
    assert got.sender == "aperson@example.com"
    assert "mailman" not in sys.modules


def test_enqueue_refuses_what_could_not_be_read_back(queue):
    modern = email.message.EmailMessage()
    modern["From"] = "aperson@example.com"
    modern.set_content("Hello.")
    with pytest.raises(TypeError, match=r"load email\.message\.EmailMessage"):
        queue.enqueue(modern)
    with pytest.raises(TypeError, match="not a message"):
        queue.enqueue("From: someone\n\nnot parsed\n")
    with pytest.raises(TypeError, match="cannot queue this metadata"):
        queue.enqueue(message_from_string(TEXT), handler=lambda: None)
    assert os.listdir(queue.queue_directory) == []


@pytest.mark.parametrize("spare", [False, True])
def test_enqueue_writes_fsyncs_renames_then_fsyncs_the_directory(
    queue, monkeypatch, spare
):
    if spare:
        # A finished entry becomes the spare file the next one is written in.
        filebase = queue.enqueue(message_from_string(TEXT + "a longer body\n" * 9))
        queue.dequeue(filebase)
        queue.finish(filebase)
        assert len(os.listdir(queue._spares.directory)) == 1
    calls = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        kind = (
            "directory" if os.path.isdir(os.readlink(f"/proc/self/fd/{fd}")) else "file"
        )
        calls.append(f"fsync {kind}")
        real_fsync(fd)

    def rename(source, target):
        if os.path.lexists(source):  # a try at an empty spare slot is no step
            where = os.path.basename(os.path.dirname(source))
            kind = "spare" if where.endswith(".spare") else os.path.splitext(source)[1]
            calls.append(f"rename {kind} to {os.path.splitext(target)[1]}")
        real_rename(source, target)

    monkeypatch.setattr(qfile.os, "fsync", fsync)
    monkeypatch.setattr(qfile.os, "rename", rename)
    filebase = queue.enqueue(message_from_string(TEXT))
    steps = ["fsync file", "rename .tmp to .pck", "fsync directory"]
    # A spare's old name (the finished .bak) is flushed away before the
    # spare is written over.
    taken = ["rename spare to .tmp", "fsync directory"]
    assert calls == ([*taken, *steps] if spare else steps)
    monkeypatch.undo()
    # Nothing of the longer entry the spare held is left in the new one.
    path = os.path.join(queue.queue_directory, filebase + ".pck")
    msg, _, _ = entry_format.load_entry(path)
    assert msg.get_payload() == message_from_string(TEXT).get_payload()
    if spare:
        assert os.listdir(queue._spares.directory) == []


@pytest.mark.parametrize(
    "call, code",
    [
        ("open", errno.EACCES),  # a directory we may not write to
        ("open", errno.EROFS),  # a read-only file system
        ("pwritev", errno.ENOSPC),  # a full disk
        ("fsync", errno.EIO),
        ("rename", errno.ENOSPC),
    ],
)
def test_a_failed_enqueue_names_the_queue_and_leaves_nothing(
    queue, monkeypatch, call, code
):
    real = getattr(os, call)

    def fail_on_the_temporary_file(target, *args, **kws):
        if call in ("open", "rename") and not str(target).endswith(".tmp"):
            return real(target, *args, **kws)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(qfile.os, call, fail_on_the_temporary_file)
    with pytest.raises(OSError) as caught:
        queue.enqueue(message_from_string(TEXT))
    monkeypatch.undo()
    assert caught.value.errno == code
    assert f"cannot enqueue into the 'test' queue at {queue.queue_directory}" in str(
        caught.value
    )
    assert os.listdir(queue.queue_directory) == []


def test_the_configuration_tells_its_switchboards_where_bad_is(var_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere-bad"
    config.push("bad-elsewhere", f"[runner.bad]\npath: {elsewhere}\n")
    try:
        queue = config.switchboards["in"]
        filebase = queue.enqueue(message_from_string("Subject: x\n\nx\n"))
        queue.dequeue(filebase)
        queue.finish(filebase, preserve=True)
        assert os.listdir(elsewhere) == [filebase + ".psv"]
        sliced = config.switchboards.make("in", 0, 2)
        assert sliced.bad_directory == str(elsewhere)
    finally:
        config.pop("bad-elsewhere")


def test_a_switchboard_made_by_hand_preserves_beside_its_queue(tmp_path):
    # No configuration involved: bad is the directory beside the queue's.
    queue = Switchboard("mine", str(tmp_path / "queues" / "mine"))
    filebase = queue.enqueue(message_from_string("Subject: x\n\nx\n"))
    queue.finish(filebase, preserve=True)
    assert os.listdir(tmp_path / "queues" / "bad") == [filebase + ".psv"]


def test_ownership_and_preference_asked_twice(queue):
    assert queue.take_ownership() and queue.take_ownership()
    queue.release_ownership()
    queue.release_ownership()  # not the owner now: nothing to let go of
    assert not queue.owner
    assert queue.claim_preference() and queue.claim_preference()
    assert not queue.preferred_elsewhere()  # it is this switchboard's own


@pytest.mark.parametrize(
    ("written", "owner"),
    [
        ("{host} notapid", None),  # not a pid: names nobody
        ("{host} 999999999", None),  # a process of this host that is gone
        ("elsewhere 123", ("elsewhere", 123)),  # another host's: believed
    ],
)
def test_what_a_held_owner_file_says(queue, written, owner):
    # A lock held through another open file of this process is held as
    # another process's would be.
    with open(queue.owner_file, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(written.format(host=queue.host))
        held.flush()
        assert slice_owner(queue.queue_directory, host=queue.host) == owner


def test_metadata_keys_must_be_text(queue):
    with pytest.raises(TypeError, match="a key that is not text: 1"):
        queue.enqueue(message_from_string(TEXT), {1: "one"})


@pytest.mark.parametrize(
    ("stored", "metadata", "refusal"),
    [
        ("message", {"_parsemsg": True}, "_parsemsg set, but not text"),
        ("text", {}, "text stored without _parsemsg"),
    ],
)
def test_text_and_parsemsg_go_together(queue, stored, metadata, refusal):
    msg = message_from_string(TEXT) if stored == "message" else TEXT
    filebase = write_entry(queue, pickle.dumps(msg) + pickle.dumps(metadata))
    with pytest.raises(QueueFileError, match=refusal):
        queue.dequeue(filebase)


def test_what_read_file_and_parse_entry_refuse(queue, tmp_path):
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


def test_a_message_that_cannot_be_written_as_text_is_not_queued(queue):
    msg = message_from_string(TEXT)
    msg.set_payload(12345)  # not text: the generator cannot write it out
    with pytest.raises(TypeError, match="cannot queue this message as text: TypeError"):
        queue.enqueue(msg, _plaintext=True)
    assert queue.files == []

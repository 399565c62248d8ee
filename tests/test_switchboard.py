"""The switchboard (mailqueue.switchboard): enqueue, dequeue, finish, listing.

What it writes and refuses to write, what it reads back and refuses, queue
order however a name is written, slices, its owner and preference locks,
recovery of backups and temporary files; and every fault that can meet it,
each made to happen on cue (the system call replaced for one call).  Two
processes at once are in tests/processes/test_switchboard.py.
"""

import email._policybase
import email.message
import errno
import fcntl
import logging
import os
import pickle
import socket
import sys
import types
from fractions import Fraction
from pathlib import Path

import pytest
from entries import (  # tools/hostile, on sys.path (conftest.py)
    APPEND,
    BUILD,
    EMPTY_DICT,
    EMPTY_LIST,
    NONE,
    POISON_SLOTS,
    POP,
    SETITEM,
    TUPLE1,
    before_message,
    glob,
    good_entry,
    good_metadata,
    metadata,
    pickled,
    text,
    with_metadata,
)
from helpers import FILEBASE, LATER, in_child, listing, once, place
from hypothesis import example, given, settings
from hypothesis import strategies as st

import mailqueue.switchboard as switchboard_module
from mailqueue import (
    Message,
    QueueFileError,
    Switchboard,
    config,
    create_list,
    entry_format,
    message_from_string,
    qfile,
    switchboard,
)
from mailqueue.ownership import slice_owner

TOP = 1 << 160


def exact(filebase):
    """The queue order, from first principles: the time as a fraction, the digest."""
    when, digest = filebase.split("+")
    return Fraction(when), int(digest, 16)


@st.composite
def names(draw, canonical=False, trailing=False, upper=False):
    """A file base with a time of 1 to 12 integer digits, written any allowed way.

    A *canonical* one is written as repr(float) and hexdigest() write: no
    leading zeros, a fraction without trailing zeros (with them too, if
    *trailing*), a lower-case digest (or not, if *upper*).  Times are
    often drawn from a few, so that equal times written alike or not meet.
    """
    few = st.sampled_from([0, 7, 999_999_999, 1_700_000_000])
    whole = str(draw(st.one_of(few, st.integers(min_value=0, max_value=10**12 - 1))))
    fraction = draw(
        st.one_of(
            st.sampled_from(["5", "25", "0"]),
            st.from_regex(r"[0-9]{0,19}[1-9]|0", fullmatch=True),
        )
    )
    digest = f"{draw(st.integers(min_value=0, max_value=TOP - 1)):040x}"
    if trailing:
        fraction += "0" * draw(st.integers(min_value=0, max_value=2))
    if upper and draw(st.booleans()):
        digest = digest.upper()
    if not canonical:
        whole = "0" * draw(st.integers(min_value=0, max_value=2)) + whole
        if draw(st.booleans()):
            fraction += "0" * draw(st.integers(min_value=0, max_value=3))
        if draw(st.booleans()):
            digest = digest.upper()
        if draw(st.booleans()):
            return f"{whole}+{digest}"
    return f"{whole}.{fraction}+{digest}"


strays = st.sampled_from(
    [
        "garbage",
        "1700000000.5+xyz",
        "1700000000.5+" + "g" * 40,
        "+" + "a" * 40,
        "1e9+" + "a" * 40,
    ]
)


def make(directory, bases, extension=".pck"):
    for base in bases:
        open(os.path.join(directory, base + extension), "wb").close()


# Times as this implementation writes them, of 9 to 11 integer digits.
canonical = st.builds(
    lambda when, digest: f"{when!r}+{digest:040x}",
    st.floats(min_value=1e8, max_value=1e11),
    st.integers(min_value=0, max_value=TOP - 1),
)
every_form = st.one_of(
    st.lists(st.one_of(names(), canonical), max_size=40, unique=True),
    st.lists(names(canonical=True), max_size=40, unique=True),
    st.lists(names(canonical=True, trailing=True), max_size=40, unique=True),
    st.lists(names(canonical=True, upper=True), max_size=40, unique=True),
    st.lists(canonical, max_size=40, unique=True),
)


@settings(max_examples=300, deadline=None)
@given(
    bases=every_form,
    junk=st.lists(strays, max_size=3, unique=True),
    numslices=st.sampled_from([1, 2, 4, 32]),
)
# One time and one digest, written two ways: a tie the listing may break either way.
@example(
    bases=["999999999.0+" + "0" * 40, "999999999.00+" + "0" * 40], junk=[], numslices=1
)
def test_listing_is_in_exact_time_order_then_digest(
    tmp_path_factory, bases, junk, numslices
):
    directory = str(tmp_path_factory.mktemp("queue"))
    make(directory, bases + junk)
    make(directory, ["1700000000.5+" + "b" * 40], ".bak")  # another extension
    wanted = sorted(bases, key=exact)
    assert in_order(Switchboard("q", directory).files, wanted)
    # The slices together are the queue, each entry in exactly one.
    slices = [Switchboard("q", directory, n, numslices).files for n in range(numslices)]
    assert in_order(sorted((b for part in slices for b in part), key=exact), wanted)
    for number, part in enumerate(slices):
        assert in_order(
            part, [b for b in wanted if exact(b)[1] * numslices // TOP == number]
        )


def in_order(listed, wanted):
    """*listed* holds the names of *wanted*, in its order.

    Two names of one time and one digest written two ways (``5.0`` and
    ``5.00``) are one place in the queue: between them no order is defined.
    """
    return sorted(listed) == sorted(wanted) and [exact(b) for b in listed] == [
        exact(b) for b in wanted
    ]


@settings(max_examples=40, deadline=None)
@given(bases=st.lists(canonical, min_size=1, max_size=60, unique=True))
def test_canonical_names_in_chunks_are_listed_as_parsed_names_would_be(
    tmp_path_factory, bases
):
    directory = str(tmp_path_factory.mktemp("queue"))
    make(directory, bases)
    # Small chunks: the string comparison works chunk by chunk.
    chunk, qfile._CHUNK = qfile._CHUNK, 7
    try:
        assert Switchboard("q", directory).files == sorted(bases, key=exact)
    finally:
        qfile._CHUNK = chunk


def test_the_same_time_written_two_ways_is_one_time(tmp_path):
    bases = [
        "1700000000.50+" + "b" * 40,
        "1700000000.5+" + "a" * 40,
        "1700000000+" + "c" * 40,
        "999999999.9+" + "d" * 40,
        "1700000000.1000000002+" + "e" * 40,
        "1700000000.1000000001+" + "f" * 40,
    ]
    make(str(tmp_path), bases)
    assert Switchboard("q", str(tmp_path)).files == [
        "999999999.9+" + "d" * 40,
        "1700000000+" + "c" * 40,
        # One float, two times: the exact value decides, not the digest.
        "1700000000.1000000001+" + "f" * 40,
        "1700000000.1000000002+" + "e" * 40,
        "1700000000.5+" + "a" * 40,
        "1700000000.50+" + "b" * 40,
    ]


def test_a_name_with_a_line_break_is_not_taken_for_two(tmp_path):
    first, second = "1700000000.5+" + "a" * 40, "1700000001.5+" + "b" * 40
    # One file whose name, split at its line break, would be two entries.
    make(str(tmp_path), [f"{first}.pck\n{second}"])
    make(str(tmp_path), [first])
    assert Switchboard("q", str(tmp_path)).files == [first]


def test_digests_compare_as_numbers_whatever_their_case(tmp_path):
    lower, upper = "1700000000.5+" + "a" * 40, "1700000000.5+" + "B" * 40
    make(str(tmp_path), [upper, lower])
    # "B" sorts before "a" as text, but 0xbbb... is the larger number.
    assert Switchboard("q", str(tmp_path)).files == [lower, upper]


TEXT = "From: aperson@example.com\nTo: test@example.com\nSubject: fault\n\nHello.\n"


ERRORS = "mailqueue.error"


@pytest.fixture
def queue(tmp_path):
    return Switchboard("test", str(tmp_path / "test"))


def temporary(directory, digest, name=None):
    path = os.path.join(directory, name or f"1700000000.5+{digest * 40}.pck.tmp")
    open(path, "wb").close()
    os.utime(path, (1, 1))  # older than any writer takes
    return os.path.basename(path)


def backups(queue, count):
    filebases = [
        queue.enqueue(message_from_string(TEXT.replace("fault", str(number))))
        for number in range(count)
    ]
    for filebase in filebases:
        queue.dequeue(filebase)
    return filebases


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


@pytest.fixture
def in_queue(var_dir):
    """The site's in queue, with a list to post to."""
    create_list("test@example.com")
    return config.switchboards["in"]


def deep_metadata():
    return with_metadata(
        metadata((text("deep"), EMPTY_LIST * 1000 + APPEND * 999)),
    )


def test_a_file_cannot_set_attributes_of_a_class_for_later_messages(in_queue):
    policy = email._policybase.Compat32
    compat32 = glob("email._policybase", "Compat32")
    place(in_queue, before_message(compat32, POISON_SLOTS, BUILD, POP))
    try:
        with pytest.raises(QueueFileError, match="sets the state of Compat32"):
            in_queue.dequeue(FILEBASE)
        assert "linesep" not in vars(policy)
        later = message_from_string("From: a@example.com\n\nHi.\n")
        assert "Bcc" not in later.as_string()
    finally:
        if "linesep" in vars(policy):  # the old code's damage, undone
            del policy.linesep


def test_a_tuple_key_nested_a_million_deep_is_refused_not_a_crash(in_queue, var_dir):
    deep = pickled(EMPTY_DICT, NONE, TUPLE1 * 1_000_000, NONE, SETITEM)
    path = place(in_queue, with_metadata(deep))
    bak = place(in_queue, with_metadata(deep), LATER, ".bak")
    child = in_child(
        var_dir,
        f"""
        from mailqueue import QueueFileError, Switchboard
        from mailqueue.cli import main
        main(['qfile', {path!r}])
        queue = config.switchboards['in']
        try:
            queue.dequeue({FILEBASE!r})
        except QueueFileError as error:
            print('dequeue:', error)
        Switchboard('in', queue.queue_directory, recover=True)
        print('recovered')
        """,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert "nests more than 100 levels deep" in child.stderr
    assert "dequeue: " in child.stdout and "nests more than 100" in child.stdout
    assert "recovered" in child.stdout
    assert not os.path.exists(bak)
    bad = config.switchboards["bad"].get_files(".psv")
    assert sorted(bad) == [FILEBASE, LATER]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda path: path.write_bytes(deep_metadata()), id="deep"),
        pytest.param(
            lambda path: path.write_bytes(good_entry(_bak_count="x")), id="count-text"
        ),
        pytest.param(
            lambda path: path.write_bytes(good_entry(_bak_count=None)), id="count-none"
        ),
        pytest.param(
            lambda path: path.write_bytes(good_entry(_bak_count=[])), id="count-list"
        ),
        pytest.param(
            lambda path: path.write_bytes(
                with_metadata(metadata((text("f"), glob("_codecs", "encode"))))
            ),
            id="function",
        ),
        pytest.param(lambda path: path.mkdir(), id="directory"),
        pytest.param(lambda path: path.symlink_to(path.name), id="symlink-loop"),
    ],
)
def test_recovery_preserves_what_it_cannot_recover_and_goes_on(in_queue, make):
    good = in_queue.enqueue(message_from_string("Subject: good\n\nHi.\n"))
    in_queue.dequeue(good)
    make(Path(in_queue.queue_directory, FILEBASE + ".bak"))
    recovered = Switchboard("in", in_queue.queue_directory, recover=True)
    assert recovered.files == [good]
    assert config.switchboards["bad"].get_files(".psv") == [FILEBASE]


def test_recovery_preserves_an_unreadable_backup(in_queue, var_dir):
    # Root reads anything: the recovery runs as nobody.
    good = in_queue.enqueue(message_from_string("Subject: good\n\nHi.\n"))
    # Left as a .bak by a process that crashed (a live one would hold it).
    pck = os.path.join(in_queue.queue_directory, good)
    os.rename(pck + ".pck", pck + ".bak")
    unreadable = Path(place(in_queue, good_entry(), extension=".bak"))
    unreadable.chmod(0)
    for directory, _, files in os.walk(var_dir):
        os.chmod(directory, 0o777)
        for name in files:
            path = Path(directory, name)
            if path != unreadable:
                path.chmod(0o666)
    os.chmod(var_dir, 0o777)
    child = in_child(
        var_dir,
        """
        import os
        os.setgid(65534)
        os.setuid(65534)
        from mailqueue import Switchboard
        directory = config.switchboards['in'].queue_directory
        print(Switchboard('in', directory, recover=True).files)
        """,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip() == repr([good])
    assert config.switchboards["bad"].get_files(".psv") == [FILEBASE]


def test_an_entry_over_the_size_limit_is_refused_when_written_and_read(var_dir):
    config.push("small", "[queues]\nmax_entry_size: 2KiB\n")
    try:
        in_queue = config.switchboards["in"]
        big = message_from_string("Subject: big\n\n" + "x" * 4096)
        with pytest.raises(ValueError, match="limit is 2,048"):
            in_queue.enqueue(big)
        assert in_queue.files == []
        place(in_queue, pickle.dumps(big, 4) + good_metadata())
        with pytest.raises(QueueFileError, match="more than the limit of 2,048"):
            in_queue.dequeue(FILEBASE)
    finally:
        config.pop("small")


def test_preserving_never_replaces_a_preserved_entry(in_queue):
    bad = config.switchboards["bad"]
    earlier = Path(bad.queue_directory, FILEBASE + ".psv")
    earlier.write_bytes(b"preserved before")
    place(in_queue, b"not a pickle", extension=".bak")
    in_queue.finish(FILEBASE, preserve=True)
    preserved = bad.get_files(".psv")
    assert len(preserved) == 2 and FILEBASE in preserved
    assert earlier.read_bytes() == b"preserved before"
    (other,) = set(preserved) - {FILEBASE}
    assert other.startswith("1600000000.0+")


def test_dequeue_never_replaces_a_backup(in_queue):
    place(in_queue, good_entry(which="pck"))
    place(in_queue, good_entry(which="bak"), extension=".bak")
    with pytest.raises(QueueFileError, match=r"its \.bak exists already"):
        in_queue.dequeue(FILEBASE)
    # Preserving sets the stray .bak aside; then the entry is dequeued.
    in_queue.finish(FILEBASE, preserve=True)
    _, msgdata = in_queue.dequeue(FILEBASE)
    assert msgdata["which"] == "pck"
    psv = Path(config.switchboards["bad"].queue_directory, FILEBASE + ".psv")
    assert b"bak" in psv.read_bytes()


def test_recovery_never_replaces_a_queued_entry(in_queue):
    place(in_queue, good_entry(which="pck"))
    place(in_queue, good_entry(which="bak"), extension=".bak")
    Switchboard("in", in_queue.queue_directory, recover=True)
    _, msgdata = in_queue.dequeue(FILEBASE)
    assert msgdata["which"] == "pck"
    assert config.switchboards["bad"].get_files(".psv") == [FILEBASE]


def test_a_preserved_entry_is_moved_into_bad_by_a_link(queue, calls):
    filebase = queue.enqueue(message_from_string(TEXT))
    queue.dequeue(filebase)
    calls.clear()
    queue.finish(filebase, preserve=True)
    bad = queue.bad_directory
    assert [call for call, _ in calls if call in ("link", "rename")] == ["link"]
    assert os.listdir(bad) == [filebase + ".psv"]


def write_entry(queue, payload, filebase="1700000000.0+" + "a" * 40):
    with open(os.path.join(queue.queue_directory, filebase + ".pck"), "wb") as entry:
        entry.write(payload)
    return filebase


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_pickle_protocol_is_read(var_queue, protocol):
    msg = message_from_string(TEXT)
    metadata = {"version": 3, "data": b"\x00\xff", "tags": {"a"}, "n": 1.5}
    filebase = write_entry(
        var_queue, pickle.dumps(msg, protocol) + pickle.dumps(metadata, protocol)
    )
    got, msgdata = var_queue.dequeue(filebase)
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
    var_queue, payload, reason
):
    filebase = write_entry(var_queue, payload)
    with pytest.raises(QueueFileError, match=reason):
        var_queue.dequeue(filebase)
    assert var_queue.get_files(".bak") == [filebase]


def test_the_metadata_pickle_cannot_run_code_either(var_queue, capsys):
    class Exploit:
        def __reduce__(self):
            return (print, ("this code ran",))

    payload = pickle.dumps(message_from_string(TEXT)) + pickle.dumps({"x": Exploit()})
    filebase = write_entry(var_queue, payload)
    with pytest.raises(QueueFileError, match=r"builtins\.print"):
        var_queue.dequeue(filebase)
    assert "this code ran" not in capsys.readouterr().out


def test_recovery_preserves_an_unreadable_backup_without_running_it(var_queue, capsys):
    class Exploit:
        def __reduce__(self):
            return (print, ("this code ran",))

    filebase = "1700000000.0+" + "b" * 40
    path = os.path.join(var_queue.queue_directory, filebase + ".bak")
    with open(path, "wb") as entry:
        entry.write(pickle.dumps(Exploit()) + pickle.dumps({}))
    var_queue.recover_backup_files()
    assert "this code ran" not in capsys.readouterr().out
    assert config.switchboards["bad"].get_files(".psv") == [filebase]


def test_gnu_mailman_messages_are_read_without_importing_mailman(var_queue):
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
    filebase = write_entry(var_queue, payload)
    got, _ = var_queue.dequeue(filebase)
    assert type(got) is Message
    assert got.sender == "aperson@example.com"
    assert "mailman" not in sys.modules


def test_enqueue_refuses_what_could_not_be_read_back(var_queue):
    modern = email.message.EmailMessage()
    modern["From"] = "aperson@example.com"
    modern.set_content("Hello.")
    with pytest.raises(TypeError, match=r"load email\.message\.EmailMessage"):
        var_queue.enqueue(modern)
    with pytest.raises(TypeError, match="not a message"):
        var_queue.enqueue("From: someone\n\nnot parsed\n")
    with pytest.raises(TypeError, match="cannot queue this metadata"):
        var_queue.enqueue(message_from_string(TEXT), handler=lambda: None)
    assert os.listdir(var_queue.queue_directory) == []


@pytest.mark.parametrize("spare", [False, True])
def test_enqueue_writes_fsyncs_renames_then_fsyncs_the_directory(
    var_queue, monkeypatch, spare
):
    if spare:
        # A finished entry becomes the spare file the next one is written in.
        filebase = var_queue.enqueue(message_from_string(TEXT + "a longer body\n" * 9))
        var_queue.dequeue(filebase)
        var_queue.finish(filebase)
        assert len(os.listdir(var_queue._spares.directory)) == 1
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
    filebase = var_queue.enqueue(message_from_string(TEXT))
    steps = ["fsync file", "rename .tmp to .pck", "fsync directory"]
    # A spare's old name (the finished .bak) is flushed away before the
    # spare is written over.
    taken = ["rename spare to .tmp", "fsync directory"]
    assert calls == ([*taken, *steps] if spare else steps)
    monkeypatch.undo()
    # Nothing of the longer entry the spare held is left in the new one.
    path = os.path.join(var_queue.queue_directory, filebase + ".pck")
    msg, _, _ = entry_format.load_entry(path)
    assert msg.get_payload() == message_from_string(TEXT).get_payload()
    if spare:
        assert os.listdir(var_queue._spares.directory) == []


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
    var_queue, monkeypatch, call, code
):
    real = getattr(os, call)

    def fail_on_the_temporary_file(target, *args, **kws):
        if call in ("open", "rename") and not str(target).endswith(".tmp"):
            return real(target, *args, **kws)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(qfile.os, call, fail_on_the_temporary_file)
    with pytest.raises(OSError) as caught:
        var_queue.enqueue(message_from_string(TEXT))
    monkeypatch.undo()
    assert caught.value.errno == code
    assert (
        f"cannot enqueue into the 'test' queue at {var_queue.queue_directory}"
        in str(caught.value)
    )
    assert os.listdir(var_queue.queue_directory) == []


def test_a_switchboard_made_by_hand_preserves_beside_its_queue(tmp_path):
    # No configuration involved: bad is the directory beside the queue's.
    var_queue = Switchboard("mine", str(tmp_path / "queues" / "mine"))
    filebase = var_queue.enqueue(message_from_string("Subject: x\n\nx\n"))
    var_queue.finish(filebase, preserve=True)
    assert os.listdir(tmp_path / "queues" / "bad") == [filebase + ".psv"]


def test_ownership_and_preference_asked_twice(var_queue):
    assert var_queue.take_ownership() and var_queue.take_ownership()
    var_queue.release_ownership()
    var_queue.release_ownership()  # not the owner now: nothing to let go of
    assert not var_queue.owner
    assert var_queue.claim_preference() and var_queue.claim_preference()
    assert not var_queue.preferred_elsewhere()  # it is this switchboard's own


@pytest.mark.parametrize(
    ("written", "owner"),
    [
        ("{host} notapid", None),  # not a pid: names nobody
        ("{host} 999999999", None),  # a process of this host that is gone
        ("elsewhere 123", ("elsewhere", 123)),  # another host's: believed
    ],
)
def test_what_a_held_owner_file_says(var_queue, written, owner):
    # A lock held through another open file of this process is held as
    # another process's would be.
    with open(var_queue.owner_file, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(written.format(host=var_queue.host))
        held.flush()
        assert slice_owner(var_queue.queue_directory, host=var_queue.host) == owner


def test_metadata_keys_must_be_text(var_queue):
    with pytest.raises(TypeError, match="a key that is not text: 1"):
        var_queue.enqueue(message_from_string(TEXT), {1: "one"})


@pytest.mark.parametrize(
    ("stored", "metadata", "refusal"),
    [
        ("message", {"_parsemsg": True}, "_parsemsg set, but not text"),
        ("text", {}, "text stored without _parsemsg"),
    ],
)
def test_text_and_parsemsg_go_together(var_queue, stored, metadata, refusal):
    msg = message_from_string(TEXT) if stored == "message" else TEXT
    filebase = write_entry(var_queue, pickle.dumps(msg) + pickle.dumps(metadata))
    with pytest.raises(QueueFileError, match=refusal):
        var_queue.dequeue(filebase)


def test_a_message_that_cannot_be_written_as_text_is_not_queued(var_queue):
    msg = message_from_string(TEXT)
    msg.set_payload(12345)  # not text: the generator cannot write it out
    with pytest.raises(TypeError, match="cannot queue this message as text: TypeError"):
        var_queue.enqueue(msg, _plaintext=True)
    assert var_queue.files == []


def boundaries(numslices):
    """The digests on and just below each boundary between slices, and the ends."""
    width = TOP // numslices
    points = {0, TOP - 1}
    for number in range(1, numslices):
        points |= {number * width - 1, number * width}
    return points


numslices = st.integers(min_value=0, max_value=6).map(lambda power: 1 << power)


digests = st.integers(min_value=0, max_value=TOP - 1)


@settings(max_examples=60, deadline=None)
@given(numslices=numslices, extra=st.lists(digests, max_size=20, unique=True))
def test_every_digest_is_listed_by_exactly_one_slice(
    tmp_path_factory, numslices, extra
):
    directory = str(tmp_path_factory.mktemp("queue"))
    wanted = boundaries(numslices) | set(extra)
    for when, digest in enumerate(sorted(wanted), start=1):
        name = f"{when}.0+{digest:040x}.pck"
        open(os.path.join(directory, name), "wb").close()
    seen = {}
    for number in range(numslices):
        part = Switchboard("q", directory, number, numslices)
        for filebase in part.files:
            digest = int(filebase.split("+")[1], 16)
            assert digest not in seen, (
                f"{digest:040x} in slices {seen[digest]} and {number}"
            )
            seen[digest] = number
            # And it is the slice that exact integer arithmetic gives.
            assert number * TOP // numslices <= digest < (number + 1) * TOP // numslices
    assert set(seen) == wanted


def _one_entry(tmp_path):
    queue = Switchboard("test", str(tmp_path / "test"))
    filebase = queue.enqueue(message_from_string("Subject: one\n\nbody\n"))
    return queue, filebase, os.path.join(queue.queue_directory, filebase)


def test_an_entry_locked_by_another_dequeuer_is_taken(tmp_path):
    queue, filebase, path = _one_entry(tmp_path)
    # Another open file description: as another process's lock would be.
    fd = os.open(path + ".pck", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(FileNotFoundError, match="taken by another process"):
            queue.dequeue(filebase)
        assert queue.files == [filebase]
    finally:
        os.close(fd)
    queue.dequeue(filebase)
    queue.finish(filebase)
    assert os.listdir(queue.queue_directory) == []


def test_a_failed_rename_lets_go_of_the_lock(tmp_path, monkeypatch):
    queue, filebase, path = _one_entry(tmp_path)
    real_rename = qfile.rename_no_replace

    def failing(source, target):
        if source.endswith(".pck"):
            raise PermissionError(13, "Permission denied", source)
        return real_rename(source, target)

    monkeypatch.setattr(qfile, "rename_no_replace", failing)
    with pytest.raises(PermissionError):
        queue.dequeue(filebase)
    monkeypatch.undo()
    # Nothing holds the file: another process's lock succeeds at once.
    fd = os.open(path + ".pck", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)


def test_without_locks_a_dequeue_still_takes_its_entry(tmp_path, monkeypatch):
    queue, filebase, _ = _one_entry(tmp_path)

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    msg, _ = queue.dequeue(filebase)
    assert msg["subject"] == "one"
    queue.finish(filebase)
    assert os.listdir(queue.queue_directory) == []


def test_entries_never_finished_are_let_go_past_the_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(switchboard, "_SIZES_KEPT", 2)
    queue = Switchboard("test", str(tmp_path / "test"))
    taken = []
    for number in range(3):
        filebase = queue.enqueue(message_from_string(f"Subject: {number}\n\n.\n"))
        queue.dequeue(filebase)
        taken.append(filebase)
    # The first two were let go when the third was taken; it is held.
    assert list(switchboard._held) == [
        os.path.join(queue.queue_directory, taken[2] + ".bak")
    ]
    for filebase in taken:
        queue.finish(filebase)
    assert switchboard._held == {}

"""Each way a hostile queue file or name once did harm, one test each.

Where the old code crashed, hung or ran out of memory, the case runs in a
child process with a time limit and an address-space limit, so that the
test fails (rather than taking the test run down) if the defect returns.
tools/hostile/ runs these and thousands more through every path at once.
"""

import email._policybase
import os
import pickle
import resource
import sqlite3
import subprocess
import sys
import textwrap
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
    call,
    glob,
    good_entry,
    good_metadata,
    integer,
    laughs,
    metadata,
    pickled,
    text,
    with_metadata,
)

from mailqueue import (
    QueueFileError,
    Switchboard,
    config,
    create_list,
    message_from_string,
)
from mailqueue.cli import main
from mailqueue.runners import OutgoingRunner

FILEBASE = "1600000000.0+" + "7" * 40
LATER = "1600000001.0+" + "8" * 40


@pytest.fixture
def queue(var_dir):
    create_list("test@example.com")
    return config.switchboards["in"]


def place(queue, payload, filebase=FILEBASE, extension=".pck"):
    path = os.path.join(queue.queue_directory, filebase + extension)
    with open(path, "wb") as stream:
        stream.write(payload)
    return path


def in_child(var_dir, code, timeout=60, memory=1 << 30):
    """Run *code* in a child with the var directory set; return it finished."""

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    prelude = (
        "from mailqueue import config\n"
        f"config.push('test', '[paths]\\nvar_dir: {var_dir}\\n')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
        check=False,
    )


# Poisoning -------------------------------------------------------------------


def test_a_file_cannot_set_attributes_of_a_class_for_later_messages(queue):
    policy = email._policybase.Compat32
    compat32 = glob("email._policybase", "Compat32")
    place(queue, before_message(compat32, POISON_SLOTS, BUILD, POP))
    try:
        with pytest.raises(QueueFileError, match="sets the state of Compat32"):
            queue.dequeue(FILEBASE)
        assert "linesep" not in vars(policy)
        later = message_from_string("From: a@example.com\n\nHi.\n")
        assert "Bcc" not in later.as_string()
    finally:
        if "linesep" in vars(policy):  # the old code's damage, undone
            del policy.linesep


# Crashes -----------------------------------------------------------------------


def test_a_tuple_key_nested_a_million_deep_is_refused_not_a_crash(queue, var_dir):
    deep = pickled(EMPTY_DICT, NONE, TUPLE1 * 1_000_000, NONE, SETITEM)
    path = place(queue, with_metadata(deep))
    bak = place(queue, with_metadata(deep), LATER, ".bak")
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


# Recovery that raised ----------------------------------------------------------


def deep_metadata():
    return with_metadata(
        metadata((text("deep"), EMPTY_LIST * 1000 + APPEND * 999)),
    )


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
def test_recovery_preserves_what_it_cannot_recover_and_goes_on(queue, make):
    good = queue.enqueue(message_from_string("Subject: good\n\nHi.\n"))
    queue.dequeue(good)
    make(Path(queue.queue_directory, FILEBASE + ".bak"))
    recovered = Switchboard("in", queue.queue_directory, recover=True)
    assert recovered.files == [good]
    assert config.switchboards["bad"].get_files(".psv") == [FILEBASE]


def test_recovery_preserves_an_unreadable_backup(queue, var_dir):
    # Root reads anything: the recovery runs as nobody.
    good = queue.enqueue(message_from_string("Subject: good\n\nHi.\n"))
    # Left as a .bak by a process that crashed (a live one would hold it).
    pck = os.path.join(queue.queue_directory, good)
    os.rename(pck + ".pck", pck + ".bak")
    unreadable = Path(place(queue, good_entry(), extension=".bak"))
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


# Memory and time bombs ------------------------------------------------------------


def test_qfile_refuses_a_bytearray_bomb_without_allocating_it(queue, var_dir):
    bomb = metadata((text("b"), call(glob("builtins", "bytearray"), integer(2**32))))
    path = place(queue, with_metadata(bomb))
    assert len(Path(path).read_bytes()) < 1000  # a small file
    child = in_child(
        var_dir, f"from mailqueue.cli import main; main(['qfile', {path!r}])"
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert "calls bytearray with int" in child.stderr
    assert "MemoryError" not in child.stderr


def test_a_runner_refuses_a_list_id_of_shared_references(queue, var_dir):
    place(queue, with_metadata(metadata((text("listid"), laughs(10)))))
    assert len(Path(queue.queue_directory, FILEBASE + ".pck").read_bytes()) < 2000
    child = in_child(
        var_dir,
        """
        import logging, resource
        logging.basicConfig()
        from mailqueue.runners import IncomingRunner
        IncomingRunner('in')._one_iteration()
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
        """,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert "would expand to more than" in child.stderr
    assert "MemoryError" not in child.stderr
    assert int(child.stdout) < 200  # MiB at the most, of a 1 GiB limit
    assert config.switchboards["bad"].get_files(".psv") == [FILEBASE]


def test_a_runner_is_not_blocked_by_a_symlink_to_a_fifo(queue, var_dir, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    Path(queue.queue_directory, FILEBASE + ".pck").symlink_to(tmp_path / "fifo")
    later = queue.enqueue(
        message_from_string("Subject: later\n\nHi.\n"), listid="test.example.com"
    )
    child = in_child(
        var_dir,
        "from mailqueue.runners import IncomingRunner\n"
        "print(IncomingRunner('in')._one_iteration())\n",
        timeout=30,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert config.switchboards["bad"].get_files(".psv") == [FILEBASE]
    assert later not in queue.files  # it went on to out
    assert len(config.switchboards["out"].files) == 1


def test_an_entry_over_the_size_limit_is_refused_when_written_and_read(var_dir):
    config.push("small", "[queues]\nmax_entry_size: 2KiB\n")
    try:
        queue = config.switchboards["in"]
        big = message_from_string("Subject: big\n\n" + "x" * 4096)
        with pytest.raises(ValueError, match="limit is 2,048"):
            queue.enqueue(big)
        assert queue.files == []
        place(queue, pickle.dumps(big, 4) + good_metadata())
        with pytest.raises(QueueFileError, match="more than the limit of 2,048"):
            queue.dequeue(FILEBASE)
    finally:
        config.pop("small")


# Escapes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../../../../srv/x@example.com",
        "x/y@example.com",
        "..@example.com",
        "x@../example.com",
        "x@example..com",
        ".x@example.com",
    ],
)
def test_a_list_name_that_could_leave_a_directory_is_refused(var_dir, capsys, name):
    assert main(["lists", "create", name]) == 1
    assert f"not a list posting address (name@domain): {name!r}" in (
        capsys.readouterr().err
    )
    assert list(config.lists) == []


def test_out_never_delivers_outside_the_var_dir(var_dir, tmp_path):
    create_list("test@example.com")
    config.lists.close()
    # A database written by other means holds a list name that is a path.
    escaped = f"../../../..{tmp_path}/escaped@example.com"
    with sqlite3.connect(Path(config.DATA_DIR, "lists.sqlite3")) as database:
        database.execute("UPDATE lists SET fqdn_listname = ?", (escaped,))
    # Looked up by that name, it is no list at all ...
    assert config.lists.get(escaped) is None
    # ... but its list-id still finds it, with the path for a name.
    assert config.lists.get_by_list_id("test.example.com").fqdn_listname == escaped
    config.switchboards["out"].enqueue(
        message_from_string("Subject: out\n\nHi.\n"), listid="test.example.com"
    )
    OutgoingRunner("out")._one_iteration()
    assert not (tmp_path / "escaped.example.com").exists()
    assert len(config.switchboards["shunt"].files) == 1


# Collisions -------------------------------------------------------------------------


def test_preserving_never_replaces_a_preserved_entry(queue):
    bad = config.switchboards["bad"]
    earlier = Path(bad.queue_directory, FILEBASE + ".psv")
    earlier.write_bytes(b"preserved before")
    place(queue, b"not a pickle", extension=".bak")
    queue.finish(FILEBASE, preserve=True)
    preserved = bad.get_files(".psv")
    assert len(preserved) == 2 and FILEBASE in preserved
    assert earlier.read_bytes() == b"preserved before"
    (other,) = set(preserved) - {FILEBASE}
    assert other.startswith("1600000000.0+")


def test_dequeue_never_replaces_a_backup(queue):
    place(queue, good_entry(which="pck"))
    place(queue, good_entry(which="bak"), extension=".bak")
    with pytest.raises(QueueFileError, match=r"its \.bak exists already"):
        queue.dequeue(FILEBASE)
    # Preserving sets the stray .bak aside; then the entry is dequeued.
    queue.finish(FILEBASE, preserve=True)
    _, msgdata = queue.dequeue(FILEBASE)
    assert msgdata["which"] == "pck"
    psv = Path(config.switchboards["bad"].queue_directory, FILEBASE + ".psv")
    assert b"bak" in psv.read_bytes()


def test_recovery_never_replaces_a_queued_entry(queue):
    place(queue, good_entry(which="pck"))
    place(queue, good_entry(which="bak"), extension=".bak")
    Switchboard("in", queue.queue_directory, recover=True)
    _, msgdata = queue.dequeue(FILEBASE)
    assert msgdata["which"] == "pck"
    assert config.switchboards["bad"].get_files(".psv") == [FILEBASE]


# Tracebacks --------------------------------------------------------------------------


def test_qfile_on_metadata_with_a_key_that_is_not_text_is_one_line(queue, capsys):
    path = place(queue, with_metadata(pickle.dumps({1: "x", "a": 2}, 4)))
    assert main(["qfile", path]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a dict with string keys" in err


def test_unshunt_carries_on_past_entries_it_cannot_move(queue, capsys):
    shunt = config.switchboards["shunt"]
    msg = message_from_string("Subject: shunted\n\nHi.\n")
    place(shunt, b"not a pickle", FILEBASE)
    place(shunt, good_entry(whichq=[]), LATER)
    good = shunt.enqueue(msg, listid="test.example.com", whichq="in")
    assert main(["unshunt"]) == 1
    out, err = capsys.readouterr()
    assert f"moved {good} to in as " in out
    assert f"{FILEBASE}.bak: not a queue entry" in err
    assert f"{LATER} names no queue to go back to (whichq [])" in err
    assert len(queue.files) == 1
    assert config.switchboards["bad"].get_files(".psv") == [FILEBASE]
    assert len(shunt.files) == 1  # the one with no queue to go back to

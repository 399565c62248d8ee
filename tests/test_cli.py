"""The mailqueue command (mailqueue.cli), called in this process.

Every command's mistakes get one clear line, checked at the door before
anything is done; what list, qfile, queues and status show, status from
what a master left on disk (its lock and master.json).  The command as a
child process is in tests/processes/test_cli.py.
"""

import errno
import json
import os
import pickle
import sys
from pathlib import Path

import pytest
from entries import (  # tools/hostile, on sys.path (conftest.py)
    call,
    glob,
    good_entry,
    integer,
    metadata,
    text,
    with_metadata,
)
from helpers import (
    FILEBASE,
    LATER,
    TICKER,
    in_child,
    master_lock,
    message,
    place,
    queued,
    run,
)

from mailqueue import (
    cli,
    config,
    create_list,
    message_from_string,
    queuetools,
)
from mailqueue.cli import main
from mailqueue.configuration import ConfigurationError
from mailqueue.master import Master

COMMANDS = [
    "start",
    "stop",
    "status",
    "restart",
    "reload",
    "runner",
    "inject",
    "qfile",
    "unshunt",
    "queues",
    "metrics",
    "service-files",
    "lists",
]


@pytest.fixture
def message_file(tmp_path):
    path = tmp_path / "hello.eml"
    path.write_text("From: aperson@example.com\nSubject: hi\n\nHello.\n")
    return str(path)


@pytest.mark.parametrize(
    "command",
    [[], *([name] for name in COMMANDS), ["lists", "create"], ["lists", "delete"]],
)
def test_every_command_has_help(capsys, command):
    with pytest.raises(SystemExit) as exit:
        main([*command, "--help"])
    assert exit.value.code == 0
    assert "usage: mailqueue" in capsys.readouterr().out


def test_a_wrong_command_line_is_a_usage_error_with_status_2(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["inject", "message.eml"])  # no -l
    assert exit.value.code == 2
    assert "the following arguments are required: -l/--list" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, message",
    [
        (
            ["runner", "nosuch"],
            "no runner is called 'nosuch' (no [runner.nosuch] section)",
        ),
        (["runner", "in:x:y"], "a runner is NAME or NAME:SLICE:COUNT, not 'in:x:y'"),
        (["runner", "in:0:2"], "in has 1 instances, not 2"),
        (["runner", "in:1:1"], "slice 1 of in does not exist (0 to 0)"),
        (["runner", "sliced"], "sliced has 2 instances: name one, as sliced:SLICE:2"),
        (
            ["runner", "noclass"],
            "[runner.noclass] class nosuch.Runner: No module named 'nosuch'",
        ),
        (
            ["runner", "notrunner"],
            "[runner.notrunner] class mailqueue.Switchboard is not a Runner",
        ),
        (
            ["inject", "-l", "nosuch@example.com", "MESSAGE"],
            "no list is called 'nosuch@example.com'",
        ),
        (
            ["inject", "-q", "outbox", "-l", "test@example.com", "MESSAGE"],
            "no queue is called 'outbox' (queues: bad, in, noclass, notrunner, "
            "out, retry, shunt, sliced, virgin)",
        ),
        (
            ["inject", "-l", "test@example.com", "/nonexistent/message.eml"],
            "cannot read /nonexistent/message.eml: No such file or directory",
        ),
        (
            ["inject", "-l", "test@example.com", "EMPTY"],
            "EMPTY is not an RFC 5322 message (no header fields)",
        ),
        (
            ["inject", "-l", "test@example.com", "PROSE"],
            "PROSE is not an RFC 5322 message (no header fields)",
        ),
        (
            ["lists", "create", "not-an-address"],
            "not a list posting address (name@domain): 'not-an-address'",
        ),
        (
            ["lists", "create", "test@example.com"],
            "the list test@example.com exists already",
        ),
        (
            ["lists", "delete", "nosuch@example.com"],
            "no list is called 'nosuch@example.com'",
        ),
        (["stop"], "no master is running on VAR"),
        (["restart"], "no master is running on VAR"),
        (["qfile", "/nonexistent.pck"], "no such file: /nonexistent.pck"),
        (
            ["qfile", "GARBAGE"],
            "garbage.pck: not a queue file (a queue file is a pickle, which begins "
            "with byte 0x80; this one begins b'Subject: not a p')",
        ),
        (
            ["qfile", "EMPTY"],
            "empty.eml: not a queue file (a queue file is a pickle, which begins "
            "with byte 0x80; this one is empty)",
        ),
        (
            ["qfile", "DAMAGED"],
            "damaged.pck: not a queue entry: the pickle is truncated",
        ),
    ],
)
def test_bad_input_is_one_line_and_status_1(
    capsys, mlist, message_file, tmp_path, var_dir, arguments, message
):
    config.push(
        "cli",
        "[runner.sliced]\ninstances: 2\n[runner.noclass]\n"
        "class: nosuch.Runner\n[runner.notrunner]\nclass: mailqueue.Switchboard\n",
    )
    (tmp_path / "empty.eml").write_text("")
    (tmp_path / "prose.eml").write_text("Just a line of prose, no headers.\n")
    (tmp_path / "garbage.pck").write_bytes(b"Subject: not a pickle\n")
    (tmp_path / "damaged.pck").write_bytes(b"\x80\x04\x95")
    files = {
        "MESSAGE": message_file,
        "EMPTY": str(tmp_path / "empty.eml"),
        "PROSE": str(tmp_path / "prose.eml"),
        "GARBAGE": str(tmp_path / "garbage.pck"),
        "DAMAGED": str(tmp_path / "damaged.pck"),
    }
    arguments = [files.get(argument, argument) for argument in arguments]
    for name, path in files.items():
        message = message.replace(name, path)
    message = message.replace("VAR", var_dir)
    status, out, err = run(capsys, *arguments)
    assert status == 1
    assert err.startswith(f"mailqueue: error: {message}")
    assert len(err.splitlines()) == 1
    assert "Traceback" not in out + err


def test_status_without_a_master_says_so_with_status_1(capsys, var_dir):
    assert run(capsys, "status") == (1, f"no master is running on {var_dir}\n", "")


def test_starting_a_second_master_names_the_first(capsys, var_dir):
    first = Master([sys.executable, "-m", "mailqueue"])
    first.lock()
    running = f"a master is already running on {var_dir} (pid {os.getpid()})"
    message = f"mailqueue: error: {running}\n"
    assert run(capsys, "start") == (1, "", message)
    assert run(capsys, "start", "--foreground") == (1, "", message)
    os.close(first._lock_fd)  # let the first master go


def test_a_bad_configuration_is_one_line(capsys, tmp_path, monkeypatch, var_dir):
    assert run(capsys, "-C", str(tmp_path / "missing.cfg"), "queues") == (
        1,
        "",
        f"mailqueue: error: cannot read the configuration {tmp_path}/missing.cfg: "
        "No such file or directory\n",
    )
    bad = tmp_path / "bad.cfg"
    bad.write_text("[runner.in]\ninstances: 3\n")
    monkeypatch.setenv("MAILQUEUE_CONFIG", str(bad))
    assert run(capsys, "queues") == (
        1,
        "",
        f"mailqueue: error: config file {bad}, line 2: "
        "[runner.in] instances must be a power of two, not 3\n",
    )
    bad.write_text("this is not INI\n")
    assert run(capsys, "queues") == (
        1,
        "",
        f"mailqueue: error: config file {bad}, line 1: "
        "not a valid configuration (a line before any [section])\n",
    )


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "[pahts]\nvar_dir: x\n",
            "line 1: unknown section [pahts] (did you mean paths?)",
        ),
        (
            "[paths]\nvar_dri: x\n",
            "line 2: [paths] unknown key 'var_dri' (did you mean var_dir?)",
        ),
        (
            "[runner.in]\nsleep_time: 1s\ninstance: 2\n",
            "line 3: [runner.in] unknown key 'instance' (did you mean instances?)",
        ),
        (
            "[paths]\nvar_dir: $NOSUCH/x\n",
            "line 2: [paths] var_dir uses $NOSUCH, which is not defined",
        ),
        (
            "[paths]\nlog_dir: $VAR_DRI/logs\n",
            "line 2: [paths] log_dir uses $VAR_DRI, which is not defined "
            "(did you mean VAR_DIR?)",
        ),
        (
            "[queues]\nmax_entry_size: 5 furlongs\n",
            "line 2: [queues] max_entry_size must be a size such as 32MiB, 500KB "
            "or 1048576, not '5 furlongs'",
        ),
    ],
    ids=["section", "key", "runner-key", "variable", "near-variable", "value"],
)
def test_a_configuration_mistake_names_file_line_and_key(
    capsys, tmp_path, var_dir, text, message
):
    site = tmp_path / "site.cfg"
    site.write_text(text)
    assert run(capsys, "-C", str(site), "queues") == (
        1,
        "",
        f"mailqueue: error: config file {site}, {message}\n",
    )
    assert not (tmp_path / "$NOSUCH").exists() and not os.path.exists("var")


def test_config_push_raises_a_configuration_error(var_dir):

    with pytest.raises(ConfigurationError, match=r"^configuration 'mine', line 1: "):
        config.push("mine", "[pahts]\nvar_dir: x\n")
    assert "mine" not in config.layers


def test_unshunt_leaves_an_entry_that_names_no_queue(capsys, mlist):
    shunt = config.switchboards["shunt"]
    msg = message_from_string("Subject: lost\n\nHi.\n")
    shunt.enqueue(msg, listid=mlist.list_id, whichq="nosuch")
    good = shunt.enqueue(msg, listid=mlist.list_id, whichq="in")
    status, out, err = run(capsys, "unshunt")
    assert status == 1  # it printed an error
    assert out.startswith(f"moved {good} to in as ")
    assert "names no queue to go back to (whichq 'nosuch'); left in shunt" in err
    assert len(shunt.files) == 1 and len(config.switchboards["in"].files) == 1
    assert run(capsys, "unshunt", "--discard")[0] == 0
    assert shunt.files == []


def test_qfile_json_shows_any_metadata_as_json(capsys, mlist):
    filebase = config.switchboards["in"].enqueue(
        message_from_string("Subject: hi\n\nHi.\n"),
        listid=mlist.list_id,
        tags={"b", "a"},
    )
    path = os.path.join(config.switchboards["in"].queue_directory, filebase + ".pck")
    status, out, _ = run(capsys, "qfile", "--json", path)
    assert status == 0
    [entry] = json.loads(out)
    assert entry["metadata"] == {
        "_parsemsg": False,
        "listid": "test.example.com",
        "tags": ["a", "b"],
        "version": 3,
    }


def test_a_bug_keeps_its_traceback(var_dir, monkeypatch):
    # Only mailqueue's own errors and OSError are the user's to put right,
    # and said in one line; anything else is a bug, and is not hidden.
    def broken(*arguments, **options):
        raise ValueError("a bug")

    monkeypatch.setattr("mailqueue.queuetools.list_entries", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["list"])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["stop", "--timeout", "soon"], "not a positive number of seconds: 'soon'"),
        (["stop", "--timeout", "0"], "not a positive number of seconds: '0'"),
        (["delete", "--older-than", "xm"], "not a duration such as 15m: 'xm'"),
        (["delete", "--older-than", "0s"], "not a duration such as 15m: '0s'"),
    ],
)
def test_a_bad_number_on_the_command_line_is_a_usage_error(capsys, arguments, message):
    with pytest.raises(SystemExit) as exit:
        main(arguments)
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_a_message_whose_header_ends_early_is_named_by_its_line(
    capsys, mlist, tmp_path
):
    # A blank line ends the header: what follows is the body, whatever it is.
    body = tmp_path / "body.eml"
    body.write_text("Subject: hi\n\nnot: a header, but the body\n")
    assert run(capsys, "inject", "-l", "test@example.com", str(body))[0] == 0
    broken = tmp_path / "broken.eml"
    broken.write_text("Subject: hi\nthis is no header field\n\nbody\n")
    status, _, err = run(capsys, "inject", "-l", "test@example.com", str(broken))
    assert (status, err) == (
        1,
        f"mailqueue: error: {broken}, line 2: not a header field: "
        "'this is no header field'\n",
    )


def test_qfile_shows_any_metadata_as_json(capsys, mlist):
    queue = config.switchboards["in"]
    filebase = queue.enqueue(
        message_from_string("Subject: hi\n\nHi.\n"),
        listid=mlist.list_id,
        pair=(1, "two"),
        tags={"b", "a"},
        when=None,
        raw=b"\x00",
    )
    status, out, _ = run(capsys, "qfile", "--json", filebase)
    assert status == 0
    [shown] = json.loads(out)
    assert shown["metadata"]["pair"] == [1, "two"]
    assert shown["metadata"]["tags"] == ["a", "b"]
    assert shown["metadata"]["when"] is None
    assert shown["metadata"]["raw"] == "b'\\x00'"
    # A file base no queue holds is taken as a path, and is not there.
    status, _, err = run(capsys, "qfile", "1700000000.0+" + "f" * 40)
    assert status == 1
    assert err == f"mailqueue: error: no such file: 1700000000.0+{'f' * 40}\n"


def test_odd_bytes_in_a_configuration_or_a_name_are_one_line(capsys, mlist, tmp_path):
    latin = tmp_path / "latin.cfg"
    latin.write_bytes(b"# caf\xe9\n")
    nul = tmp_path / "nul.cfg"
    nul.write_bytes(b"[paths]\nvar_dir: /x\x00y\n")
    for arguments, said in (
        (["-C", str(latin), "list"], f"the configuration {latin} is not UTF-8 text"),
        (["-C", str(nul), "list"], "line 2: [paths] var_dir holds a NUL"),
        # A name from a shell that is not UTF-8 names no list.
        (["lists", "delete", "\udcff@example.com"], "no list is called"),
        (["inject", "-l", "\udcff", "/dev/null"], "no list is called"),
    ):
        status, _, err = run(capsys, *arguments)
        assert status == 1, arguments
        assert err.startswith("mailqueue: error: ") and said in err, err
        assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "number", "line"),
    [
        # A form feed ends no line for the parser; str.splitlines broke this
        # header there and named "b", on the wrong line.
        ("Subject: a\x0cb\nno field\n\nbody\n", 2, "no field"),
        # A line of a form feed alone is no blank line: it once passed for
        # the end of the header, and the message was queued.
        ("Subject: a\n\x0c\nno field\n", 2, "\x0c"),
        # Only a space or a tab makes a continuation line: these, too, were
        # queued with the line taken into the body.
        ("Subject: a\n\x1fno field\n", 2, "\x1fno field"),
        ("Subject: a\n\xa0no field\n", 2, "\xa0no field"),
        # A line of spaces is a continuation, not the blank line (queued too).
        ("Subject: a\n   \nno field\n", 3, "no field"),
        # A bare carriage return ends a line, as for the parser.
        ("Subject: a\rno field\r\rbody\r", 2, "no field"),
        # An mbox From line is taken as the parser takes it.
        (
            "From a@example.com Mon Jan  1 00:00:00 2024\nSubject: a\nno field\n",
            3,
            "no field",
        ),
    ],
    ids=[
        "form feed in a field",
        "form feed line",
        "unit separator",
        "no-break space",
        "line of spaces",
        "carriage returns",
        "mbox From line",
    ],
)
def test_inject_names_the_line_where_the_parser_ended_the_header(
    capsys, var_dir, tmp_path, text, number, line
):
    create_list("test@example.com")
    message = tmp_path / "odd.eml"
    message.write_bytes(text.encode())
    assert run(capsys, "inject", "-l", "test@example.com", str(message)) == (
        1,
        "",
        f"mailqueue: error: {message}, line {number}: not a header field: {line!r}\n",
    )
    assert config.switchboards["in"].files == []


def test_inject_still_takes_odd_characters_in_a_header_and_the_body(
    capsys, var_dir, tmp_path
):
    # Characters that ended a line for str.splitlines, where they are fine.
    create_list("test@example.com")
    message = tmp_path / "fine.eml"
    message.write_bytes(b"Subject: a\x0cb\n continued\x1c\n\n\x0c\nbody\x85\n")
    status, out, _ = run(capsys, "inject", "-l", "test@example.com", str(message))
    assert status == 0 and out.startswith("queued ")
    [filebase] = config.switchboards["in"].files
    msg, _ = config.switchboards["in"].dequeue(filebase)
    assert msg["subject"] == "a\x0cb\n continued\x1c"


def test_status_shows_a_runner_without_a_queue_owned_by_nobody(capsys, var_dir):
    # It has no slice to lock: nobody owns one, and it is never standing by.
    config.push("ticker", TICKER)
    status = {
        "master": 4321,
        "runners": {"ticker:0:1": {"pid": 4322, "state": "running", "restarts": 0}},
    }
    with open(os.path.join(var_dir, "master.json"), "w") as stream:
        json.dump(status, stream)
    with master_lock(4321):
        shown, out, _ = run(capsys, "status")
        assert (
            "  runner ticker:0:1   running     pid 4322     restarts 0   "
            "owner: nobody\n" in out
        )
        _, out, _ = run(capsys, "status", "--json")
    assert shown == 0
    assert json.loads(out)["runners"]["ticker:0:1"] == {
        "pid": 4322,
        "state": "running",
        "restarts": 0,
        "owner": None,
    }


def test_an_entry_whose_headers_cannot_be_read_is_still_listed(capsys, var_dir):
    # Pickled as it was put together: a header entry of three parts.
    msg = message_from_string("From: a@example.com\nSubject: hi\n\nHi.\n")
    msg._headers.append(("X-Odd", "one", "too many"))
    filebase = config.switchboards["in"].enqueue(msg, listid="test.example.com")
    [entry] = queuetools.list_entries()
    assert (entry.filebase, entry.list, entry.sender, entry.subject) == (
        filebase,
        "test.example.com",
        "",
        "(unreadable headers)",
    )
    assert entry.problem == ""
    status, out, _ = run(capsys, "list")
    assert status == 0
    assert "test.example.com  -  (unreadable headers)\n" in out


def test_a_move_the_disk_refuses_is_one_line_and_leaves_the_entry(
    capsys, var_dir, monkeypatch
):
    msg = message_from_string("From: a@example.com\nSubject: hi\n\nHi.\n")
    filebase = config.switchboards["in"].enqueue(msg, listid="test.example.com")
    queued = os.path.join(config.runners["in"].path, filebase + ".pck")
    held = os.path.join(queuetools.hold_directory("in"), filebase + ".pck")

    def failing(source, target, **keywords):
        raise OSError(errno.EIO, os.strerror(errno.EIO), source, None, target)

    # A move between directories begins with a link (then the old name goes).
    monkeypatch.setattr(os, "link", failing)
    status, out, err = run(capsys, "hold", filebase)
    monkeypatch.undo()
    assert (status, out) == (1, "")
    assert err == (
        f"mailqueue: error: [Errno 5] Input/output error: {queued!r} -> {held!r}\n"
    )
    assert os.path.exists(queued) and not os.path.exists(held)
    assert not os.path.exists(os.path.join(config.LOG_DIR, "admin.log"))


@pytest.fixture
def queue(var_dir):
    create_list("test@example.com")
    return config.switchboards["in"]


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


def write_record(**record):
    with open(os.path.join(config.VAR_DIR, "master.json"), "w") as stream:
        json.dump(record, stream)


def test_a_queued_entry_in_bad_is_listed_counted_moved_and_deleted(
    capsys, var_dir, tmp_path
):
    create_list("test@example.com")
    message = tmp_path / "hello.eml"
    message.write_text("From: a@example.com\nSubject: to bad\n\nHi\n")
    status, out, _ = run(
        capsys, "inject", "-q", "bad", "-l", "test@example.com", str(message)
    )
    assert status == 0
    injected = out.split()[1]
    moved = queued(subject="moved")
    assert run(capsys, "requeue", "--to", "bad", moved) == (
        0,
        f"requeued {moved} (in) to bad\n",
        "",
    )
    # Both wait in bad as .pck files: queues counts them, and list shows them.
    assert queuetools.queue_counts()["bad"]["pck"] == 2
    status, out, _ = run(capsys, "list", "--json")
    assert [(e["queue"], e["filebase"]) for e in json.loads(out)] == [
        ("bad", injected),
        ("bad", moved),
    ]
    # They can be requeued and deleted like any other entry.
    assert run(capsys, "requeue", "--to", "in", injected) == (
        0,
        f"requeued {injected} (bad) to in\n",
        "",
    )
    assert run(capsys, "delete", moved) == (0, f"deleted {moved} (bad)\n", "")
    assert config.switchboards["in"].files == [injected]
    assert os.listdir(config.runners["bad"].path) == []


def test_hold_passes_over_what_it_can_only_refuse(capsys, var_dir):
    waiting = queued()
    in_bad = queued("bad")
    preserved = queued(subject="preserved")
    config.switchboards["in"].finish(preserved, preserve=True)
    # Chosen in bulk, what waits in bad is not held, and that is no error.
    assert run(capsys, "hold", "--all") == (0, f"held {waiting} (in)\n", "")
    # Named, it is refused, saying why; and bad as the queue, at the door.
    assert run(capsys, "hold", in_bad) == (
        1,
        "",
        f"mailqueue: error: {in_bad} is preserved in bad: requeue it instead\n",
    )
    assert run(capsys, "hold", "-q", "bad", "--all") == (
        1,
        "",
        "mailqueue: error: entries in bad are not held: no runner takes them from "
        "there (requeue them instead)\n",
    )
    # A preserved entry outside bad (moved there by hand) is refused the same.
    bad, inbox = config.runners["bad"].path, config.runners["in"].path
    os.rename(
        os.path.join(bad, preserved + ".psv"), os.path.join(inbox, preserved + ".psv")
    )
    [entry] = [e for e in queuetools.list_entries(["in"]) if e.filebase == preserved]
    assert entry.preserved and not entry.held
    with pytest.raises(queuetools.EntryError, match="is preserved in in: requeue"):
        queuetools.hold(entry)


def test_queues_counts_held_entries(capsys, var_dir):
    first, second = queued(subject="first"), queued(subject="second")
    assert run(capsys, "hold", first)[0] == 0
    _, out, _ = run(capsys, "queues", "--json")
    counts = json.loads(out)
    assert (counts["in"]["pck"], counts["in"]["held"]) == (1, 1)
    assert counts["out"]["held"] == 0
    # The table has a column for them, and says which var dir it read.
    _, out, _ = run(capsys, "queues")
    lines = out.splitlines()
    assert lines[0].split() == ["queue", ".pck", ".bak", ".psv", ".tmp", "held"]
    assert lines[2].split() == ["in", "1", "0", "0", "0", "1"]
    assert lines[-1] == f"-- var dir {var_dir}, queues in {config.QUEUE_DIR}"
    # And list, what it counts.
    _, out, _ = run(capsys, "list")
    assert out.endswith("-- 2 entries waiting\n") and second in out


def test_qfile_finds_a_held_entry_by_its_file_base(capsys, var_dir):
    held = queued(subject="held")
    assert run(capsys, "hold", held)[0] == 0
    status, out, _ = run(capsys, "qfile", held)
    assert status == 0
    assert out.startswith(f"== {queuetools.hold_directory('in')}/{held}.pck\n")


def test_an_entry_a_runner_has_in_hand_is_named_as_such(capsys, var_dir):
    taken = queued()
    config.switchboards["in"].dequeue(taken)  # a runner has it: a .bak
    assert run(capsys, "delete", taken, "1000000000.0+" + "f" * 40) == (
        1,
        "",
        f"mailqueue: error: no waiting entry 1000000000.0+{'f' * 40}\n"
        f"mailqueue: error: no waiting entry {taken}: a runner has it in hand in "
        "in, and it is left to it\n",
    )
    assert config.switchboards["in"].get_files(".bak") == [taken]


def test_status_of_a_master_that_has_not_said_what_it_runs(capsys, var_dir):
    # Just started (no master.json yet), or one left by a master now dead.
    write_record(master=1, runners={})
    with master_lock(4321):
        assert run(capsys, "status") == (
            0,
            f"mailqueue master running (pid 4321) on {var_dir}\n"
            "  starting: it has not yet said what it runs\n",
            "",
        )
        status, out, _ = run(capsys, "status", "--json")
    assert (status, json.loads(out)["runners"], json.loads(out)["uptime"]) == (
        0,
        {},
        None,
    )


def test_status_says_when_the_masters_file_is_gone_or_it_has_none(
    capsys, var_dir, tmp_path
):
    record = {
        "master": 4321,
        "version": "0.0.1",
        "started": 1_000_000_000.0,
        "host": "alpha",
        "queue_dir": config.QUEUE_DIR,
        "queues": {"in": config.runners["in"].path},
        "not_started": [],
        "runners": {},
    }
    gone = str(tmp_path / "gone.cfg")
    with master_lock(4321):
        write_record(
            **record,
            configuration={"file": gone, "digest": "0", "read": 1.0, "error": None},
        )
        status, out, _ = run(capsys, "status")
        assert out.splitlines()[2] == (
            "  the file has changed since the master read it: mailqueue reload "
            "applies it"
        )
        write_record(
            **record,
            configuration={"file": None, "digest": None, "read": None, "error": None},
        )
        status, out, _ = run(capsys, "status")
    assert status == 0
    assert out.splitlines()[1].startswith("  version 0.0.1, up ")
    assert out.splitlines()[1].endswith("configuration (none: the built-in defaults)")
    assert out.splitlines()[2] == "  queues: in 0"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0s"), (59.9, "59s"), (61, "1m 1s"), (3720, "1h 2m"), (90000, "1d 1h")],
)
def test_durations(seconds, shown):
    assert cli._duration(seconds) == shown


QUEUES = "(queues: bad, in, out, retry, shunt, virgin)"


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        (["list", "-q", "nosuch"], "nosuch"),
        (["hold", "-q", "nosuch", "--all"], "nosuch"),
        (["release", "-q", "hold/nosuch", "--all"], "hold/nosuch"),
        (["delete", "-q", "nosuch", "--all"], "nosuch"),
        (["requeue", "--to", "in", "-q", "nosuch", "--all"], "nosuch"),
        # Said once, not once an entry.
        (["requeue", "--to", "nosuch", "--all"], "nosuch"),
        (["requeue", "--to", "hold/in", "--all"], "hold/in"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else "",
)
def test_an_unknown_queue_is_one_line_before_anything_is_done(
    capsys, var_dir, arguments, name
):
    entries = [queued(subject=str(number)) for number in range(3)]
    assert run(capsys, *arguments) == (
        1,
        "",
        f"mailqueue: error: no queue is called {name!r} {QUEUES}\n",
    )
    assert sorted(config.switchboards["in"].files) == sorted(entries)


def test_an_unknown_list_is_one_line_and_a_gone_one_is_still_chosen(capsys, var_dir):
    mlist = create_list("test@example.com")
    waiting = queued()
    for command in ("hold", "release", "delete"):
        assert run(capsys, command, "--list", "nosuch.example.com") == (
            1,
            "",
            "mailqueue: error: no list is called 'nosuch.example.com', and no "
            "entry is for it\n",
        )
    # A list is named by its posting address as well as by its list-id.
    assert run(capsys, "hold", "--list", "test@example.com") == (
        0,
        f"held {waiting} (in)\n",
        "",
    )
    assert run(capsys, "release", "--list", mlist.list_id)[0] == 0
    # A list that is gone still names the entries left for it.
    config.lists.delete(mlist)
    assert run(capsys, "delete", "--list", "test.example.com") == (
        0,
        f"deleted {waiting} (in)\n",
        "",
    )


def test_an_unknown_list_where_there_is_no_database_yet(capsys, var_dir):
    assert run(capsys, "delete", "--list", "test.example.com") == (
        1,
        "",
        "mailqueue: error: no list is called 'test.example.com', and no entry is "
        "for it\n",
    )
    assert not os.path.exists(os.path.join(config.DATA_DIR, "lists.sqlite3"))


@pytest.mark.parametrize(
    "command",
    [
        ["queues"],
        ["list"],
        ["hold", "--all"],
        ["release", "--all"],
        ["delete", "--all"],
        ["requeue", "--to", "in", "--all"],
        ["unshunt"],
    ],
    ids=" ".join,
)
def test_a_var_dir_that_is_not_there_is_one_line_naming_it(capsys, tmp_path, command):
    site = tmp_path / "site.cfg"
    missing = tmp_path / "nosuch"
    site.write_text(f"# The site\n[paths]\nvar_dir: {missing}\n")
    assert run(capsys, "-C", str(site), *command) == (
        1,
        "",
        f"mailqueue: error: the var dir {missing} does not exist: nothing has run "
        f"there ([paths] var_dir in config file {site}, line 3)\n",
    )
    assert not missing.exists()  # and nothing made it


@pytest.mark.parametrize(
    "command",
    [
        ["queues"],
        ["list"],
        ["status"],
        ["stop"],
        ["inject", "-l", "test@example.com", "/dev/null"],
        ["lists", "create", "test@example.com"],
        ["hold", "--all"],
    ],
    ids=" ".join,
)
def test_a_var_dir_that_is_a_file_is_one_line_naming_it(capsys, tmp_path, command):
    site = tmp_path / "site.cfg"
    var_dir = tmp_path / "var"
    var_dir.write_text("a file, not a directory\n")
    site.write_text(f"[paths]\nvar_dir: {var_dir}\n")
    assert run(capsys, "-C", str(site), *command) == (
        1,
        "",
        f"mailqueue: error: the var dir {var_dir} is not a directory\n",
    )


@pytest.mark.parametrize(
    ("where", "what"),
    [
        ("queue", "the queue dir"),
        ("queue/in", "the directory of the in queue"),
        ("queue/hold", "the directory of held entries"),
        ("queue/hold/out", "the directory of the entries held from out"),
    ],
)
def test_a_queue_directory_that_is_a_file_is_one_line_naming_it(
    capsys, var_dir, where, what
):
    create_list("test@example.com")
    path = os.path.join(var_dir, where)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as stream:
        stream.write("in the way\n")
    message = f"mailqueue: error: {what}, {path}, is not a directory\n"
    for command in (
        ["queues"],
        ["list"],
        ["hold", "--all"],
        ["inject", "-l", "test@example.com", "/dev/null"],
        ["runner", "in", "--once"],
    ):
        assert run(capsys, *command) == (1, "", message), command
    # Stopping, or looking at the lists, needs no queue.
    assert run(capsys, "lists") == (0, "test@example.com\n", "")


def test_an_entry_that_never_failed_shows_no_reason(mlist, capsys):
    config.switchboards["in"].enqueue(message(), listid=mlist.list_id)
    status, out, _ = run(capsys, "list")
    assert (status, len(out.splitlines())) == (0, 2)  # the entry, and the count
    [shown] = json.loads(run(capsys, "list", "--json")[1])
    assert (shown["attempts"], shown["reason"]) == (0, "")
    assert shown["first_queued"] == float(shown["filebase"].split("+")[0])


def test_a_reason_from_another_writer_is_shown_in_one_line(mlist, capsys):
    config.switchboards["bad"].enqueue(
        message(), listid=mlist.list_id, mq_reason="held\nby hand", mq_attempts=1
    )
    board = config.switchboards["bad"]
    board.finish(board.files[0], preserve=True)
    config.switchboards["in"].enqueue(message(2), mq_reason="looked at")
    status, out, _ = run(capsys, "list")
    assert status == 0
    lines = out.splitlines()
    assert lines[1] == " " * 11 + "(failed 1 time: 'held\\nby hand')"
    assert lines[3] == " " * 11 + "(failed 0 times: looked at)"


def test_qfile_shows_the_history_with_a_date(mlist, capsys):
    board = config.switchboards["retry"]
    dated = board.enqueue(
        message(), mq_first_queued=1700000000.5, mq_attempts=2, mq_reason="why"
    )
    undated = board.enqueue(message(2), mq_first_queued=1e300)
    plain = board.enqueue(message(3))
    status, out, _ = run(capsys, "qfile", dated, undated, plain)
    assert (status, out.count("mq_first_queued")) == (0, 2)
    assert "mq_attempts    : 2\n" in out
    assert "mq_first_queued: 1700000000.5 (2023-11-14 22:13:20 UTC)\n" in out
    assert "mq_reason      : why\n" in out
    assert "mq_first_queued: 1e+300\n" in out  # no calendar has that year
    status, out, _ = run(capsys, "qfile", "--json", dated)
    [shown] = json.loads(out)
    assert shown["metadata"]["mq_first_queued"] == 1700000000.5
    assert shown["metadata"]["mq_reason"] == "why"

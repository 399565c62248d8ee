"""The mailqueue command: every command's mistakes get one clear line."""

import contextlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest
from sites import interruptible

from mailqueue import config, create_list, message_from_string
from mailqueue.cli import main
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


def run(capsys, *arguments):
    status = main(list(arguments))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def mlist(var_dir):
    return create_list("test@example.com")


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
    from mailqueue.configuration import ConfigurationError

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


def test_queues_watch_redraws_until_interrupted(var_dir, tmp_path):
    config_file = tmp_path / "site.cfg"
    config_file.write_text(f"[paths]\nvar_dir: {var_dir}\n")
    # On a terminal (a pseudo-terminal here) it redraws in place.
    terminal, screen = pty.openpty()
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailqueue",
            "-C",
            str(config_file),
            "queues",
            "--watch",
            "0.1",
        ],
        stdout=screen,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    os.close(screen)
    out = b""
    try:
        # Ctrl-C once it has drawn three frames (not after a guessed time:
        # a slow start would take the signal before Python handles it).
        deadline = time.monotonic() + 30
        while out.count(b"\033[H\033[2J") < 3 and time.monotonic() < deadline:
            if select.select([terminal], [], [], 1)[0]:
                out += os.read(terminal, 65536)
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
        watcher.wait()
    with contextlib.suppress(OSError):  # EIO once the writer is gone
        while chunk := os.read(terminal, 65536):
            out += chunk
    os.close(terminal)
    assert watcher.returncode == 0, err
    text = out.decode()
    assert text.count("\033[H\033[2J") >= 3  # drawn again and again, in place
    assert text.count("queue ") == text.count("\033[H\033[2J")
    with pytest.raises(SystemExit) as exit:
        main(["queues", "--watch", "0"])
    assert exit.value.code == 2


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
    for arguments, message in (
        (["-C", str(latin), "list"], f"the configuration {latin} is not UTF-8 text"),
        (["-C", str(nul), "list"], "line 2: [paths] var_dir holds a NUL"),
        # A name from a shell that is not UTF-8 names no list.
        (["lists", "delete", "\udcff@example.com"], "no list is called"),
        (["inject", "-l", "\udcff", "/dev/null"], "no list is called"),
    ):
        status, _, err = run(capsys, *arguments)
        assert status == 1, arguments
        assert err.startswith("mailqueue: error: ") and message in err, err
        assert len(err.splitlines()) == 1

"""Checks at the door (issue 25, part 3): a mistake is said once, in one
line, before anything is done, and exit status 1.

An unknown queue or list, a misspelled ``[runner.NAME]`` (a warning), a var
dir or queue directory that is not one; a message the ``out`` runner once
could not write; a file that is no queue file at all.
"""

import mailbox
import os
import subprocess
import sys

import pytest

from mailqueue import config, create_list, message_from_string
from mailqueue.cli import main
from mailqueue.configuration import ConfigurationError
from mailqueue.runners import maildir

QUEUES = "(queues: bad, in, out, retry, shunt, virgin)"


def run(capsys, *arguments):
    status = main(list(arguments))
    out, err = capsys.readouterr()
    return status, out, err


def queued(queue="in", subject="hi", listid="test.example.com"):
    msg = message_from_string(f"From: a@example.com\nSubject: {subject}\n\nHi\n")
    return config.switchboards[queue].enqueue(msg, listid=listid)


# An unknown queue or list ---------------------------------------------------------


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


# A [runner.NAME] that nothing sends to -------------------------------------------


def test_a_misspelled_runner_section_gets_a_warning(capsys, var_dir, tmp_path):
    site = tmp_path / "site.cfg"
    site.write_text(
        f"[paths]\nvar_dir: {var_dir}\n"
        # A near miss of out: a new queue that nothing sends to.
        "[runner.outt]\ninstances: 2\n"
        # Its own class may well have senders of its own: no warning.
        "[runner.inn]\nclass: mysite.Runner\n"
        # Nothing like a built-in queue: a queue of its own, held for a person.
        "[runner.archive]\n"
        # A runner that manages no queue.
        "[runner.ticker]\nclass: mailqueue.runners.VirginRunner\npath:\n"
    )
    status, out, err = run(capsys, "-C", str(site), "queues")
    assert status == 0 and "outt" in out
    assert err == (
        f"mailqueue: warning: config file {site}, line 3: [runner.outt] makes a "
        "queue 'outt' that nothing sends to (did you mean [runner.out]?)\n"
    )
    # In Python: config.warnings.
    config.push("retyr", "[runner.retyr]\nclass: mailqueue.runners.RetryRunner\n")
    assert config.warnings == [
        "configuration 'retyr', line 1: [runner.retyr] makes a queue 'retyr' that "
        "nothing sends to (did you mean [runner.retry]?)"
    ]
    config.pop("retyr")
    assert config.warnings == []


# The var dir and the queue directories ---------------------------------------------


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


def test_the_default_var_dir_is_in_the_working_directory(tmp_path):
    environment = {
        key: value for key, value in os.environ.items() if key != "MAILQUEUE_CONFIG"
    }
    shown = subprocess.run(
        [sys.executable, "-m", "mailqueue", "queues"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (shown.returncode, shown.stdout, shown.stderr) == (
        1,
        "",
        f"mailqueue: error: the var dir {tmp_path / 'var'} does not exist: nothing "
        f"has run there (the default, var in the working directory {tmp_path})\n",
    )


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


# What out could not deliver: 8-bit text ----------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        # UTF-8 in a header and a body without a transfer encoding, and a
        # byte that is no UTF-8.
        b"From: a@example.com\nSubject: Caf\xc3\xa9\n\nCaf\xc3\xa9 \xff\x00 binary\n",
        # The same in a part of a multipart message.
        b"From: a@example.com\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="XX"\n\n'
        b"--XX\nContent-Type: text/plain\n\nCaf\xc3\xa9 \xff\n--XX--\n",
    ],
    ids=["single", "multipart"],
)
def test_a_message_of_8_bit_text_is_delivered_as_the_bytes_it_came_as(
    capsys, var_dir, tmp_path, message
):
    mlist = create_list("test@example.com")
    path = tmp_path / "8bit.eml"
    path.write_bytes(message)
    assert run(capsys, "inject", "-l", "test@example.com", str(path))[0] == 0
    assert run(capsys, "runner", "in", "--once")[0] == 0
    assert run(capsys, "runner", "out", "--once")[0] == 0
    assert config.switchboards["shunt"].files == []
    [delivered] = mailbox.Maildir(maildir(mlist), create=False).keys()
    # As it came, with the List-Id the in runner adds last in the header.
    header, body = message.split(b"\n\n", 1)
    with open(os.path.join(maildir(mlist), "new", delivered), "rb") as stream:
        assert stream.read() == header + b"\nList-Id: <test.example.com>\n\n" + body


# Configuration layers -------------------------------------------------------------


def test_a_layer_replaced_with_a_mistake_is_kept_as_it_was(var_dir):
    config.push("site", "[runner.out]\ninstances: 2\n")
    with pytest.raises(ConfigurationError, match="must be a power of two, not 3"):
        config.replace("site", "[runner.out]\ninstances: 3\n")
    assert config.runners["out"].instances == 2
    config.replace("site", "[runner.out]\ninstances: 4\n")
    assert config.runners["out"].instances == 4
    assert config.origin("runner.out", "instances") == "configuration 'site', line 2"
    assert config.origin("runner.out", "class") is None  # a default
    config.pop("site")

"""The built-in runners (mailqueue.runners): in -> out -> Maildir, retry.

Delivery, and what out does when it fails: retry, then bad once the entry
has waited ``max_queue_lifetime``; the history (first queuing, attempts,
reason) an entry carries through them; delivery.log.
"""

import json
import logging
import mailbox
import os
import shlex
import sqlite3
import time
from pathlib import Path

import pytest
from helpers import DAY, block_delivery, errors_logged, message, run

from mailqueue import (
    config,
    create_list,
    message_from_string,
)
from mailqueue.entry_format import parse_entry
from mailqueue.logs import logging_to
from mailqueue.qfile import parse_filebase
from mailqueue.runners import (
    IncomingRunner,
    OutgoingRunner,
    RetryRunner,
    VirginRunner,
    maildir,
)


def test_a_failed_delivery_goes_to_retry_and_back_to_out(var_dir):
    mlist = create_list("test@example.com")
    msg = message_from_string("From: aperson@example.com\nSubject: hi\n\nHi.\n")
    config.switchboards["in"].enqueue(msg, listid=mlist.list_id)
    assert IncomingRunner("in").run_once() == 1
    # Something in the way of the list's Maildir: delivery fails.
    os.makedirs(os.path.dirname(maildir(mlist)))
    open(maildir(mlist), "w").close()
    assert OutgoingRunner("out").run_once() == 1
    assert len(config.switchboards["retry"].files) == 1
    assert config.switchboards["out"].files == []

    os.remove(maildir(mlist))
    assert RetryRunner("retry").run_once() == 1
    assert OutgoingRunner("out").run_once() == 1
    [delivered] = mailbox.Maildir(maildir(mlist), create=False)
    assert delivered["List-Id"] == "<test.example.com>"
    assert delivered["Subject"] == "hi"


def test_delivery_into_a_maildir_another_runner_is_still_making(var_dir):
    # Two out runners deliver the first messages of a list at once: one has
    # made the Maildir's directory and not yet its tmp/, new/ and cur/ when
    # the other looks.  The other delivers all the same (it once failed with
    # ENOENT on tmp/ and sent the message to retry).
    mlist = create_list("test@example.com")
    msg = message_from_string("From: aperson@example.com\nSubject: hi\n\nHi.\n")
    config.switchboards["out"].enqueue(msg, listid=mlist.list_id)
    os.makedirs(maildir(mlist))
    assert OutgoingRunner("out").run_once() == 1
    assert config.switchboards["retry"].files == []
    [delivered] = mailbox.Maildir(maildir(mlist), create=False)
    assert delivered["Subject"] == "hi"


def test_retry_always_waits_and_virgin_goes_straight_out(var_dir, monkeypatch):
    naps = []
    monkeypatch.setattr("time.sleep", naps.append)
    # The hook run calls after each pass (no public way to one pass's wait).
    RetryRunner("retry")._snooze(5)  # even after a pass that found entries
    assert naps == [900.0]
    mlist = create_list("test@example.com")
    config.switchboards["virgin"].enqueue(
        message_from_string("Subject: notice\n\nHi.\n"), listid=mlist.list_id
    )
    assert VirginRunner("virgin").run_once() == 1
    assert len(config.switchboards["out"].files) == 1


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
    OutgoingRunner("out").run_once()
    assert not (tmp_path / "escaped.example.com").exists()
    assert len(config.switchboards["shunt"].files) == 1


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


def metadata(queue, filebase, extension=".pck"):
    path = os.path.join(config.runners[queue].path, filebase + extension)
    with open(path, "rb") as stream:
        return parse_entry(stream.read(), filebase)[1]


def delivery_log():
    path = os.path.join(config.LOG_DIR, "delivery.log")
    with open(path) as log:
        lines = log.read().splitlines()
    # Each line: the time, the process, the level, then key=value fields.
    return [
        dict(word.split("=", 1) for word in shlex.split(line.split(" INFO ", 1)[1]))
        for line in lines
    ]


def test_attempts_reason_and_first_queuing_travel_through_retries(mlist, capsys):
    injected = config.switchboards["in"].enqueue(message(), listid=mlist.list_id)
    first = parse_filebase(injected).when
    IncomingRunner("in").run_once()
    block_delivery(mlist)
    for _ in range(2):
        OutgoingRunner("out").run_once()
        RetryRunner("retry").run_once()
    OutgoingRunner("out").run_once()
    [waiting] = config.switchboards["retry"].files
    data = metadata("retry", waiting)
    assert data["mq_first_queued"] == first
    assert data["mq_attempts"] == 3
    assert data["mq_reason"].startswith(
        "delivery to test@example.com failed: [Errno 17] File exists: "
    )
    # list counts the age from the first queuing, and says why it waits.
    status, out, _ = run(capsys, "list", "--json")
    [shown] = json.loads(out)
    assert (shown["first_queued"], shown["attempts"]) == (first, 3)
    assert shown["reason"] == data["mq_reason"]
    assert shown["age"] >= round(time.time() - first, 3) - 0.001
    status, out, _ = run(capsys, "list")
    assert status == 0
    assert out.splitlines()[1] == (" " * 11 + f"(failed 3 times: {data['mq_reason']})")


def test_a_message_for_a_missing_list_is_shunted_with_the_reason(var_dir, caplog):
    config.switchboards["in"].enqueue(message(), listid="gone.example.com")
    with caplog.at_level(logging.INFO, logger="mailqueue.error"):
        IncomingRunner("in").run_once()
    [shunted] = config.switchboards["shunt"].files
    assert metadata("shunt", shunted)["mq_reason"] == "no such list: gone.example.com"
    [line] = errors_logged(caplog)
    assert "<m1@example.com> for a missing list: gone.example.com" in line


def test_a_delivery_that_fails_after_the_lifetime_goes_to_bad(mlist, caplog):
    block_delivery(mlist)
    out = config.switchboards["out"]
    six_days_ago = time.time() - 6 * DAY
    expired = out.enqueue(
        message(1), listid=mlist.list_id, mq_first_queued=six_days_ago
    )
    young = out.enqueue(message(2), listid=mlist.list_id, mq_attempts=4)
    with caplog.at_level(logging.INFO, logger="mailqueue"), logging_to(config.LOG_DIR):
        OutgoingRunner("out").run_once()
    # The young one is retried; the old one is given up on, with its reason.
    [retried] = config.switchboards["retry"].files
    assert metadata("retry", retried)["mq_attempts"] == 5
    [preserved] = config.switchboards["bad"].get_files(".psv")
    data = metadata("bad", preserved, ".psv")
    assert data["mq_reason"].startswith(
        "gave up after 6d in the queue (max_queue_lifetime 5d): delivery to "
        "test@example.com failed: [Errno 17] File exists"
    )
    assert (data["mq_attempts"], data["mq_first_queued"]) == (1, six_days_ago)
    [gave_up] = [line for line in errors_logged(caplog) if "gave up" in line]
    assert gave_up.startswith(
        f"out runner: gave up on {expired} <m1@example.com> for test@example.com "
        f"after 1 attempts; preserved in bad as {preserved}: gave up after 6d"
    )
    logged = delivery_log()
    assert [(line["entry"], line["status"]) for line in logged] == [
        (expired, "expired"),
        (young, "deferred"),
    ]
    assert logged[0]["reason"] == data["mq_reason"]
    assert float(logged[0]["delay"]) >= 6 * DAY
    assert logged[1]["attempt"] == "5"


def test_a_lifetime_of_zero_gives_up_at_the_first_failure(mlist):
    block_delivery(mlist)
    config.push("no-retries", "[queues]\nmax_queue_lifetime: 0\n")
    try:
        config.switchboards["out"].enqueue(message(), listid=mlist.list_id)
        OutgoingRunner("out").run_once()
    finally:
        config.pop("no-retries")
    assert config.switchboards["retry"].files == []
    [preserved] = config.switchboards["bad"].get_files(".psv")
    reason = metadata("bad", preserved, ".psv")["mq_reason"]
    assert reason.startswith("gave up after 0s in the queue (max_queue_lifetime 0s)")


def test_one_delivery_log_line_per_delivered_message(mlist):
    board = config.switchboards["in"]
    queued = board.enqueue(message(), listid=mlist.list_id)
    with logging_to(config.LOG_DIR):
        IncomingRunner("in").run_once()
        OutgoingRunner("out").run_once()
    [line] = delivery_log()
    assert set(line) == {
        "runner",
        "entry",
        "message_id",
        "list",
        "delay",
        "attempt",
        "status",
    }
    assert line["runner"] == "out"
    assert line["entry"] != queued  # out's entry, not in's
    assert (line["message_id"], line["list"]) == ("<m1@example.com>", mlist.list_id)
    assert (line["attempt"], line["status"]) == ("1", "sent")
    # The delay counts from the message's first queuing, in in.
    assert 0 <= float(line["delay"]) < 60

"""Why is my message here?  Its history travels with the entry (issue 25, part 1).

The first-queued time, the count of failed attempts and the last reason
(``mq_first_queued``, ``mq_attempts``, ``mq_reason``) are kept from queue to
queue; ``list`` and ``qfile`` show them; a delivery that keeps failing gives
up after ``[queues] max_queue_lifetime``; the error log names the entry and
its Message-ID once per cause, and ``out`` logs each attempt to
``delivery.log``.
"""

import json
import logging
import math
import os
import pickle
import shlex
import time

import pytest

from mailqueue import config, create_list, logs, message_from_string, queuetools
from mailqueue import runner as runner_module
from mailqueue.cli import main
from mailqueue.configuration import ConfigurationError
from mailqueue.entry_format import parse_entry
from mailqueue.logs import logging_to
from mailqueue.qfile import QueueFileError, parse_filebase
from mailqueue.runner import Runner, _RepeatedErrors
from mailqueue.runners import IncomingRunner, OutgoingRunner, RetryRunner, maildir

DAY = 86400.0


def message(number=1, message_id=True):
    header = f"Message-ID: <m{number}@example.com>\n" if message_id else ""
    return message_from_string(
        f"From: aperson@example.com\n{header}Subject: number {number}\n\nHi.\n"
    )


def metadata(queue, filebase, extension=".pck"):
    path = os.path.join(config.runners[queue].path, filebase + extension)
    with open(path, "rb") as stream:
        return parse_entry(stream.read(), filebase)[1]


def block_delivery(mlist):
    # A file where the list's Maildir goes: every delivery to it fails.
    os.makedirs(os.path.dirname(maildir(mlist)), exist_ok=True)
    open(maildir(mlist), "w").close()


def errors_logged(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "mailqueue.error"]


def run(capsys, *arguments):
    status = main(list(arguments))
    out, err = capsys.readouterr()
    return status, out, err


def delivery_log():
    path = os.path.join(config.LOG_DIR, "delivery.log")
    with open(path) as log:
        lines = log.read().splitlines()
    # Each line: the time, the process, the level, then key=value fields.
    return [
        dict(word.split("=", 1) for word in shlex.split(line.split(" INFO ", 1)[1]))
        for line in lines
    ]


@pytest.fixture
def mlist(var_dir):
    return create_list("test@example.com")


# The history, from queue to queue ----------------------------------------------


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


def test_age_counts_from_the_first_queuing(mlist, capsys):
    # Queued again into retry a moment ago, first queued two days ago.
    two_days_ago = time.time() - 2 * DAY
    config.switchboards["retry"].enqueue(
        message(), listid=mlist.list_id, mq_first_queued=two_days_ago
    )
    status, out, _ = run(capsys, "list")
    assert out.split()[2] == "2d"
    [entry] = queuetools.list_entries()
    assert queuetools.age(entry) == "2d"
    # And --older-than selects by that age too.
    status, out, _ = run(capsys, "delete", "--older-than", "1d")
    assert (status, out) == (0, f"deleted {entry.filebase} (retry)\n")


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


def test_a_shunted_entry_keeps_its_reason_and_first_queuing(mlist, capsys):
    class Fragile(Runner):
        def _dispose(self, mlist, msg, msgdata):
            raise RuntimeError("cannot handle this one")

    config.push("fragile", "[runner.fragile]\n")
    try:
        queued = config.switchboards["fragile"].enqueue(message(), listid=mlist.list_id)
        first = parse_filebase(queued).when
        with logging_to(config.LOG_DIR):
            Fragile("fragile").run_once()
            [shunted] = config.switchboards["shunt"].files
            data = metadata("shunt", shunted)
            assert data["mq_reason"] == "RuntimeError: cannot handle this one"
            assert (data["mq_attempts"], data["mq_first_queued"]) == (1, first)
            # Back where it came from and shunted again: a second attempt,
            # first queued as ever.
            assert run(capsys, "unshunt")[0] == 0
            Fragile("fragile").run_once()
        [again] = config.switchboards["shunt"].files
        data = metadata("shunt", again)
        assert (data["mq_attempts"], data["mq_first_queued"]) == (2, first)
        with open(os.path.join(config.LOG_DIR, "error.log")) as log:
            shunts = [line for line in log if "shunted" in line]
        assert shunts[0].endswith(
            f"fragile runner shunted {queued} <m1@example.com> as {shunted}: "
            "RuntimeError: cannot handle this one\n"
        )
        # Requeued by hand, it keeps its history too.
        assert run(capsys, "requeue", "--to", "fragile", again)[0] == 0
        assert metadata("fragile", again) == data
    finally:
        config.pop("fragile")


def test_a_message_for_a_missing_list_is_shunted_with_the_reason(var_dir, caplog):
    config.switchboards["in"].enqueue(message(), listid="gone.example.com")
    with caplog.at_level(logging.INFO, logger="mailqueue.error"):
        IncomingRunner("in").run_once()
    [shunted] = config.switchboards["shunt"].files
    assert metadata("shunt", shunted)["mq_reason"] == "no such list: gone.example.com"
    [line] = errors_logged(caplog)
    assert "<m1@example.com> for a missing list: gone.example.com" in line


def test_a_runner_that_keeps_an_entry_queued_carries_its_first_queuing(mlist):
    class Patient(Runner):
        def _dispose(self, mlist, msg, msgdata):
            return True  # not yet

    config.push("patient", "[runner.patient]\n")
    try:
        board = config.switchboards["patient"]
        first = parse_filebase(board.enqueue(message(), listid=mlist.list_id)).when
        Patient("patient").run_once()
        [requeued] = board.files
        assert metadata("patient", requeued)["mq_first_queued"] == first
        board.finish(requeued)
        # An entry whose name is not a file base (put there by hand) was
        # first queued when it is taken.
        unlisted = {"listid": mlist.list_id}
        os.rename(
            os.path.join(
                board.queue_directory, board.enqueue(message(), unlisted) + ".pck"
            ),
            os.path.join(board.queue_directory, "by-hand.pck"),
        )
        before = time.time()
        Patient("patient")._process_filebase("by-hand")
        [requeued] = board.files
        assert metadata("patient", requeued)["mq_first_queued"] >= before
    finally:
        config.pop("patient")


# Giving up: [queues] max_queue_lifetime -----------------------------------------


def test_the_lifetime_is_five_days_unless_configured():
    assert config.max_queue_lifetime == 5 * DAY
    config.push("short", "[queues]\nmax_queue_lifetime: 2h\n")
    try:
        assert config.max_queue_lifetime == 7200.0
    finally:
        config.pop("short")
    with pytest.raises(ConfigurationError, match="max_queue_lifetime must be a dur"):
        config.push("wrong", "[queues]\nmax_queue_lifetime: forever\n")


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


# The logs ------------------------------------------------------------------------


def test_the_error_log_names_the_entry_once_per_cause(mlist, caplog):
    block_delivery(mlist)
    board = config.switchboards["out"]
    first = board.enqueue(message(1), listid=mlist.list_id)
    for number in range(2, 6):
        board.enqueue(message(number), listid=mlist.list_id)
    sixth = board.enqueue(message(6, message_id=False), listid=mlist.list_id)
    with caplog.at_level(logging.INFO, logger="mailqueue.error"):
        assert OutgoingRunner("out").run_once() == 6
    assert len(config.switchboards["retry"].files) == 6
    # One line naming the first entry and its Message-ID; then, as the
    # runner ends, how many more failed the same way, and the last of them.
    logged = errors_logged(caplog)
    assert len(logged) == 2
    assert logged[0].startswith(
        f"out runner: delivery of {first} <m1@example.com> to test@example.com "
        "failed, will retry: [Errno 17] File exists: "
    )
    assert logged[1] == (
        "out runner: delivery to test@example.com failed again, will retry: "
        f"File exists; the last was {sixth} <> (5 more times)"
    )


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


@pytest.mark.parametrize(
    "value",
    ["plain", "", "two words", 'a "quote"', "back\\slash", "o'brien", "k=v", "é <x>"],
)
def test_fields_are_read_back_by_shlex(value):
    line = logs.fields(first=value, second=1)
    assert shlex.split(line) == [f"first={value}", "second=1"]


def test_repeated_errors_are_counted_per_cause_and_forgotten(monkeypatch, caplog):
    class Clock:
        now = 1000.0

        @classmethod
        def monotonic(cls):
            return cls.now

    monkeypatch.setattr(runner_module, "time", Clock)
    errors = _RepeatedErrors(logging.getLogger("mailqueue.error"))
    with caplog.at_level(logging.INFO, logger="mailqueue.error"):
        for entry in ("a", "b", "c"):  # two causes, interleaved
            errors.error("%s failed", entry, key="disk", again=f"again, last {entry}")
            errors.error("%s is odd", entry, key="odd")
        errors.tick()  # too early: nothing said
        Clock.now += 60
        errors.tick()
        assert caplog.messages == [
            "a failed",
            "a is odd",
            "again, last c (2 more times)",
            "c is odd (2 more times)",
        ]
        Clock.now += 60
        errors.tick()  # no repeats in that minute: both forgotten
        errors.error("d failed", key="disk")
        assert caplog.messages[-1] == "d failed"
        # Never more than so many causes remembered: the counts are said first.
        monkeypatch.setattr(runner_module, "_KEYS_KEPT", 2)
        errors.error("d failed again", key="disk")
        errors.error("e", key="e")
        errors.error("f", key="f")
        assert caplog.messages[-3:] == ["e", "d failed again (1 more times)", "f"]


# The reserved keys in the file ------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        ({"mq_attempts": "2"}, "mq_attempts is not a count: '2'"),
        ({"mq_attempts": -1}, "mq_attempts is not a count: -1"),
        ({"mq_attempts": True}, "mq_attempts is not a count: True"),
        ({"mq_first_queued": "yesterday"}, "mq_first_queued is not a time"),
        ({"mq_first_queued": math.nan}, "mq_first_queued is not a time"),
        ({"mq_reason": b"bytes"}, "mq_reason is not text"),
    ],
)
def test_history_keys_of_another_type_are_refused(var_dir, values, refusal):
    data = pickle.dumps(message()) + pickle.dumps({"version": 3} | values)
    with pytest.raises(QueueFileError, match=refusal):
        parse_entry(data, "entry.pck")
    with pytest.raises(TypeError, match=f"cannot queue this metadata: {refusal}"):
        config.switchboards["in"].enqueue(message(), values)
    assert config.switchboards["in"].files == []


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

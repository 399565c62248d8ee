"""mailqueue's commands on a GNU Mailman site's configuration, no Mailman running.

A live site is in tests/mailman_site; these are the cases it cannot reach.
"""

import os
import pickle

import pytest

from mailqueue import config, entry_format, message_from_string, qfile, queuetools
from mailqueue.cli import main
from mailqueue.configuration import Configuration, ConfigurationError
from mailqueue.message import decoded

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def mailman(var_dir, tmp_path):
    """A Mailman site's mailman.cfg (its var dir in tmp_path), in site mode."""
    cfg = tmp_path / "mailman.cfg"
    cfg.write_text(
        f"[mailman]\nlayout: t\n[paths.t]\nvar_dir: {tmp_path}/mm\n"
        "[runner.retry]\nsleep_time: 2s\n"
    )
    config.push("mailman-site", f"[mailman]\nconfig: {cfg}\n")
    yield cfg
    config.pop("mailman-site")


def run(capsys, *args):
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


def queued(queue, **metadata):
    msg = message_from_string("From: a@example.com\nSubject: hi\n\nHi.\n")
    return config.switchboards[queue].enqueue(msg, **metadata)


def test_state_beside_mailmans_and_never_in_it(mailman, tmp_path):
    fresh = Configuration()
    fresh.push("site", f"[mailman]\nconfig: {mailman}\n")
    assert str(tmp_path / "mailqueue") == fresh.VAR_DIR
    assert config.runners["pipeline"].path == str(
        tmp_path / "mm" / "queue" / "pipeline"
    )
    with pytest.raises(ConfigurationError, match="is inside GNU Mailman's"):
        config.push("inside", f"[paths]\nvar_dir: {tmp_path}/mm/mq\n")


def test_the_command_line_option(capsys, var_dir, mailman):
    config.pop("mailman-site")
    try:
        status, out, _ = run(capsys, "--mailman", str(mailman), "queues")
        assert status == 0 and "pipeline" in out and "bounces" in out
        status, _, err = run(capsys, "--mailman", "a\nb", "queues")
        assert (
            status == 1
            and err == "mailqueue: error: not a configuration file name: 'a\\nb'\n"
        )
    finally:
        config.push("mailman-site", f"[mailman]\nconfig: {mailman}\n")


@pytest.mark.parametrize("command", [["start"], ["runner", "in", "--once"], ["flush"]])
def test_what_is_left_to_mailman_is_one_line(capsys, mailman, command):
    filebase = queued("in", listid="test.example.com")
    status, out, err = run(capsys, *command)
    assert status == 1 and out == "" and err.count("\n") == 1
    assert "GNU Mailman" in err and "Traceback" not in err
    assert config.switchboards["in"].files == [filebase]


def test_status_without_a_master(capsys, mailman, tmp_path):
    status, out, _ = run(capsys, "status")
    assert (status, out) == (1, f"no GNU Mailman master is running on {tmp_path}/mm\n")
    (tmp_path / "mm").mkdir(exist_ok=True)
    (tmp_path / "mm" / "master.pid").write_text(f"{os.getpid()}\n")
    (tmp_path / "mm" / "locks").mkdir()
    (tmp_path / "mm" / "locks" / "master.lck").write_text("master.lck|h.example|7|1")
    status, out, _ = run(capsys, "status")
    assert status == 1
    assert f"names pid {os.getpid()}, which is not Mailman's master (stale)" in out
    assert "held by pid 7 on h.example" in out
    assert "runner" not in out  # no master, no runners
    status, out, _ = run(capsys, "status", "--json")
    assert f'"stale_pid": {os.getpid()}' in out and '"host": "h.example"' in out
    (tmp_path / "mm" / "locks" / "master.lck").unlink()
    assert '"lock": null' in run(capsys, "status", "--json")[1]


def test_tools_refuse_to_write_in_another_users_queues(capsys, var_dir):
    filebase = queued("in")
    os.chown(config.QUEUE_DIR, 12345, 12345)
    try:
        status, out, err = run(capsys, "hold", filebase)
    finally:
        os.chown(config.QUEUE_DIR, 0, 0)
    assert status == 1 and out == ""
    assert err == (
        f"mailqueue: error: {config.QUEUE_DIR} belongs to uid 12345, and this runs "
        "as root (uid 0): run it as uid 12345, so that what it writes the runners "
        "can read\n"
    )
    assert config.switchboards["in"].files == [filebase]


def test_requeue_says_what_mailmans_runner_needs(capsys, mailman):
    lacking = queued("retry", listid="test.example.com")
    empty = queued("retry", listname="test@example.com", recipients=[])
    good = queued("retry", listid="test.example.com", recipients=["a@example.org"])
    status, out, err = run(capsys, "requeue", "--to", "out", lacking, empty, good)
    assert status == 1 and out.count("\n") == 1 and good in out
    assert err.count("GNU Mailman's out runner needs recipients in the metadata") == 2
    assert config.switchboards["out"].files == [good]
    # An entry that cannot be read is not sent to a runner.
    path = os.path.join(config.runners["retry"].path, lacking + ".pck")
    with open(path, "wb") as stream:
        stream.write(b"not a pickle")
    status, _, err = run(capsys, "requeue", "--to", "in", lacking)
    assert status == 1 and "not a queue entry" in err and "left where it is" in err


def test_requeue_reset_count(capsys, var_dir, monkeypatch):
    filebase = queued("retry", listid="test.example.com")
    path = os.path.join(config.runners["retry"].path, filebase + ".pck")
    _, metadata, message = entry_format.load_entry(path)
    stored = bytes(message)
    metadata["_bak_count"] = 3
    qfile.write_file(path, (message, pickle.dumps(metadata, 4)))
    assert run(capsys, "requeue", "--to", "retry", "--reset-count", filebase)[0] == 0
    _, metadata, message = entry_format.load_entry(path)
    assert "_bak_count" not in metadata and bytes(message) == stored
    # Gone as it is taken, or in the way where it goes: left as it was.
    [entry] = queuetools.list_entries(["retry"])
    monkeypatch.setattr(queuetools, "_take", lambda path: None)
    with pytest.raises(queuetools.EntryError, match="is gone"):
        queuetools.requeue(entry, "out", reset_count=True)
    monkeypatch.undo()
    os.makedirs(config.runners["out"].path, exist_ok=True)
    blocker = os.path.join(config.runners["out"].path, filebase + ".pck")
    open(blocker, "w").close()
    for reset in (True, False):
        with pytest.raises(queuetools.EntryError, match="exists already"):
            queuetools.requeue(entry, "out", reset_count=reset)
    assert os.path.exists(path)
    os.unlink(path)
    with pytest.raises(queuetools.EntryError, match="is gone"):
        queuetools.requeue(entry, "in", reset_count=True)


def test_unshunt_goes_on_past_any_failure(capsys, var_dir, monkeypatch):
    first = queued("shunt", whichq="in")
    second = queued("shunt", whichq="in")
    real = entry_format.load_entry

    def failing(path, *args):
        if first in path:
            raise RuntimeError("disk on fire")
        return real(path, *args)

    monkeypatch.setattr(entry_format, "load_entry", failing)
    status, out, err = run(capsys, "unshunt")
    assert status == 1 and out == f"moved {second} to in as {second}\n"
    assert (
        err == f"mailqueue: error: {first}: RuntimeError: disk on fire; left in shunt\n"
    )
    assert config.switchboards["shunt"].files == [first]
    # One of one name in the way where it goes back: left, not replaced.
    monkeypatch.undo()
    with open(os.path.join(config.runners["in"].path, first + ".pck"), "wb"):
        pass
    status, _, err = run(capsys, "unshunt")
    assert status == 1 and "exists already; left in shunt" in err


def test_broken_encoded_words_are_shown_as_they_are():
    assert decoded("=?x-no-such-charset?q?a?=") == "=?x-no-such-charset?q?a?="
    assert decoded("=?utf-8?q?Gr=C3=BC=C3=9Fe?=") == "Grüße"


def test_unshunt_keeps_both_when_the_name_comes_back_while_it_works(
    capsys, var_dir, monkeypatch
):
    # An entry naming no queue is taken (.bak) and is to go back to shunt as
    # .pck; meanwhile another process has queued one of the same name there.
    # Neither is lost nor replaced, and the others go on.
    first = queued("shunt", whichq="nowhere")
    second = queued("shunt", whichq="in")
    shunt = config.runners["shunt"].path
    real = entry_format.load_entry

    def racing(path, *args):
        if first in path:
            with open(os.path.join(shunt, first + ".pck"), "wb") as other:
                other.write(b"another process's entry")
        return real(path, *args)

    monkeypatch.setattr(entry_format, "load_entry", racing)
    status, out, err = run(capsys, "unshunt")
    assert status == 1 and out == f"moved {second} to in as {second}\n"
    assert err.startswith(f"mailqueue: error: {first}: EntryError: ")
    assert err.endswith("exists already; left in shunt as .bak, for the next unshunt\n")
    assert sorted(os.listdir(shunt)) == [first + ".bak", first + ".pck"]
    with open(os.path.join(shunt, first + ".pck"), "rb") as other:
        assert other.read() == b"another process's entry"
    # The next unshunt keeps both: the taken one is preserved in bad (and the
    # other, unreadable, beside it).
    monkeypatch.undo()
    run(capsys, "unshunt")
    assert os.listdir(shunt) == [] and len(os.listdir(config.runners["bad"].path)) == 2

"""Queue directories shared with GNU Mailman 3.3.10, both ways.

Mailman's side runs in Mailman's own venv (``mailman_python``, see
conftest.py), where mailqueue cannot be imported, as on a Mailman site.
Mailman's files pickle Mailman's own message class; mailqueue reads them
(and runs them through a runner) with no Mailman code importable at all.
mailqueue's files are dequeued by Mailman with equal message and metadata,
and every way mailqueue writes a queue file writes one that the standard
library alone can read.
"""

import datetime
import glob
import json
import os
import sys
from pathlib import Path

import pytest
from mailman_side import describe  # this directory is on sys.path under pytest

from mailqueue import (
    Runner,
    Switchboard,
    config,
    create_list,
    message_from_string,
    queuetools,
)

MAILMAN_SIDE = Path(__file__).with_name("mailman_side.py")
# How long the first test to run may take to build Mailman's venv (the
# session fixture mailman_python, conftest.py), in seconds: about two minutes
# the first time, nothing once it is built.
VENV_BUILD_TIME = 480

# Reads each queue file named on its command line as any reader without
# mailqueue would: two pickle.load calls, and a message stored as text parsed
# with the standard library's parser.  Run with -I -S: no site-packages, no
# environment, no current directory; the standard library only.
STANDARD_LIBRARY_LOAD = """
import email, email.message, json, pickle, sys
try:
    import mailqueue
except ModuleNotFoundError:
    pass
else:
    sys.exit("mailqueue is importable here")
loaded = []
for path in sys.argv[1:]:
    try:
        with open(path, "rb") as fp:
            msg = pickle.load(fp)
            msgdata = pickle.load(fp)
        if msgdata.get("_parsemsg"):
            msg = email.message_from_string(msg)
        loaded.append({
            "file": path,
            "message_class": f"{type(msg).__module__}.{type(msg).__qualname__}",
            "is_message": isinstance(msg, email.message.Message),
            "message": msg.as_string(),
        })
    except Exception as error:
        loaded.append({"file": path, "error": type(error).__name__, "text": str(error)})
print(json.dumps(loaded))
"""


def mailman(mailman_python, command, *arguments):
    """Run mailman_side.py COMMAND ARGUMENTS... in Mailman's venv; its JSON."""
    result = mailman_python.run(str(MAILMAN_SIDE), command, *map(str, arguments))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


class MailmanIsNotImportable:
    """A meta path finder that makes any import of mailman fail loudly."""

    def find_spec(self, name, path=None, target=None):
        if name == "mailman" or name.startswith("mailman."):
            raise ImportError(f"Mailman code must not run here (import {name})")
        return None


@pytest.fixture
def no_mailman(monkeypatch):
    assert not any(name.split(".")[0] == "mailman" for name in sys.modules)
    monkeypatch.setattr(sys, "meta_path", [MailmanIsNotImportable(), *sys.meta_path])


@pytest.mark.timeout(VENV_BUILD_TIME + 120)
def test_mailqueue_is_not_importable_in_mailmans_venv(mailman_python):
    result = mailman_python.run("-c", "import mailqueue")
    assert result.returncode == 1
    assert "ModuleNotFoundError: No module named 'mailqueue'" in result.stderr
    # And Mailman is, in that venv.
    result = mailman_python.run("-c", "import mailman.version as v; print(v.VERSION)")
    assert (result.returncode, result.stdout) == (0, "3.3.10\n"), result.stderr


@pytest.mark.timeout(VENV_BUILD_TIME + 120)
def test_mailqueue_reads_and_runs_mailmans_queue_files(
    var_dir, tmp_path, no_mailman, mailman_python
):
    directory = tmp_path / "interop"
    written = mailman(mailman_python, "write", directory)
    assert {entry["message_class"] for entry in written} == {
        "mailman.email.message.Message"
    }
    queue = Switchboard("interop", str(directory))
    assert queue.files == [entry["filebase"] for entry in written]
    for entry in written:
        msg, msgdata = queue.dequeue(entry["filebase"])
        expected = dict(entry["metadata"])
        if "original_size" in msgdata:  # a text entry, parsed on dequeue
            expected["original_size"] = repr(msgdata["original_size"])
        assert describe(entry["filebase"], msg, msgdata) == {
            **entry,
            "message_class": "mailqueue.message.Message",
            "metadata": expected,
        }
        assert msg.sender == "aperson@example.com"
        queue.finish(entry["filebase"])

    # And a mailqueue runner processes them from Mailman's queue directory.
    mailman(mailman_python, "write", directory)
    config.push("interop", f"[runner.interop]\npath: {directory}\n")
    create_list("test@example.com")
    seen = []
    passes = []

    class Collect(Runner):
        def _dispose(self, mlist, msg, msgdata):
            seen.append(msg["subject"])
            return False

        def _snooze(self, filecnt):
            # It stops by itself: when the queue is empty, or (a runner that
            # never empties it, say) after ten passes.
            passes.append(filecnt)
            if not filecnt or len(passes) >= 10:
                self.stop()

    Collect("interop").run()
    assert passes[-1] == 0, f"the queue never emptied: {passes}"
    # Entries without a list are shunted, which is processing too.
    assert seen == ["second"]
    assert os.listdir(directory) == []
    assert len(config.switchboards["shunt"].files) == 3
    assert config.switchboards["bad"].get_files(".psv") == []


@pytest.mark.timeout(VENV_BUILD_TIME + 120)
def test_mailman_dequeues_mailqueues_files_unchanged(var_dir, tmp_path, mailman_python):
    directory = tmp_path / "interop"
    queue = Switchboard("interop", str(directory))
    samples = [
        ("Subject: first\n\nOne.\n", {"foo": 1, "listid": "test.example.com"}),
        ("Subject: second\n\nTwo.\n", {"tags": {"a", "b"}, "lang": "fr"}),
        ("Subject: as text\n\nThree.\n", {"_plaintext": True, "bar": "baz"}),
    ]
    written = []
    for text, metadata in samples:
        msg = message_from_string(f"From: aperson@example.com\n{text}")
        filebase = queue.enqueue(msg, metadata)
        stored = {k: v for k, v in metadata.items() if not k.startswith("_")}
        stored.update(version=3, _parsemsg=bool(metadata.get("_plaintext")))
        written.append(describe(filebase, msg, stored))
    # Where mailqueue cannot be imported, a pickled message can only be of a
    # class of the standard library: the one mailqueue's class adds no state to.
    for entry in written[:-1]:
        entry["message_class"] = "email.message.Message"
    # An entry stored as text has no class: the reader parses it into its own.
    written[-1]["message_class"] = "mailman.email.message.Message"
    read = mailman(mailman_python, "read", directory)
    for entry in read:
        entry["metadata"].pop("original_size", None)  # added by dequeue, as specified
    assert read == written
    assert os.listdir(directory) == []


def post(subject):
    return message_from_string(
        "From: aperson@example.com\nTo: test@example.com\n"
        f"Subject: {subject}\nMessage-ID: <{subject.replace(' ', '-')}@example.com>\n"
        f"\nThe body of {subject}.\n"
    )


@pytest.mark.timeout(VENV_BUILD_TIME + 120)
def test_files_mailqueue_writes_load_without_mailqueue(
    var_dir, mailman_python, standard_library_python
):
    switchboards = config.switchboards

    def path(queue, filebase):
        return os.path.join(switchboards[queue].queue_directory, filebase + ".pck")

    # Each .pck file mailqueue writes, and the text of the message queued in it.
    queued = {}
    # (a) enqueued, with metadata,
    msg = post("enqueued")
    metadata = {"listid": "test.example.com", "tags": {"a", "b"}, "lang": "fr"}
    metadata["when"] = datetime.datetime(2026, 11, 25, 4, 0)
    queued[path("in", switchboards["in"].enqueue(msg, metadata))] = msg.as_string()
    # (b) enqueued as text,
    msg = post("as text")
    filebase = switchboards["in"].enqueue(msg, {"bar": "baz"}, _plaintext=True)
    queued[path("in", filebase)] = msg.as_string()
    # (c) unshunted back to the queue it was shunted from,
    msg = post("unshunted")
    switchboards["shunt"].enqueue(msg, {"foo": 1}, whichq="in")
    before = set(switchboards["in"].files)
    unshunted = list(queuetools.unshunt())
    assert [result.ok for result in unshunted] == [True], unshunted
    [filebase] = set(switchboards["in"].files) - before
    queued[path("in", filebase)] = msg.as_string()
    # (d) requeued by an operator from one queue to another,
    msg = post("requeued")
    filebase = switchboards["virgin"].enqueue(msg, {"listid": "test.example.com"})
    [entry] = [e for e in queuetools.list_entries(["virgin"]) if e.filebase == filebase]
    queued[queuetools.requeue(entry, "out")] = msg.as_string()
    # (e) and recovered: dequeued, never finished, and put back by the next owner.
    msg = post("recovered")
    retry = switchboards["retry"]
    filebase = retry.enqueue(msg, {"listid": "test.example.com"})
    retry.dequeue(filebase)
    recovering = Switchboard("retry", retry.queue_directory, recover=True)
    assert (recovering.owner, recovering.recovered) == (True, 1)
    assert retry.files == [filebase]
    queued[path("retry", filebase)] = msg.as_string()
    # Every .pck file under the var directory is one of those.
    pattern = os.path.join(var_dir, "**", "*.pck")
    assert sorted(glob.glob(pattern, recursive=True)) == sorted(queued)

    files = sorted(queued)
    # (i) The standard library alone reads every one of them,
    result = standard_library_python.run("-c", STANDARD_LIBRARY_LOAD, *files)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout)
    assert [entry for entry in loaded if "error" in entry] == []
    for entry in loaded:
        assert entry["is_message"], entry
        assert entry["message"] == queued[entry["file"]], entry["file"]
    # (ii) and so does GNU Mailman, both ways it reads a queue file.
    loaded = mailman(mailman_python, "load", *files)
    assert [entry["file"] for entry in loaded] == files
    failed = {
        entry["file"]: {way: entry[way] for way in ("pickle", "dequeue")}
        for entry in loaded
        if "error" in entry["pickle"] or "error" in entry["dequeue"]
    }
    assert failed == {}
    for entry in loaded:
        assert entry["pickle"]["message"] == queued[entry["file"]], entry["file"]
        assert entry["dequeue"]["message"] == queued[entry["file"]], entry["file"]

"""Queue directories shared with GNU Mailman 3.3.10, both ways.

Mailman's files pickle Mailman's own message class; mailqueue reads them
(and runs them through a runner) with no Mailman code importable at all.
mailqueue's files are dequeued by Mailman with equal message and metadata.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mailman_side import describe  # this directory is on sys.path under pytest

from mailqueue import Runner, Switchboard, config, create_list, message_from_string

MAILMAN_SIDE = Path(__file__).with_name("mailman_side.py")

# Finding the package imports none of it (the tests below forbid that).
# In CI, which installs it, its absence is a failure, not a skip.
if importlib.util.find_spec("mailman") is None and os.environ.get("CI"):
    pytest.fail("GNU Mailman is not installed, and CI must run these", pytrace=False)
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mailman") is None,
    reason="GNU Mailman is not installed: pip install 'mailqueue[mailman]' "
    "(make sets up .venv with it)",
)


def mailman(command, directory):
    result = subprocess.run(
        [sys.executable, str(MAILMAN_SIDE), command, str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
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


@pytest.mark.timeout(120)
def test_mailqueue_reads_and_runs_mailmans_queue_files(var_dir, tmp_path, no_mailman):
    directory = tmp_path / "interop"
    written = mailman("write", directory)
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
    mailman("write", directory)
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


def test_mailman_dequeues_mailqueues_files_unchanged(var_dir, tmp_path):
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
    # An entry stored as text has no class: the reader parses it into its own.
    written[-1]["message_class"] = "mailman.email.message.Message"
    read = mailman("read", directory)
    for entry in read:
        entry["metadata"].pop("original_size", None)  # added by dequeue, as specified
    assert read == written
    assert os.listdir(directory) == []

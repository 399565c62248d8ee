"""The plugin inside a GNU Mailman process: run by test_plugin.py, in a child.

These tests start GNU Mailman 3.3.10 (its testing configuration, in this
process), which the main test process must never import; test_plugin.py runs
this file with pytest in a child Python of the project's venv, where Mailman
is installed (the ``mailman`` extra).  Each test compares what Mailman's own
code does with the plugin installed and without it.
"""

import io
import os
import pickle
import shutil
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner
from zope.interface.verify import verifyObject

from mailqueue import mailman as plugin
from mailqueue.conformance.mailman import MailmanAdapter
from mailqueue.safepickle import PickleRefused

TEXT = "From: anne@example.com\nTo: test@example.com\nSubject: hi\n\nHello.\n"


@pytest.fixture(scope="module")
def mailman():
    adapter = MailmanAdapter()
    adapter.start()
    with adapter.document_state() as fixtures:
        fixtures["create_list"]("test@example.com")
        yield fixtures


@pytest.fixture
def without_plugin():
    plugin.uninstall()
    yield
    plugin.uninstall()


def switchboard(mailman, tmp_path, name="q"):
    from mailman.core.switchboard import Switchboard

    return Switchboard(name, str(tmp_path / name))


def code(marker):
    """A pickle that would make the file *marker* if it ran."""
    command = f"touch {marker}".encode()
    return (
        b"\x80\x04cposix\nsystem\n"
        + b"X"
        + struct.pack("<I", len(command))
        + command
        + b"\x85R."
    )


def test_a_mailman_plugin(without_plugin):
    from mailman.interfaces.plugin import IPlugin

    found = plugin.Plugin()
    assert verifyObject(IPlugin, found)
    assert found.resource is None
    assert not plugin.installed()
    found.pre_hook()
    assert plugin.installed()
    assert found.post_hook() is None


def test_what_the_plugin_changes(mailman, without_plugin):
    import mailman.commands.cli_qfile as qfile_command
    import mailman.core.switchboard as switchboard_module
    import mailman.model.messagestore as store

    plugin.install()
    for module in (switchboard_module, qfile_command, store):
        assert module.pickle.load is plugin.load
        # The rest is pickle's own.
        assert module.pickle.dumps is pickle.dumps
        assert module.pickle.HIGHEST_PROTOCOL == pickle.HIGHEST_PROTOCOL
    plugin.uninstall()
    assert switchboard_module.pickle is pickle


def test_an_entry_reads_as_pickle_reads_it(mailman, tmp_path, without_plugin):
    queue = switchboard(mailman, tmp_path)
    msg = mailman["message_from_string"](TEXT)
    for plain in (False, True):
        read = []
        for installed in (False, True):
            (plugin.install if installed else plugin.uninstall)()
            filebase = queue.enqueue(msg, listid="test.example.com", _plaintext=plain)
            got, data = queue.dequeue(filebase)
            queue.finish(filebase)
            read.append((type(got), got.as_string(), data))
        assert read[0] == read[1]
        assert read[1][0].__module__ == "mailman.email.message"


def test_files_mailman_writes_are_unchanged(mailman, tmp_path, without_plugin):
    msg = mailman["message_from_string"](TEXT)
    written = []
    for installed in (False, True):
        (plugin.install if installed else plugin.uninstall)()
        queue = switchboard(mailman, tmp_path, f"q{installed}")
        filebase = queue.enqueue(msg, listid="test.example.com", now=1.5)
        path = Path(queue.queue_directory, filebase + ".pck")
        # A crash while a runner had it: Mailman's recovery rewrites the
        # metadata (it counts the recoveries) and puts it back.
        path.rename(path.with_suffix(".bak"))
        queue.recover_backup_files()
        written.append(path.read_bytes())
    ours, theirs = written
    # The file base holds the time of queuing: the same contents, named apart.
    assert ours == theirs
    stream = io.BytesIO(ours)
    pickle.load(stream)
    assert pickle.load(stream)["_bak_count"] == 1


def test_a_file_that_asks_for_code_is_refused(mailman, tmp_path, without_plugin):
    marker = tmp_path / "ran"
    queue = switchboard(mailman, tmp_path)
    plugin.install()
    path = Path(queue.queue_directory, "1600000000.0+" + "5" * 40 + ".pck")
    path.write_bytes(code(marker) + pickle.dumps({"listid": "test.example.com"}))
    with pytest.raises(PickleRefused) as refused:
        queue.dequeue(path.stem)
    # Named as Mailman opened it (before its rename to .bak).
    assert str(refused.value) == (
        f"{path}: refused to load posix.system: "
        "queue files may hold only messages and plain data"
    )
    assert not marker.exists()
    # Mailman's own path for a file it cannot read: preserved in bad.
    queue.finish(path.stem, preserve=True)
    from mailman.config import config

    bad = Path(config.switchboards["bad"].queue_directory)
    assert (bad / (path.stem + ".psv")).exists()


def test_a_runner_preserves_a_refused_file(mailman, tmp_path, without_plugin, capsys):
    from mailman.config import config
    from mailman.core.runner import Runner

    class Once(Runner):
        def _dispose(self, mlist, msg, msgdata):
            return False

        def _snooze(self, filecnt):
            self.stop()

    config.push("plugin-runner", "[runner.plugged]\n")
    try:
        queue = config.switchboards["plugged"]
        good = queue.enqueue(
            mailman["message_from_string"](TEXT), listid="test.example.com"
        )
        marker = tmp_path / "ran"
        hostile = "1600000000.0+" + "6" * 40
        Path(queue.queue_directory, hostile + ".pck").write_bytes(
            code(marker) + pickle.dumps({})
        )
        plugin.install()
        mailman["show_log"]("error")  # what came before: not this test's
        capsys.readouterr()
        Once("plugged").run()
        mailman["show_log"]("error")  # Mailman's error log
        log = capsys.readouterr().out
        assert not marker.exists()
        assert queue.files == []
        bad = Path(config.switchboards["bad"].queue_directory)
        assert (bad / (hostile + ".psv")).exists()
        assert not (bad / (good + ".psv")).exists()
        assert "refused to load posix.system" in log
        assert f"Skipping and preserving unparseable message: {hostile}" in log
    finally:
        config.pop("plugin-runner")


def test_mailman_qfile(mailman, tmp_path, without_plugin):
    from mailman.commands.cli_qfile import qfile

    queue = switchboard(mailman, tmp_path)
    filebase = queue.enqueue(
        mailman["message_from_string"](TEXT), listid="test.example.com"
    )
    path = os.path.join(queue.queue_directory, filebase + ".pck")
    shown = []
    for installed in (False, True):
        (plugin.install if installed else plugin.uninstall)()
        result = CliRunner().invoke(qfile, [path])
        assert result.exit_code == 0, result.output
        shown.append(result.output)
    assert shown[0] == shown[1]
    assert "Number of objects" not in shown[1]  # (only with --interactive)
    assert "'listid': 'test.example.com'" in shown[1]
    marker = tmp_path / "ran"
    hostile = tmp_path / "hostile.pck"
    hostile.write_bytes(code(marker))
    result = CliRunner().invoke(qfile, [str(hostile)])
    assert isinstance(result.exception, PickleRefused)
    assert not marker.exists()


def test_the_message_store(mailman, without_plugin):
    from mailman.interfaces.messages import IMessageStore
    from zope.component import getUtility

    plugin.install()
    store = getUtility(IMessageStore)
    msg = mailman["message_from_string"](TEXT + "")
    msg["Message-ID"] = "<plugin@example.com>"
    store.add(msg)
    found = store.get_message_by_id("<plugin@example.com>")
    assert found.as_string() == msg.as_string()
    assert type(found) is type(msg)


def test_load_limits_and_ends(tmp_path):
    data = pickle.dumps("x" * 100) + pickle.dumps({"a": 1})
    stream = io.BytesIO(data)  # no file descriptor: bounded by the limit alone
    assert plugin.load(stream) == "x" * 100
    assert plugin.load(stream) == {"a": 1}
    with pytest.raises(EOFError):
        plugin.load(stream)
    path = tmp_path / "big.pck"
    path.write_bytes(data)
    with open(path, "rb") as stream, pytest.raises(PickleRefused) as refused:
        plugin.load(stream, max_size=50)
    assert str(refused.value) == f"{path}: more than the limit of 50 bytes"
    with open(path, "rb") as stream:
        assert plugin.load(stream, max_size=len(data)) == "x" * 100


def test_a_copy_of_a_refused_file_is_still_refused(tmp_path):
    # Nothing is cached between files: each is checked anew.
    marker = tmp_path / "ran"
    first = tmp_path / "a.pck"
    first.write_bytes(code(marker))
    shutil.copy(first, tmp_path / "b.pck")
    for name in ("a.pck", "b.pck"):
        with open(tmp_path / name, "rb") as stream, pytest.raises(PickleRefused):
            plugin.load(stream)
    assert not marker.exists()


def test_what_mailman_writes_of_digests_and_dates(mailman, tmp_path, without_plugin):
    # A MIME digest's parts are mailbox.MMDFMessage objects, and Mailman's
    # dates carry its own UTC time zone: both read as pickle reads them.
    import datetime
    import email.mime.multipart
    import mailbox

    from mailman.utilities.datetime import utc

    digest = email.mime.multipart.MIMEMultipart()
    digest.attach(mailbox.MMDFMessage(mailman["message_from_string"](TEXT)))
    data = {
        "listid": "test.example.com",
        "when": datetime.datetime(2020, 1, 1, tzinfo=utc),
    }
    queue = switchboard(mailman, tmp_path)
    plugin.install()
    filebase = queue.enqueue(digest, data)
    msg, read = queue.dequeue(filebase)
    [part] = msg.get_payload()
    assert type(part) is mailbox.MMDFMessage
    assert part.as_string() == digest.get_payload(0).as_string()
    assert read["when"] == data["when"]
    assert type(read["when"].tzinfo) is type(utc)  # a new one, as pickle makes


def test_every_public_name_of_the_plugin_has_a_docstring():
    # (tests/test_docs_check.py checks every other module, in a process
    # that must not import Mailman.)
    assert plugin.__doc__
    for name in plugin.__all__:
        value = getattr(plugin, name)
        if callable(value):
            assert (value.__doc__ or "").strip(), name

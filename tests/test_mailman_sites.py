"""mailqueue's commands on a GNU Mailman site; the queue tools its runners share.

How its configuration is read is in test_mailman_site.py (mailqueue.mailman_site);
a live site, with Mailman running, in tests/mailman_site.

Each test here is about a defect the queue tools had before they knew a
Mailman site: unshunt re-pickled messages and dropped whichq, files were
written under the umask, Mailman's queues and classes were unknown, its
master could not be seen, and the commands that are Mailman's to do were
done.  The site is a throwaway mailman.cfg in the test's tmp_path; no
Mailman runs (a fake master, a script called ``master``, stands in for it).
"""

import contextlib
import email.message
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import types
from email.mime.multipart import MIMEMultipart

import pytest
from helpers import run

from mailqueue import config, entry_format, message_from_string, qfile, queuetools
from mailqueue.configuration import Configuration, ConfigurationError
from mailqueue.message import decoded

pytestmark = pytest.mark.timeout(60)

#: Mailman's queues: its runners that have a queue directory.
MAILMAN_QUEUES = [
    "archive",
    "bad",
    "bounces",
    "command",
    "digest",
    "in",
    "nntp",
    "out",
    "pipeline",
    "retry",
    "shunt",
    "virgin",
]

LISTID = "test.example.com"


class Site:
    """A throwaway Mailman site: its mailman.cfg and the directories it names."""

    def __init__(self, tmp_path, retry_sleep=None):
        self.var_dir = str(tmp_path / "mailman-var")
        self.queue_dir = os.path.join(self.var_dir, "queue")
        self.pid_file = os.path.join(self.var_dir, "master.pid")
        text = (
            f"[mailman]\nlayout: testsite\n[paths.testsite]\nvar_dir: {self.var_dir}\n"
        )
        if retry_sleep:
            text += f"[runner.retry]\nsleep_time: {retry_sleep}\n"
        self.cfg = str(tmp_path / "mailman.cfg")
        with open(self.cfg, "w") as stream:
            stream.write(text)

    def queue(self, name):
        return os.path.join(self.queue_dir, name)

    def files(self):
        """Every file under Mailman's var dir, with its bytes."""
        found = {}
        for directory, _, names in os.walk(self.var_dir):
            for name in names:
                path = os.path.join(directory, name)
                with open(path, "rb") as stream:
                    found[path] = stream.read()
        return found


@pytest.fixture
def mailman_site(var_dir, tmp_path):
    """Make a Mailman site; unless told not to, make it the configuration's.

    The layer is pushed when the test asks for the site, so that code that
    knows no [mailman] section fails in the test, not in its setup.
    """
    pushed = []

    def make(retry_sleep=None, push=True):
        site = Site(tmp_path, retry_sleep)
        if push:
            name = f"mailman site {len(pushed)}"
            config.push(name, f"[mailman]\nconfig: {site.cfg}\n")
            pushed.append(name)
        return site

    yield make
    for name in reversed(pushed):
        if name in config.layers:
            config.pop(name)


@contextlib.contextmanager
def fake_mailman(monkeypatch):
    """A module mailman.email.message, as Mailman's classes pickle, for the block."""
    with monkeypatch.context() as patch:
        modules = [types.ModuleType(name) for name in ("mailman", "mailman.email")]
        module = types.ModuleType("mailman.email.message")
        modules[0].email, modules[1].message = modules[1], module
        for name, base in (
            ("Message", email.message.Message),
            ("MultipartDigestMessage", MIMEMultipart),
        ):
            made = type(name, (base,), {"__module__": module.__name__})
            made.__qualname__ = name
            setattr(module, name, made)
        for made in [*modules, module]:
            patch.setitem(sys.modules, made.__name__, made)
        yield module
    assert "mailman" not in sys.modules


def mailman_message(monkeypatch, subject="hi"):
    """A message pickle (protocol 4) whose class is Mailman's Message."""
    with fake_mailman(monkeypatch) as module:
        msg = email.message_from_string(
            f"From: aperson@example.com\nSubject: {subject}\n\nHello.\n",
            _class=module.Message,
        )
        data = pickle.dumps(msg, 4)
    assert b"mailman.email.message" in data
    return data


def write_entry(directory, message_pickle, extension=".pck", **metadata):
    """Write an entry by hand, as another implementation would; its file base."""
    metadata = {"version": 3, "_parsemsg": False, **metadata}
    filebase = qfile.make_filebase(message_pickle, metadata.get("listid", "x"))
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, filebase + extension), "wb") as stream:
        stream.write(message_pickle + pickle.dumps(metadata, 4))
    return filebase


def read_bytes(path):
    with open(path, "rb") as stream:
        return stream.read()


def plain_message(subject="hi"):
    return message_from_string(
        f"From: aperson@example.com\nSubject: {subject}\n\nHi.\n"
    )


# Unshunt -------------------------------------------------------------------


def test_unshunt_keeps_whichq_and_the_message_pickle_byte_for_byte(
    capsys, var_dir, monkeypatch
):
    shunt, out = config.runners["shunt"].path, config.runners["out"].path
    message = mailman_message(monkeypatch)
    meta = {"listid": LISTID, "recipients": ["b@example.com"], "whichq": "out"}
    moved = write_entry(shunt, message, **meta)
    counted = write_entry(shunt, message, **meta, _bak_count=2)
    before = read_bytes(os.path.join(shunt, moved + ".pck"))
    status, _, err = run(capsys, "unshunt")
    assert (status, err) == (0, "")
    names = sorted(os.listdir(out))
    assert len(names) == 2
    for name in names:
        _, metadata, pickled = entry_format.load_entry(os.path.join(out, name))
        assert metadata == {"version": 3, "_parsemsg": False, **meta}
        assert bytes(pickled) == message  # Mailman's class name and all
    # Each keeps its file base, and without a count to start again the very
    # file moved.
    assert names == sorted([moved + ".pck", counted + ".pck"])
    assert read_bytes(os.path.join(out, moved + ".pck")) == before
    assert os.listdir(shunt) == []


def test_unshunt_carries_on_past_an_entry_whose_read_raises(
    capsys, var_dir, monkeypatch
):
    board = config.switchboards["shunt"]
    for subject in ("first", "second"):
        board.enqueue(plain_message(subject), listid=LISTID, whichq="in")
    first, second = board.files
    real = qfile.read_file

    def failing(path, *arguments, **keywords):
        if os.path.basename(path).startswith(first):
            raise RuntimeError("the disk is on fire")
        return real(path, *arguments, **keywords)

    monkeypatch.setattr(qfile, "read_file", failing)
    status, out, err = run(capsys, "unshunt")
    assert status == 1
    assert err.count("\n") == 1
    assert err.startswith(f"mailqueue: error: {first}: RuntimeError: the disk is on")
    assert err.endswith("; left in shunt\n")
    assert out == f"moved {second} to in as {second}\n"
    assert board.files == [first]
    assert config.switchboards["in"].files == [second]


def test_unshunt_on_a_plain_site_leaves_no_owner_file_and_no_spares(capsys, var_dir):
    config.switchboards["shunt"].enqueue(plain_message(), listid=LISTID, whichq="in")
    owner = os.path.join(config.QUEUE_DIR, ".shunt.owner")
    spares = os.path.join(config.QUEUE_DIR, ".shunt.spare")
    assert not os.path.lexists(owner) and not os.path.lexists(spares)
    status, _, err = run(capsys, "unshunt")
    assert (status, err) == (0, "")
    assert len(config.switchboards["in"].files) == 1
    assert not os.path.lexists(owner)
    assert not os.path.lexists(spares)


# Queue files ---------------------------------------------------------------


def test_a_file_written_under_umask_022_is_readable_by_the_group(var_dir):
    saved = os.umask(0o022)
    try:
        filebase = config.switchboards["in"].enqueue(plain_message(), listid=LISTID)
    finally:
        os.umask(saved)
    path = os.path.join(config.runners["in"].path, filebase + ".pck")
    assert oct(os.stat(path).st_mode & 0o7777) == oct(0o660)


def test_list_and_qfile_show_a_digest_and_decode_its_subject(
    capsys, var_dir, monkeypatch
):
    with fake_mailman(monkeypatch) as module:
        digest = module.MultipartDigestMessage()
        digest["From"] = "test-request@example.com"
        digest["Subject"] = "=?utf-8?q?Gr=C3=BC=C3=9Fe?="
        part = module.Message()
        part["Subject"] = "the first"
        part.set_payload("The first message.\n")
        digest.attach(part)
        data = pickle.dumps(digest, 4)
    assert b"MultipartDigestMessage" in data
    filebase = write_entry(config.runners["virgin"].path, data, listid=LISTID)
    status, out, err = run(capsys, "list", "--json")
    assert (status, err) == (0, "")
    [entry] = json.loads(out)
    assert entry["problem"] == ""
    assert entry["subject"] == "Grüße"
    assert entry["sender"] == "test-request@example.com"
    status, out, err = run(capsys, "list")
    assert (status, err) == (0, "")
    assert filebase in out and "Grüße" in out
    status, out, err = run(capsys, "qfile", filebase)
    assert (status, err) == (0, "")
    assert "The first message." in out
    assert f"listid   : {LISTID}" in out


# The configuration of a Mailman site ------------------------------------------


def test_mailqueue_state_goes_beside_mailman_var_dir_never_in_it(
    var_dir, tmp_path, mailman_site
):
    site = mailman_site(push=False)
    configuration = Configuration()  # no [paths] var_dir given
    configuration.push("site", f"[mailman]\nconfig: {site.cfg}\n")
    beside = str(tmp_path / "mailqueue")
    paths = {
        "var": configuration.VAR_DIR,
        "log": configuration.LOG_DIR,
        "queue": configuration.QUEUE_DIR,
    }
    assert paths == {
        "var": beside,
        "log": os.path.join(beside, "logs"),
        "queue": os.path.join(beside, "queue"),
    }
    for path in paths.values():
        assert os.path.commonpath([path, site.var_dir]) != site.var_dir
    # The queues, though, are Mailman's.
    assert configuration.runners["in"].path == site.queue("in")
    inside = os.path.join(site.var_dir, "mailqueue")
    with pytest.raises(ConfigurationError, match="is inside GNU Mailman's"):
        configuration.push("inside", f"[paths]\nvar_dir: {inside}\n")
    assert "inside" not in configuration.layers
    assert paths["var"] == beside == os.path.abspath(configuration.VAR_DIR)


def test_unshunt_to_mailman_pipeline_and_every_mailman_queue_counted(
    capsys, mailman_site
):
    site = mailman_site()
    filebase = config.switchboards["shunt"].enqueue(
        plain_message(), listid=LISTID, whichq="pipeline"
    )
    assert os.listdir(site.queue("shunt")) == [filebase + ".pck"]
    status, out, err = run(capsys, "unshunt")
    assert (status, err) == (0, "")
    assert out == f"moved {filebase} to pipeline as {filebase}\n"
    assert os.listdir(site.queue("pipeline")) == [filebase + ".pck"]
    assert os.listdir(site.queue("shunt")) == []
    status, out, _ = run(capsys, "queues", "--json")
    assert status == 0
    counts = json.loads(out)
    assert sorted(counts) == MAILMAN_QUEUES
    assert counts["pipeline"]["pck"] == 1
    status, out, _ = run(capsys, "queues")
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == MAILMAN_QUEUES


# Mailman's master -------------------------------------------------------------

FAKE_MASTER = """\
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, sys.argv[1], "-C", "x", "--runner=in:0:1"])
with open(sys.argv[2] + ".tmp", "w") as stream:
    stream.write(str(child.pid))
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
time.sleep(120)
"""


@contextlib.contextmanager
def fake_master(tmp_path, site):
    """A process called master with a child runner in:0:1: yield both pids."""
    master_script, runner_script = tmp_path / "master", tmp_path / "runner"
    master_script.write_text(FAKE_MASTER)
    runner_script.write_text("import time\ntime.sleep(120)\n")
    told = tmp_path / "runner.pid"
    master = subprocess.Popen(
        [sys.executable, str(master_script), str(runner_script), str(told)],
        start_new_session=True,
    )
    child = None
    try:
        deadline = time.monotonic() + 30
        while not told.exists():
            assert master.poll() is None, "the fake master ended"
            assert time.monotonic() < deadline, "no runner child in 30 s"
            time.sleep(0.02)
        child = int(told.read_text())
        os.makedirs(site.var_dir, exist_ok=True)
        with open(site.pid_file, "w") as stream:
            stream.write(f"{master.pid}\n")
        yield master.pid, child
    finally:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
        master.kill()
        master.wait()


def test_status_on_a_mailman_site_and_the_live_runner_guard(
    capsys, tmp_path, mailman_site
):
    site = mailman_site()
    # (a) No pid file: no master.
    status, out, err = run(capsys, "status")
    assert (status, err) == (1, "")
    assert out.splitlines()[0] == f"no GNU Mailman master is running on {site.var_dir}"
    # (b) A pid file that names a process that is gone: stale.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    os.makedirs(site.var_dir)
    with open(site.pid_file, "w") as stream:
        stream.write(f"{gone.pid}\n")
    status, out, err = run(capsys, "status")
    assert (status, err) == (1, "")
    first = out.splitlines()[0]
    assert first.startswith(f"no GNU Mailman master is running on {site.var_dir}")
    assert f"names pid {gone.pid}" in first and "(stale)" in first
    status, out, _ = run(capsys, "status", "--json")
    shown = json.loads(out)
    assert (status, shown["master"], shown["stale_pid"]) == (1, None, gone.pid)
    # (c) A live master, with one runner child.
    filebase = config.switchboards["in"].enqueue(plain_message(), listid=LISTID)
    queued = os.path.join(site.queue("in"), filebase + ".pck")
    held = os.path.join(config.QUEUE_DIR, "hold", "in", filebase + ".pck")
    with fake_master(tmp_path, site) as (master, child):
        status, out, err = run(capsys, "status", "--json")
        assert err == ""
        shown = json.loads(out)
        assert shown["master"] == master and shown["stale_pid"] is None
        runners = shown["runners"]
        assert runners.pop("in:0:1") == {"state": "running", "pid": child}
        for spec in ("bad:0:1", "shunt:0:1", "nntp:0:1"):
            assert runners.pop(spec) == {"state": "not started", "pid": None}
        assert runners and all(
            runner == {"state": "not running", "pid": None}
            for runner in runners.values()
        )
        assert status == 1  # the other runners it should run do not run
        # Its in runner runs: the in queue is left alone ...
        status, out, err = run(capsys, "hold", "--all", "-q", "in")
        assert (status, out) == (1, "")
        assert err.count("\n") == 1
        assert f"runner (pid {child})" in err and "--force" in err
        assert os.path.exists(queued) and not os.path.exists(held)
        # ... unless forced.
        status, out, err = run(capsys, "hold", "--force", "--all", "-q", "in")
        assert (status, err) == (0, "")
        assert out == f"held {filebase} (in)\n"
    assert not os.path.exists(queued) and os.path.exists(held)
    assert os.path.commonpath([held, site.var_dir]) != site.var_dir


# What is Mailman's to do ------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "refusal"),
    [
        (["flush"], "flush cannot be done on a GNU Mailman site: "),
        (["runner", "in", "--once"], "runner is refused on a GNU Mailman site: "),
        (["start"], "start is refused on a GNU Mailman site: "),
        (
            ["inject", "-l", "test@example.com", "MESSAGE"],
            "inject is refused on a GNU Mailman site: ",
        ),
    ],
    ids=["flush", "runner", "start", "inject"],
)
def test_what_is_mailman_s_to_do_is_refused_in_one_line(
    capsys, tmp_path, mailman_site, monkeypatch, command, refusal
):
    site = mailman_site(retry_sleep="2s", push=False)
    message = tmp_path / "hello.eml"
    message.write_text("From: aperson@example.com\nSubject: hi\n\nHello.\n")
    command = [str(message) if word == "MESSAGE" else word for word in command]
    pickled = mailman_message(monkeypatch)
    for queue in ("in", "out", "retry"):
        write_entry(site.queue(queue), pickled, listid=LISTID, recipients=["b@x"])
    before = site.files()
    status, out, err = run(capsys, "--mailman", site.cfg, *command)
    assert (status, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith(f"mailqueue: error: {refusal}")
    assert "Traceback" not in err
    assert site.files() == before  # every entry where it was


# Changing commands ---------------------------------------------------------


def test_a_changing_command_refuses_queues_of_another_user(capsys, var_dir):
    if os.geteuid() != 0:
        pytest.skip("needs root, to give the queues to another user")
    filebase = config.switchboards["in"].enqueue(plain_message(), listid=LISTID)
    queued = os.path.join(config.runners["in"].path, filebase + ".pck")
    os.chown(config.QUEUE_DIR, 12345, -1)
    try:
        status, out, err = run(capsys, "hold", filebase)
    finally:
        os.chown(config.QUEUE_DIR, 0, -1)
    assert (status, out) == (1, "")
    assert err.count("\n") == 1
    assert err.startswith(f"mailqueue: error: {config.QUEUE_DIR} belongs to uid 12345")
    assert os.path.exists(queued)
    assert not os.path.exists(os.path.join(config.QUEUE_DIR, "hold"))


def test_requeue_on_a_mailman_site_checks_recipients_and_resets_the_count(
    capsys, mailman_site
):
    site = mailman_site()
    board = config.switchboards["in"]
    lacking = board.enqueue(plain_message("lacking"), listid=LISTID)
    addressed = board.enqueue(
        plain_message("addressed"), listid=LISTID, recipients=["b@example.com"]
    )
    status, out, err = run(capsys, "requeue", "--to", "out", lacking)
    assert (status, out) == (1, "")
    assert err.count("\n") == 1 and "recipients" in err
    assert os.path.exists(os.path.join(site.queue("in"), lacking + ".pck"))
    assert not os.path.exists(site.queue("out"))
    status, out, err = run(capsys, "requeue", "--to", "out", addressed)
    assert (status, err) == (0, "")
    assert out == f"requeued {addressed} (in) to out\n"
    assert os.listdir(site.queue("out")) == [addressed + ".pck"]
    # Preserved in bad after three recoveries: back to in, counted from 0.
    message = entry_format.dump_checked(plain_message("counted"), "message")
    counted = write_entry(
        site.queue("bad"), message, ".psv", listid=LISTID, _bak_count=3
    )
    status, out, err = run(capsys, "requeue", "--to", "in", "--reset-count", counted)
    assert (status, err) == (0, "")
    assert out == f"requeued {counted} (bad) to in\n"
    assert os.listdir(site.queue("bad")) == []
    _, metadata, pickled = entry_format.load_entry(
        os.path.join(site.queue("in"), counted + ".pck")
    )
    assert metadata == {"version": 3, "_parsemsg": False, "listid": LISTID}
    assert bytes(pickled) == message


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

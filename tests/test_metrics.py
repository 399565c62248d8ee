"""mailqueue metrics: read by Prometheus's own parser, from the command, a
file, an in-process server and a real master over HTTP.

The parser is prometheus-client's (a test dependency only); it is lax (a
line it cannot place becomes an untyped family of its own), so the tests
check that every family it returns is one of ours, typed and documented.
"""

import logging
import os
import re
import shutil
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from helpers import MESSAGE, get, parsed, run, value, values

from mailqueue import config, create_list, message_from_string, qfile
from mailqueue.configuration import ConfigurationError
from mailqueue.metrics import (
    AGE_BUCKETS,
    CONTENT_TYPE,
    FAMILIES,
    Counters,
    MetricsError,
    MetricsServer,
    read_counters,
    render,
)
from mailqueue.queuetools import hold_directory
from mailqueue.runners import IncomingRunner, OutgoingRunner

pytestmark = pytest.mark.timeout(120)

DOCS = Path(__file__).parent.parent / "docs"


def aged(queue, seconds, now, extension=".pck", directory=None):
    """Queue an entry in *queue*, then name it as if made *seconds* before *now*."""
    board = config.switchboards[queue]
    filebase = board.enqueue(message_from_string(MESSAGE.format(seconds)), n=1)
    older = qfile.make_filebase(b"", "aged", now - seconds)
    directory = directory or board.queue_directory
    os.makedirs(directory, exist_ok=True)
    os.rename(
        os.path.join(board.queue_directory, filebase + ".pck"),
        os.path.join(directory, older + extension),
    )
    return older


def test_every_state_its_depth_oldest_age_and_the_age_counts(var_dir):
    now = time.time()
    aged("in", 30, now)
    aged("in", 90, now)
    aged("in", 4000, now)
    aged("out", 200, now, ".bak")  # a runner has it
    aged("out", 700, now, directory=hold_directory("out"))
    aged("bad", 50, now, ".psv")
    aged("bad", 10, now)  # queued in bad (inject -q bad)
    aged("shunt", 3 * 86400, now)
    # Neither a file base nor an entry's extension: not counted.
    Path(config.runners["in"].path, "README").write_text("x")
    Path(config.runners["in"].path, f"{now}+{'0' * 40}.tmp").write_text("x")

    families = parsed(render(now))

    entries = families["mailqueue_queue_entries"]
    assert len(entries.samples) == 6 * 4
    assert value(entries, queue="in", state="queued") == 3
    assert value(entries, queue="out", state="in_progress") == 1
    assert value(entries, queue="out", state="held") == 1
    assert value(entries, queue="out", state="queued") == 0
    assert value(entries, queue="bad", state="preserved") == 1
    assert value(entries, queue="bad", state="queued") == 1
    assert value(entries, queue="shunt", state="queued") == 1
    oldest = families["mailqueue_queue_oldest_entry_age_seconds"]
    assert value(oldest, queue="in", state="queued") == pytest.approx(4000, abs=0.01)
    assert value(oldest, queue="out", state="in_progress") == pytest.approx(
        200, abs=0.01
    )
    assert value(oldest, queue="out", state="held") == pytest.approx(700, abs=0.01)
    assert value(oldest, queue="out", state="queued") == 0
    assert value(oldest, queue="shunt", state="queued") == pytest.approx(
        259200, abs=0.01
    )

    by_age = families["mailqueue_queue_entries_by_age"]
    assert [sample.labels["le"] for sample in by_age.samples[:15]] == [
        *(str(bound) for bound in AGE_BUCKETS),
        "+Inf",
    ]
    in_queue = [s.value for s in by_age.samples if s.labels["queue"] == "in"]
    # 1, 2, 4 ... minutes: 30 s, 90 s and 4000 s (66 minutes).
    assert in_queue == [1, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3]
    out = [s.value for s in by_age.samples if s.labels["queue"] == "out"]
    assert out[:6] == [0, 0, 1, 1, 2, 2] and out[-1] == 2  # every state counts
    shunt = [s.value for s in by_age.samples if s.labels["queue"] == "shunt"]
    assert shunt == [0] * 13 + [1, 1]
    # The shape is a snapshot: an entry gone is gone from it.
    os.unlink(next(Path(config.runners["shunt"].path).iterdir()))
    families = parsed(render(now))
    shunt = values(families["mailqueue_queue_entries_by_age"], queue="shunt")
    assert set(shunt.values()) == {0}


def test_a_clock_behind_an_entry_gives_an_age_of_zero_and_labels_are_escaped(
    var_dir,
):
    config.push("odd", '[runner.a"b\\c]\nstart: no\n')
    aged('a"b\\c', -60, time.time())  # made a minute from now (another host's)
    text = render()
    assert 'mailqueue_queue_entries{queue="a\\"b\\\\c",state="queued"} 1' in text
    families = parsed(text)
    entries = families["mailqueue_queue_oldest_entry_age_seconds"]
    assert value(entries, queue='a"b\\c', state="queued") == 0


def test_deliveries_failures_and_shunts_are_counted_by_the_runners(var_dir):
    mlist = create_list("test@example.com")
    inbox = config.switchboards["in"]
    for number in range(3):
        inbox.enqueue(message_from_string(MESSAGE.format(number)), listid=mlist.list_id)
    inbox.enqueue(message_from_string(MESSAGE.format("x")), listid="gone.example.com")
    assert IncomingRunner("in").run_once() == 4
    assert OutgoingRunner("out").run_once() == 3
    # A delivery that fails: the Maildir's parent is a file.
    for number in range(2):
        inbox.enqueue(message_from_string(MESSAGE.format(number)), listid=mlist.list_id)
    IncomingRunner("in").run_once()
    lists = Path(var_dir, "lists")
    lists.rename(Path(var_dir, "lists.old"))
    lists.write_text("not a directory")
    assert OutgoingRunner("out").run_once() == 2
    assert len(config.switchboards["retry"].files) == 2

    counters = read_counters(var_dir)
    assert counters == {
        "in": {"shunts": 1},
        "out": {"deliveries": 3, "delivery_failures": 2},
    }
    families = parsed(render())
    assert values(families["mailqueue_deliveries_total"]) == {
        (("queue", "in"),): 0,
        (("queue", "out"),): 3,
        (("queue", "retry"),): 0,
        (("queue", "virgin"),): 0,
    }
    assert value(families["mailqueue_delivery_failures_total"], queue="out") == 2
    assert value(families["mailqueue_shunts_total"], queue="in") == 1
    assert value(families["mailqueue_runner_restarts_total"], queue="out") == 0
    # Held queues run nothing: they count nothing and have no slices.
    assert not values(families["mailqueue_shunts_total"], queue="bad")
    assert not values(families["mailqueue_slice_owner"], queue="shunt")
    # A runner without a queue counts, but has neither entries nor slices.
    config.push("no queue", "[runner.clock]\nclass: mypackage.Clock\npath:\n")
    families = parsed(render())
    assert value(families["mailqueue_runner_restarts_total"], queue="clock") == 0
    assert not values(families["mailqueue_slice_owner"], queue="clock")
    assert not values(families["mailqueue_queue_entries"], queue="clock")


def test_a_runner_shunting_after_an_error_counts_it(var_dir, monkeypatch):
    mlist = create_list("test@example.com")
    config.switchboards["out"].enqueue(
        message_from_string(MESSAGE.format(1)), listid=mlist.list_id
    )

    def failing(directory, msg):
        raise RuntimeError("a bug")

    monkeypatch.setattr("mailqueue.runners._deliver", failing)
    OutgoingRunner("out").run_once()
    assert len(config.switchboards["shunt"].files) == 1
    assert read_counters(var_dir) == {"out": {"shunts": 1}}


def test_counts_from_many_processes_add_up(var_dir):
    # Each flush adds under a lock: none is lost to another's rewrite.
    # (flock locks an open file, so threads with their own descriptors
    # exclude each other as processes do.)
    def count(runner):
        counters = Counters(var_dir)
        for _ in range(25):
            counters.add(runner, "deliveries")
            counters.add("out", "shunts", 2)
            counters.flush()

    threads = [threading.Thread(target=count, args=(f"r{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = read_counters(var_dir)
    assert counts["out"] == {"shunts": 200}
    assert {counts[f"r{n}"]["deliveries"] for n in range(4)} == {25}


def test_a_flush_is_at_most_every_so_often_and_empty_ones_write_nothing(var_dir):
    counters = Counters(var_dir)
    counters.flush()
    assert not os.path.exists(os.path.join(var_dir, "counters.json"))
    counters.add("out", "deliveries")
    counters.flush(every=3600)  # the first is never too soon
    counters.add("out", "deliveries")
    counters.flush(every=3600)
    assert read_counters(var_dir) == {"out": {"deliveries": 1}}
    counters.flush()
    assert read_counters(var_dir) == {"out": {"deliveries": 2}}


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("", {}),
        ("not json", {}),
        ("[1, 2]", {}),
        (
            '{"out": {"deliveries": 4, "shunts": -1, "x": 1.5, "y": true},'
            ' "in": 3, "retry": {}}',
            {"out": {"deliveries": 4}, "retry": {}},
        ),
    ],
)
def test_counts_that_are_not_counts_are_left_out(var_dir, text, kept):
    Path(var_dir, "counters.json").write_text(text)
    assert read_counters(var_dir) == kept
    # And the next flush writes good counts over them.
    counters = Counters(var_dir)
    counters.add("out", "deliveries")
    counters.flush()
    deliveries = kept.get("out", {}).get("deliveries", 0) + 1
    assert read_counters(var_dir)["out"] == {"deliveries": deliveries}


def test_counts_that_cannot_be_written_are_kept_and_logged_once(var_dir, caplog):
    missing = os.path.join(var_dir, "gone")
    counters = Counters(missing)
    counters.add("out", "deliveries")
    with caplog.at_level(logging.ERROR, logger="mailqueue.error"):
        counters.flush()
        counters.add("out", "deliveries")
        counters.flush()
    [logged] = caplog.messages
    assert logged.startswith(f"cannot add to the counts in {missing}/counters.json")
    assert "No such file or directory" in logged
    os.mkdir(missing)
    counters.flush()
    assert read_counters(missing) == {"out": {"deliveries": 2}}
    # Once it works again, the next failure is news again.
    os.rename(missing, missing + ".moved")
    counters.add("out", "deliveries")
    with caplog.at_level(logging.ERROR, logger="mailqueue.error"):
        counters.flush()
    assert len(caplog.messages) == 2


def block(queue):
    """Put a file where *queue*'s directory should be."""
    path = config.runners[queue].path
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_text("x")
    return path


def test_the_command_prints_them_and_creates_nothing(capsys, tmp_path):
    var_dir = tmp_path / "var"
    site = tmp_path / "site.cfg"
    site.write_text(f"[paths]\nvar_dir: {var_dir}\n")
    status, out, err = run(capsys, "-C", str(site), "metrics")
    assert (status, err) == (0, "")
    families = parsed(out)
    assert set(values(families["mailqueue_queue_entries"]).values()) == {0}
    owners = families["mailqueue_slice_owner"]
    assert values(owners, queue="out") == {
        (("host", ""), ("pid", ""), ("queue", "out"), ("slice", "0")): 0
    }
    assert not var_dir.exists()


def test_a_queue_directory_that_is_a_file_is_one_line(capsys, var_dir):
    path = block("out")
    status, out, err = run(capsys, "metrics")
    assert (status, out) == (1, "")
    assert err == (
        f"mailqueue: error: the directory of the out queue, {path}, is not a "
        "directory\n"
    )


def test_output_is_written_atomically_for_the_textfile_collector(capsys, var_dir):
    collector = Path(var_dir, "textfile")
    collector.mkdir()
    target = collector / "mailqueue.prom"
    target.write_text("old\n")
    os.chmod(target, 0o600)
    names = []
    real_rename = os.rename

    def watched(source, destination):
        names.append((os.path.basename(source), sorted(os.listdir(collector))))
        real_rename(source, destination)

    old = os.umask(0o077)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(os, "rename", watched)
            status, out, err = run(capsys, "metrics", "--output", str(target))
    finally:
        os.umask(old)
    assert (status, out, err) == (0, "", "")
    # Written whole under another name (one the collector does not read:
    # not *.prom), then renamed over the old file.
    [(temporary, listed)] = names
    assert re.fullmatch(r"\.mailqueue\.prom\..+\.tmp", temporary)
    assert listed == sorted([temporary, "mailqueue.prom"])
    assert os.listdir(collector) == ["mailqueue.prom"]
    parsed(target.read_text())
    # The collector, another user, reads it, whatever the umask.
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644


def test_output_that_cannot_be_written_is_one_line_and_leaves_nothing(capsys, var_dir):
    missing = os.path.join(var_dir, "nosuch", "mailqueue.prom")
    status, out, err = run(capsys, "metrics", "--output", missing)
    assert (status, out) == (1, "")
    assert (
        err == f"mailqueue: error: cannot write {missing}: No such file or directory\n"
    )
    # A directory in the way: the rename fails, and the temporary file goes.
    in_the_way = Path(var_dir, "textfile", "mailqueue.prom")
    in_the_way.mkdir(parents=True)
    status, out, err = run(capsys, "metrics", "--output", str(in_the_way))
    assert status == 1
    assert err == f"mailqueue: error: cannot write {in_the_way}: Is a directory\n"
    assert os.listdir(in_the_way.parent) == ["mailqueue.prom"]


def test_on_a_mailman_site_only_the_queues_are_shown(var_dir, tmp_path):
    mailman_var = tmp_path / "mailman-var"
    cfg = tmp_path / "mailman.cfg"
    cfg.write_text(
        f"[mailman]\nlayout: testsite\n[paths.testsite]\nvar_dir: {mailman_var}\n"
    )
    config.push("mailman site", f"[mailman]\nconfig: {cfg}\n")
    (mailman_var / "queue" / "pipeline").mkdir(parents=True)
    (
        mailman_var / "queue" / "pipeline" / f"{time.time() - 5}+{'1' * 40}.pck"
    ).write_text("x")
    families = parsed(render())
    assert (
        value(families["mailqueue_queue_entries"], queue="pipeline", state="queued")
        == 1
    )
    assert len(values(families["mailqueue_queue_entries"], state="queued")) == 12
    # Mailman's runners keep no counts of ours and own no slices.
    for name in [*FAMILIES][3:]:
        assert families[name].samples == [], name


@pytest.mark.parametrize(
    ("given", "address"),
    [
        ("127.0.0.1:9436", ("127.0.0.1", 9436)),
        (" 127.8.9.10:1 ", ("127.8.9.10", 1)),
        ("[::1]:65535", ("::1", 65535)),
        ("", None),
    ],
)
def test_metrics_listen_takes_a_loopback_address_and_port(var_dir, given, address):
    config.push("listen", f"[master]\nmetrics_listen: {given}\n")
    assert config.metrics_listen == address


@pytest.mark.parametrize(
    ("given", "error"),
    [
        ("0.0.0.0:9436", "0.0.0.0 is not a loopback address"),
        ("[::]:9436", ":: is not a loopback address"),
        ("192.0.2.1:9436", "192.0.2.1 is not a loopback address"),
        ("localhost:9436", "must be a loopback address and a port"),
        ("127.0.0.1", "must be a loopback address and a port"),
        ("127.0.0.1:0", "must be a loopback address and a port"),
        ("127.0.0.1:65536", "must be a loopback address and a port"),
        ("127.0.0.1:²", "must be a loopback address and a port"),
        (":9436", "must be a loopback address and a port"),
    ],
)
def test_metrics_listen_refuses_anything_else_in_one_line(var_dir, given, error):
    with pytest.raises(ConfigurationError) as refused:
        config.push("listen", f"[master]\nmetrics_listen: {given}\n")
    assert str(refused.value).startswith(
        "configuration 'listen', line 2: [master] metrics_listen"
    )
    assert error in str(refused.value)
    assert config.metrics_listen is None


def loopback_ipv6():
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param(
            "::1",
            marks=pytest.mark.skipif(
                not loopback_ipv6(), reason="no IPv6 loopback here"
            ),
        ),
    ],
)
def test_the_server_answers_metrics_and_nothing_else(var_dir, host):
    server = MetricsServer((host, 0))
    server.start()
    try:
        host, port = server.address
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        status, kind, body = get(f"http://{where}/metrics?x=1")
        assert (status, kind) == (200, CONTENT_TYPE)
        parsed(body.decode())
        assert get(f"http://{where}/") == (
            404,
            "text/plain; charset=utf-8",
            b"see /metrics\n",
        )
        # What the command says in one line, the server says with a 500.
        path = block("out")
        status, _, body = get(f"http://{where}/metrics")
        assert (status, body) == (
            500,
            f"[Errno 20] Not a directory: '{path}'\n".encode(),
        )
    finally:
        server.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=5).close()


def test_an_address_in_use_is_a_metrics_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(MetricsError) as failed:
            MetricsServer(("127.0.0.1", port))
    assert str(failed.value) == (
        f"cannot serve the metrics on 127.0.0.1:{port}: Address already in use"
    )
    server = MetricsServer(("127.0.0.1", 0))
    server.close()  # never started: only the socket to close


def test_every_family_is_on_the_monitoring_page():
    page = (DOCS / "monitoring.rst").read_text()
    documented = re.findall(r"^   \* - ``(mailqueue_\w+)``", page, re.MULTILINE)
    assert documented == list(FAMILIES)

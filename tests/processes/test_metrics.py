"""A real master serves its metrics over HTTP (see tests/test_metrics.py)."""

import os
import socket

import pytest
from helpers import BROKEN, MESSAGE, get, parsed, value, values
from sites import wait_for  # this directory is on sys.path

from mailqueue import config, create_list, message_from_string
from mailqueue.metrics import (
    CONTENT_TYPE,
    read_counters,
)

pytestmark = pytest.mark.timeout(120)


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_real_master_serves_them_over_http_until_it_stops(site, tmp_path):
    (tmp_path / "broken.py").write_text(BROKEN)
    port = free_port()
    site = site(
        f"[master]\nmetrics_listen: 127.0.0.1:{port}\n"
        "[runner.in]\nsleep_time: 0.1s\n[runner.out]\nsleep_time: 0.1s\n"
        "[runner.broken]\nclass: broken.BrokenRunner\nmax_restarts: 2\n"
    )
    mlist = create_list("test@example.com")
    config.switchboards["in"].enqueue(
        message_from_string(MESSAGE.format(1)), listid=mlist.list_id
    )
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    site.run("start", env=os.environ | {"PYTHONPATH": path})
    url = f"http://127.0.0.1:{port}/metrics"

    def metrics():
        status, kind, body = get(url)
        assert (status, kind) == (200, CONTENT_TYPE)
        return parsed(body.decode())

    # The runner counts the delivery, the master the restarts (two, then
    # it gives up on the broken runner for its window).
    wait_for(
        lambda: value(metrics()["mailqueue_deliveries_total"], queue="out") == 1,
        60,
        "the delivery to be counted",
    )
    wait_for(lambda: "giving up" in site.log("error.log"), 60, "the master to give up")
    families = metrics()
    assert value(families["mailqueue_runner_restarts_total"], queue="broken") == 2
    assert value(families["mailqueue_runner_restarts_total"], queue="in") == 0
    runners = site.status()["runners"]
    owners = families["mailqueue_slice_owner"]
    assert values(owners, queue="in") == {
        (
            ("host", config.host_name),
            ("pid", str(runners["in:0:1"]["pid"])),
            ("queue", "in"),
            ("slice", "0"),
        ): 1
    }
    assert value(owners, queue="broken") == 0
    assert value(families["mailqueue_queue_entries"], queue="in", state="queued") == 0

    site.run("stop")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    # The counts outlive the master.
    assert read_counters(site.var_dir)["broken"] == {"restarts": 2}


def test_a_master_that_cannot_have_its_address_does_not_start(site):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        site = site(f"[master]\nmetrics_listen: 127.0.0.1:{port}\n")
        started = site.run("start", check=False)
    assert started.returncode == 1
    assert started.stderr.startswith("mailqueue: error: the master exited at once")
    assert site.log("master.out") == (
        "mailqueue: error: cannot serve the metrics on "
        f"127.0.0.1:{port}: Address already in use\n"
    )
    assert not os.path.exists(os.path.join(site.var_dir, "master.json"))
    assert site.run("status", check=False).returncode == 1

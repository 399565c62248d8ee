"""mailqueue's tools on a running GNU Mailman 3.3.10 site.

A few hundred posts go through a live Mailman (its own venv, an SMTP server on
loopback as its MTA).  While its runners work, mailqueue, pointed at the
site's mailman.cfg, lists, shows, holds and releases, requeues and deletes
entries, and unshunts what a failing handler shunted.  In the end every post
that was not deleted reached the SMTP server exactly once, nothing is in
``bad``, Mailman logged no error but the failing handler's, and nothing of
mailqueue's is in Mailman's tree.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mailman_site.site import DELIVERY_QUEUES, MailmanSite, mailman_venv, post_text

ROOT = Path(__file__).resolve().parents[2]
VENV = os.environ.get(
    "MAILQUEUE_MAILMAN_VENV", str(ROOT / "build" / "mailman-site-venv")
)
MESSAGE_ID = re.compile(r"<mq-test-[0-9]+@example\.com>")
GOOD, FLAKY = 280, 20


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)
    return found


class Mailqueue:
    """The mailqueue command (this checkout's), on one site's configuration."""

    def __init__(self, config_file):
        self.config_file = str(config_file)

    def __call__(self, *args, status=0):
        done = subprocess.run(
            [sys.executable, "-m", "mailqueue", "-C", self.config_file, *args],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        if status is not None:
            assert done.returncode == status, (args, done.stdout, done.stderr)
        return done

    def json(self, *args, status=0):
        return json.loads(self(*args, "--json", status=status).stdout)

    def entries(self, queue):
        return self.json("list", "-q", queue)


def message_ids(entries):
    return [MESSAGE_ID.search(entry["subject"])[0] for entry in entries]


@pytest.mark.timeout(900)
def test_mailqueue_tools_on_a_running_mailman_site(tmp_path):
    started = time.monotonic()
    bin_dir = mailman_venv(VENV)
    with MailmanSite(tmp_path / "site", bin_dir) as site:
        address = site.create_list("test@example.com")
        site.start()
        config_file = tmp_path / "mailqueue.cfg"
        config_file.write_text(f"[mailman]\nconfig: {site.paths.cfg_file}\n")
        mq = Mailqueue(config_file)

        # status knows Mailman's master and its runners.
        status = mq.json("status")
        assert status["master"] == site.master_pid
        assert status["runners"]["out:0:1"]["state"] == "running"
        assert status["runners"]["shunt:0:1"]["state"] == "not started"
        out_pid = status["runners"]["out:0:1"]["pid"]
        text = mq("status").stdout
        assert f"GNU Mailman master running (pid {site.master_pid})" in text

        # The out runner stops (Mailman's master does not restart a runner
        # that SIGTERM stopped); posts pile up in out, some get shunted.
        os.kill(out_pid, signal.SIGTERM)
        wait_for(
            lambda: (
                mq.json("status", status=None)["runners"]["out:0:1"]["state"]
                == "not running"
            ),
            60,
            "out runner stopped",
        )
        site.set_flaky(True)
        good = site.inject_many(GOOD // 2, address)
        flaky = site.inject_many(FLAKY, address, fail=True)
        good += site.inject_many(GOOD // 2, address)

        # While in and pipeline work: the bounces runner sleeps 2 minutes
        # between passes, so an entry waits there; deleting it is refused
        # while that runner runs, unless forced.
        site.inject(post_text("<mq-bounce@example.com>", address), address, "bounces")
        [bounce] = wait_for(lambda: mq.entries("bounces"), 60, "a bounce queued")
        refused = mq("delete", bounce["filebase"], status=1)
        assert refused.stderr == (
            "mailqueue: error: 1 entry of bounces left alone: GNU Mailman's "
            f"bounces runner (pid {status['runners']['bounces:0:1']['pid']}) works "
            f"that queue; stop it first (kill -TERM "
            f"{status['runners']['bounces:0:1']['pid']}), or use --force\n"
        )
        mq("delete", "--force", bounce["filebase"])
        assert mq.entries("bounces") == []
        wait_for(lambda: len(site.queue_files("out")) == GOOD, 300, "all in out")
        wait_for(lambda: len(site.queue_files("shunt")) == FLAKY, 60, "shunted")
        out = mq.entries("out")
        assert len(out) == GOOD and not any(entry["problem"] for entry in out)
        shown = mq("qfile", out[0]["filebase"]).stdout
        assert MESSAGE_ID.search(shown)[0] == message_ids(out)[0]
        assert "recipients" in shown

        # Hold 30, release 20 of them now; delete 5; requeue 10 to retry (its
        # live runner sends them back to out); reset the count of 2.
        held = [entry["filebase"] for entry in out[:30]]
        mq("hold", *held)
        assert len(mq.entries("hold/out")) == 30
        mq("release", *held[:20])
        deleted = out[30:35]
        mq("delete", *[entry["filebase"] for entry in deleted])
        requeued = [entry["filebase"] for entry in out[35:45]]
        mq("requeue", "--to", "retry", *requeued)
        mq("requeue", "--to", "out", "--reset-count", out[45]["filebase"])
        wait_for(lambda: len(site.queue_files("retry")) == 0, 60, "retry done")

        # The failing handler is fixed: mailqueue's unshunt sends them back
        # to pipeline, whose runner works on.
        site.set_flaky(False)
        done = mq("unshunt")
        assert done.stdout.count("\n") == FLAKY and done.stderr == ""
        assert done.stdout.count(" to pipeline as ") == FLAKY
        wait_for(
            lambda: len(site.queue_files("out")) == GOOD - 10 - 5 + FLAKY,
            120,
            "unshunted in out",
        )
        mq("release", "--all")

        # Mailman again, all runners: everything not deleted goes out once.
        # Stopped only once its working runners are idle: a Mailman runner
        # that SIGTERM catches inside finish() shunts the entry it finished
        # (Mailman's own race, seen with the digest runner).
        site.wait_queues_empty(("in", "pipeline", "digest"), timeout=120)
        site.stop_mailman()
        site.start()
        expected = set(good + flaky) - set(message_ids(deleted))
        received = site.wait_delivered(expected, timeout=300)
        site.wait_queues_empty(DELIVERY_QUEUES, timeout=120)
        delivered = Counter({mid: received[mid] for mid in good + flaky})
        assert delivered == Counter(
            {mid: (0 if mid in message_ids(deleted) else 1) for mid in good + flaky}
        )
        assert site.queue_files("bad", ".psv") == [] and site.queue_files("bad") == []
        assert site.queue_files("shunt") == []

        # Mailman's logs: the failing handler's tracebacks, nothing else.
        logs = "\n".join(site.logs().values())
        assert logs.count("Traceback") == FLAKY
        assert logs.count("RuntimeError: flaky handler") == FLAKY
        for sign in (
            "mailqueue",
            "Skipping and preserving",
            "Failed to unlink",
            "Cannot",
            "ModuleNotFoundError",
            "UnpicklingError",
        ):
            assert sign not in logs, sign

        # Nothing of mailqueue's in Mailman's tree; its own state beside it.
        ours = [
            path
            for path in site.paths.var_dir.rglob("*")
            if path.name in ("hold", "unshunt.lock", "admin.log")
            or path.name.endswith((".owner", ".prefer", ".spare"))
        ]
        assert ours == []
        admin = (site.paths.root / "mailqueue" / "logs" / "admin.log").read_text()
        assert admin.count("unshunted") == FLAKY
        print(
            f"{GOOD + FLAKY} posts, 30 held (20 released at once), 5 deleted, "
            f"10 requeued, 1 count reset, {FLAKY} unshunted; "
            f"{sum(delivered.values())} delivered, each once; "
            f"{time.monotonic() - started:.0f} s"
        )

"""End to end: a real GNU Mailman 3.3.10 site delivers, shunts and unshunts.

The venv is built once into build/mailman-site-venv (or MAILQUEUE_MAILMAN_VENV)
and reused; the site lives in the test's tmp_path.
"""

import os
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from mailman_site.site import (
    DEFAULT_MEMBERS,
    DELIVERY_QUEUES,
    MailmanSite,
    mailman_venv,
)

ROOT = Path(__file__).resolve().parents[2]
VENV = os.environ.get(
    "MAILQUEUE_MAILMAN_VENV", str(ROOT / "build" / "mailman-site-venv")
)


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


@pytest.mark.timeout(600)
def test_site_delivers_shunts_and_unshunts(tmp_path):
    started = time.monotonic()
    bin_dir = mailman_venv(VENV)
    venv_seconds = time.monotonic() - started
    with MailmanSite(tmp_path / "site", bin_dir) as site:
        address = site.create_list("test@example.com")
        started = time.monotonic()
        site.start()
        print(f"venv: {venv_seconds:.1f} s, start: {time.monotonic() - started:.1f} s")
        site.set_flaky(True)
        good = site.inject_many(40, address)
        flaky = site.inject_many(10, address, fail=True)

        site.wait_delivered(good, timeout=120)
        wait_for(lambda: len(site.queue_files("shunt")) == 10, 60, "10 shunted")
        site.wait_queues_empty()
        received = Counter(entry["message_id"] for entry in site.delivered())
        assert {mid: received[mid] for mid in good + flaky} == {
            **dict.fromkeys(good, 1),
            **dict.fromkeys(flaky, 0),
        }
        shunted = site.queue_entries("shunt")
        assert sorted(entry["message_id"] for entry in shunted) == sorted(flaky)
        assert {entry["metadata"]["whichq"] for entry in shunted} == {"pipeline"}

        site.set_flaky(False)
        site.mailman("unshunt")
        site.wait_delivered(flaky, timeout=120)
        site.wait_queues_empty([*DELIVERY_QUEUES, "shunt"])
        delivered = site.delivered()
        assert Counter(entry["message_id"] for entry in delivered) == Counter(
            good + flaky
        )
        for entry in delivered:
            assert sorted(entry["rcpt_tos"]) == sorted(DEFAULT_MEMBERS)
            assert entry["mail_from"] == "test-bounces@example.com"

        logs = "\n".join(site.logs().values())
        assert logs.count("Traceback (most recent call last)") == 10
        assert len(re.findall(r"^RuntimeError: flaky handler$", logs, re.M)) == 10
        assert logs.count("SHUNTING: ") == 10
    assert site.forced_kills == []

"""The hostile corpus in a running GNU Mailman, without and with the plugin.

See hostile_site.py for what a run does.  With the plugin: no code runs, no
runner dies, every file the plugin's loader refuses is preserved in ``bad``
(and named in Mailman's error log), and the ordinary posts behind them are
delivered.  Without it, Mailman runs the files' code: the same detectors
that find nothing with the plugin find it without, so they can see harm.
With MAILQUEUE_PLUGIN_REPORT set (``make mailman-plugin-test``), both runs'
figures are written there for the documentation.
"""

import json
import os
from pathlib import Path

import pytest
from hostile_site import POSTS, hostile_runs


@pytest.mark.timeout(1500)
def test_the_hostile_corpus_in_a_running_mailman(tmp_path):
    found = hostile_runs(tmp_path)
    report = os.environ.get("MAILQUEUE_PLUGIN_REPORT")
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps(found, indent=2) + "\n")
    without = found["runs"]["without the plugin"]
    plugged = found["runs"]["with the plugin"]
    refused = set(found["refused by the plugin's loader"])
    assert len(refused) > plugged["files"] // 2

    # GNU Mailman alone runs the corpus's code, in its runners and in qfile.
    assert without["code executed by a runner"] > 0
    assert without["code executed by mailman qfile"] > 0
    assert without["runner processes that died"] > 0

    # With the plugin: nothing ran, nothing died, nothing hung.
    for key in (
        "code executed by a runner",
        "code executed by mailman qfile",
        "code executed, case unknown",
        "runner processes that died",
        "files left in in",
        "mailman qfile hangs",
        "mailman qfile crashes",
    ):
        assert plugged[key] == 0, (key, plugged[key], plugged["runner exits"])
    assert plugged["posts delivered"] == POSTS
    # Every refused file is preserved in bad, with a line in the error log.
    # (Mailman may set aside some of the files the loader accepts too: data
    # it cannot use, as it does without the plugin.)
    for name in refused:
        case = plugged["cases"][name]
        assert case["in bad"] and case["logged as unparseable"], (name, case)
    # mailman qfile reads a file as before, or stops on it with an error.
    for name, case in plugged["cases"].items():
        if case["qfile"] != without["cases"][name]["qfile"]:
            assert case["qfile"].startswith("error: "), (name, case)

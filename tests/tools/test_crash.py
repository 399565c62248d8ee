"""Every crash state of every queue operation (reduced), and planted bugs caught."""

import shutil

import crash
import pytest

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        shutil.which("strace") is None, reason="make test installs strace first"
    ),
]


def test_every_operation_is_explored_and_no_state_violates_the_spec():
    report = crash.run(crash.REDUCED_LIMIT)
    explored = {outcome["scenario"] for outcome in report["operations"]}
    assert explored == {scenario.name for scenario in crash.SCENARIOS}
    for outcome in report["operations"]:
        # Each scenario's steps were traced, and states tried at every point.
        assert outcome["calls"] > 0, outcome["scenario"]
        assert outcome["states"] > outcome["points"], outcome["scenario"]
        assert outcome["violations"] == [], outcome
    assert report["violations"] == 0


@pytest.mark.parametrize(
    ("bug", "scenario", "kind"),
    [
        # The directory is not flushed after the rename that queues an entry.
        ("no-directory-fsync-after-rename", "enqueue", "lost"),
        # A spare's new bytes are not flushed before it is renamed to .pck.
        ("spare-not-flushed", "enqueue-spare", "torn"),
        # What this test found: a spare written over before the removal of
        # its old name (the finished .bak) reached the disk.
        ("spare-taken-without-flush", "finish", "torn"),
        # What it found too: moves between directories by rename, and new
        # directories not flushed into their parents.
        ("move-by-rename", "hold", "lost"),
        ("directory-not-flushed-when-made", "finish-preserve", "lost"),
        ("move-without-flush", "release", "lost"),
    ],
)
def test_a_planted_protocol_bug_is_caught(bug, scenario, kind):
    report = crash.run(crash.REDUCED_LIMIT, plant=bug, only=[scenario])
    (outcome,) = report["operations"]
    found = {v["violation"].split(":")[0] for v in outcome["violations"]}
    assert kind in found, outcome["violations"]

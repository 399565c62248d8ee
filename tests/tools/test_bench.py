"""The side-by-side benchmark still runs: a tiny run of it, in a child.

``make bench`` is the real run; this only keeps it from rotting, and asserts
nothing about speed.
"""

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench" / "bench_queue.py"


def test_the_benchmark_runs_every_measure_side_by_side(tmp_path):
    report = tmp_path / "bench.json"
    arguments = ["--rounds", "2", "--cycles", "2", "--entries", "200"]
    arguments += ["--drain-scale", "0.02", "--peak-entries", "500"]
    arguments += ["--scale", "50", "100"]
    arguments += ["--json", str(report)]
    finished = subprocess.run(
        [sys.executable, "-W", "ignore::DeprecationWarning", str(BENCH), *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    figures = json.loads(report.read_text())
    for measure in ("durable cycle", "cycle, fsync off"):
        assert set(figures[measure]) == {"1 KB", "100 KB", "5 MB"}
        for result in figures[measure].values():
            assert set(result["figures"]) == {"mailqueue", "mailman", "floor"}
            assert set(result["ratios"]) == {"mailqueue / mailman", "mailqueue / floor"}
    assert set(figures["listing"]) == {
        "200 entries",
        "200 entries, slice 0 of 4",
        "200 entries, 1 in 7 of 9 digits",
        "200 entries, 1 in 7 of 9 digits, slice 0 of 4",
    }
    plugin = "GNU Mailman's runner drain with the plugin"
    assert set(figures["drain"]) == {
        f"{kind}, {size}"
        for kind in ("runner drain", "bare switchboard drain", plugin)
        for size in ("1 KB", "100 KB")
    }
    for what, result in figures["drain"].items():
        if what.startswith(plugin):
            assert set(result["ratios"]) == {"with the plugin / without"}
        else:
            assert set(result["ratios"]) == {"mailqueue / mailman"}
    grows = figures["as the queue grows"]
    assert set(grows) == {"50 entries", "100 entries"}
    for result in grows.values():
        assert result["first message (ms)"] > 0
    peak = figures["peak memory"]["listing 500 entries"]
    assert set(peak["figures"]) == {"mailqueue", "mailman", "floor"}

"""The full hostile-file run: ``make fuzz``.

Runs the hand-made corpus and ``--cases`` generated cases (10,000 by
default) through every path, prints the figures, writes them as JSON for
docs/reliability.rst, and exits 1 if any case did harm.
"""

import argparse
import datetime
import itertools
import json
import platform
import sys
import time
from pathlib import Path

from entries import classics, generated
from harness import FAILURE_KEYS, Harness, summarize

import mailqueue


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="generated cases")
    parser.add_argument("--seed", type=int, default=1, help="the generators' seed")
    parser.add_argument("--jobs", type=int, default=2, help="children at a time")
    parser.add_argument("--report", type=Path, help="write the figures here, as JSON")
    arguments = parser.parse_args()
    started = time.monotonic()
    done = 0

    def progress(outcome) -> None:
        nonlocal done
        done += 1
        if done % 1000 == 0:
            print(f"{done} cases, {time.monotonic() - started:.0f} s", flush=True)

    with Harness() as harness:
        cases = itertools.chain(
            classics(harness.marker), generated(arguments.cases, arguments.seed)
        )
        outcomes = harness.run(cases, arguments.jobs, progress)
    report = summarize(outcomes, time.monotonic() - started)
    report["run"] = {
        "command": f"make fuzz (tools/hostile/fuzz.py --cases {arguments.cases} "
        f"--seed {arguments.seed})",
        "date": datetime.date.today().isoformat(),
        "mailqueue": mailqueue.__version__,
        "python": platform.python_version(),
        "limits": "10 s and 1 GiB a case; each case through every path",
    }
    text = json.dumps(report, indent=2)
    print(text)
    if arguments.report:
        arguments.report.write_text(text + "\n")
    return 1 if any(report[key] for key in FAILURE_KEYS) else 0


if __name__ == "__main__":
    sys.exit(main())

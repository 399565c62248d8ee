"""The spec against every GNU Mailman 3 release: ``make conformance-matrix``.

Each release gets its own virtual environment under build/matrix/ (kept, so
a second run installs nothing), with this project and the release; the spec
(docs/) runs against it with the Mailman adapter, and the report of each run
is kept.  The matrix (release x section x level, the releases that could not
be installed or imported and why, and the examples whose outcome changed
from one release to the next) goes to the JSON file ``--report`` names.  It
judges nothing: the known divergences are 3.3.10's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "matrix"


def releases() -> list[str]:
    """Every GNU Mailman 3 release the package index serves, oldest first."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "mailman"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    found = re.search(r"Available versions: (.*)", out)
    versions = [v.strip() for v in found[1].split(",")] if found else []
    return sorted(
        (v for v in versions if v.startswith("3.")),
        key=lambda v: tuple(map(int, v.split("."))),
    )


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else "no output"


def era(release: str) -> list[str]:
    """What an older release needs pinned: the newest of what it asks for
    may be newer than it can use (SQLAlchemy 2 came after 3.3.8)."""
    if tuple(map(int, release.split("."))) < (3, 3, 9):
        return ["sqlalchemy<2"]
    return []


def prepare(release: str) -> tuple[Path | None, str]:
    """The venv's python for *release*, or None and why it cannot be had."""
    venv = BUILD / f"venv-{release}"
    python = venv / "bin" / "python"
    pins = era(release)
    check = [str(python), "-c", "import mailman.core.runner, mailqueue, pytest, sybil"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        if pins:
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", *pins],
                capture_output=True,
                timeout=600,
                check=False,
            )
        return python, ""
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    for what in (
        [f"mailman=={release}", *pins],
        ["-e", f"{ROOT}[test]", "psycopg[binary]", *pins],
    ):
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *what],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        if done.returncode:
            return None, f"pip install {' '.join(what)}: {last_line(done.stderr)}"
    imported = subprocess.run(check, capture_output=True, text=True)
    if imported.returncode:
        return None, f"installs, but does not import: {last_line(imported.stderr)}"
    return python, ""


def run_spec(python: Path, release: str) -> dict | str:
    """Run the spec against *release*; its report, or why there is none."""
    # Not build/conformance/mailman: that is the newest release's, for the docs.
    report = BUILD / "run" / "report.json"
    report.unlink(missing_ok=True)
    ran = subprocess.run(
        # The command an implementer runs: mailqueue conformance mailman.
        [
            *(str(python), "-m", "mailqueue.conformance", "mailman"),
            f"--report={report.parent}",
        ],
        cwd=ROOT,
        env=os.environ | {"MAILQUEUE_ANY_MAILMAN": "1"},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if not report.exists():
        errors = re.findall(
            r"^INTERNALERROR>[ \t]+(\w+(?:Error|Exception):.*)$",
            ran.stdout + ran.stderr,
            re.MULTILINE,
        )
        why = errors[-1].strip()[:200] if errors else last_line(ran.stdout + ran.stderr)
        return f"installs, but cannot be started here: {why}"
    data = json.loads(report.read_text())
    (BUILD / f"report-{release}.json").write_text(json.dumps(data, indent=1))
    return data


def summary(report: dict) -> dict:
    sections: dict[str, list[int]] = {}
    for example in report["examples"]:
        key = f"{example['document']} / {example['section']} / {example['level']}"
        counts = sections.setdefault(key, [0, 0])
        counts[0 if example["outcome"] == "passed" else 1] += 1
    return {"by_level": report["by_level"], "sections": sections}


def outcomes(report: dict) -> dict[str, str]:
    return {
        f"{e['document']} / {e['section']} / {e['example']}": e["outcome"]
        for e in report["examples"]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", nargs="*", help="default: every release")
    parser.add_argument("--report", type=Path, default=BUILD / "matrix.json")
    arguments = parser.parse_args()
    BUILD.mkdir(parents=True, exist_ok=True)
    wanted = arguments.releases or releases()
    matrix: dict = {"date": time.strftime("%Y-%m-%d"), "releases": {}, "changes": []}
    previous = None
    for release in wanted:
        python, why = prepare(release)
        result = why if python is None else run_spec(python, release)
        if isinstance(result, str):
            matrix["releases"][release] = {"ran": False, "why": result}
            print(f"{release}: not run: {result}", flush=True)
            continue
        matrix["releases"][release] = {"ran": True, "pinned": era(release)} | summary(
            result
        )
        print(f"{release}: {result['by_level']}", flush=True)
        now = outcomes(result)
        if previous is not None:
            name, before = previous
            changed = sorted(k for k in now if k in before and now[k] != before[k])
            matrix["changes"].append(
                {
                    "from": name,
                    "to": release,
                    "examples": [f"{k}: {before[k]} -> {now[k]}" for k in changed],
                }
            )
        previous = (release, now)
    arguments.report.parent.mkdir(parents=True, exist_ok=True)
    arguments.report.write_text(json.dumps(matrix, indent=1) + "\n")
    print(f"(the matrix is in {arguments.report})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

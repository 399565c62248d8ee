"""mailqueue's GNU Mailman plugin (mailqueue/mailman.py) inside Mailman.

The tests are in_mailman.py's; they start GNU Mailman, which this process
must not import, so they run in a child pytest of this venv (which has the
``mailman`` extra).
"""

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.timeout(300)
def test_the_plugin_inside_mailman(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore::DeprecationWarning",
            "--basetemp",
            str(tmp_path / "base"),
            str(HERE / "in_mailman.py"),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout

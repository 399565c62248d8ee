"""The README's walk-through works as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_five_minute_walk_through(tmp_path):
    readme = (ROOT / "README.md").read_text()
    [block] = re.findall(r"<!-- walkthrough:.*?-->\n```sh\n(.*?)```", readme, re.S)
    # Run it from a fresh directory, with this interpreter's environment as .venv.
    os.symlink(Path(sys.executable).parent.parent, tmp_path / ".venv")
    result = subprocess.run(
        ["bash", "-euc", block],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert "created test@example.com (list-id test.example.com)" in lines
    assert any(line.startswith("mailqueue master started (pid ") for line in lines)
    assert any(re.fullmatch(r"in +0 +0 +0 +0 +0", line) for line in lines)
    assert len(os.listdir(tmp_path / "var/lists/test.example.com/new")) == 1
    assert any(
        re.fullmatch(r"mailqueue master \(pid \d+\) stopped", line) for line in lines
    )


def test_the_docs_quick_start_shows_the_same_walk_through():
    readme = (ROOT / "README.md").read_text()
    [block] = re.findall(r"<!-- walkthrough:.*?-->\n```sh\n(.*?)```", readme, re.S)
    index = (ROOT / "docs" / "index.rst").read_text()
    [shown] = re.findall(
        r"\.\. walkthrough:.*?\n\n\.\. code-block:: sh\n\n(.*?)\n\n\S", index, re.S
    )
    assert [line.removeprefix("    ") for line in shown.splitlines()] == (
        block.splitlines()
    )

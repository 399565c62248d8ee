"""Each document runs in its own state: in any order, alone or together."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailqueue import config, message_from_string
from mailqueue.testing import isolated_state

ROOT = Path(__file__).resolve().parent.parent
# The documents that hold examples: doctests, or shell sessions that run (the
# landing page has neither).
DOCUMENTS = sorted(
    str(path)
    for path in (ROOT / "docs").glob("*.rst")
    if ">>>" in path.read_text() or ".. console-sessions: run" in path.read_text()
)


def run_pytest(cwd, *args):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(ROOT),
            "-c",
            str(ROOT / "pyproject.toml"),
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_documents_pass_in_any_order_and_leave_nothing_behind(tmp_path, order):
    documents = DOCUMENTS if order == "forward" else DOCUMENTS[::-1]
    result = run_pytest(tmp_path, *documents)
    assert result.returncode == 0, result.stdout + result.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=os.path.basename)
def test_each_document_passes_alone(tmp_path, document):
    result = run_pytest(tmp_path, document)
    assert result.returncode == 0, result.stdout + result.stderr


def test_isolated_state_pops_what_the_block_pushed_and_removes_its_directory():
    before = config.layers
    with isolated_state() as var_dir:
        # Like the runner document: push a layer and never pop it.
        config.push("left-behind", "[runner.test]\n")
        config.switchboards["test"].enqueue(message_from_string("Subject: hi\n\n"))
        assert config.QUEUE_DIR.startswith(var_dir)
    assert config.layers == before
    assert "test" not in config.switchboards
    assert not os.path.exists(var_dir)

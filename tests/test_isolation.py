"""Each document runs in its own state: alone, or after the others.

What the documents in docs/ promise about one another, and where each
promise is checked, so that the spec runs once in ``make test`` and each
document once more, alone:

- **After the others, in order.**  The ordinary run (``make test``, or
  ``pytest`` with no arguments) runs every document in one process, in the
  order of their names, before the tests.  A document that leaves state
  behind that a later one trips over fails there, so it is not run again
  here.
- **Alone.**  Each document passes in a process of its own (below): none
  needs what another one did before it.  That run also checks that it leaves
  nothing behind, neither in the directory it runs in nor in the temporary
  directory (``TMPDIR``): what a document makes goes in the var directory it
  is given, which goes with its state when it ends.
- **Undone afterwards.**  The state the documents share through mailqueue
  (configuration layers, switchboards, the var directory) is undone by
  :func:`~mailqueue.testing.isolated_state`, which every document runs in,
  whatever it left: the last test checks that directly.
- **In reverse order**, a document that leaves behind what an *earlier*
  one trips over would show.  Given the two checks above, that takes a leak
  of process-wide state outside mailqueue's (a signal handler, a logging
  handler, an environment variable) that the ordinary order does not trip
  over; ``make isolation`` runs the documents in reverse order, by hand, for
  a change to such state.  It is not in ``make test``: it would run the
  whole spec a second time for that.
"""

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


def run_pytest(cwd, tmpdir, *args):
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
        env={**os.environ, "TMPDIR": str(tmpdir)},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("document", DOCUMENTS, ids=os.path.basename)
def test_each_document_passes_alone_and_leaves_nothing_behind(tmp_path, document):
    cwd, tmpdir = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmpdir.mkdir()
    result = run_pytest(cwd, tmpdir, document)
    assert result.returncode == 0, result.stdout + result.stderr
    # It ran its examples (a document that collected nothing would pass too).
    assert " passed" in result.stdout.splitlines()[-1], result.stdout
    assert os.listdir(cwd) == []
    assert os.listdir(tmpdir) == []


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

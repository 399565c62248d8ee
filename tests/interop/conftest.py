"""GNU Mailman's own venv, where its side of these tests runs.

The venv is built once into build/mailman-site-venv (or
$MAILQUEUE_MAILMAN_VENV) and reused, as tests/mailman_site builds it; it has
GNU Mailman 3.3.10 and not mailqueue.  Everything run there runs in an empty
directory of its own and with an environment that steers no Python and no
Mailman, so that nothing of mailqueue can be imported; so does this Python
run with the standard library only (``standard_library_python``).
"""

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mailman_site.site import mailman_venv

ROOT = Path(__file__).resolve().parents[2]
VENV = os.environ.get(
    "MAILQUEUE_MAILMAN_VENV", str(ROOT / "build" / "mailman-site-venv")
)


def clean_env():
    """This process's environment without PYTHON*, COVERAGE_*, MAILMAN_* and
    VIRTUAL_ENV: nothing that would steer a Python, or Mailman."""
    dropped = ("PYTHON", "COVERAGE_", "MAILMAN_", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ in the source tree
    return env


@dataclass(frozen=True)
class Interpreter:
    """A Python to run, in *cwd* with *env*."""

    python: str
    cwd: str
    env: dict = field(repr=False)  # the whole environment: too long to show
    options: tuple = ()

    def run(self, *args, timeout=300):
        """Run ``python OPTIONS... ARGS...``; return the completed process
        (its output as text)."""
        return subprocess.run(
            [self.python, *self.options, *args],
            capture_output=True,
            text=True,
            check=False,
            stdin=subprocess.DEVNULL,
            cwd=self.cwd,
            env=self.env,
            timeout=timeout,
        )


@pytest.fixture(scope="session")
def mailman_python(tmp_path_factory):
    """The Python of GNU Mailman's venv, run where mailqueue cannot be imported."""
    bin_dir = mailman_venv(VENV)
    cwd = tmp_path_factory.mktemp("mailman-cwd")
    return Interpreter(os.path.join(bin_dir, "python"), str(cwd), clean_env())


@pytest.fixture(scope="session")
def standard_library_python(tmp_path_factory):
    """This Python with the standard library only: ``-I -S`` (no site-packages,
    no environment variables, no current directory on sys.path)."""
    cwd = tmp_path_factory.mktemp("standard-library-cwd")
    return Interpreter(sys.executable, str(cwd), clean_env(), ("-I", "-S"))

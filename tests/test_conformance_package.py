"""The conformance suite as a user gets it: the built wheel, no checkout.

The wheel is built from this checkout and installed, with nothing else of
the repository, into a fresh venv; every command runs from an empty
directory.  Then the example adapter package (tests/example_adapter, an
implementation outside mailqueue) is installed beside it and checked the
same way, once as it is and once with the difference planted in it.
"""

import ast
import doctest
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mailqueue.conformance.spec import SPEC_DOCUMENTS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "example_adapter"

#: Building two wheels, a venv and installing pytest and Sybil in it.
pytestmark = pytest.mark.timeout(600)


def _environment(**extra):
    # Nothing of this checkout or of this test run reaches the venv.
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PYTHON", "COVERAGE", "MAILQUEUE", "VIRTUAL_ENV"))
    }
    environment["PATH"] = os.pathsep.join(
        part
        for part in environment.get("PATH", "").split(os.pathsep)
        if not part.startswith(str(ROOT))
    )
    return {**environment, **extra}


def _run(command, cwd, **extra):
    return subprocess.run(
        command,
        cwd=cwd,
        env=_environment(**extra),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=500,
    )


def _checked(command, cwd, **extra):
    done = _run(command, cwd, **extra)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    """mailqueue's wheel and the example adapter's, built as a release builds them."""
    directory = tmp_path_factory.mktemp("wheels")
    for source in (ROOT, EXAMPLE):
        _checked(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "-w",
                str(directory),
                str(source),
            ],
            directory,
        )
    (mailqueue,) = directory.glob("mailqueue-*.whl")
    (nospare,) = directory.glob("nospare-*.whl")
    return mailqueue, nospare


def _venv(directory, *requirements):
    _checked([sys.executable, "-m", "venv", str(directory)], directory.parent)
    python = directory / "bin" / "python"
    _checked([python, "-m", "pip", "install", "--quiet", *requirements], directory)
    return directory / "bin"


def console_blocks(path):
    """The ``console`` blocks of a page: each a list of (command, expected output)."""
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if line.strip() != ".. code-block:: console":
            continue
        session = []
        for body in lines[index + 2 :]:
            if body and not body.startswith("    "):
                break
            text = body[4:]
            if text.startswith("$ "):
                session.append([text[2:], []])
            elif session:
                session[-1][1].append(text)
        blocks.append(
            [(command, "\n".join(out).strip() + "\n") for command, out in session]
        )
    return blocks


MARK = "@@ quick start @@"


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory, wheels):
    """Every console session of docs/conformance.rst, run in order in one shell.

    It runs in a fresh venv (which it fills itself, by the page's own
    ``pip install`` lines) and a directory that holds nothing but a copy of
    the example package, ``nospare/``.  The one change to the page's
    commands: ``'mailqueue[conformance]'``, which a user gets from the
    package index, is the wheel built from this checkout.
    """
    mailqueue, _ = wheels
    root = tmp_path_factory.mktemp("quick-start")
    venv = root / "venv"
    _checked([sys.executable, "-m", "venv", str(venv)], root)
    directory = root / "empty"
    directory.mkdir()
    shutil.copytree(
        EXAMPLE, directory / "nospare", ignore=shutil.ignore_patterns("__pycache__")
    )
    commands = [
        c for block in console_blocks(ROOT / "docs/conformance.rst") for c in block
    ]
    script = []
    for command, _ in commands:
        command = command.replace(
            "'mailqueue[conformance]'", f"'{mailqueue}[conformance]'"
        )
        script += [
            command,
            f'rc=$?; echo "{MARK} $rc"; echo "{MARK}" >&2; (exit $rc)',
        ]
    done = _run(
        ["bash", "-c", "\n".join(script)],
        directory,
        PATH=f"{venv / 'bin'}{os.pathsep}{_environment()['PATH']}",
    )
    outputs = done.stdout.split(f"{MARK} ")[: len(commands)]
    errors = done.stderr.split(f"{MARK}\n")
    ran = []
    for index, (command, expected) in enumerate(commands):
        output = outputs[index]
        if index:
            rc, _, output = output.partition("\n")
            ran[-1]["rc"] = int(rc)
        ran.append(
            {
                "command": command,
                "expected": expected,
                "actual": output,
                "stderr": errors[index] if index < len(errors) else "",
            }
        )
    ran[-1]["rc"] = int(done.stdout.rsplit(f"{MARK} ", 1)[1].strip())
    return venv / "bin", directory, ran


def test_the_pages_commands_run_as_written(quick_start):
    checker = doctest.OutputChecker()
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    _, _, ran = quick_start
    for index, step in enumerate(ran):
        shown = step["expected"] if step["expected"].strip() else ""
        assert checker.check_output(shown, step["actual"], flags), (
            f"$ {step['command']}\n{step['actual']}{step['stderr']}"
        )
        # A failing command shows its status on the page.
        following = ran[index + 1]["command"] if index + 1 < len(ran) else ""
        assert step["rc"] == 0 or following == "echo $?", step
    assert [step["command"] for step in ran][:2] == [
        "pip install --quiet 'mailqueue[conformance]'",
        "mailqueue conformance mailqueue",
    ]


def test_the_reference_conforms_from_the_installed_wheel(quick_start):
    _, directory, ran = quick_start
    reference = ran[1]["actual"]
    closing = _closing_line(reference)
    assert re.fullmatch(r"(\d+) passed, 0 failed", closing), closing
    assert int(closing.split()[0]) > 300
    assert re.search(
        r"^By level: MUST \d+ passed, 0 failed; SHOULD \d+ passed, 0 failed$",
        reference,
        re.MULTILINE,
    )
    for name in SPEC_DOCUMENTS:
        assert f"\n{name}\n" in reference
    # Only the example package, and the report its run was asked for: the
    # runs without --report wrote nothing where they ran.
    assert sorted(os.listdir(directory)) == ["nospare", "report"]


@pytest.fixture(scope="module")
def venv(quick_start):
    """The quick start's venv: mailqueue's wheel, then nospare's package too."""
    return quick_start[0]


@pytest.fixture
def empty(tmp_path):
    directory = tmp_path / "empty"
    directory.mkdir()
    return directory


def _closing_line(output):
    return output.rstrip().splitlines()[-1]


def test_the_wheel_carries_the_spec_documents(venv, empty):
    code = (
        "import mailqueue.conformance.spec as spec, pathlib;"
        "print(spec.documents_directory());"
        "print(*sorted(p.name for p in spec.documents_directory().iterdir()))"
    )
    directory, names = _checked(
        [venv / "python", "-c", code], empty
    ).stdout.splitlines()
    assert Path(directory).is_relative_to(venv.parent / "lib")
    assert names.split() == sorted(SPEC_DOCUMENTS)
    for name in SPEC_DOCUMENTS:
        packaged = Path(directory, name).read_text(encoding="utf-8")
        assert packaged == (ROOT / "docs" / name).read_text(encoding="utf-8")


def test_help_explains_the_command(venv, empty):
    done = _checked([venv / "mailqueue", "conformance", "--help"], empty)
    text = " ".join(done.stdout.split())
    for words in (
        "usage: mailqueue conformance [-h] [--report DIR] [--level {MUST,SHOULD}]",
        "ADAPTER is mailqueue (the reference implementation), mailman",
        "an entry point in the group mailqueue.adapters",
        "The exit status is 0 when every MUST example passes",
        "DIR/report.json and DIR/junit.xml",
        "-k 'Queue and slices'",
    ):
        assert words in text
    assert os.listdir(empty) == []


def test_report_level_and_selection(venv, empty):
    command = [venv / "python", "-m", "mailqueue.conformance", "mailqueue"]
    done = _run(
        [
            *command,
            "--level",
            "MUST",
            "-k",
            "switchboard and slices",
            "--report",
            "out",
        ],
        empty,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert os.listdir(empty) == ["out"]
    assert sorted(os.listdir(empty / "out")) == ["junit.xml", "report.json"]
    report = json.loads((empty / "out" / "report.json").read_text())
    examples = report["examples"]
    assert {(e["document"], e["section"], e["level"]) for e in examples} == {
        ("switchboard.rst", "Queue slices", "MUST")
    }
    passed = len(examples)
    assert {e["outcome"] for e in examples} == {"passed"}
    assert report["totals"] == {"passed": passed}
    assert _closing_line(done.stdout) == f"{passed} passed, 0 failed"
    assert re.search(
        r"^\(and \d+ examples before them, run as their set-up, "
        r"not counted\)$",
        done.stdout,
        re.MULTILINE,
    )


def test_an_unknown_adapter_is_one_line(venv, empty):
    done = _run([venv / "mailqueue", "conformance", "no.such.adapter"], empty)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "mailqueue conformance: error: cannot load the adapter 'no.such.adapter': "
        "No module named 'no'\n"
    )


#: The import name of each distribution the conformance extra may declare.
IMPORT_NAMES = {
    "pytest": "pytest",
    "pytest-timeout": "pytest_timeout",
    "sybil": "sybil",
}


def _needed_by_the_conformance_package():
    """What mailqueue.conformance imports, or looks for, beyond the standard library.

    GNU Mailman's adapter is left out: it needs the ``mailman`` extra.
    """
    needed = set()
    for path in (ROOT / "mailqueue" / "conformance").glob("*.py"):
        if path.name == "mailman.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                needed.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                needed.add(node.module.split(".")[0])
            elif isinstance(node, ast.Call) and (
                getattr(node.func, "attr", None) == "find_spec"
            ):
                # An optional plugin, used when it is there: find_spec("name").
                needed.update(
                    arg.value for arg in node.args if isinstance(arg, ast.Constant)
                )
    return needed - set(sys.stdlib_module_names) - {"mailqueue", "__future__"}


def test_the_conformance_extra_declares_what_the_package_imports():
    with open(ROOT / "pyproject.toml", "rb") as stream:
        project = tomllib.load(stream)["project"]
    declared = {
        re.match(r"[A-Za-z0-9_.-]+", requirement)[0]
        for requirement in project["optional-dependencies"]["conformance"]
    }
    assert {IMPORT_NAMES[name] for name in declared} == (
        _needed_by_the_conformance_package()
    )


def test_the_conformance_extra_is_all_it_needs(venv, empty):
    # The quick start's venv got mailqueue[conformance] and nospare, nothing more.
    code = (
        "import importlib.util;"
        f"print(*sorted(n for n in {sorted(IMPORT_NAMES.values())!r}"
        " if importlib.util.find_spec(n)))"
    )
    done = _checked([venv / "python", "-c", code], empty)
    assert done.stdout.split() == sorted(IMPORT_NAMES.values())


def test_without_the_extra_it_says_what_to_install(tmp_path, wheels, empty):
    mailqueue, _ = wheels
    bare = _venv(tmp_path / "bare", str(mailqueue))
    done = _run([bare / "mailqueue", "conformance", "mailqueue"], empty)
    assert done.returncode == 1
    assert done.stderr == (
        "mailqueue conformance: error: pytest and sybil not installed: "
        "pip install 'mailqueue[conformance]'\n"
    )


def test_the_example_adapter_reports_its_divergences(quick_start):
    _, directory, _ = quick_start
    report = json.loads((directory / "report" / "report.json").read_text())
    assert report["implementation"] == "nospare"
    known = [e for e in report["examples"] if e["known"]]
    assert len(known) == len(report["known_divergences"]) == 9
    assert {(e["document"], e["section"], e["level"], e["outcome"]) for e in known} == {
        ("queue-files.rst", "Spare files", "SHOULD", "failed")
    }
    others = [e for e in report["examples"] if e["outcome"] != "passed"]
    assert others == known


def test_the_planted_difference_is_exactly_one_failure(quick_start):
    _, _, ran = quick_start
    (planted,) = [step for step in ran if "NOSPARE_FINISH_STRICT=1" in step["command"]]
    assert planted["rc"] == 1
    assert re.fullmatch(
        r"\d+ passed, 1 failed, 9 known divergences", _closing_line(planted["actual"])
    )
    failures = re.findall(
        r"^(\S+:\d+) \[(\w+)\] (.+): failed(.*)$", planted["actual"], re.MULTILINE
    )
    unknown = [f for f in failures if "known divergence" not in f[3]]
    assert [(f[1], f[2]) for f in unknown] == [("MUST", "Enqueuing and dequeuing")]
    assert unknown[0][0].startswith("switchboard.rst:")


def test_an_adapter_that_cannot_start_says_why_in_one_line(venv, empty):
    # GNU Mailman is not in this venv.
    done = _run([venv / "mailqueue", "conformance", "mailman"], empty)
    assert done.returncode == 4  # pytest's status for a usage error
    assert done.stdout == ""
    assert done.stderr.strip() == (
        "ERROR: GNU Mailman is not installed (No module named 'mailman'); "
        "install mailqueue[mailman]"
    )

"""The conformance run: it reports what an implementation does, and judges it."""

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mailqueue.conformance.adapter import AdapterError, load_adapter
from mailqueue.conformance.spec import SpecDocument

ROOT = Path(__file__).resolve().parent.parent

NOT_FIFO = textwrap.dedent(
    """
    from mailqueue import Switchboard
    from mailqueue.conformance.reference import ReferenceAdapter

    class NotFifo(Switchboard):
        # Newest first: a deliberately broken switchboard.
        def get_files(self, extension=".pck"):
            return super().get_files(extension)[::-1]

    class NotFifoAdapter(ReferenceAdapter):
        name = "not-fifo"
        description = "a switchboard whose files are not first in, first out"
        known_divergences = KNOWN

        def namespace(self):
            return {**super().namespace(), "Switchboard": NotFifo}

    adapter = NotFifoAdapter()
    """
)


def conformance_run(tmp_path, implementation, known="{}"):
    (tmp_path / "third_party_adapter.py").write_text(NOT_FIFO.replace("KNOWN", known))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(ROOT / "docs" / "switchboard.rst"),
            "-q",
            "--tb=no",
            "-p",
            "no:cacheprovider",
            f"--implementation={implementation}",
        ],
        cwd=ROOT,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_broken_implementation_is_reported_non_conformant(tmp_path):
    result = conformance_run(tmp_path, "third_party_adapter")
    assert result.returncode == 1, result.stdout
    report = result.stdout
    assert "Conformance of not-fifo" in report
    # The FIFO example is named, with what was expected and what came instead.
    assert "[MUST] Queue order: failed" in report
    assert "switchboard.files == [first, second, third]" in report
    closing = report.strip().splitlines()[-1]
    passed, failed = (int(part.split()[0]) for part in closing.split(", "))
    assert closing == f"{passed} passed, {failed} failed" and failed > 0


FAILURE_LINE = re.compile(r"^switchboard\.rst:\d+ \[(\w+)\] (.+?): (failed|errored)")


def failing_sections(report):
    """The (section, level) of every failure line: 'doc.rst:12 [MUST] Title: failed'."""
    matches = (FAILURE_LINE.match(line) for line in report.splitlines())
    return {(match[2], match[1]) for match in matches if match}


def failing_examples():
    """The (document, section, example) of every failure of the last not-fifo run."""
    report = json.loads((ROOT / "build/conformance/not-fifo/report.json").read_text())
    return {
        (e["document"], e["section"], e["example"])
        for e in report["examples"]
        if e["outcome"] != "passed"
    }


def test_known_divergences_are_reported_and_accepted_example_by_example(tmp_path):
    failing = failing_sections(conformance_run(tmp_path, "third_party_adapter").stdout)
    assert ("Queue order", "MUST") in failing
    examples = failing_examples()
    assert (
        "switchboard.rst",
        "Queue order",
        "switchboard.files == [first, second, third]",
    ) in examples
    known = repr(dict.fromkeys(examples, "lists newest first"))
    result = conformance_run(tmp_path, "third_party_adapter", known)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "known divergence: lists newest first" in result.stdout
    assert failing_sections(result.stdout) == failing
    # A failure not listed fails the run, even in a section with listed ones.
    one_short = repr(dict.fromkeys(sorted(examples)[1:], "lists newest first"))
    result = conformance_run(tmp_path, "third_party_adapter", one_short)
    assert result.returncode == 1, result.stdout[-3000:]


def test_a_known_divergence_that_no_longer_fails_is_itself_a_failure(tmp_path):
    known = repr(
        {
            (
                "switchboard.rst",
                "Clean up",
                "check_qfiles(bad.queue_directory)",
            ): "pretend"
        }
    )
    result = conformance_run(tmp_path, "third_party_adapter", known)
    assert result.returncode == 1
    assert "Known divergences that no longer fail (remove them):" in result.stdout
    assert (
        "switchboard.rst / Clean up / check_qfiles(bad.queue_directory)"
        in result.stdout
    )


def test_an_unknown_adapter_is_a_usage_error(tmp_path):
    result = conformance_run(tmp_path, "no_such_module")
    assert result.returncode == 4
    assert "cannot load the adapter 'no_such_module'" in result.stderr


def test_adapters_load_by_name_and_by_path():
    assert load_adapter("mailqueue").name == "mailqueue"
    assert load_adapter("mailqueue.conformance.reference:ReferenceAdapter").name == (
        "mailqueue"
    )
    with pytest.raises(AdapterError, match="has no 'nothing'"):
        load_adapter("mailqueue.conformance.reference:nothing")
    with pytest.raises(AdapterError, match="is not a mailqueue Adapter"):
        load_adapter("mailqueue:config")


def test_a_third_party_adapter_is_found_by_its_entry_point(monkeypatch):
    from importlib.metadata import EntryPoint

    from mailqueue.conformance import adapter

    advertised = EntryPoint(
        "theirs",
        "mailqueue.conformance.reference:ReferenceAdapter",
        "mailqueue.adapters",
    )

    def entry_points(group, name):
        assert group == "mailqueue.adapters"
        return [advertised] if name == "theirs" else []

    monkeypatch.setattr(adapter, "entry_points", entry_points)
    assert load_adapter("theirs").name == "mailqueue"


SPEC_DOCUMENTS = [
    path for path in sorted((ROOT / "docs").glob("*.rst")) if SpecDocument(path).is_spec
]


def test_the_spec_documents_are_the_ones_with_levels():
    names = [path.name for path in SPEC_DOCUMENTS]
    assert names == ["queue-files.rst", "runner.rst", "switchboard.rst"]


@pytest.mark.parametrize("document", SPEC_DOCUMENTS, ids=lambda path: path.name)
def test_every_example_of_the_spec_has_a_requirement_level(document):
    spec = SpecDocument(document)
    lines = document.read_text().splitlines()
    unmarked = [
        number
        for number, line in enumerate(lines, start=1)
        if line.lstrip().startswith(">>>") and spec.place(number).level == "unmarked"
    ]
    assert unmarked == []

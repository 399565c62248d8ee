"""The conformance run: it reports what an implementation does, and judges it."""

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
import types
from pathlib import Path

import pytest

from mailqueue import cli
from mailqueue.conformance import command, mailman, spec
from mailqueue.conformance.adapter import AdapterError, load_adapter
from mailqueue.conformance.spec import SpecDocument

ROOT = Path(__file__).resolve().parent.parent
SWITCHBOARD = ROOT / "docs" / "switchboard.rst"
OPERATING = ROOT / "docs" / "operating.rst"

NOT_FIFO = textwrap.dedent(
    """
    import contextlib

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

    class Conforming(ReferenceAdapter):
        name = "conforming"
        description = "the reference, listing divergences it does not have"
        known_divergences = KNOWN
        runs_reference_documents = False

    class Incomplete(ReferenceAdapter):
        name = "incomplete"
        description = "an adapter that gives no show_log"

        @contextlib.contextmanager
        def document_state(self):
            with super().document_state() as fixtures:
                yield {k: v for k, v in fixtures.items() if k != "show_log"}
    """
)


def conformance_run(
    tmp_path, implementation, known="{}", selection=(str(SWITCHBOARD),), *options
):
    """Run pytest on *selection* with the checkout's configuration, in *tmp_path*.

    Whatever the run writes goes there, its report in tmp_path/report (see
    report_of); its modules come from there and from the checkout.
    """
    (tmp_path / "third_party_adapter.py").write_text(NOT_FIFO.replace("KNOWN", known))
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *selection,
            *("-c", str(ROOT / "pyproject.toml"), f"--rootdir={ROOT}"),
            "-q",
            "--tb=no",
            "-p",
            "no:cacheprovider",
            f"--implementation={implementation}",
            f"--report-dir={tmp_path / 'report'}",
            *options,
        ],
        cwd=tmp_path,
        # The whole environment, coverage's subprocess measurement with it.
        env=os.environ | {"PYTHONPATH": os.pathsep.join((str(tmp_path), str(ROOT)))},
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
    # The report and JUnit XML go where --report-dir says.
    assert sorted(os.listdir(tmp_path / "report")) == ["junit.xml", "report.json"]


FAILURE_LINE = re.compile(r"^switchboard\.rst:\d+ \[(\w+)\] (.+?): (failed|errored)")


def failing_sections(report):
    """The (section, level) of every failure line: 'doc.rst:12 [MUST] Title: failed'."""
    matches = (FAILURE_LINE.match(line) for line in report.splitlines())
    return {(match[2], match[1]) for match in matches if match}


def failing_examples(tmp_path, level=None):
    """The (document, section, example) of every failure of the last run."""
    return {
        (e["document"], e["section"], e["example"])
        for e in report_of(tmp_path)["examples"]
        if e["outcome"] != "passed" and level in (None, e["level"])
    }


FIFO = ("switchboard.rst", "Queue order", "switchboard.files == [first, second, third]")


def test_known_divergences_are_reported_and_accepted_example_by_example(tmp_path):
    failing = failing_sections(conformance_run(tmp_path, "third_party_adapter").stdout)
    assert ("Queue order", "MUST") in failing
    examples = failing_examples(tmp_path)
    assert FIFO in examples
    known = repr(dict.fromkeys(examples, "lists newest first"))
    result = conformance_run(tmp_path, "third_party_adapter", known)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "known divergence: lists newest first" in result.stdout
    assert failing_sections(result.stdout) == failing
    # Known divergences are counted apart from the failures.
    closing = result.stdout.strip().splitlines()[-1]
    assert closing.endswith(f", 0 failed, {len(examples)} known divergences")
    # A MUST failure not listed fails the run, even in a section with listed ones.
    one_short = repr(dict.fromkeys(examples - {FIFO}, "lists newest first"))
    result = conformance_run(tmp_path, "third_party_adapter", one_short)
    assert result.returncode == 1, result.stdout[-3000:]
    assert result.stdout.strip().endswith(
        f", 1 failed, {len(examples) - 1} known divergences"
    )


def test_a_should_failure_is_reported_and_does_not_fail_the_run(tmp_path):
    conformance_run(tmp_path, "third_party_adapter")
    should = failing_examples(tmp_path, "SHOULD")
    must = failing_examples(tmp_path, "MUST")
    assert should and must
    # Every MUST failure known: the SHOULD ones alone do not fail the run.
    result = conformance_run(
        tmp_path, "third_party_adapter", repr(dict.fromkeys(must, "newest first"))
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert len(must) == 1  # the FIFO example
    assert result.stdout.strip().endswith(f", {len(should)} failed, 1 known divergence")
    assert failing_examples(tmp_path, "SHOULD") == should


def test_a_known_divergence_that_no_longer_fails_is_itself_a_failure(tmp_path):
    conformance_run(tmp_path, "third_party_adapter")
    passing = sorted(
        (e["document"], e["section"], e["example"])
        for e in report_of(tmp_path)["examples"]
        if e["outcome"] == "passed"
    )[0]
    result = conformance_run(
        tmp_path, "third_party_adapter", repr({passing: "pretend"})
    )
    assert result.returncode == 1
    assert "Known divergences that no longer fail (remove them):" in result.stdout
    assert " / ".join(passing) in result.stdout


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
    # The package knows them, and the wheel carries exactly them.
    assert list(spec.SPEC_DOCUMENTS) == names
    with open(ROOT / "pyproject.toml", "rb") as stream:
        wheel = tomllib.load(stream)["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["force-include"] == {
        f"docs/{name}": f"mailqueue/conformance/documents/{name}" for name in names
    }


def test_without_a_copy_of_the_documents_there_is_no_spec(tmp_path, monkeypatch):
    monkeypatch.setattr(spec, "_PACKAGED", tmp_path / "documents")
    assert spec.documents_directory() == ROOT / "docs"
    monkeypatch.setattr(spec, "_CHECKOUT", tmp_path / "docs")
    with pytest.raises(spec.SpecNotFoundError, match="reinstall mailqueue"):
        spec.documents_directory()


def conformance_arguments(*argv):
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(argv)


def test_the_command_gives_pytest_the_packaged_documents_and_its_options():
    options = command.pytest_arguments(conformance_arguments("mailman"))
    documents = [str(ROOT / "docs" / name) for name in spec.SPEC_DOCUMENTS]
    assert options[:3] == documents
    assert options[3:7] == ["-c", os.devnull, "--rootdir", str(ROOT / "docs")]
    assert "-q" in options and "-v" not in options
    assert "--implementation=mailman" in options
    assert f"--timeout={command.TIMEOUT}" in options
    assert not [o for o in options if o.startswith(("--report-dir", "--level", "-k"))]
    chosen = conformance_arguments(
        "x:Y", "--report", "out", "--level", "SHOULD", "-k", "slices", "-v"
    )
    options = command.pytest_arguments(chosen)
    assert f"--report-dir={os.path.abspath('out')}" in options
    assert options[-3:] == ["--level=SHOULD", "-k", "slices"]
    assert "-v" in options and "-q" not in options


def test_the_command_runs_without_pytest_timeout(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name: None if name == "pytest_timeout" else real(name),
    )
    options = command.pytest_arguments(conformance_arguments("mailqueue"))
    assert not [option for option in options if option.startswith("--timeout")]


def test_the_command_says_in_one_line_what_it_lacks(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name: None if name in ("pytest", "sybil") else real(name),
    )
    assert cli.main(["conformance", "mailqueue"]) == 1
    assert capsys.readouterr().err == (
        "mailqueue conformance: error: pytest and sybil not installed: "
        "pip install 'mailqueue[conformance]'\n"
    )
    monkeypatch.undo()
    monkeypatch.setattr(spec, "_PACKAGED", tmp_path / "documents")
    monkeypatch.setattr(spec, "_CHECKOUT", tmp_path / "docs")
    assert command.main(["mailqueue"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("mailqueue conformance: error: the spec documents are")
    assert error.count("\n") == 1
    assert cli.main(["conformance", "no_such_module"]) == 1
    assert capsys.readouterr().err == (
        "mailqueue conformance: error: cannot load the adapter 'no_such_module': "
        "No module named 'no_such_module'\n"
    )


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


def test_an_adapter_that_cannot_be_imported_is_named_in_the_error():
    with pytest.raises(AdapterError, match="cannot load the adapter 'no_such_module'"):
        load_adapter("no_such_module")


def test_an_unknown_requirement_level_is_refused_with_its_place(tmp_path):
    document = tmp_path / "page.rst"
    document.write_text("Title\n=====\n\n.. level:: MUST\n\n.. level:: MAY\n")
    with pytest.raises(ValueError) as refused:
        SpecDocument(document)
    assert str(refused.value) == (
        f"{document}:6: unknown requirement level 'MAY'; use one of MUST, SHOULD"
    )


# Runs of a few examples of switchboard.rst, each named as the report and
# known divergences name it: (document, section, example), the example by
# its first line of source and, from the second with that line in its
# section on, " #N".  The first three make the names the later ones use.
SETTING_UP = [
    ("switchboard.rst", "The switchboard", first_line)
    for first_line in (
        "import os",
        "queue_directory = os.path.join(config.QUEUE_DIR, 'test')",
        "from mailqueue import Switchboard",
    )
]
# The second of three examples of "Queue slices" that start with "try:".
SECOND_TRY = ("switchboard.rst", "Queue slices", "try: #2")


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    """Where each example of switchboard.rst and operating.rst starts, by name.

    The names are the report's, from a run that collects the documents and
    runs nothing: an example keeps its name wherever the text around it
    moves it.
    """
    directory = tmp_path_factory.mktemp("names")
    documents = (str(SWITCHBOARD), str(OPERATING))
    result = conformance_run(directory, "mailqueue", "{}", documents, "--collect-only")
    assert result.returncode == 0, result.stdout[-3000:]
    named = [
        ((e["document"], e["section"], e["example"]), e["line"])
        for e in report_of(directory)["examples"]
    ]
    assert len(dict(named)) == len(named)  # each name is one example's
    return dict(named)


def selected(lines, *names):
    """The pytest node ids of the examples *names*: (document, section, example)."""
    return [f"{ROOT / 'docs' / name[0]}::line:{lines[name]},column:1" for name in names]


def first_of(lines, document):
    """The name of the first example of *document*."""
    return min((name for name in lines if name[0] == document), key=lines.get)


def selection_run(tmp_path, implementation, selection, *options, known="{}"):
    """Run *selection* only, with the report in tmp_path/report (report_of)."""
    return conformance_run(
        tmp_path,
        implementation,
        known,
        selection,
        *options,
    )


def report_of(tmp_path):
    return json.loads((tmp_path / "report" / "report.json").read_text())


def test_a_selection_is_named_and_judged_against_whole_documents(tmp_path, lines):
    """Examples not run, and other documents, leave the judgement alone.

    The second "try:" keeps its name with the first deselected, and neither the
    divergence of the first nor one of another document is called stale.  An
    example of a page about the reference's own tools is not run at all.
    """
    known = repr(
        {
            ("switchboard.rst", "Queue slices", "try:"): "not run here",
            ("queue-files.rst", "Spare files", "os.listdir(pool)"): "not run here",
        }
    )
    result = selection_run(
        tmp_path,
        "third_party_adapter:Conforming",
        # And the first example of a page that is not part of the spec.
        selected(lines, *SETTING_UP, SECOND_TRY, first_of(lines, "operating.rst")),
        known=known,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "no longer fail" not in result.stdout
    assert "4 passed, 1 deselected" in result.stdout
    report = report_of(tmp_path)
    assert report["stale_divergences"] == []
    assert {e["document"] for e in report["examples"]} == {"switchboard.rst"}
    examples = {(e["section"], e["example"]): e["outcome"] for e in report["examples"]}
    assert examples[("Queue slices", "try: #2")] == "passed"
    assert ("Queue slices", "try:") not in examples


def test_divergences_that_pass_or_name_nothing_are_stale_without_failures(
    tmp_path, lines
):
    known = repr(
        {
            ("switchboard.rst", "Queue slices", "try: #2"): "it passes",
            ("switchboard.rst", "Queue slices", "try: #9"): "there is no such example",
        }
    )
    result = selection_run(
        tmp_path,
        "third_party_adapter:Conforming",
        selected(lines, *SETTING_UP, SECOND_TRY),
        known=known,
    )
    assert result.returncode == 1
    report = result.stdout[result.stdout.index("Conformance of conforming") :]
    # Nothing failed, so the report has no failures to show, only the stale.
    assert "Failures" not in report
    assert (
        "Known divergences that no longer fail (remove them):\n"
        "  switchboard.rst / Queue slices / try: #2\n"
        "  switchboard.rst / Queue slices / try: #9\n"
    ) in report
    assert report.rstrip().endswith("\n4 passed, 0 failed")


def test_an_adapter_missing_a_fixture_errors_every_example(tmp_path, lines):
    result = selection_run(
        tmp_path,
        "third_party_adapter:Incomplete",
        selected(lines, *SETTING_UP),
    )
    assert result.returncode == 1
    assert "  MUST    The switchboard" in result.stdout
    assert "0 passed, 0 failed, 3 errored" in result.stdout
    first = lines[SETTING_UP[0]]
    assert f"switchboard.rst:{first} [MUST] The switchboard: errored" in (result.stdout)
    assert result.stdout.rstrip().endswith("\n0 passed, 3 failed")
    report = report_of(tmp_path)
    assert {e["outcome"] for e in report["examples"]} == {"errored"}
    assert "the incomplete adapter gives no show_log" in report["examples"][0]["actual"]


SKIPPING_PLUGIN = """
import pytest

def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.skip(reason="not today"))
"""


def test_skipped_examples_are_counted_and_their_divergences_not_judged(tmp_path, lines):
    (tmp_path / "skip_everything.py").write_text(SKIPPING_PLUGIN)
    known = repr({("switchboard.rst", "Queue slices", "try: #2"): "skipped here"})
    result = selection_run(
        tmp_path,
        "third_party_adapter:Conforming",
        selected(lines, *SETTING_UP, SECOND_TRY),
        "-p",
        "skip_everything",
        known=known,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert (
        "MUST 0 passed, 0 failed, 3 skipped; SHOULD 0 passed, 0 failed, 1 skipped"
        in (result.stdout)
    )
    report = report_of(tmp_path)
    assert {e["outcome"] for e in report["examples"]} == {"skipped"}
    assert report["stale_divergences"] == []


ORDINARY_TESTS = """
def test_that_passes():
    pass

def test_that_fails():
    assert False
"""


def test_a_failing_ordinary_test_fails_a_conforming_run(tmp_path, lines):
    """The report judges examples only; it does not pardon other tests."""
    (tmp_path / "test_ordinary.py").write_text(ORDINARY_TESTS)
    result = selection_run(
        tmp_path,
        "mailqueue",
        [*selected(lines, *SETTING_UP), str(tmp_path / "test_ordinary.py")],
    )
    assert result.returncode == 1, result.stdout[-3000:]
    assert result.stdout.rstrip().endswith("\n3 passed, 0 failed")
    assert [e["example"] for e in report_of(tmp_path)["examples"]] == [
        example for _, _, example in SETTING_UP
    ]


def test_a_collection_error_fails_a_conforming_run(tmp_path, lines):
    (tmp_path / "test_broken.py").write_text("def test_broken(:\n")
    result = selection_run(
        tmp_path,
        "mailqueue",
        [*selected(lines, *SETTING_UP), str(tmp_path / "test_broken.py")],
    )
    assert result.returncode == pytest.ExitCode.INTERRUPTED, result.stdout[-3000:]
    assert "1 error during collection" in result.stdout


def test_junit_xml_goes_where_the_command_line_says(tmp_path, lines):
    result = selection_run(
        tmp_path,
        "mailqueue",
        selected(lines, *SETTING_UP),
        f"--junitxml={tmp_path / 'mine.xml'}",
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert 'tests="3"' in (tmp_path / "mine.xml").read_text()
    assert sorted(os.listdir(tmp_path / "report")) == ["report.json"]


@pytest.fixture
def mailman_start_environment(monkeypatch):
    # start() removes these from the environment: restore them afterwards.
    for variable in mailman._REDIRECTING_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("MAILQUEUE_ANY_MAILMAN", raising=False)
    return monkeypatch


def test_the_mailman_adapter_without_mailman_says_what_to_install(
    mailman_start_environment,
):
    # A None in sys.modules makes the import fail as if Mailman were absent
    # (and leaves no real Mailman imported into this process).
    mailman_start_environment.setitem(sys.modules, "mailman", None)
    with pytest.raises(AdapterError) as refused:
        mailman.MailmanAdapter().start()
    assert str(refused.value).startswith("GNU Mailman is not installed (")
    assert str(refused.value).endswith("); install mailqueue[mailman]")


def test_the_mailman_adapter_refuses_another_release(mailman_start_environment):
    # Stand-ins for Mailman's modules: nothing of Mailman is started.
    fakes = {
        "mailman": types.ModuleType("mailman"),
        "mailman.config": types.ModuleType("mailman.config"),
        "mailman.core": types.ModuleType("mailman.core"),
        "mailman.version": types.ModuleType("mailman.version"),
    }
    fakes["mailman.config"].config = object()
    fakes["mailman.core"].initialize = object()
    fakes["mailman.version"].VERSION = "3.3.9"
    for name, module in fakes.items():
        mailman_start_environment.setitem(sys.modules, name, module)
    with pytest.raises(AdapterError) as refused:
        mailman.MailmanAdapter().start()
    assert str(refused.value) == "this adapter is for GNU Mailman 3.3.10, not 3.3.9"


MAILMAN_SUBSCRIBE = """
from mailqueue.conformance.mailman import MailmanAdapter

adapter = MailmanAdapter()
adapter.start()
with adapter.document_state() as fixtures:
    mlist = fixtures["create_list"]("test@example.com")
    fixtures["subscribe"](mlist, "anne@example.com")
    member = mlist.members.get_member("anne@example.com")
    print(member.address.email, member.preferred_language.code)
"""


def test_the_mailman_adapter_subscribes_in_the_lists_language_by_default(tmp_path):
    # Looked for, not imported: this process must stay free of Mailman.
    if importlib.util.find_spec("mailman") is None:
        pytest.skip("GNU Mailman is not installed")
    result = subprocess.run(
        [sys.executable, "-c", MAILMAN_SUBSCRIBE],
        env=os.environ | {"TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "anne@example.com en\n"
    # Nor does it leave its var directories behind.
    assert os.listdir(tmp_path) == []


def test_a_selection_of_no_example_says_so(tmp_path):
    result = conformance_run(
        tmp_path, "mailqueue", "{}", (str(SWITCHBOARD),), "-k", "no_such_name"
    )
    assert result.returncode == 5  # pytest's "no tests collected"
    assert result.stdout.strip().splitlines()[-2:] == [
        "No example was run.",
        "0 passed, 0 failed",
    ]


def test_the_command_runs_a_selection_with_its_set_up_and_writes_nothing(tmp_path):
    result = subprocess.run(
        [
            *(sys.executable, "-m", "mailqueue.conformance", "mailqueue"),
            *("--level", "MUST", "-k", "switchboard and slices"),
        ],
        cwd=tmp_path,
        # The whole environment, coverage's subprocess measurement with it.
        env=os.environ,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(
        r"\(and \d+ examples before them, run as their set-up, "
        r"not counted\)",
        lines[-2],
    )
    assert re.fullmatch(r"By level: MUST [1-9]\d* passed, 0 failed", lines[-3])
    assert re.fullmatch(r"[1-9]\d* passed, 0 failed", lines[-1])
    assert "  MUST    Queue slices  " in result.stdout
    assert "SHOULD  Queue slices" not in result.stdout
    # No --report: nothing where it ran (coverage's data files aside).
    assert [n for n in os.listdir(tmp_path) if not n.startswith(".coverage")] == []

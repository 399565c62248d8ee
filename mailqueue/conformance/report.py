"""The conformance report: what an implementation did with each example.

The report counts, per document and section, the examples that passed,
failed (ran, and showed other output) and errored (could not run), by
requirement level.  It shows each failure with its example, what the spec
expects and what the implementation gave, and whether the adapter lists it
as a known divergence.  With ``--report-dir=DIR`` it writes
``DIR/report.json`` (and pytest writes ``DIR/junit.xml``).  It ends with
the line ``N passed, N failed``, and ``, N known divergences`` when some
failures are known ones, which are not counted as failed.

The run succeeds when every MUST example passes or is a known divergence,
and every known divergence still fails: a list of known failures that has
gone stale is itself a failure, so the list stays true.  A SHOULD example
that fails is reported, and does not fail the run.  A known divergence is
judged only if its document ran: it is stale if its example passed, or if
the document has no such example (one deselected or skipped is not
judged).  The report judges only examples: an ordinary test that fails
beside them, or a collection error, still fails the run.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mailqueue.conformance.adapter import Adapter
from mailqueue.conformance.spec import SpecDocument

if TYPE_CHECKING:
    from sybil import Document

__all__ = ["SET_UP", "ConformanceReport", "ExampleResult"]

#: Set on an example that runs only because a selected one after it in its
#: document builds on it: the report neither counts nor judges it.
SET_UP = pytest.StashKey[bool]()


def example_name(source: str) -> str:
    """An example's first line of source, without its prompt."""
    first = source.strip().splitlines()[0] if source.strip() else ""
    return first.removeprefix(">>> ").strip()


@dataclass
class ExampleResult:
    """One example's place in the spec and what became of it."""

    document: str
    line: int
    section: str
    level: str
    source: str
    expected: str
    outcome: str = "not run"
    actual: str = ""
    known: str | None = None
    #: The example's stable name within its section: its first line of
    #: source, and `` #N`` if it is the Nth with that line there.
    example: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        """What a known divergence names: document, section, example."""
        return self.document, self.section, self.example


@dataclass
class _Tally:
    counts: Counter[str] = field(default_factory=Counter)

    def line(self) -> str:
        return ", ".join(
            f"{self.counts[key]} {key}"
            for key in ("passed", "failed", "errored", "skipped")
            if self.counts[key] or key in ("passed", "failed")
        )


class ConformanceReport:
    """A pytest plugin that reports conformance to the spec documents."""

    def __init__(self, adapter: Adapter, config: pytest.Config) -> None:
        self.adapter = adapter
        chosen = config.getoption("--report-dir")
        #: Where report.json (and junit.xml) go, if anywhere.
        self.directory = Path(chosen) if chosen else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            if not config.option.xmlpath:
                config.option.xmlpath = str(self.directory / "junit.xml")
        self.results: dict[str, ExampleResult] = {}
        #: Every example of the documents that ran, by its key, and those
        #: documents' file names: what known divergences are judged against.
        self.named: set[tuple[str, str, str]] = set()
        self.documents: set[str] = set()
        #: Whether a test that is not an example failed.
        self.others_failed = False
        #: The examples that ran only as the set-up of selected ones.
        self.set_up: set[str] = set()
        self.stale: list[str] = []

    # Collecting what ran ---------------------------------------------

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # After deselection, so only what runs is reported; but an example
        # is named within its whole document, whatever the selection.
        by_path: dict[str, dict[int, ExampleResult]] = {}
        for item in session.items:
            example = getattr(item, "example", None)
            if example is None:
                # An ordinary test, run beside the spec: not the report's.
                continue
            if item.stash.get(SET_UP, False):
                self.set_up.add(item.nodeid)
                continue
            if example.path not in by_path:
                by_path[example.path] = self._examples_of(example.document)
            self.results[item.nodeid] = by_path[example.path][example.region.start]
        for examples in by_path.values():
            self.named.update(result.key for result in examples.values())
        self.documents.update(os.path.basename(path) for path in by_path)

    def _examples_of(self, document: Document) -> dict[int, ExampleResult]:
        """Every example of a Sybil document, named, by where it starts."""
        spec = SpecDocument(document.path)
        seen: Counter[tuple[str, str, str]] = Counter()
        examples: dict[int, ExampleResult] = {}
        for example in document.examples():
            place = spec.place(example.line)
            parsed = example.region.parsed
            source = getattr(parsed, "source", None)
            if source is None:
                source = document.text[example.region.start : example.region.end]
            result = ExampleResult(
                document=os.path.basename(document.path),
                line=example.line,
                section=place.section,
                level=place.level,
                source=source.rstrip("\n"),
                expected=getattr(parsed, "want", "").rstrip("\n"),
            )
            first = example_name(result.source)
            seen[result.document, result.section, first] += 1
            count = seen[result.document, result.section, first]
            result.example = first if count == 1 else f"{first} #{count}"
            result.known = self.adapter.known_divergences.get(result.key)
            examples[example.region.start] = result
        return examples

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.nodeid in self.set_up:
            return
        result = self.results.get(report.nodeid)
        if result is None:
            self.others_failed = self.others_failed or report.failed
            return
        if report.when == "call":
            result.outcome = report.outcome
            if report.failed:
                result.actual = _actual_output(report)
        elif report.failed:
            result.outcome = "errored"
            result.actual = report.longreprtext
        elif report.skipped:
            result.outcome = "skipped"

    # Judging and reporting --------------------------------------------

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        results = list(self.results.values())
        passing = {r.key for r in results if r.outcome == "passed"}
        # A divergence is judged only where its document ran: it is stale if
        # its example passed, or if the document has no such example.
        self.stale = [
            " / ".join(key)
            for key in self.adapter.known_divergences
            if key in passing or (key[0] in self.documents and key not in self.named)
        ]
        # A SHOULD that fails is reported, and leaves the verdict alone.
        unexpected = [
            r for r in results if _bad(r) and r.known is None and r.level != "SHOULD"
        ]
        # The report judges the examples and nothing else: pytest's verdict
        # stands when an ordinary test failed, or when collection failed or
        # the run was interrupted.
        if (
            results
            and not self.others_failed
            and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED)
        ):
            conforming = not unexpected and not self.stale
            session.exitstatus = (
                pytest.ExitCode.OK if conforming else pytest.ExitCode.TESTS_FAILED
            )
        report = {
            "implementation": self.adapter.name,
            "description": self.adapter.description,
            "totals": dict(self._tally(results).counts),
            "by_level": {
                level: dict(
                    self._tally([r for r in results if r.level == level]).counts
                )
                for level in sorted({r.level for r in results})
            },
            "known_divergences": [
                {"document": d, "section": s, "example": name, "reason": reason}
                for (d, s, name), reason in self.adapter.known_divergences.items()
            ],
            "stale_divergences": self.stale,
            "examples": [asdict(r) for r in results],
        }
        if self.directory is not None:
            text = json.dumps(report, indent=2) + "\n"
            (self.directory / "report.json").write_text(text)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        # Printed last, after pytest's own summary, so that the report's
        # closing line is the last line of the run.
        print(self.render(), flush=True)

    def render(self) -> str:
        """The report as text."""
        results = list(self.results.values())
        lines = ["", f"Conformance of {self.adapter.name}: {self.adapter.description}"]
        by_document: dict[str, list[ExampleResult]] = {}
        for result in results:
            by_document.setdefault(result.document, []).append(result)
        for document, examples in by_document.items():
            lines += ["", document]
            sections: dict[tuple[str, str], list[ExampleResult]] = {}
            for result in examples:
                sections.setdefault((result.section, result.level), []).append(result)
            for (section, level), group in sections.items():
                count = sum(1 for r in group if _bad(r) and r.known)
                known = (
                    f" ({count} known divergence{'s' * (count > 1)})" if count else ""
                )
                tally = self._tally(group).line()
                lines.append(f"  {level:<6}  {section:<40} {tally}{known}")
        failures = [r for r in results if _bad(r)]
        if failures:
            lines += ["", "Failures"]
            for result in failures:
                lines.append(
                    f"\n{result.document}:{result.line} [{result.level}] "
                    f"{result.section}: {result.outcome}"
                    + (f"; known divergence: {result.known}" if result.known else "")
                )
                lines += _indent("example", result.source)
                lines += _indent("expected", result.expected)
                lines += _indent("actual", result.actual)
        if self.stale:
            lines += ["", "Known divergences that no longer fail (remove them):"]
            lines += [f"  {entry}" for entry in self.stale]
        levels = sorted({r.level for r in results})
        tallies = [self._tally([r for r in results if r.level == lv]) for lv in levels]
        by_level = "; ".join(
            f"{lv} {t.line()}" for lv, t in zip(levels, tallies, strict=True)
        )
        lines += ["", f"By level: {by_level}" if results else "No example was run."]
        if self.set_up:
            count = len(self.set_up)
            lines.append(
                f"(and {count} example{'s' * (count > 1)} before them, run as "
                "their set-up, not counted)"
            )
        divergent = sum(1 for r in results if _bad(r) and r.known)
        passed = sum(1 for r in results if r.outcome == "passed")
        closing = f"{passed} passed, {len(failures) - divergent} failed"
        if divergent:
            closing += f", {divergent} known divergence{'s' * (divergent > 1)}"
        lines.append(closing)
        return "\n".join(lines)

    @staticmethod
    def _tally(results: list[ExampleResult]) -> _Tally:
        return _Tally(Counter(result.outcome for result in results))


def _bad(result: ExampleResult) -> bool:
    return result.outcome in ("failed", "errored")


def _actual_output(report: pytest.TestReport) -> str:
    """What the implementation gave, from Sybil's failure text."""
    text = report.longreprtext
    marker = "did not evaluate as expected:\n"
    text = text.split(marker, 1)[1] if marker in text else text
    lines = [line for line in text.splitlines() if not line.endswith(": SybilFailure")]
    return "\n".join(lines).strip()


def _indent(title: str, text: str) -> list[str]:
    body = text.splitlines() or ["(nothing)"]
    return [f"  {title}:"] + [f"    {line}" for line in body]

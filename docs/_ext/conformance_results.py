"""The ``conformance-results`` directive: the latest conformance runs, as tables.

It reads ``build/conformance/<implementation>/report.json``, which ``make
conformance-results`` writes (``make docs`` runs it first) by running the
spec against every shipped adapter, so the published results always come
from a real run.  A run that could not make its report stops ``make docs``
there, naming the log of its output.
"""

import json
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


class ConformanceResults(SphinxDirective):
    required_arguments = 1  # the implementations, comma-separated

    def run(self):
        root = Path(self.env.srcdir).parent / "build" / "conformance"
        lines = []
        for name in self.arguments[0].split(","):
            path = root / name / "report.json"
            if not path.exists():
                raise self.error(
                    f"no conformance report at {path}: run make conformance-results"
                )
            self.env.note_dependency(str(path))
            lines += _render(json.loads(path.read_text()))
        container = nodes.container(classes=["conformance-results"])
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return [container]


def _render(report):
    lines = [f"**{report['implementation']}**: {report['description']}", ""]
    lines += [".. list-table::", "   :header-rows: 1", ""]
    lines += ["   * - level", "     - passed", "     - failed", "     - errored"]
    for level, counts in report["by_level"].items():
        lines += [f"   * - {level}"] + [
            f"     - {counts.get(key, 0)}" for key in ("passed", "failed", "errored")
        ]
    lines.append("")
    failing = {}
    for example in report["examples"]:
        if example["outcome"] in ("failed", "errored"):
            key = (example["document"], example["section"], example["level"])
            failing.setdefault(key, []).append(example)
    if not failing:
        lines += ["Every example passes.", ""]
    for (document, section, level), examples in sorted(failing.items()):
        page = document.removesuffix(".rst")
        lines.append(f"- :doc:`{page}` / *{section}* ({level}):")
        lines.append("")
        for example in examples:
            reason = example["known"] or "not a known divergence"
            name = example.get("example") or example["source"].splitlines()[0]
            lines.append(f"  - line {example['line']}, ``{name}``: {reason}")
        lines.append("")
    if report["stale_divergences"]:
        lines.append(
            "- listed as known, but no longer failing: "
            + "; ".join(report["stale_divergences"])
        )
    return [*lines, ""]


def setup(app):
    app.add_directive("conformance-results", ConformanceResults)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

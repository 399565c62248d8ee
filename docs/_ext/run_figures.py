"""Figures of the last full runs, as tables: ``hostile-run``, ``soak-run``,
``crash-run``, ``bench-run``, ``cluster-run`` and ``conformance-matrix``.

They read the JSON reports beside the pages: docs/reliability-run.json
(``make fuzz``), docs/soak-run.json (``make soak``), docs/crash-run.json
(``make crash-test``), docs/bench-run.json (``make bench``),
docs/cluster-run.json (``make cluster-test``), docs/conformance-matrix.json
(``make conformance-matrix``) and docs/mailman-plugin-run.json (``make
mailman-plugin-test``).  Those runs write them to build/reports, and ``make
publish`` copies them here, so the published figures always come from a
real run, and a run nobody means to publish changes no tracked file.
"""

import json
from pathlib import Path

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

#: The figures, in the order shown, and what each counts.
FIGURES = [
    ("cases", "cases run, each through every path"),
    ("code executed", "cases whose code ran"),
    ("crashes", "cases that crashed a process or raised out of a path"),
    ("hangs", "cases that ran longer than 10 s"),
    ("memory over the limit", "cases that went over 1 GiB"),
    ("later entries harmed", "cases after which the next entry came out different"),
    ("files lost", "cases after which an entry was missing"),
    (
        "files preserved",
        "cases whose file was set aside in bad (the others were queued, "
        "delivered or left alone as harmless)",
    ),
]


class _ReportDirective(SphinxDirective):
    """A directive whose one argument is a JSON report beside the document."""

    required_arguments = 1  # the report, relative to this document

    def report(self, what: str, command: str) -> dict:
        """The report, read; the page is rebuilt when it changes."""
        path = Path(self.env.doc2path(self.env.docname)).parent / self.arguments[0]
        if not path.exists():
            raise self.error(f"no {what} at {path}: run {command}, then make publish")
        self.env.note_dependency(str(path))
        return json.loads(path.read_text())


class HostileRun(_ReportDirective):
    def run(self):
        report = self.report("hostile-run report", "make fuzz")
        run = report["run"]
        sources = ", ".join(
            f"{count:,} {source}" for source, count in report["by source"].items()
        )
        lines = [
            f"Run on {run['date']} with Python {run['python']}, mailqueue "
            f"{run['mailqueue']}: ``{run['command']}``, {run['limits']}; "
            f"{report['seconds']:,} s in all.",
            "",
            ".. list-table::",
            "   :header-rows: 1",
            "",
            "   * - figure",
            "     - count",
            "     - what it counts",
        ]
        for key, meaning in FIGURES:
            lines += [f"   * - {key}", f"     - {report[key]:,}", f"     - {meaning}"]
        lines += [
            "",
            f"The cases by source: {sources}.  The slowest case "
            f"(``{report['slowest case']}``) took {report['slowest case (s)']} s for "
            f"all its paths; the largest child process "
            f"(``{report['largest case']}``) held {report['largest case (MiB)']} MiB.",
            "",
        ]
        container = nodes.container(classes=["hostile-run"])
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return [container]


#: The soak's figures, in the order shown, and what each counts.
SOAK_FIGURES = [
    ("messages", "messages queued (each with its own Message-ID)"),
    ("delivered", "of them, delivered"),
    ("lost", "of them, never delivered"),
    ("duplicates", "delivered more than once"),
    (
        "duplicates explained by a killed process",
        "of those, held by a runner or inject when it was killed",
    ),
    ("duplicates not explained", "of those, held by no killed process"),
    ("runners killed", "runner processes SIGKILLed"),
    ("masters killed", "master processes SIGKILLed, and started again"),
    ("injects killed", "inject processes SIGKILLed while they wrote"),
    ("in bad or shunt", "entries set aside at the end"),
    ("leftover .bak", ".bak files at the end"),
    ("leftover .tmp", ".tmp files at the end"),
    ("orphaned processes", "processes of the site still alive at the end"),
    ("seconds", "how long it took"),
]


class SoakRun(_ReportDirective):
    def run(self):
        report = self.report("soak report", "make soak")
        run = report["run"]
        lines = [
            f"Run on {run['date']} with Python {run['python']}, mailqueue "
            f"{run['mailqueue']}: ``{run['command']}``.",
            "",
            ".. list-table::",
            "   :header-rows: 1",
            "",
            "   * - figure",
            "     - soak",
            "     - churn",
            "     - what it counts",
        ]
        for key, meaning in SOAK_FIGURES:
            lines += [
                f"   * - {key}",
                f"     - {report['soak'][key]:,}",
                f"     - {report['churn'][key]:,}",
                f"     - {meaning}",
            ]
        container = nodes.container(classes=["soak-run"])
        self.state.nested_parse(
            StringList([*lines, ""]), self.content_offset, container
        )
        return [container]


class BenchRun(_ReportDirective):
    def run(self):
        report = self.report("benchmark report", "make bench")
        machine = report["machine"]
        lines = [
            f"Run on {report.get('date', 'an unrecorded date')}: {machine['system']}, "
            f"{machine['cpus']} CPUs, Python {machine['python']}, load "
            f"{machine['load']}, {machine['file creation (µs)']} µs to create a file"
            + (
                f" and {machine['durable file creation (µs)']} µs to create and "
                "flush one"
                if "durable file creation (µs)" in machine
                else ""
            )
            + (
                f"; warnings: {'; '.join(machine['warnings'])}"
                if machine["warnings"]
                else ""
            )
            + ".",
            "",
        ]
        for measure in (
            "durable cycle",
            "cycle, fsync off",
            "listing",
            "peak memory",
            "drain",
        ):
            if measure not in report:
                continue
            lines += [
                f".. list-table:: {measure}",
                "   :header-rows: 1",
                "",
                "   * - what",
                "     - median [min-max]",
                "     - same-round ratios, median [min-max]",
            ]
            for what, result in report[measure].items():
                figures = "; ".join(
                    f"{name} {f['median']:,.1f} [{f['min']:,.1f}-{f['max']:,.1f}]"
                    for name, f in result["figures"].items()
                )
                ratios = "; ".join(
                    f"{name} {r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]"
                    for name, r in result["ratios"].items()
                )
                lines += [
                    f"   * - {what}",
                    f"     - {result['unit']}: {figures}",
                    f"     - {ratios}",
                ]
            lines.append("")
        grows = report.get("as the queue grows", {})
        if grows:
            columns = list(next(iter(grows.values())))
            lines += [
                ".. list-table:: as the queue grows (mailqueue, a fresh process each)",
                "   :header-rows: 1",
                "",
                "   * - queue",
                *[f"     - {column}" for column in columns],
            ]
            for size, figures in grows.items():
                lines.append(f"   * - {size}")
                lines += [f"     - {figures[column]:,.1f}" for column in columns]
            lines.append("")
        container = nodes.container(classes=["bench-run"])
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return [container]


class ClusterRun(_ReportDirective):
    """The figures of the latest ``make cluster-test``, one a row."""

    def run(self):
        report = self.report("cluster-test report", "make cluster-test")
        lines = [
            f"Run on {report['date']} with Python {report['python']}: "
            f"``{report['command']}``.",
            "",
            ".. list-table::",
            "   :header-rows: 1",
            "",
            "   * - figure",
            "     - value",
        ]
        for key, value in report.items():
            if key not in ("date", "python", "command"):
                lines += [f"   * - {key}", f"     - {value:,}"]
        container = nodes.container(classes=["cluster-run"])
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return [container]


class CrashRun(_ReportDirective):
    """The crash states of every operation: ``make crash-test``, one a row."""

    def run(self):
        report = self.report("crash-test report", "make crash-test")
        lines = [
            f"Run on {report['date']}: ``{report['command']}``, "
            f"{report['seconds']:,} s.",
            "",
            ".. list-table::",
            "   :header-rows: 1",
            "",
            "   * - operation",
            "     - calls recorded",
            "     - states (distinct)",
            "     - every state tried",
            "     - violations",
            "     - repeats",
        ]
        for outcome in report["operations"]:
            violations = sum(v["states"] for v in outcome["violations"])
            lines += [
                f"   * - {outcome['operation']}",
                f"     - {outcome['calls']:,}",
                f"     - {outcome['states']:,} ({outcome['distinct']:,})",
                f"     - {'yes' if outcome['exhaustive'] else 'no, drawn'}",
                f"     - {violations:,}",
                f"     - {outcome['repeats']:,}",
            ]
        lines += [
            "   * - all of them",
            f"     - {report['calls recorded']:,}",
            f"     - {report['states explored']:,} "
            f"({report['distinct states recovered']:,})",
            "     -",
            f"     - {report['violations']:,}",
            f"     - {report['repeats (at least once)']:,}",
        ]
        container = nodes.container(classes=["crash-run"])
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return [container]


class ConformanceMatrix(_ReportDirective):
    """The spec against every GNU Mailman release: ``make conformance-matrix``."""

    def run(self):
        report = self.report("matrix", "make conformance-matrix")
        releases = report["releases"]
        ran = [name for name, result in releases.items() if result["ran"]]
        lines = [
            f"Built on {report['date']} by ``make conformance-matrix``.",
            "",
            ".. list-table:: Releases",
            "   :header-rows: 1",
            "",
            "   * - release",
            "     - MUST passed / failed",
            "     - SHOULD passed / failed",
        ]
        for name, result in releases.items():
            lines.append(f"   * - {name}")
            if not result["ran"]:
                lines += [f"     - not run: {result['why']}", "     -"]
                continue
            for level in ("MUST", "SHOULD"):
                counts = result["by_level"].get(level, {})
                lines.append(
                    f"     - {counts.get('passed', 0)} / {counts.get('failed', 0)}"
                )
        sections = sorted({key for name in ran for key in releases[name]["sections"]})
        lines += [
            "",
            ".. list-table:: Each section, passed / failed",
            "   :header-rows: 1",
            "",
            "   * - document / section / level",
            *[f"     - {name}" for name in ran],
        ]
        for section in sections:
            lines.append(f"   * - {section}")
            for name in ran:
                counts = releases[name]["sections"].get(section)
                lines.append(
                    f"     - {counts[0]} / {counts[1]}" if counts else "     - -"
                )
        lines += ["", "What changed from one release to the next:", ""]
        for change in report["changes"]:
            if not change["examples"]:
                lines.append(f"- {change['from']} to {change['to']}: nothing")
                continue
            lines.append(f"- {change['from']} to {change['to']}:")
            lines.append("")
            lines += [f"  - ``{example}``" for example in change["examples"]]
            lines.append("")
        container = nodes.container(classes=["conformance-matrix"])
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return [container]


class MailmanPluginRun(_ReportDirective):
    """The hostile corpus in a running GNU Mailman, without and with the plugin."""

    def run(self):
        report = self.report("plugin report", "make mailman-plugin-test")
        runs = report["runs"]
        refused = len(report["refused by the plugin's loader"])
        files = next(iter(runs.values()))["files"]
        lines = [
            f"Run on {report['date']}: ``{report['command']}``; {refused} of "
            f"the {files} files are refused by the plugin's loader.",
            "",
            ".. list-table::",
            "   :header-rows: 1",
            "",
            "   * - figure",
            *[f"     - {name}" for name in runs],
        ]
        skipped = ("plugin", "runner exits", "cases")
        for key in next(iter(runs.values())):
            if key in skipped:
                continue
            lines.append(f"   * - {key}")
            lines += [f"     - {run[key]:,}" for run in runs.values()]
        container = nodes.container(classes=["mailman-plugin-run"])
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return [container]


def setup(app):
    app.add_directive("mailman-plugin-run", MailmanPluginRun)
    app.add_directive("bench-run", BenchRun)
    app.add_directive("cluster-run", ClusterRun)
    app.add_directive("conformance-matrix", ConformanceMatrix)
    app.add_directive("crash-run", CrashRun)
    app.add_directive("hostile-run", HostileRun)
    app.add_directive("soak-run", SoakRun)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""GNU Mailman's own test suite, without and with mailqueue's Mailman plugin.

    python tests/mailman_plugin/mailman_suite.py [--full] [--report FILE]

Runs the tests of the installed ``mailman`` package (3.3.10) the way Mailman
runs them (its tox.ini: ``python -m nose2 -v``; its unittest.cfg: the
``flufl.testing.nose`` plugin, with Mailman's doctest set-up and default
layer, and nose2's layers plugin), once as they are and once with::

    [plugin.mailqueue]
    class: mailqueue.mailman.Plugin
    enabled: yes

pushed on Mailman's testing configuration through MAILMAN_EXTRA_TESTING_CFG
(read by ``mailman.core.initialize.initialize_1``, in the test process and in
every runner it starts).  Then it compares the results test by test and
exits 1 if any test's result differs (or if either run broke), but for the
two tests that list the site's configuration (:data:`LISTINGS`: any enabled
plugin appears there), which are reported apart and count with ``--strict``.

By default the tests of the packages that read queue files
(:data:`DEFAULT_PACKAGES`); with ``--full``, the whole suite.  Mailman runs
in the venv ``build/mailman-plugin-venv`` (or $MAILQUEUE_MAILMAN_PLUGIN_VENV),
made by ``tests/mailman_site/site.py``'s :func:`plugin_venv` with a wheel of
this checkout (:func:`build_wheel`), from an empty directory and with an
environment without PYTHON*, MAILMAN_*, COVERAGE_* and VIRTUAL_ENV (but for
the PYTHONPATH and MAILMAN_EXTRA_TESTING_CFG set here), so that the
``mailqueue`` it imports is the wheel's.

Two helpers run inside each run (written to a directory of their own, which
PYTHONPATH names):

* a nose2 plugin that records each test's outcome (and whether Mailman's
  three readers of queue files were reading with mailqueue's loader then) in
  a JSON-lines file; and
* one test of its own (:data:`PROBE_ID`), under Mailman's ConfigLayer: with
  the plugin, it asserts that Mailman loaded it, that ``installed()`` is
  true, that mailqueue is the venv's, and that a switchboard reads a message
  back but refuses a pickle naming ``posix.system``; without it, that none of
  this is so (and that nothing imported mailqueue).  It is counted apart
  from Mailman's tests.

Standard library only (it runs in the project's test process).  Mailman's
testing configuration listens on fixed ports (9001, 9024, 9025), so the runs
are one after the other and a lock file keeps two comparisons (and two
installs in the venv) from overlapping.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
ROOT = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from mailman_site.site import _clean_env, build_wheel, plugin_venv  # noqa: E402

#: The packages of Mailman whose tests read queue files (the switchboard and
#: runners, ``mailman qfile`` and the other commands).
DEFAULT_PACKAGES = ("mailman.core", "mailman.runners", "mailman.commands")
#: The whole suite (nose2 discovers every test module and doctest in it).
FULL_SUITE = ("mailman",)
VENV = os.environ.get(
    "MAILQUEUE_MAILMAN_PLUGIN_VENV", str(ROOT / "build" / "mailman-plugin-venv")
)
WHEEL_DIR = ROOT / "build" / "mailman-plugin-wheel"
LOCK = ROOT / "build" / "mailman-plugin-suite.lock"

PLUGIN_CFG = "[plugin.mailqueue]\nclass: mailqueue.mailman.Plugin\nenabled: yes\n"
PROBE_MODULE = "mailqueue_suite_probe"
PROBE_ID = f"{PROBE_MODULE}.PluginState.test_plugin_state"
RECORDER_MODULE = "mailqueue_suite_recorder"

# Mailman 3.3.10's unittest.cfg (from its sdist), and the recorder.  Its
# "verbose = 2" is a key nose2 no longer reads; tox.ini's -v gives the same.
UNITTEST_CFG = """\
[unittest]
verbose = 2
plugins = flufl.testing.nose
          nose2.plugins.layers
          {recorder}

[log-capture]
always-on = False

[flufl.testing]
always-on = True
package = mailman
start_run = mailman.testing.helpers.nose2_start_test_run_callback
default_layer = mailman.testing.layers.SMTPLayer
setup = mailman.testing.documentation.setup
teardown = mailman.testing.documentation.teardown

[mailqueue-recorder]
always-on = True
path = {results}
"""

RECORDER = '''\
"""A nose2 plugin: each test's outcome, as one JSON line (mailman_suite.py)."""

import doctest
import json
import os
import sys
import traceback
import unittest

from nose2.events import Plugin

READERS = (
    "mailman.core.switchboard",
    "mailman.commands.cli_qfile",
    "mailman.model.messagestore",
)


def verified_loader():
    """Whether all three readers now load with mailqueue's loader (looked up in
    sys.modules only: this imports nothing)."""
    for name in READERS:
        module = sys.modules.get(name)
        loader = getattr(module, "pickle", None)
        if module is None or type(loader).__module__ != "mailqueue.mailman":
            return False
    return True


def test_id(test):
    if isinstance(test, doctest.DocFileCase):
        mailman = sys.modules.get("mailman")
        path = test._dt_test.filename
        if mailman is not None:
            top = os.path.dirname(os.path.dirname(mailman.__file__))
            path = os.path.relpath(path, top)
        return "doctest:" + path
    return test.id()


def reason(exc_info):
    """One line: what went wrong."""
    kind, value, _ = exc_info
    text = str(value)
    if "Failed example:" in text:  # a doctest: its first failing example
        lines = text.splitlines()
        at = lines.index("Failed example:")
        where = lines[at - 1].rpartition(", ")[0].rpartition(", ")[2]
        example = lines[at + 1].strip() if at + 1 < len(lines) else ""
        return f"doctest {where}: {example}"[:300]
    last = traceback.format_exception_only(kind, value)[-1].strip()
    return " ".join(last.split())[:300]


class Recorder(Plugin):
    configSection = "mailqueue-recorder"

    def __init__(self):
        super().__init__()
        self.stream = open(self.config.as_str("path"), "a", encoding="utf-8")

    def _write(self, **record):
        self.stream.write(json.dumps(record) + "\\n")
        self.stream.flush()

    def startTestRun(self, event):
        self._write(event="start", pid=os.getpid())

    def testOutcome(self, event):
        if event.outcome == "subtest":
            if event.exc_info is None:
                return
            test = event.test.test_case
            failed = issubclass(event.exc_info[0], test.failureException)
            outcome = "failed" if failed else "error"
        else:
            test = event.test
            outcome = event.outcome
            if outcome == "failed" and event.expected:
                outcome = "expected failure"
            elif outcome == "passed" and not event.expected:
                outcome = "unexpected success"
        record = {"id": test_id(test), "outcome": outcome}
        if event.exc_info is not None:
            record["reason"] = reason(event.exc_info)
            detail = "".join(traceback.format_exception(*event.exc_info))
            record["detail"] = detail[-4000:]
        elif event.reason:
            record["reason"] = str(event.reason)[:300]
        record["verified_loader"] = verified_loader()
        self._write(**record)

    def stopTestRun(self, event):
        self._write(event="end")
        self.stream.close()
'''

PROBE = '''\
"""Whether mailqueue's Mailman plugin is active in this run (mailman_suite.py)."""

import os
import pickle
import shutil
import sys
import tempfile
import unittest

from mailman.testing.layers import ConfigLayer

TEXT = "From: anne@example.com\\nTo: test@example.com\\nSubject: probe\\n\\nHi.\\n"


class PluginState(unittest.TestCase):
    layer = ConfigLayer

    def test_plugin_state(self):
        from mailman.commands import cli_qfile
        from mailman.config import config
        from mailman.core import switchboard
        from mailman.model import messagestore
        from mailman.testing.helpers import specialized_message_from_string

        readers = (switchboard, cli_qfile, messagestore)
        if os.environ.get("MAILMAN_EXTRA_TESTING_CFG") is None:
            self.assertNotIn("mailqueue", config.plugins)
            self.assertNotIn("mailqueue.mailman", sys.modules)
            for module in readers:
                self.assertIs(module.pickle, pickle)
            return
        from mailqueue import mailman as plugin
        from mailqueue.safepickle import PickleRefused

        self.assertIsInstance(config.plugins["mailqueue"], plugin.Plugin)
        self.assertTrue(plugin.installed())
        # The wheel installed in the venv, not a checkout.
        self.assertTrue(plugin.__file__.startswith(sys.prefix), plugin.__file__)
        for module in readers:
            self.assertIsNot(module.pickle, pickle)
        queue = tempfile.mkdtemp()
        try:
            board = switchboard.Switchboard("probe", queue)
            base = board.enqueue(
                specialized_message_from_string(TEXT), listid="test.example.com"
            )
            msg, data = board.dequeue(base)
            board.finish(base)
            self.assertEqual(msg["subject"], "probe")
            self.assertEqual(data["listid"], "test.example.com")
            with open(os.path.join(queue, "1+hostile.pck"), "wb") as fp:
                fp.write(pickle.dumps(os.system) + pickle.dumps({}))
            with self.assertRaises(PickleRefused):
                board.dequeue("1+hostile")
        finally:
            shutil.rmtree(queue)
'''

OUTCOMES = (
    "passed",
    "failed",
    "error",
    "skipped",
    "expected failure",
    "unexpected success",
)
WORSE = {name: rank for rank, name in enumerate(reversed(OUTCOMES))}

# Why some tests fail both ways in this venv (matched against the test id, the
# reason and the traceback): its dependencies are newer than Mailman 3.3.10's
# own tests expect (Mailman asks only sqlalchemy>=1.4.0, click>=8.0.0).
KNOWN_CAUSES = (
    (
        re.compile(r"HTTP Error 500|\b500 != [0-9]{3}\b"),
        "HTTP 500 from Mailman's REST server, where its collections are counted"
        " with QuerySequence.__len__, which SQLAlchemy 2.1 refuses (as below)",
    ),
    (
        re.compile(r"sqlalchemy|select_from", re.I),
        "SQLAlchemy 2.1 (in the venv) refuses select_from(<Select>), which"
        " Mailman's QuerySequence.__len__ (mailman/utilities/queries.py) does",
    ),
    (
        re.compile(r"--help|Usage: main"),
        "click 8.5 (in the venv): --help now lists arguments and shows [COMMAND]"
        " as optional, so Mailman's expected help texts differ",
    ),
    (
        re.compile(r"test_cli_syncmembers"),
        "click 8.2+ (in the venv): CliRunner's output interleaves stderr with"
        " stdout, so the expected order of the lines differs",
    ),
)

#: Tests that differ with *any* plugin enabled, because they list the site's
#: configuration: they are reported apart (and fail the comparison only with
#: --strict) when the run with the plugin fails them by showing mailqueue's
#: own entry, and only so.
LISTINGS = {
    "doctest:mailman/plugins/docs/intro.rst": re.compile(
        r"3\.1/plugins'\)(?s:.*)\+\s+class: mailqueue\.mailman\.Plugin"
    ),
    "mailman.rest.tests.test_systemconf.TestSystemConfiguration.test_all_sections": (
        re.compile(r"-\s+'plugin\.mailqueue',")
    ),
}


@dataclass
class Run:
    """One run of the selection: without or with the plugin."""

    label: str
    command: list[str]
    env_added: dict[str, str]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    probe: dict[str, Any] | None = None
    wall: float = 0.0
    returncode: int | None = None
    nose2_ran: int | None = None
    nose2_status: str = ""
    complete: bool = False
    log: str = ""
    problems: list[str] = field(default_factory=list)
    leftovers: list[int] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        found = Counter(result["outcome"] for result in self.results.values())
        return {"run": len(self.results), **{name: found[name] for name in OUTCOMES}}

    def verified_during(self) -> int:
        return sum(1 for r in self.results.values() if r.get("verified_loader"))

    def summary(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "environment_added": self.env_added,
            "counts": self.counts(),
            "wall_seconds": round(self.wall, 1),
            "nose2_exit": self.returncode,
            "nose2_ran": self.nose2_ran,
            "nose2_status": self.nose2_status,
            "probe": self.probe,
            "tests_with_verified_loader": self.verified_during(),
            "problems": self.problems,
            "processes_left_running_and_ended": len(self.leftovers),
        }


@dataclass
class Comparison:
    """Both runs, and what differs between them."""

    selection: tuple[str, ...]
    without: Run
    with_plugin: Run
    differences: list[dict[str, Any]]
    fail_both: list[dict[str, Any]]
    listings: list[dict[str, Any]] = field(default_factory=list)
    other_both: list[dict[str, Any]] = field(default_factory=list)
    strict: bool = False

    @property
    def plugin_active(self) -> bool:
        probe = self.with_plugin.probe or {}
        return (
            probe.get("outcome") == "passed" and self.with_plugin.verified_during() > 0
        )

    @property
    def plugin_absent(self) -> bool:
        probe = self.without.probe or {}
        return probe.get("outcome") == "passed" and self.without.verified_during() == 0

    @property
    def problems(self) -> list[str]:
        found = [f"without: {p}" for p in self.without.problems]
        found += [f"with: {p}" for p in self.with_plugin.problems]
        if not self.plugin_active:
            found.append("the plugin was not shown active in the run with it")
        if not self.plugin_absent:
            found.append("the run without the plugin did not show it absent")
        return found

    @property
    def ok(self) -> bool:
        listed = self.strict and self.listings
        return not self.differences and not listed and not self.problems

    def report(self) -> dict[str, Any]:
        return {
            "mailman": "3.3.10",
            "selection": list(self.selection),
            "without_plugin": self.without.summary(),
            "with_plugin": self.with_plugin.summary(),
            "plugin_cfg": PLUGIN_CFG,
            "differences": self.differences,
            "differences_listing_the_configuration": self.listings,
            "failing_both_ways": self.fail_both,
            "skipped_or_expected_failures_both_ways": self.other_both,
            "problems": self.problems,
            "results": {
                test: {
                    "without": self.without.results.get(test, {}).get("outcome"),
                    "with": self.with_plugin.results.get(test, {}).get("outcome"),
                }
                for test in sorted(
                    set(self.without.results) | set(self.with_plugin.results)
                )
            },
        }

    def text(self) -> str:
        a, b = self.without, self.with_plugin
        ca, cb = a.counts(), b.counts()
        lines = [
            f"GNU Mailman 3.3.10's tests ({' '.join(self.selection)}),"
            " without and with mailqueue's plugin",
            f"{'':24}{'without':>10}{'with':>10}",
        ]
        for name in ("run", *OUTCOMES):
            if (
                name in ("run", "passed", "failed", "error", "skipped")
                or ca[name]
                or cb[name]
            ):
                lines.append(f"{name:24}{ca[name]:>10}{cb[name]:>10}")
        lines.append(f"{'wall time (s)':24}{a.wall:>10.1f}{b.wall:>10.1f}")
        lines.append(
            f"{'nose2: Ran (incl. probe)':24}{a.nose2_ran!s:>10}{b.nose2_ran!s:>10}"
        )
        lines.append(
            f"{'nose2 exit status':24}{a.returncode!s:>10}{b.returncode!s:>10}"
        )
        for run in (a, b):
            probe = run.probe or {}
            lines.append(
                f"{run.label}: probe {probe.get('outcome', 'did not run')}"
                f"{' (' + probe['reason'] + ')' if probe.get('reason') else ''};"
                f" Mailman's 3 queue-file readers used mailqueue's loader during"
                f" {run.verified_during()} of {len(run.results)} tests"
                + (
                    f"; {len(run.leftovers)} process(es) it left running ended"
                    if run.leftovers
                    else ""
                )
            )
        lines.append(f"Tests whose result differs: {len(self.differences)}")
        for item in self.differences:
            lines.append(
                f"  {item['id']}: without {item['without']}, with {item['with']}"
            )
            for side in ("without", "with"):
                if item.get(f"reason_{side}"):
                    lines.append(f"      {side}: {_short(item[f'reason_{side}'])}")
        if self.listings:
            lines.append(
                f"Tests that fail with the plugin only because they list the"
                f" site's configuration, where it now is: {len(self.listings)}"
                + (" (counted: --strict)" if self.strict else " (not counted)")
            )
            for item in self.listings:
                lines.append(f"  {item['id']}: {_short(item['reason_with'])}")
        lines.append(f"Tests that fail both ways, the same way: {len(self.fail_both)}")
        for item in self.fail_both:
            reason = _short(item["reason"], 100)
            lines.append(f"  {item['outcome']:<6} {item['id']}: {reason}")
            if item.get("reason_with") is not None:
                lines.append(f"      with the plugin: {_short(item['reason_with'])}")
        causes = Counter(item["cause"] for item in self.fail_both)
        for cause, count in sorted(causes.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {count:4} x {cause or 'cause not known'}")
        for item in self.other_both:
            lines.append(
                f"Both ways {item['outcome']}: {item['id']}"
                f"{' (' + _short(item['reason']) + ')' if item['reason'] else ''}"
            )
        for problem in self.problems:
            lines.append(f"PROBLEM: {problem}")
        lines.append("RESULT: " + ("same results" if self.ok else "NOT the same"))
        return "\n".join(lines)


def _cause(test: str, record: dict[str, Any]) -> str:
    text = f"{test} {record.get('reason', '')} {record.get('detail', '')}"
    for pattern, cause in KNOWN_CAUSES:
        if pattern.search(text):
            return cause
    return ""


def _short(text: str, width: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _normal(reason: str) -> str:
    """*reason* without what differs from run to run (addresses, temporary
    directories, times)."""
    reason = re.sub(r"0x[0-9a-f]+", "0x?", reason)
    reason = re.sub(r"/tmp/[\w.-]+", "/tmp/?", reason)
    return re.sub(r"\d\d:\d\d:\d\d", "?:?:?", reason)


def _read_results(run: Run, path: Path) -> None:
    if not path.is_file():
        run.problems.append("no results were recorded")
        return
    started = False
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("event") == "start":
            started = True
        elif record.get("event") == "end":
            run.complete = True
        elif record["id"] == PROBE_ID:
            run.probe = record
        else:
            old = run.results.get(record["id"])
            if old is None or WORSE[record["outcome"]] > WORSE[old["outcome"]]:
                run.results[record["id"]] = record
    if not started or not run.complete:
        run.problems.append("the nose2 run did not finish (see its log)")


def _parse_log(run: Run) -> None:
    ran = re.findall(r"^Ran (\d+) tests? in [\d.]+s$", run.log, re.M)
    status = re.findall(r"^(OK|FAILED)\b.*$", run.log, re.M)
    run.nose2_ran = int(ran[-1]) if ran else None
    run.nose2_status = status[-1] if status else ""
    recorded = len(run.results) + (run.probe is not None)
    if run.nose2_ran is None:
        run.problems.append("nose2 printed no 'Ran N tests'")
    elif run.nose2_ran != recorded and run.complete:
        # Subtests can make the two differ; say so, it is no failure.
        run.nose2_status += f" (recorded {recorded} test ids)"


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _group_members(pgid: int) -> list[int]:
    """The processes of process group *pgid* (what /proc shows)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        fields = stat.rpartition(")")[2].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def _end_leftovers(pgid: int) -> list[int]:
    """End what a run left running in its own process group (some of Mailman's
    tests leave a runner behind): SIGTERM, then SIGKILL after 10 s."""
    left = _group_members(pgid)
    if left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return left


def run_suite(
    bin_dir: str,
    names: Sequence[str],
    work: Path,
    label: str,
    plugin: bool,
    timeout: float,
) -> Run:
    """Run Mailman's tests *names* (and the probe) once; *work* is made here."""
    support = work / "support"
    cwd = work / "cwd"  # stays empty: nothing in it to import
    support.mkdir(parents=True)
    cwd.mkdir()
    results = work / "results.jsonl"
    cfg = support / "unittest.cfg"
    cfg.write_text(UNITTEST_CFG.format(recorder=RECORDER_MODULE, results=results))
    (support / f"{RECORDER_MODULE}.py").write_text(RECORDER)
    (support / f"{PROBE_MODULE}.py").write_text(PROBE)
    env = _clean_env(pythonpath=str(support))
    added = {"PYTHONPATH": str(support), "PYTHONDONTWRITEBYTECODE": "1"}
    if plugin:
        extra = support / "mailqueue-plugin.cfg"
        extra.write_text(PLUGIN_CFG)
        env["MAILMAN_EXTRA_TESTING_CFG"] = added["MAILMAN_EXTRA_TESTING_CFG"] = str(
            extra
        )
    python = str(Path(bin_dir) / "python")
    command = [python, "-m", "nose2", "-v", "--no-user-config", "-c", str(cfg)]
    command += [*names, PROBE_MODULE]
    run = Run(label=label, command=command, env_added=added)
    log_path = work / "nose2.log"
    start = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its runners too, to end them on a timeout
        )
        try:
            run.returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            run.problems.append(f"timed out after {timeout:.0f} s")
            _kill_group(process)
        except BaseException:
            _kill_group(process)
            raise
    run.wall = time.monotonic() - start
    run.leftovers = _end_leftovers(process.pid)
    run.log = log_path.read_text(encoding="utf-8", errors="replace")
    _read_results(run, results)
    _parse_log(run)
    return run


def compare_runs(
    selection: Sequence[str], without: Run, with_plugin: Run, strict: bool = False
) -> Comparison:
    """Compare the two runs test by test."""
    comparison = Comparison(tuple(selection), without, with_plugin, [], [])
    comparison.strict = strict
    for test in sorted(set(without.results) | set(with_plugin.results)):
        a = without.results.get(test)
        b = with_plugin.results.get(test)
        outcome_a = a["outcome"] if a else "not run"
        outcome_b = b["outcome"] if b else "not run"
        if outcome_a != outcome_b:
            item = {"id": test, "without": outcome_a, "with": outcome_b}
            for side, record in (("without", a), ("with", b)):
                if record and record.get("reason"):
                    item[f"reason_{side}"] = record["reason"]
                if record and record.get("detail"):
                    item[f"detail_{side}"] = record["detail"]
            listing = LISTINGS.get(test)
            if (
                listing is not None
                and outcome_a == "passed"
                and outcome_b == "failed"
                and listing.search(item.get("detail_with", ""))
            ):
                comparison.listings.append(item)
            else:
                comparison.differences.append(item)
        elif a and b and outcome_a in ("failed", "error"):
            item = {
                "id": test,
                "outcome": outcome_a,
                "reason": a.get("reason", ""),
                "cause": _cause(test, a),
            }
            if _normal(b.get("reason", "")) != _normal(a.get("reason", "")):
                item["reason_with"] = b.get("reason")
            comparison.fail_both.append(item)
        elif a and b and outcome_a != "passed":
            reason = a.get("reason", "")
            comparison.other_both.append(
                {"id": test, "outcome": outcome_a, "reason": reason}
            )
    return comparison


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def compare(
    names: Sequence[str] = DEFAULT_PACKAGES,
    work: Path | None = None,
    timeout: float = 1800.0,
    venv: str = VENV,
    strict: bool = False,
) -> Comparison:
    """Build the wheel, set up the venv, run *names* without then with the plugin."""
    with contextlib.ExitStack() as stack:
        if work is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.enter_context(_locked())
        bin_dir = plugin_venv(venv, build_wheel(str(WHEEL_DIR)))
        without = run_suite(bin_dir, names, work / "without", "without", False, timeout)
        with_plugin = run_suite(bin_dir, names, work / "with", "with", True, timeout)
    return compare_runs(names, without, with_plugin, strict)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the whole suite")
    parser.add_argument("--report", help="write the figures and results (JSON) here")
    parser.add_argument(
        "--keep",
        help="run in this new directory (kept: logs, results), not a temporary one",
    )
    parser.add_argument(
        "--timeout", type=float, help="seconds for each run (1800; --full 14400)"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="count the tests that only list the configuration as differences too",
    )
    parser.add_argument(
        "names", nargs="*", help="test names for nose2 instead of the default packages"
    )
    args = parser.parse_args(argv)
    names = tuple(args.names) or (FULL_SUITE if args.full else DEFAULT_PACKAGES)
    timeout = args.timeout or (14400.0 if args.full else 1800.0)
    work = Path(args.keep).resolve() if args.keep else None
    if work is not None:
        work.mkdir(parents=True, exist_ok=False)
    comparison = compare(names, work=work, timeout=timeout, strict=args.strict)
    print(comparison.text())
    if args.report:
        report = Path(args.report)
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(comparison.report(), indent=1) + "\n")
    return 0 if comparison.ok else 1


if __name__ == "__main__":
    sys.exit(main())

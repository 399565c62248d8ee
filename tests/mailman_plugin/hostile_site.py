"""The hostile corpus in a running GNU Mailman, without and with mailqueue's plugin.

For each of the two runs, a GNU Mailman 3.3.10 site (its own venv, with
mailqueue's wheel installed; an aiosmtpd server on loopback as its MTA) is
set up from nothing; the only difference between the runs is the plugin's
section in mailman.cfg.  Each run:

1. reads every file of the corpus (tools/hostile, the cases that are file
   contents) with ``mailman qfile``, each in a child of its own;
2. starts Mailman, puts every file into its ``in`` queue (named to come
   first), posts ordinary messages behind them, and waits until ``in`` is
   empty and the posts are delivered, or nothing has moved for 30 s, or
   120 s have passed;
3. counts: files whose code ran (each case's code would make a marker file of
   its own), runner processes that died, files in ``bad`` and ``shunt`` and
   left in ``in``, posts delivered, Mailman's error-log lines.

Mailman's runners run with 4 GiB of address space, so that a memory bomb
fails instead of taking the machine.  :func:`hostile_runs` returns both runs'
figures; ``python hostile_site.py REPORT`` writes them as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tools" / "hostile")]

from entries import classics  # noqa: E402
from mailman_site import site as helpers  # noqa: E402

# Both runs: the master logs each runner that exits at debug level.
COMMON_CFG = """
[logging.runner]
level: debug
"""
PLUGIN_CFG = """
[plugin.mailqueue]
class: mailqueue.mailman.Plugin
enabled: yes
"""
LIST = "test@example.com"  # the corpus's entries name test.example.com
POSTS = 20
WAIT = 120.0
SETTLED = 30.0
ADDRESS_SPACE = 4 << 30
VENV = os.environ.get(
    "MAILQUEUE_PLUGIN_VENV", str(ROOT / "build" / "mailman-plugin-venv")
)


def corpus(markers: Path, where: str) -> dict[str, tuple[str, bytes]]:
    """The corpus's file contents, by file base: (case name, bytes).

    Each case's code, if it ran, would make ``markers/WHERE-NNNNN``: the
    cases are made once with a placeholder of the same length, replaced.
    """
    placeholder = f"{markers}/{where}-@@@@@"
    cases = [case for case in classics(placeholder) if case.kind == "bytes"]
    found = {}
    for number, case in enumerate(cases):
        marker = f"{markers}/{where}-{number:05d}"
        data = case.data.replace(placeholder.encode(), marker.encode())
        digest = hashlib.sha1(case.name.encode()).hexdigest()
        # An old time: the corpus comes before the ordinary posts.
        found[f"{1_000_000_000 + number}.0+{digest}"] = (case.name, data)
    return found


def _tool(bin_dir: str, *args: str) -> dict[str, str]:
    done = helpers._run(
        [str(Path(bin_dir) / "python"), str(HERE / "plugin_tool.py"), *args],
        "plugin_tool.py " + args[0],
        cwd=str(Path(args[-1]).parent),
        timeout=1800,
        env=helpers._clean_env(pythonpath=str(helpers.HERE)),
    )
    found: dict[str, str] = json.loads(done.stdout.splitlines()[-1])
    return found


def _logged(site: helpers.MailmanSite) -> str:
    return "\n".join(site.logs().values())


def _runner_exits(log: str) -> list[str]:
    """The master's report of each runner process that exited."""
    lines = log.splitlines()
    return [
        lines[number + 1] if number + 1 < len(lines) else line
        for number, line in enumerate(lines)
        if line.endswith("Master detected subprocess exit")
    ]


UNPARSEABLE = re.compile(r"Skipping and preserving unparseable message: (\S+)")


def one_run(root: Path, bin_dir: str, plugin: bool) -> dict[str, Any]:
    """One run (see the module's text); its figures."""
    root.mkdir(parents=True)
    markers = root / "markers"
    markers.mkdir()
    staged = root / "qfile"
    staged.mkdir()
    for filebase, (_, data) in corpus(markers, "qfile").items():
        (staged / (filebase + ".pck")).write_bytes(data)
    files = corpus(markers, "runner")
    names = {filebase: name for filebase, (name, _) in files.items()}
    started = time.monotonic()
    site = helpers.MailmanSite(
        root / "site",
        bin_dir,
        extra_cfg=COMMON_CFG + (PLUGIN_CFG if plugin else ""),
        address_space=ADDRESS_SPACE,
    )
    with site:
        site.create_list(LIST)
        qfile = _tool(bin_dir, "qfile", str(site.paths.cfg_file), str(staged))
        site.start()
        queue = site.paths.queue_dir / "in"
        for filebase, (_, data) in files.items():
            temporary = queue / (filebase + ".pck.tmp")
            temporary.write_bytes(data)
            temporary.rename(queue / (filebase + ".pck"))
        posts = site.inject_many(POSTS, LIST)
        # Until every post is delivered and in is empty; or until nothing
        # has moved for SETTLED seconds (a runner that died for good); or
        # WAIT seconds at most.
        deadline = time.monotonic() + WAIT
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            delivered = {entry["message_id"] for entry in site.delivered()}
            busy = site.queue_files("in") + site.queue_files("in", ".bak")
            if not busy and delivered >= set(posts):
                break
            now = (len(busy), len(delivered), len(site.queue_files("bad", ".psv")))
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > SETTLED:
                break
            time.sleep(0.5)
        delivered = {entry["message_id"] for entry in site.delivered()}
        left = [path.stem for path in site.queue_files("in")]
        left += [path.stem for path in site.queue_files("in", ".bak")]
        # Before the stop, whose runners exit too.
        exits = _runner_exits(_logged(site))
        site.stop_mailman()
        bad = {path.stem for path in site.queue_files("bad", ".psv")}
        shunted = len(site.queue_files("shunt"))
        unparseable = set(UNPARSEABLE.findall(_logged(site)))
    ran = sorted(path.name for path in markers.iterdir())
    by_case = {
        names[filebase]: {
            "in bad": filebase in bad,
            "logged as unparseable": filebase in unparseable,
            "left in in": filebase in left,
            "qfile": qfile[filebase + ".pck"],
        }
        for filebase in files
    }
    return {
        "plugin": plugin,
        "files": len(files),
        "code executed by a runner": sum(name.startswith("runner-") for name in ran),
        "code executed by mailman qfile": sum(
            name.startswith("qfile-") for name in ran
        ),
        "code executed, case unknown": sum("@" in name for name in ran),
        "runner processes that died": len(exits),
        "files in bad": len(bad & set(files)),
        "entries shunted": shunted,
        "files left in in": len(set(left) & set(files)),
        "posts": POSTS,
        "posts delivered": len(delivered & set(posts)),
        "mailman qfile read": sum(v == "read" for v in qfile.values()),
        "mailman qfile errors": sum(v.startswith("error") for v in qfile.values()),
        "mailman qfile hangs": sum(v == "hang" for v in qfile.values()),
        "mailman qfile crashes": sum(v.startswith("crash") for v in qfile.values()),
        "files logged as unparseable": len(unparseable & set(files)),
        "seconds": round(time.monotonic() - started, 1),
        "runner exits": exits,
        "cases": by_case,
    }


def hostile_runs(work: Path) -> dict[str, Any]:
    """Both runs, and what the plugin makes of each file; figures by run."""
    wheel = helpers.build_wheel(str(work / "wheel"))
    bin_dir = helpers.plugin_venv(VENV, wheel)
    judged = work / "judged"
    judged.mkdir(parents=True)
    for filebase, (_, data) in corpus(work / "nowhere", "judged").items():
        (judged / (filebase + ".pck")).write_bytes(data)
    verdicts = _tool(bin_dir, "classify", str(judged))
    runs = {
        "without the plugin": one_run(work / "without", bin_dir, plugin=False),
        "with the plugin": one_run(work / "with", bin_dir, plugin=True),
    }
    names = corpus(work / "nowhere", "judged")
    refused = {
        names[name.removesuffix(".pck")][0]
        for name, verdict in verdicts.items()
        if verdict.startswith("refused")
    }
    return {
        "date": time.strftime("%Y-%m-%d"),
        "command": "make mailman-plugin-test",
        "refused by the plugin's loader": sorted(refused),
        "runs": runs,
    }


def main() -> None:
    import tempfile

    report = Path(sys.argv[1])
    with tempfile.TemporaryDirectory(prefix="mailqueue-plugin-") as work:
        found = hostile_runs(Path(work))
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(found, indent=2) + "\n")


if __name__ == "__main__":
    main()

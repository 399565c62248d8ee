"""Check the built documentation in headless Chromium: ``make docs-check``.

The site in build/html is served on 127.0.0.1 and every page is loaded in
Debian's Chromium.  The check fails on:

- a broken internal link, a link to a missing anchor, or a missing image,
  script or style sheet (from the HTML, and from every request the browser
  made that the server answered with 404);
- anything a page wrote to the browser console (a published page has no
  reason to);
- a search for "slice" that does not find the switchboard page (the search
  form's own request, ``search.html?q=slice``, run by the page's scripts).

It saves screenshots of the landing page and of the switchboard page in
build/screenshots/, and ends with ``N passed, N failed`` over its checks.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
]
CONSOLE_LINE = re.compile(r":CONSOLE[:(]\d+\)?\] (.*)")


class _Page(HTMLParser):
    """The ids a page defines and the local resources it refers to."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.references: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in ("id", "name") if tag == "a" else ("id",):
            if attributes.get(name):
                self.ids.add(attributes[name])
        for name in ("href", "src"):
            value = attributes.get(name)
            if value and tag in ("a", "link", "img", "script", "iframe", "source"):
                self.references.append((tag, value))


def check_links(root: Path) -> list[str]:
    """Every local link, anchor and resource in the site under *root* that is broken."""
    pages: dict[Path, _Page] = {}
    for path in sorted(root.rglob("*.html")):
        page = _Page()
        page.feed(path.read_text(encoding="utf-8"))
        pages[path] = page
    problems = []
    for path, page in pages.items():
        for tag, reference in page.references:
            parts = urlsplit(reference)
            if parts.scheme or parts.netloc or reference.startswith("javascript:"):
                continue  # not part of this site
            target = (
                (path.parent / unquote(parts.path)).resolve() if parts.path else path
            )
            where = f"{path.relative_to(root)}: <{tag}> {reference}"
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                problems.append(f"{where}: no such file")
            elif (
                parts.fragment
                and target in pages
                and unquote(parts.fragment) not in pages[target].ids
            ):
                problems.append(f"{where}: no such anchor")
    return problems


def check_api(root: Path) -> list[str]:
    """Every name in the ``__all__`` of every mailqueue module that has no API entry."""
    import importlib
    import pkgutil

    import mailqueue

    anchors = set()
    for path in (root / "api").glob("*.html"):
        page = _Page()
        page.feed(path.read_text(encoding="utf-8"))
        anchors |= page.ids
    missing = []
    for module in pkgutil.walk_packages(mailqueue.__path__, "mailqueue."):
        if module.name.endswith("__main__"):
            continue
        names = getattr(importlib.import_module(module.name), "__all__", None)
        if names is None:
            missing.append(f"{module.name} has no __all__")
        elif f"module-{module.name}" not in anchors:
            missing.append(f"{module.name} has no page")
        else:
            missing += [
                f"{module.name}.{name}"
                for name in names
                if f"{module.name}.{name}" not in anchors
            ]
    return missing


class _Handler(http.server.SimpleHTTPRequestHandler):
    missing: list[str]

    def log_message(self, format: str, *args: object) -> None:
        if len(args) > 1 and str(args[1]) == "404":
            self.missing.append(self.path)


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, list[str]]:
    """Serve *root* on a free port of 127.0.0.1; also return the 404s it answers."""
    missing: list[str] = []
    handler = type("Handler", (_Handler,), {"missing": missing})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, missing


def chromium(browser: str, url: str, *arguments: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="mailqueue-chromium-") as profile:
        return subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments, url],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, nargs="?", default=Path("build/html"))
    parser.add_argument("--screenshots", type=Path, default=Path("build/screenshots"))
    arguments = parser.parse_args()
    browser = shutil.which("chromium")
    if browser is None:
        print("docs-check: Chromium is not installed (apt-get install chromium)")
        return 1
    root = arguments.site.resolve()
    passed, failures = 0, []

    def record(check: str, problems: list[str]) -> None:
        nonlocal passed
        if problems:
            failures.append(check)
            print(f"FAILED {check}")
            for problem in problems:
                print(f"  {problem}")
        else:
            passed += 1

    record("internal links, anchors and resources", check_links(root))
    record("the API reference documents every public name", check_api(root))
    server, missing = serve(root)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        for path in sorted(root.rglob("*.html")):
            page = path.relative_to(root).as_posix()
            result = chromium(
                browser, f"{base}/{page}", "--virtual-time-budget=3000", "--dump-dom"
            )
            problems = [
                f"console: {line}" for line in CONSOLE_LINE.findall(result.stderr)
            ]
            if result.returncode != 0 or "</html>" not in result.stdout:
                problems.append(f"did not load (exit status {result.returncode})")
            problems += [f"the server had no {request}" for request in missing]
            missing.clear()
            record(f"page {page}", problems)
        result = chromium(
            browser,
            f"{base}/search.html?q=slice",
            "--virtual-time-budget=15000",
            "--dump-dom",
        )
        found = re.findall(
            r'<ul [^>]*class="search"[^>]*>(.*?)</ul>', result.stdout, re.S
        )
        record(
            'search for "slice" finds the switchboard page',
            []
            if found and 'href="switchboard.html' in found[0]
            else ["switchboard.html is not among the search results"],
        )
        arguments.screenshots.mkdir(parents=True, exist_ok=True)
        for page, name in (
            ("index.html", "landing"),
            ("switchboard.html", "switchboard"),
        ):
            shot = (arguments.screenshots / f"{name}.png").resolve()
            shot.unlink(missing_ok=True)
            chromium(
                browser,
                f"{base}/{page}",
                f"--screenshot={shot}",
                "--window-size=1280,1000",
            )
            record(
                f"screenshot {shot.name}",
                []
                if shot.exists() and shot.stat().st_size > 10_000
                else [f"no screenshot of {page}"],
            )
    finally:
        server.shutdown()
    print(f"{passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

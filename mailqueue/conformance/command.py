"""``mailqueue conformance ADAPTER``: the spec against an implementation.

The command runs the spec documents the package carries (see
:func:`~mailqueue.conformance.spec.documents_directory`) with pytest and
Sybil, against the adapter named on its command line, from any directory:
it reads no configuration file of the directory it runs in, and writes
nothing there unless ``--report DIR`` says so.  It prints pytest's progress,
then the report of :mod:`mailqueue.conformance.report`, whose last line is
``N passed, N failed``.  Its exit status is pytest's: 0 when every MUST
example passes or is a known divergence and no known divergence passes
(``mailqueue conformance --help`` gives them all); it is 1, with one line
saying why, when the adapter cannot be found or pytest and Sybil are not
installed.

It needs the ``conformance`` extra (pytest, Sybil, pytest-timeout); the
rest of mailqueue does not, so nothing here imports them until it runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

from mailqueue.conformance.adapter import AdapterError, load_adapter
from mailqueue.conformance.spec import (
    LEVELS,
    SPEC_DOCUMENTS,
    SpecNotFoundError,
    documents_directory,
)

__all__ = ["add_arguments", "main", "pytest_arguments", "run"]

#: A hang fails its example instead of stalling the run (pytest-timeout).
TIMEOUT = 300

DESCRIPTION = """\
Run the spec's documents against an implementation, through its adapter,
and report, document by document and section by section, what passed and
what failed, with every failure's example, the output the spec expects and
the output the implementation gave.  The exit status is 0 when every MUST
example passes (or fails as a known divergence the adapter declares) and no
known divergence passes; 1 when the implementation does not conform or the
command cannot run, 4 when the adapter cannot start, 5 when nothing was
selected.  Nothing is written unless --report says where.
"""

EPILOG = """\
ADAPTER is mailqueue (the reference implementation), mailman (GNU Mailman
3.3.10, with mailqueue[mailman] installed), the name of an entry point in
the group mailqueue.adapters, or an import path, package.module:attribute.
How to write an adapter: the page "Checking another implementation" of
mailqueue's documentation.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's arguments, on *parser*."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "adapter", metavar="ADAPTER", help="the implementation's adapter (see below)"
    )
    parser.add_argument(
        "--report",
        metavar="DIR",
        help="also write the report to DIR/report.json and DIR/junit.xml",
    )
    parser.add_argument(
        "--level",
        choices=LEVELS,
        help="run only the examples of this requirement level",
    )
    parser.add_argument(
        "-k",
        metavar="EXPRESSION",
        dest="keyword",
        help="run only the examples whose document, section title or level "
        "matches, as pytest's -k does: -k switchboard, -k 'Queue and slices'",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="name every example as it runs",
    )


def pytest_arguments(arguments: argparse.Namespace) -> list[str]:
    """What pytest is given for *arguments*."""
    directory = documents_directory()
    options = [
        *(str(directory / name) for name in SPEC_DOCUMENTS),
        # Only this package's settings: no ini file, conftest.py or cache of
        # the directory the command runs in, or of the one it is installed in.
        *("-c", os.devnull, "--rootdir", str(directory)),
        *("--confcutdir", str(directory), "-p", "no:cacheprovider"),
        *("-p", "no:doctest", "-p", "mailqueue.conformance.plugin"),
        # The implementation's own deprecations are not the spec's business.
        *("-W", "ignore::DeprecationWarning", "--tb=no"),
        "-v" if arguments.verbose else "-q",
        f"--implementation={arguments.adapter}",
    ]
    if importlib.util.find_spec("pytest_timeout") is not None:
        options.append(f"--timeout={TIMEOUT}")
    if arguments.report:
        options.append(f"--report-dir={os.path.abspath(arguments.report)}")
    if arguments.level:
        options.append(f"--level={arguments.level}")
    if arguments.keyword:
        options += ["-k", arguments.keyword]
    return options


def run(arguments: argparse.Namespace) -> int:
    """Run the spec as *arguments* say; the exit status."""
    missing = [
        name for name in ("pytest", "sybil") if importlib.util.find_spec(name) is None
    ]
    if missing:
        print(
            f"mailqueue conformance: error: {' and '.join(missing)} "
            "not installed: pip install 'mailqueue[conformance]'",
            file=sys.stderr,
        )
        return 1
    try:
        # Found here, for a one-line error; pytest's plugin loads it again.
        load_adapter(arguments.adapter)
        options = pytest_arguments(arguments)
    except (AdapterError, SpecNotFoundError) as error:
        print(f"mailqueue conformance: error: {error}", file=sys.stderr)
        return 1
    import pytest

    return int(pytest.main(options))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mailqueue.conformance``: the same as ``mailqueue conformance``."""
    parser = argparse.ArgumentParser(prog="python -m mailqueue.conformance")
    add_arguments(parser)
    return run(parser.parse_args(argv))

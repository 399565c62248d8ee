"""Shell sessions on a page, run as tests (mailqueue.conformance.console)."""

import os
import textwrap
from pathlib import Path

import pytest
from sybil import Sybil
from sybil.example import SybilFailure
from sybil.parsers.rest import DocTestParser

from mailqueue.conformance.console import (
    Command,
    ConsoleParser,
    SessionError,
    ShellSession,
    end_session,
    parse_session,
)


@pytest.fixture
def page(tmp_path, var_dir):
    """Parse a page's text with the console parser (and doctests); end its shell."""
    documents = []

    def parse(text):
        path = tmp_path / f"page{len(documents)}.rst"
        path.write_text(textwrap.dedent(text))
        document = Sybil([DocTestParser(), ConsoleParser()]).parse(path)
        documents.append(document)
        return document

    yield parse
    for document in documents:
        end_session(document.namespace)


def run(document):
    """Evaluate every example of *document*; the failures' messages, in order."""
    failures = []
    for example in document.examples():
        try:
            example.evaluate()
        except SybilFailure as failure:
            failures.append(failure.result)
    return failures


def test_a_session_runs_in_one_shell_and_sees_the_pages_state(page):
    document = page("""\
        .. console-sessions: run

        .. code-block:: console

            $ mkdir site && cd site
            $ export GREETING=hello
            $ cat > note.txt <<'EOF'
            > first
            >
            > third
            > EOF
            $ cat note.txt; echo "$GREETING from $(basename "$PWD")"
            first

            third
            hello from site
            $ printf 'no newline at the end'
            no newline at the end
            $ sh -c 'echo "to standard error" >&2; exit 2'; echo "exit status $?"
            to standard error
            exit status 2
            $
            $ mailqueue lists create test@example.com
            created ... (list-id test.example.com)

        Python examples on the page see what the shell did:

            >>> from mailqueue import config
            >>> print(config.lists.get('test@example.com').fqdn_listname)
            test@example.com

        .. invisible-code-block: console

            $ echo "$MAILQUEUE_CONFIG" | grep -c mailqueue.cfg
            1
        """)
    assert run(document) == []
    assert len(list(document.examples())) == 4


def test_a_page_without_the_marker_runs_no_session(page):
    document = page("""\
        .. code-block:: console

            $ make test
        """)
    assert list(document.examples()) == []


def test_output_that_differs_fails_and_says_where_and_how(page):
    document = page("""\
        .. console-sessions: run

        Some prose.

        .. code-block:: console

            $ echo one
            one
            $ printf 'two\\n\\nfour\\n'
            two
            three
            four
            $ echo never run
            nothing
        """)
    [failure] = run(document)
    assert failure.startswith("line 9: $ printf 'two\\n\\nfour\\n'\n")
    assert "- three\n" in failure
    assert "<BLANKLINE>" not in failure


def test_a_shell_that_ends_fails_the_example_and_the_next_gets_a_new_one(page):
    document = page("""\
        .. console-sessions: run

        .. code-block:: console

            $ touch here && exit 3

        .. code-block:: console

            $ ls
        """)
    first, second = document.examples()
    with pytest.raises(SybilFailure, match=r"line 5: .*\nthe shell ended \(exit"):
        first.evaluate()
    second.evaluate()  # a new shell, in a new directory: here is not there


def test_output_before_any_command_is_refused():
    with pytest.raises(ValueError, match="line 1 of the session comes before"):
        parse_session("what command?\n$ true\n")
    assert parse_session("\n$ true\n") == [Command(1, "true", "")]


def test_a_command_that_takes_too_long_is_given_up_with_its_shell(tmp_path):
    directory = tmp_path / "session"
    directory.mkdir()
    session = ShellSession(str(directory), os.environ)
    assert session.run("echo up") == "up\n"
    with pytest.raises(SessionError, match=r"did not end within 0\.2 s"):
        session.run("sleep 60", timeout=0.2)
    session.close()
    assert session.process.returncode is not None
    assert not directory.exists()


def test_a_page_without_a_session_ends_none():
    namespace = {}
    end_session(namespace)
    assert namespace == {}


@pytest.mark.parametrize(
    "name, least", [("operating", 40), ("service", 5), ("troubleshooting", 30)]
)
def test_the_operators_pages_are_shell_sessions_that_run(name, least):
    # The pages show the command as a terminal shows it, and the tests run
    # it so: not as calls of mailqueue.cli.main from Python.
    path = Path(__file__).resolve().parent.parent / "docs" / f"{name}.rst"
    commands = [
        command
        for example in Sybil([ConsoleParser()]).parse(path).examples()
        for command in example.parsed[1]
    ]
    assert len(commands) >= least
    assert "mailqueue.cli import main" not in path.read_text()

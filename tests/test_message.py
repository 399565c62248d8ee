"""The message class's senders, the debug log, and the tests' own var directory."""

import logging
import os
import re
from email.utils import getaddresses

from hypothesis import example, given
from hypothesis import strategies as st

from mailqueue import config, create_list, message_from_string
from mailqueue import message as message_module
from mailqueue.logs import logging_to
from mailqueue.testing import isolated_state


def test_senders_lists_every_author_address_in_the_order_believed():
    msg = message_from_string(
        "From Someone@Example.org Mon Jan  1 00:00:00 2024\n"
        "From: Anne Person <ANNE@example.com>, undisclosed\n"
        "Reply-To: =?utf-8?q?Bill_B=C3=A9?= <bill@example.com>\n"
        "Sender: cris@example.com\n"
        "From: dave@example.com\n"
        "\n"
        "Hello.\n"
    )
    # Both From headers, then the mbox From line, Reply-To and Sender;
    # lower-cased, and "undisclosed" (no address) dropped.
    assert msg.senders == [
        "anne@example.com",
        "dave@example.com",
        "someone@example.org",
        "bill@example.com",
        "cris@example.com",
    ]
    assert msg.sender == "anne@example.com"
    nobody = message_from_string("Subject: no author\n\nHello.\n")
    assert (nobody.senders, nobody.sender) == ([], "")


def _parsed_in_full(value):
    # What the sender is without the fast way: every address getaddresses
    # finds, lower-cased, if it looks like one.
    found = [address.lower() for _, address in getaddresses([value])]
    return [address for address in found if message_module._ADDRESS.match(address)]


_ATOM = st.text(
    alphabet="aZ09.!#$%&'*+/=?^_`{|}~-@<>\" (),;:[]\\ \t", min_size=0, max_size=12
)


@given(name=_ATOM, local=_ATOM, domain=_ATOM, form=st.integers(0, 2))
@example(name="Anne Person", local="Anne.P+x", domain="Example.com", form=1)
@example(name="", local="a..b", domain="c", form=0)
@example(name="x", local="a", domain="b", form=2)
def test_a_plain_address_is_read_as_getaddresses_reads_it(name, local, domain, form):
    value = [f"{local}@{domain}", f"{name} <{local}@{domain}>", f'"{name}" <{local}>'][
        form
    ]
    msg = message_from_string(f"From: {value}\n\nHello.\n")
    expected = _parsed_in_full(msg["from"])
    assert msg._from("from") == expected
    if message_module._PLAIN.fullmatch(msg["from"]):
        assert len(expected) == 1  # the fast way took it


def test_with_debug_the_debug_lines_go_to_debug_log(tmp_path):
    debug = logging.getLogger("mailqueue.debug")
    level = debug.level
    try:
        with logging_to(str(tmp_path), debug=True):
            debug.debug("pass %d: %d entries", 1, 3)
        debug.debug("after the block: nowhere")
    finally:
        debug.setLevel(level)
    line = (tmp_path / "debug.log").read_text()
    assert re.fullmatch(rf".+ \[{os.getpid()}\] DEBUG pass 1: 3 entries\n", line)


def test_without_debug_there_is_no_debug_log(tmp_path):
    with logging_to(str(tmp_path)):
        logging.getLogger("mailqueue.debug").warning("not in a file")
    assert not (tmp_path / "debug.log").exists()


def test_an_explicit_empty_database_url_keeps_the_lists_in_sqlite(monkeypatch):
    # The environment names a PostgreSQL server that is not there; the
    # empty URL given wins, so no connection is tried.
    monkeypatch.setenv("MAILQUEUE_TEST_DATABASE", "postgresql://127.0.0.1:9/none")
    with isolated_state(database_url="") as var_dir:
        assert config.database_url.startswith(f"sqlite:///{var_dir}/")
        create_list("test@example.com")
        assert config.lists.get("test@example.com") is not None
    assert not os.path.exists(var_dir)

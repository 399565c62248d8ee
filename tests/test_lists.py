"""The list database, in SQLite by default or in PostgreSQL.

``make spec-postgresql`` runs these (and the spec) with
``MAILQUEUE_TEST_DATABASE`` naming a throwaway PostgreSQL server, so the
same expectations hold for both.
"""

import os
import socket
import sys

import pytest

from mailqueue import config, create_list, message_from_string
from mailqueue.configuration import ConfigurationError
from mailqueue.lists import ListExistsError, ListManager
from mailqueue.runners import IncomingRunner
from mailqueue.testing import isolated_state


def test_lists_and_members_round_trip(var_dir):
    mlist = create_list("Test@Example.com", "fr")
    assert config.lists.get("test@example.com") == mlist
    assert config.lists.get_by_list_id("TEST.example.com") == mlist
    assert config.lists.get("nobody@example.com") is None
    with pytest.raises(ListExistsError, match="exists already"):
        create_list("test@example.com")
    mlist.subscribe("Anne@Example.com")
    mlist.subscribe("bart@example.com", "de")
    anne = mlist.members.get_member("ANNE@example.com")
    assert (anne.address, anne.preferred_language.code) == ("anne@example.com", "fr")
    assert [member.address for member in mlist.members] == [
        "anne@example.com",
        "bart@example.com",
    ]
    create_list("another@example.com")
    assert [m.fqdn_listname for m in config.lists] == [
        "another@example.com",
        "test@example.com",
    ]
    config.lists.delete(mlist)
    assert config.lists.get("test@example.com") is None
    # Its members went with it: a new list of that name has none.
    assert list(create_list("test@example.com").members) == []


def test_the_database_is_named_by_a_url(var_dir, tmp_path):
    shared = tmp_path / "shared.sqlite3"
    config.push("shared-lists", f"[database]\nurl: sqlite:///{shared}\n")
    try:
        create_list("shared@example.com")
        # Another connection (another process, another host) sees it.
        other = ListManager(f"sqlite:///{shared}")
        assert other.get("shared@example.com") is not None
        other.close()
    finally:
        config.pop("shared-lists")
    with pytest.raises(ConfigurationError, match=r"\[database\] url must be"):
        config.push("bad-url", "[database]\nurl: mysql://somewhere/lists\n")
    assert "bad-url" not in config.layers


def test_a_database_server_that_is_not_there_is_one_line(var_dir):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql://mailqueue:secret@127.0.0.1:{port}/lists?connect_timeout=5"
    with pytest.raises(OSError) as caught:
        ListManager(url)
    message = str(caught.value)
    assert message.startswith(f"the list database postgresql://127.0.0.1:{port}/")
    assert "secret" not in message


def test_a_list_as_a_value_and_a_database_by_its_path(var_dir, tmp_path):
    mlist = create_list("test@example.com")
    assert repr(mlist) == "<MailingList test@example.com>"
    assert {mlist, config.lists.get("test@example.com")} == {mlist}
    # A bare path is an SQLite file.
    bare = ListManager(str(tmp_path / "bare.sqlite3"))
    try:
        assert bare.path == str(tmp_path / "bare.sqlite3")
        assert bare.get("test@example.com") is None
    finally:
        bare.close()
    # One that cannot be opened says where, in one line.
    with pytest.raises(OSError, match=f"the list database {tmp_path}: "):
        ListManager(f"sqlite:///{tmp_path}")


def test_a_nul_in_an_address_is_nobody_on_every_database(var_dir):
    # PostgreSQL refuses a NUL in text, SQLite keeps it: never asked, it is
    # the same everywhere.  A sender's NUL once made a PostgreSQL lookup
    # fail, and the message was shunted for a "list database" error.
    mlist = create_list("test@example.com")
    with pytest.raises(ValueError, match=r"not an address: 'a\\x00b@example.com'"):
        mlist.subscribe("a\0b@example.com")
    assert list(mlist.members) == []
    assert mlist.members.get_member("a\0b@example.com") is None
    msg = message_from_string("From: a\0b@example.com\nSubject: hi\n\nHi.\n")
    assert msg.sender == "a\0b@example.com"
    config.switchboards["in"].enqueue(msg, listid=mlist.list_id)
    assert IncomingRunner("in").run_once() == 1
    assert len(config.switchboards["out"].files) == 1
    assert config.switchboards["shunt"].files == []


def test_a_forked_child_closing_the_lists_leaves_its_parent_connected(var_dir):
    # A connection does not cross a fork: the child only forgets it.  Had
    # it closed it, PostgreSQL would have ended the parent's session too.
    create_list("test@example.com")
    lists = config.lists
    child = os.fork()
    if child == 0:
        code = 2
        try:
            lists.close()
            code = 1 if lists.usable else 0
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert lists.usable
    assert lists.get("test@example.com") is not None


@pytest.mark.postgresql
def test_a_lost_postgresql_session_is_one_line(var_dir):
    import psycopg

    create_list("test@example.com")
    lists = config.lists
    # The server ends the session, as a restart or an administrator would.
    backend = lists._database._connection.info.backend_pid
    with psycopg.connect(os.environ["MAILQUEUE_TEST_DATABASE"]) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (backend,))
    with pytest.raises(OSError) as caught:
        lists.get("test@example.com")
    message = str(caught.value)
    assert message.startswith(f"the list database {lists.path}: ")
    assert "terminating connection" in message


def test_postgresql_without_its_driver_is_one_line(var_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    with pytest.raises(OSError) as failed:
        ListManager("postgresql://mailqueue:secret@db.example.com/lists")
    assert str(failed.value) == (
        "the list database postgresql://db.example.com/lists needs PostgreSQL's "
        "driver: pip install 'mailqueue[postgresql]'"
    )


def test_an_explicit_empty_database_url_keeps_the_lists_in_sqlite(monkeypatch):
    # The environment names a PostgreSQL server that is not there; the
    # empty URL given wins, so no connection is tried.
    monkeypatch.setenv("MAILQUEUE_TEST_DATABASE", "postgresql://127.0.0.1:9/none")
    with isolated_state(database_url="") as var_dir:
        assert config.database_url.startswith(f"sqlite:///{var_dir}/")
        create_list("test@example.com")
        assert config.lists.get("test@example.com") is not None
    assert not os.path.exists(var_dir)

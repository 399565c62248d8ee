"""The list database, in SQLite by default or in PostgreSQL.

``make spec-postgresql`` runs these (and the spec) with
``MAILQUEUE_TEST_DATABASE`` naming a throwaway PostgreSQL server, so the
same expectations hold for both.
"""

import socket

import pytest

from mailqueue import config, create_list
from mailqueue.configuration import ConfigurationError
from mailqueue.lists import ListExistsError, ListManager


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

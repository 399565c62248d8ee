"""Mailing lists and their members, kept in a database.

By default the database is an embedded SQLite file under the
configuration's data directory, so every runner process of a host sees the
same lists.  A cluster of hosts shares a PostgreSQL database instead
(``[database] url: postgresql://...``, with ``pip install
'mailqueue[postgresql]'``).  Each process opens one connection and keeps it.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import overload

from mailqueue.errors import MailqueueError

__all__ = [
    "Language",
    "ListExistsError",
    "ListManager",
    "ListNameError",
    "MailingList",
    "Member",
    "Roster",
    "check_list_id",
]

# A list's name is what GNU Mailman allows by default (letters, digits, "-",
# "_" and inner dots); its domain is a host name of two labels or more.  So
# neither the posting address nor the list-id made from it can name a path
# out of a directory.
_LOCAL_PART = r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*"
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_POSTING_ADDRESS = re.compile(
    rf"(?P<local>{_LOCAL_PART})@(?P<domain>{_LABEL}(?:\.{_LABEL})+)"
)
_LIST_ID = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)+")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lists (
    list_id TEXT PRIMARY KEY,
    fqdn_listname TEXT NOT NULL UNIQUE,
    preferred_language TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    list_id TEXT NOT NULL REFERENCES lists (list_id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    preferred_language TEXT NOT NULL,
    PRIMARY KEY (list_id, address)
);
"""

# Every query here takes text, and what it selects is two text columns.
_Row = tuple[str, str]
_Parameters = tuple[str, ...]


class ListNameError(MailqueueError, ValueError):
    """Not a list's posting address, or not a list-id."""


class ListExistsError(MailqueueError, ValueError):
    """A list with that posting address exists already."""


@dataclass(frozen=True)
class Language:
    """A language, known by its code (``en``, ``fr``, ...)."""

    code: str


@dataclass(frozen=True)
class Member:
    """A subscriber: an address and the language it prefers."""

    address: str
    preferred_language: Language


class Roster:
    """The members of one list."""

    def __init__(self, manager: ListManager, list_id: str) -> None:
        self._manager = manager
        self._list_id = list_id

    def get_member(self, address: str) -> Member | None:
        """The member subscribed with *address* (any case), or None."""
        if "\0" in address:
            # No member has one (subscribe refuses it), and PostgreSQL would
            # refuse to be asked: a sender's NUL must not look like its fault.
            return None
        row = self._manager._query(
            "SELECT address, preferred_language FROM members"
            " WHERE list_id = ? AND address = ?",
            (self._list_id, address.lower()),
        ).fetchone()
        return None if row is None else Member(row[0], Language(row[1]))

    def __iter__(self) -> Iterator[Member]:
        rows = self._manager._query(
            "SELECT address, preferred_language FROM members"
            " WHERE list_id = ? ORDER BY address",
            (self._list_id,),
        )
        return iter([Member(address, Language(code)) for address, code in rows])


@dataclass(frozen=True, eq=False)
class MailingList:
    """A mailing list, known by its posting address or its list-id."""

    fqdn_listname: str
    preferred_language: Language
    _manager: ListManager

    @property
    def list_name(self) -> str:
        """The part of the posting address before the ``@``."""
        return self.fqdn_listname.partition("@")[0]

    @property
    def mail_host(self) -> str:
        """The domain of the posting address."""
        return self.fqdn_listname.partition("@")[2]

    @property
    def list_id(self) -> str:
        """The RFC 2919 list-id: ``test.example.com`` for ``test@example.com``."""
        return f"{self.list_name}.{self.mail_host}"

    @property
    def members(self) -> Roster:
        """The list's members."""
        return Roster(self._manager, self.list_id)

    def subscribe(self, address: str, preferred_language: str | None = None) -> Member:
        """Subscribe *address*; its language defaults to the list's.

        Raise :exc:`ValueError` for an address with a NUL character, which
        no list database can hold alike (PostgreSQL refuses one).
        """
        if "\0" in address:
            raise ValueError(f"not an address: {address!r:.80}")
        code = preferred_language or self.preferred_language.code
        self._manager._query(
            "INSERT INTO members (list_id, address, preferred_language)"
            " VALUES (?, ?, ?)",
            (self.list_id, address.lower(), code),
        )
        return Member(address.lower(), Language(code))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MailingList) and other.list_id == self.list_id

    def __hash__(self) -> int:
        return hash(self.list_id)

    def __repr__(self) -> str:
        return f"<MailingList {self.fqdn_listname}>"


class ListManager:
    """The lists in the database at *url*: ``sqlite:///PATH`` or ``postgresql://...``.

    An SQLite file is made, with its directory, if missing; the tables are
    made in either database if missing.  A plain path means an SQLite file.
    """

    def __init__(self, url: str) -> None:
        if not url.startswith(("sqlite:///", "postgresql://")):
            url = f"sqlite:///{url}"
        self.url = url
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._database: _Database = (
            _PostgreSQL(url) if url.startswith("postgresql://") else _SQLite(url)
        )

    @property
    def path(self) -> str:
        """Where the database is, for a person to read (no password)."""
        return self._database.where

    @property
    def usable(self) -> bool:
        """False once closed, or in a forked child: connections do not cross forks."""
        return self._database.open and self._pid == os.getpid()

    def _query(self, sql: str, parameters: _Parameters = ()) -> _Rows:
        with self._lock:
            return self._database.query(sql, parameters)

    @overload
    def _make(self, row: _Row) -> MailingList: ...
    @overload
    def _make(self, row: None) -> None: ...
    def _make(self, row: _Row | None) -> MailingList | None:
        return None if row is None else MailingList(row[0], Language(row[1]), self)

    def create(self, fqdn_listname: str, preferred_language: str = "en") -> MailingList:
        """Create the list whose posting address is *fqdn_listname*."""
        match = _POSTING_ADDRESS.fullmatch(str(fqdn_listname or "").lower())
        if match is None or len(match["local"]) > 64 or len(match["domain"]) > 253:
            raise ListNameError(
                f"not a list posting address (name@domain): {fqdn_listname!r}"
            )
        check_list_id(f"{match['local']}.{match['domain']}")
        mlist = MailingList(fqdn_listname.lower(), Language(preferred_language), self)
        try:
            self._query(
                "INSERT INTO lists (list_id, fqdn_listname, preferred_language)"
                " VALUES (?, ?, ?)",
                (mlist.list_id, mlist.fqdn_listname, preferred_language),
            )
        except _Duplicate:
            raise ListExistsError(f"the list {fqdn_listname} exists already") from None
        return mlist

    def get(self, fqdn_listname: str) -> MailingList | None:
        """The list with posting address *fqdn_listname*, or None."""
        name = str(fqdn_listname).lower()
        if _POSTING_ADDRESS.fullmatch(name) is None:
            return None  # no list has such a name (nor need the database see it)
        return self._make(
            self._query(
                "SELECT fqdn_listname, preferred_language FROM lists"
                " WHERE fqdn_listname = ?",
                (name,),
            ).fetchone()
        )

    def get_by_list_id(self, list_id: str) -> MailingList | None:
        """The list with list-id *list_id*, or None."""
        list_id = str(list_id).lower()
        if len(list_id) > 255 or _LIST_ID.fullmatch(list_id) is None:
            return None  # no list has such a list-id
        return self._make(
            self._query(
                "SELECT fqdn_listname, preferred_language FROM lists WHERE list_id = ?",
                (list_id,),
            ).fetchone()
        )

    def delete(self, mlist: MailingList) -> None:
        """Delete *mlist* and its members."""
        self._query("DELETE FROM lists WHERE list_id = ?", (mlist.list_id,))

    def __iter__(self) -> Iterator[MailingList]:
        rows = self._query(
            "SELECT fqdn_listname, preferred_language FROM lists ORDER BY fqdn_listname"
        ).fetchall()
        return iter([self._make(row) for row in rows])

    def close(self) -> None:
        """Close the connection (only in the process that opened it)."""
        self._database.close(mine=self._pid == os.getpid())


class _Duplicate(Exception):
    """A row that exists already."""


class _Rows:
    """What a query gave: its rows, read at once."""

    def __init__(self, rows: list[_Row]) -> None:
        self._rows = rows

    def fetchone(self) -> _Row | None:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[_Row]:
        return self._rows

    def __iter__(self) -> Iterator[_Row]:
        return iter(self._rows)


class _Database:
    """One connection to a list database, and the one way to query it."""

    where = ""
    open = False

    def query(self, sql: str, parameters: _Parameters) -> _Rows:
        raise NotImplementedError

    def close(self, mine: bool) -> None:
        raise NotImplementedError

    def error(self, error: Exception) -> OSError:
        # A database that cannot be opened or written (a read-only var
        # directory, a full disk, a server that is down) is the system's
        # trouble, said in one line.
        return OSError(f"the list database {self.where}: {error}")


class _SQLite(_Database):
    def __init__(self, url: str) -> None:
        path = url.removeprefix("sqlite:///")
        path = path if path.startswith("/") else os.path.abspath(path)
        self.where = path
        os.makedirs(os.path.dirname(path), mode=0o770, exist_ok=True)
        try:
            # Autocommit: every change is durable once its statement returns.
            self._connection = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self._connection.execute("PRAGMA foreign_keys = ON")
            self._connection.executescript(_SCHEMA)
        except sqlite3.Error as error:
            raise self.error(error) from None
        self.open = True

    def query(self, sql: str, parameters: _Parameters) -> _Rows:
        try:
            return _Rows(self._connection.execute(sql, parameters).fetchall())
        except sqlite3.IntegrityError:
            raise _Duplicate from None
        except sqlite3.Error as error:
            raise self.error(error) from None

    def close(self, mine: bool) -> None:
        if self.open and mine:
            self._connection.close()
        self.open = False


class _PostgreSQL(_Database):
    def __init__(self, url: str) -> None:
        # Say where, never the password.
        self.where = re.sub(r"//[^@/]*@", "//", url)
        try:
            import psycopg
        except ImportError:
            raise OSError(
                f"the list database {self.where} needs PostgreSQL's driver: "
                "pip install 'mailqueue[postgresql]'"
            ) from None
        self._psycopg = psycopg
        try:
            # Autocommit: every change is durable once its statement returns.
            self._connection = psycopg.connect(url, autocommit=True, connect_timeout=30)
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._connection.execute(statement)
        except psycopg.Error as error:
            raise self.error(error) from None
        self.open = True

    def query(self, sql: str, parameters: _Parameters) -> _Rows:
        try:
            cursor = self._connection.execute(sql.replace("?", "%s"), parameters)
            return _Rows(cursor.fetchall() if cursor.description else [])
        except self._psycopg.errors.UniqueViolation:
            raise _Duplicate from None
        except self._psycopg.Error as error:
            raise self.error(error) from None

    def close(self, mine: bool) -> None:
        if self.open and mine:
            self._connection.close()
        self.open = False


def check_list_id(list_id: str) -> str:
    """Return *list_id* if it is a list-id, safe to use as a directory name.

    Raise :exc:`ListNameError` for anything else: a list-id is dot-separated
    words of letters, digits, ``-`` and ``_``, at most 255 characters.
    """
    if (
        not isinstance(list_id, str)
        or len(list_id) > 255
        or _LIST_ID.fullmatch(list_id) is None
    ):
        raise ListNameError(f"not a list-id: {list_id!r:.80}")
    return list_id

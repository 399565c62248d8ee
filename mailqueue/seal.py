"""The site's seal: a MAC that lets a reader trust an entry its own site wrote.

The loader checks every opcode of a pickle before it builds anything (see
:mod:`mailqueue.safepickle`), in Python, and that check is most of what a
dequeue costs.  An entry this site wrote was checked as it was written, so
checking it again proves nothing new, if the reader can tell that the file
is the one that was written.  A *seal* says so: after the two pickles, a
writer that has the site's key appends a third, small pickle of one
``bytes`` object holding a key id and a MAC (keyed BLAKE2b), under that key,
of the entry's file base and both pickles.  A reader with the key that finds a
valid seal builds the entry at C speed with the same restricted unpickler,
skipping the opcode walk; anything else (no seal, a seal under a key it
does not have, a forged, truncated or copied one, an entry of another
file base) is checked in full, as every file is that the site did not
write.  A seal never makes a file be refused, and never lets one be read
that the check would refuse: only bytes that the check accepted (or that
:func:`mailqueue.safepickle.is_plain` vouched for) are ever sealed.

An entry larger than :data:`SEAL_MAX` may leave the arguments of its long
string opcodes (the body of a message) out of the MAC, so that the MAC
costs what the entry's structure costs: the seal lists where they are, and
that list is under the MAC.  Bytes within those ranges can be changed
without breaking the seal, but they are only ever the characters of a
string of the length the (covered) opcode gives: the objects built are
the ones the writer checked, with other text in them.

A reader that knows nothing of seals (GNU Mailman's switchboard) reads two
pickles and stops; the seal is ignored.

The keys are in one file, mode 0600, in the site's data directory, never
in a queue file: a line ``ID SECRET`` (hexadecimal) each, the newest last.
:meth:`Seal.rotate` adds a key and drops all but the newest few; entries
sealed under a dropped key are simply checked in full.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import stat
import struct
import threading
import time
from collections.abc import Iterable, Sequence

__all__ = [
    "MAX_RANGES",
    "RANGE_SIZE",
    "SEAL_MAX",
    "TRAILER_SIZE",
    "Seal",
    "SealKeyError",
    "seal_start",
]

_MAGIC = b"mqseal2"
_ID, _MAC = 8, 32
#: A range left out of the MAC: its offset and its length, 4 bytes each.
_RANGE = struct.Struct("<II")
#: How many bytes each range adds to a seal.
RANGE_SIZE = _RANGE.size
#: How many ranges one seal may leave out.
MAX_RANGES = 16
#: Entries larger than this are sealed only if the writer knows where their
#: long strings are (it walked their opcodes): those are left out of the
#: MAC, which then costs what the entry's structure costs, not its body.
SEAL_MAX = 64 * 1024
#: How many keys a rotation keeps, the new one among them.
KEPT_KEYS = 3
_SECRET = 32
_DOMAIN = b"mailqueue seal\0"


def _prefix(count: int) -> bytes:
    # The pickle a seal is: protocol 4, SHORT_BINBYTES of its payload's length
    # (the magic, the key id, the ranges, their count and the MAC), then STOP.
    return b"\x80\x04C" + bytes([len(_MAGIC) + _ID + _RANGE.size * count + 1 + _MAC])


_PREFIXES = [_prefix(count) + _MAGIC for count in range(MAX_RANGES + 1)]
_HEAD = len(_PREFIXES[0])
#: The size of a seal that leaves nothing out, at the end of a sealed entry;
#: each range left out adds 8 bytes.
TRAILER_SIZE = _HEAD + _ID + 1 + _MAC + 1


def seal_start(data: bytes | memoryview) -> int:
    """Where a seal begins in *data*, the bytes of an entry; its length if none."""
    size = len(data)
    if size <= TRAILER_SIZE or data[size - 1 : size] != b".":
        return size
    count = data[size - _MAC - 2]
    if count > MAX_RANGES:
        return size
    start = size - TRAILER_SIZE - _RANGE.size * count
    if start > 0 and data[start : start + _HEAD] == _PREFIXES[count]:
        return start
    return size


class SealKeyError(OSError):
    """A key file that must not be used: not a file of this user, or open to others."""


class Seal:
    """The keys in the file *path*, read when first needed.

    The file is made, with a first key, when the first seal is made; a
    reader never makes it.  A key file that cannot be used (not a regular
    file of this user, open to others, unreadable) means no seals: every
    entry is then written without one and checked in full, and
    :attr:`problem` says why.
    """

    #: How often, in seconds, a writer looks for keys another process rotated.
    recheck_after = 1.0

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._keys: dict[bytes, bytes] = {}
        self._current = b""
        self._read_at: tuple[int, int, int] | None = None
        self._tried = False
        self._checked_at = time.monotonic()
        #: Why there are no keys, or "".
        self.problem = ""

    # Writing and reading seals -------------------------------------------

    def trailer(
        self,
        filebase: str,
        parts: tuple[bytes | memoryview, ...],
        ranges: Sequence[tuple[int, int]] = (),
    ) -> bytes | None:
        """The seal of the entry *filebase* made of *parts* (its two pickles).

        Only for pickles the opcode check accepts: a seal is a promise that
        they were checked.  *ranges* (offset and length, in order, at most
        :data:`MAX_RANGES`) are left out of the MAC: each must be the whole
        argument of a string or bytes opcode of the first part, which the
        check found so (see :func:`mailqueue.safepickle.check`).  None if
        there is no usable key.
        """
        now = time.monotonic()
        if now - self._checked_at > self.recheck_after:
            # Another process may have rotated the keys: seal with the newest.
            self._checked_at = now
            if self._keys and self._changed():
                self._ready(make=False)
        if not self._keys and not self._ready(make=True):
            return None
        key_id = self._current
        head = b"".join(
            (
                _PREFIXES[len(ranges)],
                key_id,
                *(_RANGE.pack(*where) for where in ranges),
                bytes([len(ranges)]),
            )
        )
        pieces = _outside(memoryview(parts[0]), ranges)
        if pieces is None:
            raise ValueError("the ranges to leave out are not in order, in the message")
        mac = _mac(self._keys[key_id], filebase, [*pieces, *parts[1:], head])
        return head + mac + b"."

    def valid(self, filebase: str, data: bytes | memoryview, start: int) -> bool:
        """True if *data* ends, at *start*, in our valid seal of entry *filebase*."""
        at = start + _HEAD
        key_id = bytes(data[at : at + _ID])
        key = self._keys.get(key_id)
        if key is None and (not self._tried or self._changed()):
            # Not read yet, or another process rotated the keys.
            self._ready(make=False)
            key = self._keys.get(key_id)
        if key is None:
            return False
        mac_at = len(data) - _MAC - 1
        if mac_at - 1 == at + _ID:
            # No ranges (most entries): the MAC covers every byte before it.
            covered: Sequence[bytes | memoryview] = (data[:mac_at],)
        else:
            view = memoryview(data)
            ranges = _RANGE.iter_unpack(view[at + _ID : mac_at - 1])
            # The ranges are in the pickles, before the seal's own bytes.
            pieces = _outside(view[:mac_at], ranges, start)
            if pieces is None:
                return False
            covered = pieces
        mac = _mac(key, filebase, covered)
        return hmac.compare_digest(mac, data[mac_at : mac_at + _MAC])

    def _ready(self, make: bool) -> bool:
        # Read the keys (making the file first if *make* and it is missing).
        with self._lock:
            self._tried = True
            try:
                self._load(make)
            except FileNotFoundError:
                return False
            except OSError as error:
                self.problem = f"{self.path}: {error.strerror or error}"
                self._keys = {}
                return False
            self.problem = ""
            return True

    # The key file --------------------------------------------------------

    def rotate(self) -> None:
        """Add a new key, used for every seal from now on; keep the newest few.

        Raise :exc:`OSError` (:exc:`SealKeyError` for a key file that must
        not be used) if it cannot.
        """
        with self._lock:
            with contextlib.suppress(FileNotFoundError):
                self._load(make=False)
            keys = [*self._keys.items(), (os.urandom(_ID), os.urandom(_SECRET))]
            self._write(keys[-KEPT_KEYS:], replace=True)
            self._load(make=False)
            self._tried = True
            self.problem = ""

    def _changed(self) -> bool:
        try:
            found = os.stat(self.path)
        except OSError:
            return False
        return (found.st_ino, found.st_mtime_ns, found.st_size) != self._read_at

    def _load(self, make: bool) -> None:
        try:
            fd = os.open(
                self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            )
        except FileNotFoundError:
            if not make:
                raise
            self._write([(os.urandom(_ID), os.urandom(_SECRET))], replace=False)
            self._load(make=False)
            return
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise SealKeyError(
                    errno.ELOOP, "the seal's key file is a symbolic link", self.path
                ) from None
            raise
        with os.fdopen(fd, "rb") as stream:
            found = os.fstat(stream.fileno())
            if not stat.S_ISREG(found.st_mode) or found.st_uid != os.geteuid():
                raise SealKeyError(
                    errno.EPERM,
                    "the seal's key file is not a file of this user",
                    self.path,
                )
            if found.st_mode & 0o077:
                raise SealKeyError(
                    errno.EPERM,
                    f"the seal's key file is open to others (mode "
                    f"{stat.S_IMODE(found.st_mode):04o}, not 0600)",
                    self.path,
                )
            text = stream.read(64 * 1024)
        keys: dict[bytes, bytes] = {}
        for line in text.decode("ascii", "replace").splitlines():
            with contextlib.suppress(ValueError):
                key_id, secret = (bytes.fromhex(word) for word in line.split())
                if len(key_id) == _ID and len(secret) == _SECRET:
                    keys[key_id] = secret
        if not keys:
            raise SealKeyError(
                errno.EINVAL, "the seal's key file holds no key", self.path
            )
        self._keys = keys
        self._current = list(keys)[-1]
        self._read_at = (found.st_ino, found.st_mtime_ns, found.st_size)

    def _write(self, keys: list[tuple[bytes, bytes]], replace: bool) -> None:
        # Durably, as a queue entry is written; a key file another process
        # made first is kept (the link does not replace it).
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o770, exist_ok=True)
        temporary = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        try:
            with os.fdopen(fd, "wb") as stream:
                for key_id, secret in keys:
                    stream.write(f"{key_id.hex()} {secret.hex()}\n".encode())
                stream.flush()
                os.fsync(stream.fileno())
            if replace:
                os.rename(temporary, self.path)
            else:
                with contextlib.suppress(FileExistsError):
                    os.link(temporary, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _outside(
    view: memoryview, ranges: Iterable[tuple[int, int]], end: int | None = None
) -> list[memoryview] | None:
    # The pieces of view that the ranges leave; None unless they are in
    # order, apart, and within its first *end* bytes (all of it by default).
    limit = len(view) if end is None else end
    pieces = []
    reached = 0
    for offset, length in ranges:
        if offset < reached or offset + length > limit:
            return None
        pieces.append(view[reached:offset])
        reached = offset + length
    pieces.append(view[reached:])
    return pieces


def _mac(key: bytes, filebase: str, pieces: Sequence[bytes | memoryview]) -> bytes:
    # Keyed BLAKE2b: a MAC by design, in one call into CPython's own C; the
    # copy of what is covered costs less than the steps of an object.
    named = _DOMAIN + filebase.encode("ascii", "replace") + b"\0"
    covered = b"".join((named, *pieces))
    return hashlib.blake2b(covered, key=key, digest_size=_MAC).digest()

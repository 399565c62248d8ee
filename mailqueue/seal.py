"""The site's seal: a MAC that lets a reader trust an entry its own site wrote.

The loader checks every opcode of a pickle before it builds anything (see
:mod:`mailqueue.safepickle`), in Python, and that check is most of what a
dequeue costs.  An entry this site wrote was checked as it was written, so
checking it again proves nothing new, if the reader can tell that the file
is the one that was written.  A *seal* says so: after the two pickles, a
writer that has the site's key appends a third, small pickle of one
``bytes`` object holding a key id and an HMAC-SHA256, under that key, of
the entry's file base and both pickles.  A reader with the key that finds a
valid seal builds the entry at C speed with the same restricted unpickler,
skipping the opcode walk; anything else (no seal, a seal under a key it
does not have, a forged, truncated or copied one, an entry of another
file base) is checked in full, as every file is that the site did not
write.  A seal never makes a file be refused, and never lets one be read
that the check would refuse: only bytes that the check accepted (or that
:func:`mailqueue.safepickle.is_plain` vouched for) are ever sealed.

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
import hmac
import os
import stat
import threading
import time

__all__ = ["SEAL_MAX", "TRAILER_SIZE", "Seal", "SealKeyError", "seal_start"]

#: The pickle a seal is: protocol 4, SHORT_BINBYTES of 47 bytes, STOP.
_MAGIC = b"mqseal1"
_ID, _MAC = 8, 32
_PREFIX = b"\x80\x04C" + bytes([len(_MAGIC) + _ID + _MAC]) + _MAGIC
#: The size of a seal, at the end of a sealed entry.
TRAILER_SIZE = len(_PREFIX) + _ID + _MAC + 1
#: Entries larger than this are not sealed: for them, computing the MAC
#: costs more than checking the opcodes (which do not grow with a message's
#: body, one string whatever its length).
SEAL_MAX = 64 * 1024
#: How many keys a rotation keeps, the new one among them.
KEPT_KEYS = 3
_SECRET = 32
_DOMAIN = b"mailqueue seal\0"


def seal_start(data: bytes | memoryview) -> int:
    """Where a seal begins in *data*, the bytes of an entry; its length if none."""
    end = len(data) - TRAILER_SIZE
    if (
        end > 0
        and data[end : end + len(_PREFIX)] == _PREFIX
        and data[len(data) - 1 :] == b"."
    ):
        return end
    return len(data)


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
        self, filebase: str, parts: tuple[bytes | memoryview, ...]
    ) -> bytes | None:
        """The seal of the entry *filebase* made of *parts* (its two pickles).

        Only for pickles the opcode check accepts: a seal is a promise that
        they were checked.  None if there is no usable key.
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
        return _PREFIX + key_id + _mac(self._keys[key_id], filebase, parts) + b"."

    def valid(self, filebase: str, data: bytes | memoryview, start: int) -> bool:
        """True if *data* ends, at *start*, in our valid seal of entry *filebase*."""
        view = memoryview(data)
        key_id = bytes(view[start + len(_PREFIX) : start + len(_PREFIX) + _ID])
        key = self._keys.get(key_id)
        if key is None and (not self._tried or self._changed()):
            # Not read yet, or another process rotated the keys.
            self._ready(make=False)
            key = self._keys.get(key_id)
        if key is None:
            return False
        found = view[start + len(_PREFIX) + _ID : len(view) - 1]
        return hmac.compare_digest(_mac(key, filebase, (view[:start],)), found)

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


def _mac(key: bytes, filebase: str, parts: tuple[bytes | memoryview, ...]) -> bytes:
    # One call into OpenSSL: the copy of a small entry costs less than the
    # steps of an HMAC object.
    named = _DOMAIN + filebase.encode("ascii", "replace") + b"\0"
    return hmac.digest(key, b"".join((named, *parts)), "sha256")

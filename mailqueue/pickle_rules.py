"""What a queue file's pickles may build: the limits, the allowed names, the refusal.

:mod:`mailqueue.safepickle` states the rules and loads; the checker
(:mod:`mailqueue.pickle_checker`) and :class:`~mailqueue.safepickle.SafeUnpickler`
enforce them with what is here: which classes and functions a pickle may
name, which of them make messages, values or defects, and how much one
pickle may make.
"""

from __future__ import annotations

import builtins
import copyreg
import datetime
import email._policybase
import email.charset
import email.errors
import email.header
import email.message
import email.mime.application
import email.mime.audio
import email.mime.base
import email.mime.image
import email.mime.message
import email.mime.multipart
import email.mime.nonmultipart
import email.mime.text
import inspect
import mailbox
from typing import Any, Final

from mailqueue.errors import MailqueueError
from mailqueue.message import Message

__all__ = [
    "ALLOWED",
    "DECODE_BYTES",
    "DEFECTS",
    "LONG_STRING",
    "MAILMAN_UTC",
    "MAX_DEPTH",
    "MAX_OBJECTS",
    "MAX_ODD_KEYS",
    "MESSAGE_CLASSES",
    "MIN_WEIGHT",
    "POLICY",
    "RECONSTRUCTOR",
    "VALUES",
    "PickleRefused",
    "refused_global",
]

#: How deeply containers and objects may nest.
MAX_DEPTH = 100
#: How many objects one pickle may make.
MAX_OBJECTS = 1_000_000
#: How many keys that are not strings one dict or set may hold.
MAX_ODD_KEYS = 1_000
#: The weight any pickle may have, however small it is.
MIN_WEIGHT = 1 << 20
#: How long a string or bytes argument :func:`~mailqueue.safepickle.check`
#: reports, when asked.
LONG_STRING = 4096


class PickleRefused(MailqueueError, ValueError):
    """A pickle that :func:`~mailqueue.safepickle.check` will not load.

    :class:`~mailqueue.safepickle.SafeUnpickler` raises it too, for a name
    that is not allowed or a persistent id.
    """


def refused_global(module: str, name: str) -> str:
    """Why a pickle that names *module*.\\ *name* is refused."""
    return (
        f"refused to load {module}.{name}: queue files may hold only "
        "messages and plain data"
    )


def _bytes_from_text(text: str, encoding: str = "latin1") -> bytes:
    """Bytes from *text*, as pickle protocols 0 to 2 store them: Latin-1 only.

    Those protocols write bytes as ``_codecs.encode(text, "latin1")``.
    """
    if encoding not in ("latin1", "latin-1"):
        raise PickleRefused(f"refused to decode bytes with {encoding!r}")
    return text.encode("latin1")


def _mailman_utc() -> datetime.tzinfo:
    """GNU Mailman's UTC time zone, made with no arguments, as the standard library's.

    That is ``mailman.utilities.datetime.UTC``.
    """
    return datetime.UTC


# The two functions keep private names: refusals quote them.
#: What ``_codecs.encode`` is read as: bytes, from Latin-1 text only.
DECODE_BYTES: Final = _bytes_from_text
#: What GNU Mailman's UTC time zone is read as.
MAILMAN_UTC: Final = _mailman_utc


#: How pickles of protocols 0 and 1 rebuild objects.  Private, so typeshed
#: does not declare it.
RECONSTRUCTOR = copyreg._reconstructor  # type: ignore[attr-defined]

#: Classes whose instances are made without arguments and get their state
#: from ``BUILD``: messages and what they are made of.
MESSAGE_CLASSES: list[type] = [
    email.message.Message,
    email.charset.Charset,
    email.header.Header,
    email.mime.application.MIMEApplication,
    email.mime.audio.MIMEAudio,
    email.mime.base.MIMEBase,
    email.mime.image.MIMEImage,
    email.mime.message.MIMEMessage,
    email.mime.multipart.MIMEMultipart,
    email.mime.nonmultipart.MIMENonMultipart,
    email.mime.text.MIMEText,
    # GNU Mailman's MIME digests hold the messages of its digest mailbox.
    mailbox.MMDFMessage,
    Message,
]
#: The one email policy a message may have: ``compat32``, never built.
POLICY = email._policybase.Compat32
#: The email defects, made from plain values.
DEFECTS: list[type] = [
    value
    for value in vars(email.errors).values()
    if inspect.isclass(value) and issubclass(value, email.errors.MessageDefect)
]
#: The value classes, made from plain values.
VALUES: list[type] = [
    datetime.date,
    datetime.datetime,
    datetime.time,
    datetime.timedelta,
    datetime.timezone,
]

#: What each (module, name) a pickle may name is read as.
ALLOWED: dict[tuple[str, str], Any] = {
    (cls.__module__, cls.__qualname__): cls
    for cls in [*MESSAGE_CLASSES, POLICY, *DEFECTS, *VALUES]
}
ALLOWED.update(
    {
        # GNU Mailman's message classes are read as ours: their state is
        # that of an email.message.Message.  Their code is never imported.
        ("mailman.email.message", "Message"): Message,
        ("mailman.email.message", "UserNotification"): Message,
        ("mailman.email.message", "OwnerNotification"): Message,
        ("mailman.email.message", "MultipartDigestMessage"): Message,
        ("mailman.utilities.datetime", "UTC"): MAILMAN_UTC,
        # What mailqueue writes its own messages as (see entry_format.dump_checked).
        ("email.message", "Message"): Message,
        # What protocols 0 to 2 need to rebuild objects and bytes, under both
        # their Python 3 and their Python 2 module names.
        ("copyreg", "_reconstructor"): RECONSTRUCTOR,
        ("copy_reg", "_reconstructor"): RECONSTRUCTOR,
        ("builtins", "object"): object,
        ("__builtin__", "object"): object,
        ("_codecs", "encode"): DECODE_BYTES,
    }
)
for _name in ("set", "frozenset", "bytes", "bytearray"):
    ALLOWED["builtins", _name] = getattr(builtins, _name)
    ALLOWED["__builtin__", _name] = getattr(builtins, _name)

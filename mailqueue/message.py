"""The message class that travels through the queues."""

from __future__ import annotations

import email
import email.errors
import email.message
import re
from email.header import decode_header, make_header
from email.utils import getaddresses

from mailqueue.errors import MailqueueError

__all__ = [
    "SENDER_HEADERS",
    "Message",
    "MessageError",
    "decoded",
    "message_from_string",
    "parse_message",
]

#: The headers that can name a message's author, in the order they are
#: believed; ``from_`` is the envelope sender (the mbox ``From`` line).
SENDER_HEADERS = ("from", "from_", "reply-to", "sender")

# A deliberately loose check: something@something, no white space.
_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+$")

# A header value that is one plain address (dot-atoms on both sides), bare
# or in angle brackets after a plain display name: what most senders write.
# getaddresses() gives exactly this address for it; parsing it in Python
# costs a runner more than the rest of its work on an entry.
_DOT_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_PLAIN = re.compile(
    rf"[ \t]*(?:(?:[A-Za-z0-9]+[ \t]+)*[A-Za-z0-9]*[ \t]*<({_DOT_ATOM}@{_DOT_ATOM})>"
    rf"|({_DOT_ATOM}@{_DOT_ATOM}))[ \t]*"
)


class Message(email.message.Message):
    """An :class:`email.message.Message` that knows who sent it.

    Messages are parsed with the ``compat32`` policy, the one queue files
    store.  ``original_size`` is set when a queue entry stored as plain text
    is dequeued.
    """

    # Declared, never given a default: a message that was not stored as
    # text has no such attribute at all.
    original_size: int

    @property
    def senders(self) -> list[str]:
        """Every address that can be taken as the author, lower-cased.

        They come in the order of :data:`SENDER_HEADERS`; a header may give
        several addresses, and anything that is not an address is dropped.
        """
        return [address for header in SENDER_HEADERS for address in self._from(header)]

    @property
    def sender(self) -> str:
        """The first of :attr:`senders`, or the empty string if there is none."""
        # Only as many headers are parsed as it takes to find one.
        for header in SENDER_HEADERS:
            for address in self._from(header):
                return address
        return ""

    def _from(self, header: str) -> list[str]:
        # The addresses *header* gives (from_: the mbox From line's).
        if header == "from_":
            # The mbox line is "From address date"; keep the address.
            words = (self.get_unixfrom() or "").split()
            values = [words[1]] if len(words) > 1 else []
        else:
            values = [decoded(str(value)) for value in self.get_all(header, [])]
            if len(values) == 1:
                plain = _PLAIN.fullmatch(values[0])
                if plain is not None:  # which _ADDRESS always accepts
                    return [(plain[1] or plain[2]).lower()]
        found = []
        for _name, address in getaddresses(values):
            address = address.lower()
            if _ADDRESS.match(address):
                found.append(address)
        return found


def decoded(value: str) -> str:
    """*value* with its RFC 2047 encoded words decoded, for showing it.

    A value without any is returned as it is; one whose encoded words are
    broken is shown as it is too.
    """
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, email.errors.HeaderParseError):
        return value


def message_from_string(text: str) -> Message:
    """Parse *text* (an RFC 5322 message) into a :class:`Message`."""
    return email.message_from_string(text, _class=Message)


class MessageError(MailqueueError, ValueError):
    """Data that is not an RFC 5322 message: where it came from, and why not."""


def parse_message(data: bytes, source: str) -> Message:
    """Parse *data*, which came from *source*, into a :class:`Message`, strictly.

    Raise :exc:`MessageError` if it has no header fields, or if a line
    among them is neither a header field nor the blank line before the
    body: the message says which line (the email parser would take that
    line and all after it as the body).
    """
    text = data.decode("utf-8", errors="surrogateescape")
    msg = message_from_string(text)
    headerless = any(
        isinstance(defect, email.errors.MissingHeaderBodySeparatorDefect)
        for defect in msg.defects
    )
    if not data.strip() or not msg.keys():
        raise MessageError(f"{source} is not an RFC 5322 message (no header fields)")
    if headerless:
        # The parser stopped at a line that is neither a header field, nor its
        # continuation, nor the blank line before the body: name it.  Lines are
        # split and told apart as the parser does (str.splitlines would also
        # end one at a form feed, str.isspace take any white space for a
        # continuation), so there always is such a line: the one it stopped
        # at, or before it one with no field name (":x").
        number, line = next(
            (number, line)
            for number, line in enumerate(_LINE_END.split(text), 1)
            if not _HEADER_LINE.match(line)
        )
        raise MessageError(
            f"{source}, line {number}: not a header field: {line[:60]!r}"
        )
    return msg


# The line ends the email parser knows (it reads text with newline="").
_LINE_END = re.compile(r"\r\n|\r|\n")
# A header field (its name: printable ASCII but the colon, RFC 5322), a
# continuation line (space or tab first), or the mbox "From " line.
_HEADER_LINE = re.compile(r"[!-9;-~]+:|[ \t]|From ")

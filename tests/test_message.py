"""Parsing a message strictly (mailqueue.message.parse_message), alone."""

import pytest

from mailqueue.message import MessageError, parse_message


def test_a_message_with_header_fields_is_parsed():
    msg = parse_message(b"From a@example.com x\nFrom: a@example.com\n\nHi\n", "m")
    assert (msg["from"], msg.get_payload()) == ("a@example.com", "Hi\n")


@pytest.mark.parametrize("data", [b"", b"  \n", b"\nonly a body\n"])
def test_data_without_header_fields_is_no_message(data):
    with pytest.raises(MessageError) as raised:
        parse_message(data, "standard input")
    assert str(raised.value) == (
        "standard input is not an RFC 5322 message (no header fields)"
    )


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"From: a@example.com\nnot a field\n\nHi\n", "line 2: 'not a field'"),
        # A carriage return alone ends a line, as the email parser reads it.
        (b"Subject: x\rnot a field\r\rHi\r", "line 2: 'not a field'"),
    ],
)
def test_the_line_that_is_no_header_field_is_named(data, said):
    with pytest.raises(MessageError) as raised:
        parse_message(data, "m.eml")
    line, text = said.split(": ", 1)
    assert str(raised.value) == f"m.eml, {line}: not a header field: {text}"

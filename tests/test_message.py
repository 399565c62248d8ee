"""mailqueue.message: the senders a message believes, and strict parsing."""

from email.utils import getaddresses

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailqueue import message as message_module
from mailqueue import message_from_string
from mailqueue.message import MessageError, parse_message


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
    assert msg.senders == expected  # From: is its only sender header
    if message_module._PLAIN.fullmatch(msg["from"]):
        assert len(expected) == 1  # the fast way took it


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

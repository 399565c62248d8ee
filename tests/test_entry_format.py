"""The entry format without a queue: what encode writes, decode reads."""

import pickle

import pytest

from mailqueue import QueueFileError, entry_format, message_from_string
from mailqueue.message import Message
from mailqueue.seal import TRAILER_SIZE, Seal, seal_start

TEXT = "From: aperson@example.com\nTo: test@example.com\nSubject: format\n\nHello.\n"


@pytest.fixture
def seal(tmp_path):
    return Seal(str(tmp_path / "seal.keys"))


def test_encode_writes_two_plain_pickles_and_stamps_the_metadata():
    filebase, parts = entry_format.encode(
        message_from_string(TEXT), {"listid": "test.example.com", "_volatile": 1}
    )
    assert len(parts) == 2
    message = pickle.loads(parts[0])
    assert type(message).__module__ == "email.message"  # readable without us
    assert message["subject"] == "format"
    assert pickle.loads(parts[1]) == {
        "listid": "test.example.com",
        "version": entry_format.QFILE_SCHEMA_VERSION,
        "_parsemsg": False,
    }
    assert filebase.count("+") == 1


def test_what_encode_writes_decode_reads_back(seal):
    filebase, parts = entry_format.encode(
        message_from_string(TEXT), {"_plaintext": True}, seal
    )
    data = b"".join(parts)
    assert seal_start(data) == len(data) - TRAILER_SIZE
    msg, metadata = entry_format.decode(data, filebase, filebase + ".bak", seal)
    assert isinstance(msg, Message) and msg["subject"] == "format"
    assert metadata["original_size"] == msg.original_size == len(TEXT)


def test_an_entry_over_the_limit_is_refused_naming_its_queue():
    with pytest.raises(entry_format.EntryTooLargeError) as raised:
        entry_format.encode(message_from_string(TEXT), {}, max_size=100, queue="in")
    assert str(raised.value).startswith("cannot queue an entry of ")
    assert str(raised.value).endswith(" bytes in the 'in' queue: its limit is 100")


def test_reencode_keeps_the_message_bytes_and_seals_anew(seal):
    filebase, parts = entry_format.encode(message_from_string(TEXT), {}, seal)
    data = b"".join(parts)
    _, metadata, message_pickle = entry_format.parse_entry(data, "x.bak")
    metadata["_bak_count"] = 1
    again = entry_format.reencode(filebase, message_pickle, metadata, seal)
    assert again[0] == parts[0] and len(again) == 3
    _, read, _ = entry_format.parse_entry(b"".join(again), "x.pck", seal, filebase)
    assert read["_bak_count"] == 1
    # Without a seal, just the two pickles.
    assert len(entry_format.reencode(filebase, message_pickle, metadata)) == 2


@pytest.mark.parametrize(
    ("stored", "parsemsg", "refusal"),
    [
        (message_from_string(TEXT), True, "_parsemsg set, but not text"),
        (TEXT, False, "text stored without _parsemsg"),
    ],
)
def test_decode_refuses_text_and_flag_that_disagree(stored, parsemsg, refusal):
    data = pickle.dumps(stored, 4) + pickle.dumps({"_parsemsg": parsemsg}, 4)
    with pytest.raises(QueueFileError) as raised:
        entry_format.decode(data, "1.0+" + "a" * 40, "entry.bak")
    assert str(raised.value) == f"1.0+{'a' * 40}: {refusal}"

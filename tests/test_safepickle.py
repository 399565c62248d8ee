"""The pickle checker accepts what a writer makes, and only that.

tools/hostile/ throws hostile files at every path; these properties keep the
checker from refusing legitimate entries, in every protocol.  At the end, single
refusals and limits, each shown by a pickle made for it.
"""

import datetime
import email.message
import email.mime.multipart
import email.policy
import mailbox
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailqueue import message_from_string, pickle_rules, safepickle
from mailqueue.message import Message

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=300),
    st.binary(max_size=300),
    st.datetimes(timezones=st.just(datetime.UTC) | st.none()),
    st.dates(),
    st.timedeltas(),
)
keys = st.text(max_size=20) | st.integers() | st.tuples(st.text(max_size=5))
plain = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.tuples(inner, inner),
        st.dictionaries(keys, inner, max_size=6),
        st.frozensets(st.text(max_size=5) | st.integers(), max_size=6),
        st.sets(st.text(max_size=5) | st.integers(), max_size=6),
    ),
    max_leaves=40,
)
metadata = st.dictionaries(st.text(max_size=20), plain, max_size=8)


@settings(max_examples=300, deadline=None)
@given(metadata, st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_plain_metadata_in_any_protocol_is_accepted_and_loads_equal(data, protocol):
    pickled = pickle.dumps(data, protocol)
    assert safepickle.check(pickled) == ("dict", len(pickled))
    assert safepickle.load(pickled) == data


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[A-Za-z][A-Za-z-]{0,20}", fullmatch=True),
            st.text(st.characters(blacklist_categories=["Cc", "Cs"]), max_size=60),
        ),
        max_size=10,
    ),
    st.text(max_size=500),
    st.integers(0, pickle.HIGHEST_PROTOCOL),
)
def test_any_message_in_any_protocol_is_accepted(headers, body, protocol):
    text = "".join(f"{name}: {value}\n" for name, value in headers) + "\n" + body
    msg = message_from_string(text)
    pickled = pickle.dumps(msg, protocol)
    assert safepickle.check(pickled) == ("message", len(pickled))
    assert safepickle.load(pickled).as_string() == msg.as_string()


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_every_truncation_of_a_valid_pickle_is_refused(protocol):
    msg = message_from_string("From: a@example.com\nSubject: hi\n\nHello.\n")
    pickled = pickle.dumps(msg, protocol)
    for end in range(len(pickled)):
        with pytest.raises(safepickle.PickleRefused):
            safepickle.check(pickled[:end])


def nested(depth):
    value = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "refusal"),
    [
        ([[]] * 2, None),  # shared, but small: fine
        (tuple([("x" * 1000,) * 1000] * 2), "would expand to more than"),
        ({index * (2**61 - 1): None for index in range(1, 1002)}, "keys that are"),
        ({"deep": nested(101)}, "nests more than 100 levels"),
    ],
    ids=["shared", "expansion", "colliding-keys", "depth"],
)
def test_the_limits(value, refusal):
    pickled = pickle.dumps(value, 4)
    if refusal is None:
        safepickle.check(pickled)
    else:
        with pytest.raises(safepickle.PickleRefused, match=refusal):
            safepickle.check(pickled)


# A writer's shortcut: is_plain() never vouches for what check() refuses ---------


def _message(headers, body, parts):
    msg = message_from_string("".join(f"{n}: {v}\n" for n, v in headers) + "\n" + body)
    for part in parts:
        msg.attach(part) if msg.is_multipart() else msg.set_payload([part])
    return msg


messages = st.builds(
    _message,
    st.lists(
        st.tuples(
            st.from_regex(r"[A-Za-z][A-Za-z-]{0,20}", fullmatch=True),
            st.text(st.characters(blacklist_categories=["Cc", "Cs"]), max_size=60),
        ),
        max_size=6,
    ),
    st.text(max_size=300),
    st.lists(st.builds(message_from_string, st.text(max_size=50)), max_size=2),
)
shared = st.lists(st.text(max_size=50), max_size=5).map(lambda items: [items] * 200)
anything = st.recursive(
    st.one_of(scalars, messages, shared),
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.tuples(inner, inner),
        st.dictionaries(keys, inner, max_size=6),
        st.sets(st.text(max_size=5) | st.integers(), max_size=6),
    ),
    max_leaves=30,
)


def _made(obj):
    """What check() says a plain object's pickle makes."""
    if isinstance(obj, email.message.Message):
        return "message"
    return {str: "text", dict: "dict"}.get(type(obj), "other")


def test_what_is_plain_pickles_into_what_check_accepts():
    # Over many objects, plain and not: each that is_plain() vouches for is
    # accepted by check(), whole.  The verdicts are kept, so that a property
    # that held because is_plain() vouched for nothing would fail too.
    verdicts = []

    @settings(max_examples=400, deadline=None)
    @given(anything)
    def vouched_for_is_accepted(obj):
        pickled = pickle.dumps(obj, 4)
        plain = safepickle.is_plain(obj, len(pickled))
        if plain:
            assert safepickle.check(pickled) == (_made(obj), len(pickled))
        verdicts.append(plain)

    vouched_for_is_accepted()
    assert verdicts.count(True) > len(verdicts) // 10, verdicts.count(True)
    assert verdicts.count(False) > len(verdicts) // 10, verdicts.count(False)


def test_plain_is_only_what_the_rules_cover():
    msg = message_from_string("From: aperson@example.com\n\nHello.\n")
    size = len(pickle.dumps(msg, 4))
    assert safepickle.is_plain(msg, size)
    assert safepickle.is_plain({"listid": "a.example.com", "n": [1, 2.5, None]}, 99)

    # Anything else is left to check(): bytes, sets, non-string keys,
    # subclasses, a message with another policy, a cycle, deep nesting.
    class Text(str):
        pass

    class Custom(Message):
        pass

    looped = [1]
    looped.append(looped)
    deep = []
    for _ in range(60):
        deep = [deep]
    modern = message_from_string("From: a@example.com\n\nx\n")
    modern.policy = email.policy.default
    custom = Custom()
    custom.set_payload("x")
    others = (b"x", {1, 2}, {1: "a"}, Text("a"), modern, looped, deep, custom, 1j)
    for other in others:
        assert not safepickle.is_plain(other, 10**6)
    # What weighs more than twice its pickle: many references to one list.
    heavy = [["x" * 1000] * 10] * 200
    assert not safepickle.is_plain(heavy, len(pickle.dumps(heavy, 4)))
    with pytest.raises(safepickle.PickleRefused, match="expand"):
        safepickle.check(pickle.dumps(heavy, 4))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_bytearray_referenced_twice_is_checked_like_any_other(protocol):
    # Protocol 5 has its own opcode for a bytearray; the checker once took
    # what it makes for a scalar, and a second reference to it raised
    # AttributeError from inside the checker instead of an answer.
    shared = bytearray(b"x")
    data = pickle.dumps([shared, shared], protocol=protocol)
    safepickle.check(data)
    loaded = safepickle.load(data)
    assert loaded == [shared, shared] and loaded[0] is loaded[1]


# Refusals, each shown by a crafted pickle -------------------------------------
#
# Written opcode by opcode with the constants of the pickle module (PROTO,
# GLOBAL, ...); tools/hostile/ runs such files through the whole queue.

P4 = pickle.PROTO + b"\x04"
MIME_TEXT = pickle.GLOBAL + b"email.mime.text\nMIMEText\n"


def test_load_by_itself_calls_nothing_outside_the_allow_list(tmp_path):
    # check() would refuse this first; load() and SafeUnpickler refuse it
    # too, before os.system is ever found, let alone called.
    marker = tmp_path / "ran"
    command = f"touch {marker}".encode()
    data = (
        P4
        + pickle.GLOBAL
        + b"os\nsystem\n"
        + pickle.SHORT_BINUNICODE
        + bytes([len(command)])
        + command
        + pickle.TUPLE1
        + pickle.REDUCE
        + pickle.STOP
    )
    refusal = "refused to load os.system: queue files may hold only messages"
    with pytest.raises(safepickle.PickleRefused, match=refusal):
        safepickle.check(data)
    with pytest.raises(safepickle.PickleRefused, match=refusal):
        safepickle.load(data)
    assert not marker.exists()


@pytest.mark.parametrize(
    "persistent_id",
    [pickle.PERSID + b"queue-1\n", pickle.NONE + pickle.BINPERSID],
    ids=["PERSID", "BINPERSID"],
)
def test_a_persistent_id_is_refused_by_check_and_by_load(persistent_id):
    data = P4 + persistent_id + pickle.STOP
    with pytest.raises(safepickle.PickleRefused, match="PERSID opcode, which queue"):
        safepickle.check(data)
    with pytest.raises(
        safepickle.PickleRefused, match="queue files are self-contained"
    ):
        safepickle.load(data)


@pytest.mark.parametrize(
    ("encoding", "refusal"),
    [(b"latin1", None), (b"latin-1", None), (b"utf-8", "decode bytes with 'utf-8'")],
)
def test_bytes_are_decoded_from_latin_1_text_only(encoding, refusal):
    # Protocols 0 to 2 write bytes as _codecs.encode(text, "latin1").  The
    # arguments are two strings either way, which check() accepts; load()
    # decodes only Latin-1.
    data = (
        P4
        + pickle.GLOBAL
        + b"_codecs\nencode\n"
        + pickle.SHORT_BINUNICODE
        + b"\x02\xc3\xa9"
        + pickle.SHORT_BINUNICODE
        + bytes([len(encoding)])
        + encoding
        + pickle.TUPLE2
        + pickle.REDUCE
        + pickle.STOP
    )
    assert safepickle.check(data) == ("other", len(data))
    if refusal is None:
        assert safepickle.load(data) == b"\xe9"
    else:
        with pytest.raises(safepickle.PickleRefused, match=refusal):
            safepickle.load(data)


@pytest.mark.parametrize(
    "one_more",
    [pickle.NONE, pickle.EMPTY_LIST],
    ids=["a-scalar", "a-container"],
)
def test_one_object_more_than_max_objects_is_refused(one_more):
    # A list and MAX_OBJECTS - 1 Nones in it: exactly the limit.
    start = (
        P4
        + pickle.EMPTY_LIST
        + pickle.MARK
        + pickle.NONE * (pickle_rules.MAX_OBJECTS - 1)
    )
    at_limit = start + pickle.APPENDS + pickle.STOP
    assert safepickle.check(at_limit) == ("other", len(at_limit))
    over = start + one_more + pickle.APPENDS + pickle.STOP
    refusal = f"makes more than 1,000,000 objects \\(at byte {len(start)}\\)"
    with pytest.raises(safepickle.PickleRefused, match=refusal):
        safepickle.check(over)


@pytest.mark.parametrize(
    "data",
    [P4 + pickle.MEMOIZE, P4 + pickle.EMPTY_LIST + pickle.MARK + pickle.MEMOIZE],
    ids=["empty", "below-a-mark"],
)
def test_memoizing_with_nothing_in_reach_is_refused(data):
    where = len(data) - 1
    with pytest.raises(
        safepickle.PickleRefused, match=f"looks at an empty stack \\(at byte {where}\\)"
    ):
        safepickle.check(data + pickle.STOP)


def test_two_references_to_one_long_string_are_within_the_weight_limit():
    # The heaviest tuple of two scalars a pickle can make (the checker does
    # not weigh those): just under twice the pickle's size.  A third
    # reference is over.
    text = "x" * 600_000
    pair = pickle.dumps((text, text), 4)
    assert pair.endswith(pickle.TUPLE2 + pickle.MEMOIZE + pickle.STOP)
    assert safepickle.check(pair) == ("other", len(pair))
    assert safepickle.load(pair) == (text, text)
    triple = pickle.dumps((text, text, text), 4)
    with pytest.raises(safepickle.PickleRefused, match="would expand to more than"):
        safepickle.check(triple)


@pytest.mark.parametrize(
    ("opcode", "width"),
    [
        (pickle.BININT1, 1),
        (pickle.BININT2, 2),
        (pickle.BININT, 4),
        (pickle.BINFLOAT, 8),
    ],
    ids=["BININT1", "BININT2", "BININT", "BINFLOAT"],
)
def test_a_number_cut_short_is_refused(opcode, width):
    data = P4 + opcode + b"\x01" * (width - 1)
    refusal = f"is truncated \\(wants {width} more bytes\\) \\(at byte 2\\)"
    with pytest.raises(safepickle.PickleRefused, match=refusal):
        safepickle.check(data)


def test_a_message_class_is_made_only_without_arguments():
    made = P4 + MIME_TEXT + pickle.EMPTY_TUPLE + pickle.NEWOBJ + pickle.STOP
    assert safepickle.check(made) == ("message", len(made))
    given = pickle.BININT1 + b"\x01" + pickle.TUPLE1  # MIMEText(1)
    data = P4 + MIME_TEXT + given + pickle.NEWOBJ + pickle.STOP
    with pytest.raises(
        safepickle.PickleRefused, match="passes arguments to a message class"
    ):
        safepickle.check(data)


def test_calling_a_message_is_refused_and_names_its_class():
    made = P4 + MIME_TEXT + pickle.EMPTY_TUPLE + pickle.NEWOBJ
    data = made + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.STOP
    refusal = f"the pickle calls a MIMEText \\(at byte {len(made) + 1}\\)"
    with pytest.raises(safepickle.PickleRefused, match=refusal):
        safepickle.check(data)


# What GNU Mailman itself writes into its queues, and its own loader reads:
# pickle.dumps(datetime.datetime(2020, 1, 1, tzinfo=mailman.utilities.datetime.utc), 5)
MAILMAN_UTC_DATETIME = (
    b"\x80\x05\x95R\x00\x00\x00\x00\x00\x00\x00\x8c\x08datetime\x94\x8c\x08"
    b"datetime\x94\x93\x94C\n\x07\xe4\x01\x01\x00\x00\x00\x00\x00\x00\x94\x8c"
    b"\x1amailman.utilities.datetime\x94\x8c\x03UTC\x94\x93\x94)R\x94\x86\x94R\x94."
)


def test_a_date_in_gnu_mailmans_utc_is_read_in_the_standard_librarys():
    assert safepickle.check(MAILMAN_UTC_DATETIME) == (
        "other",
        len(MAILMAN_UTC_DATETIME),
    )
    assert safepickle.load(MAILMAN_UTC_DATETIME) == datetime.datetime(
        2020, 1, 1, tzinfo=datetime.UTC
    )
    # Made with no arguments, and only so.
    called = MAILMAN_UTC_DATETIME.replace(b")R", b"K\x01\x85R")
    with pytest.raises(safepickle.PickleRefused):
        safepickle.check(called)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_the_parts_of_a_gnu_mailman_digest_are_read(protocol):
    # Mailman's MIME digests hold mailbox.MMDFMessage parts.
    part = mailbox.MMDFMessage(message_from_string("Subject: part\n\nOne.\n"))
    digest = email.mime.multipart.MIMEMultipart()
    digest.attach(part)
    data = pickle.dumps(digest, protocol)
    assert safepickle.check(data) == ("message", len(data))
    [read] = safepickle.load(data).get_payload()
    assert type(read) is mailbox.MMDFMessage
    assert read["subject"] == "part" and read.get_from() == part.get_from()

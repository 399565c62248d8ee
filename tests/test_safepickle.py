"""The pickle checker accepts what a writer makes, and only that.

tests/hostile/ throws hostile files at every path; these properties keep the
checker from refusing legitimate entries, in every protocol.
"""

import datetime
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailqueue import message_from_string, safepickle

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

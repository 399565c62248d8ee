"""Listing puts every name the spec allows in queue order, however it is written.

The listing compares canonical names (as ``repr(float)`` and ``hexdigest()``
write them) as strings, and parses the others; both must give the order of
the exact time, then the digest, and leave out exactly the names that are
not file bases.
"""

import os
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from mailqueue import Switchboard, qfile

TOP = 1 << 160


def exact(filebase):
    """The queue order, from first principles: the time as a fraction, the digest."""
    when, digest = filebase.split("+")
    return Fraction(when), int(digest, 16)


@st.composite
def names(draw, canonical=False, trailing=False, upper=False):
    """A file base with a time of 1 to 12 integer digits, written any allowed way.

    A *canonical* one is written as repr(float) and hexdigest() write: no
    leading zeros, a fraction without trailing zeros (with them too, if
    *trailing*), a lower-case digest (or not, if *upper*).  Times are
    often drawn from a few, so that equal times written alike or not meet.
    """
    few = st.sampled_from([0, 7, 999_999_999, 1_700_000_000])
    whole = str(draw(st.one_of(few, st.integers(min_value=0, max_value=10**12 - 1))))
    fraction = draw(
        st.one_of(
            st.sampled_from(["5", "25", "0"]),
            st.from_regex(r"[0-9]{0,19}[1-9]|0", fullmatch=True),
        )
    )
    digest = f"{draw(st.integers(min_value=0, max_value=TOP - 1)):040x}"
    if trailing:
        fraction += "0" * draw(st.integers(min_value=0, max_value=2))
    if upper and draw(st.booleans()):
        digest = digest.upper()
    if not canonical:
        whole = "0" * draw(st.integers(min_value=0, max_value=2)) + whole
        if draw(st.booleans()):
            fraction += "0" * draw(st.integers(min_value=0, max_value=3))
        if draw(st.booleans()):
            digest = digest.upper()
        if draw(st.booleans()):
            return f"{whole}+{digest}"
    return f"{whole}.{fraction}+{digest}"


strays = st.sampled_from(
    [
        "garbage",
        "1700000000.5+xyz",
        "1700000000.5+" + "g" * 40,
        "+" + "a" * 40,
        "1e9+" + "a" * 40,
    ]
)


def make(directory, bases, extension=".pck"):
    for base in bases:
        open(os.path.join(directory, base + extension), "wb").close()


# Times as this implementation writes them, of 9 to 11 integer digits.
canonical = st.builds(
    lambda when, digest: f"{when!r}+{digest:040x}",
    st.floats(min_value=1e8, max_value=1e11),
    st.integers(min_value=0, max_value=TOP - 1),
)
every_form = st.one_of(
    st.lists(st.one_of(names(), canonical), max_size=40, unique=True),
    st.lists(names(canonical=True), max_size=40, unique=True),
    st.lists(names(canonical=True, trailing=True), max_size=40, unique=True),
    st.lists(names(canonical=True, upper=True), max_size=40, unique=True),
    st.lists(canonical, max_size=40, unique=True),
)


@settings(max_examples=300, deadline=None)
@given(
    bases=every_form,
    junk=st.lists(strays, max_size=3, unique=True),
    numslices=st.sampled_from([1, 2, 4, 32]),
)
def test_listing_is_in_exact_time_order_then_digest(
    tmp_path_factory, bases, junk, numslices
):
    directory = str(tmp_path_factory.mktemp("queue"))
    make(directory, bases + junk)
    make(directory, ["1700000000.5+" + "b" * 40], ".bak")  # another extension
    wanted = sorted(bases, key=exact)
    assert Switchboard("q", directory).files == wanted
    # The slices together are the queue, each entry in exactly one.
    slices = [Switchboard("q", directory, n, numslices).files for n in range(numslices)]
    assert sorted((b for part in slices for b in part), key=exact) == wanted
    for number, part in enumerate(slices):
        assert part == [b for b in wanted if exact(b)[1] * numslices // TOP == number]


@settings(max_examples=40, deadline=None)
@given(bases=st.lists(canonical, min_size=1, max_size=60, unique=True))
def test_canonical_names_in_chunks_are_listed_as_parsed_names_would_be(
    tmp_path_factory, bases
):
    directory = str(tmp_path_factory.mktemp("queue"))
    make(directory, bases)
    # Small chunks: the string comparison works chunk by chunk.
    chunk, qfile._CHUNK = qfile._CHUNK, 7
    try:
        assert Switchboard("q", directory).files == sorted(bases, key=exact)
    finally:
        qfile._CHUNK = chunk


def test_the_same_time_written_two_ways_is_one_time(tmp_path):
    bases = [
        "1700000000.50+" + "b" * 40,
        "1700000000.5+" + "a" * 40,
        "1700000000+" + "c" * 40,
        "999999999.9+" + "d" * 40,
        "1700000000.1000000002+" + "e" * 40,
        "1700000000.1000000001+" + "f" * 40,
    ]
    make(str(tmp_path), bases)
    assert Switchboard("q", str(tmp_path)).files == [
        "999999999.9+" + "d" * 40,
        "1700000000+" + "c" * 40,
        # One float, two times: the exact value decides, not the digest.
        "1700000000.1000000001+" + "f" * 40,
        "1700000000.1000000002+" + "e" * 40,
        "1700000000.5+" + "a" * 40,
        "1700000000.50+" + "b" * 40,
    ]


def test_a_name_with_a_line_break_is_not_taken_for_two(tmp_path):
    first, second = "1700000000.5+" + "a" * 40, "1700000001.5+" + "b" * 40
    # One file whose name, split at its line break, would be two entries.
    make(str(tmp_path), [f"{first}.pck\n{second}"])
    make(str(tmp_path), [first])
    assert Switchboard("q", str(tmp_path)).files == [first]


def test_digests_compare_as_numbers_whatever_their_case(tmp_path):
    lower, upper = "1700000000.5+" + "a" * 40, "1700000000.5+" + "B" * 40
    make(str(tmp_path), [upper, lower])
    # "B" sorts before "a" as text, but 0xbbb... is the larger number.
    assert Switchboard("q", str(tmp_path)).files == [lower, upper]

"""Every digest is in exactly one slice, whatever the number of slices."""

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from mailqueue import Switchboard

TOP = 1 << 160


def boundaries(numslices):
    """The digests on and just below each boundary between slices, and the ends."""
    width = TOP // numslices
    points = {0, TOP - 1}
    for number in range(1, numslices):
        points |= {number * width - 1, number * width}
    return points


numslices = st.integers(min_value=0, max_value=6).map(lambda power: 1 << power)
digests = st.integers(min_value=0, max_value=TOP - 1)


@settings(max_examples=60, deadline=None)
@given(numslices=numslices, extra=st.lists(digests, max_size=20, unique=True))
def test_every_digest_is_listed_by_exactly_one_slice(
    tmp_path_factory, numslices, extra
):
    directory = str(tmp_path_factory.mktemp("queue"))
    wanted = boundaries(numslices) | set(extra)
    for when, digest in enumerate(sorted(wanted), start=1):
        name = f"{when}.0+{digest:040x}.pck"
        open(os.path.join(directory, name), "wb").close()
    seen = {}
    for number in range(numslices):
        part = Switchboard("q", directory, number, numslices)
        for filebase in part.files:
            digest = int(filebase.split("+")[1], 16)
            assert digest not in seen, (
                f"{digest:040x} in slices {seen[digest]} and {number}"
            )
            seen[digest] = number
            # And it is the slice that exact integer arithmetic gives.
            assert number * TOP // numslices <= digest < (number + 1) * TOP // numslices
    assert set(seen) == wanted

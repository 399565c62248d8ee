"""The hostile-file suite, reduced: the corpus, and a few thousand generated cases.

``make fuzz`` runs the full suite (tools/hostile/fuzz.py); this is what
``make test`` runs.  Each case runs in a child process of its own, through
every path that reads a queue file (see harness.py).
"""

import json

import pytest
from entries import Case, DrawChooser, classics, generated, mutated, program, seeds
from harness import FAILURE_KEYS, Harness, summarize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

#: How many generated cases the reduced run adds to the corpus.
REDUCED = 2_000
SEEDS = seeds()


@pytest.fixture(scope="module")
def harness():
    with Harness() as harness:
        yield harness


def assert_harmless(outcomes):
    report = summarize(outcomes, 0)
    failed = {key: report[key] for key in FAILURE_KEYS if report[key]}
    assert not failed, json.dumps(
        {"failed": failed, "details": report["details"]}, indent=2
    )


def test_the_corpus_harms_nothing(harness):
    cases = classics(harness.marker)
    assert len(cases) > 150
    outcomes = harness.run(cases)
    assert len(outcomes) == len(cases)
    assert_harmless(outcomes)
    # The corpus is made of files that must be set aside, mostly.
    assert sum(outcome.preserved for outcome in outcomes) > len(cases) // 2
    # A seal that is not this site's for these very bytes vouches for
    # nothing: each such file is checked in full, and set aside.
    sealed = [outcome for outcome in outcomes if outcome.case.startswith("seal/")]
    assert len(sealed) == 10
    assert all(outcome.preserved for outcome in sealed), sealed
    # Hostile bytes within the body a large entry's seal leaves out: the
    # seal holds, and they are read as the body's text, or (not UTF-8)
    # the entry is set aside; nothing else (see assert_harmless above).
    planted = [outcome for outcome in outcomes if outcome.case.startswith("long-")]
    assert {outcome.case: outcome.preserved for outcome in planted} == {
        "long-string/code": True,
        "long-string/poison": True,
        "long-string/code-as-text": False,  # delivered, a body of that text
    }


def test_generated_cases_harm_nothing(harness):
    outcomes = harness.run(generated(REDUCED, seed=0))
    assert len(outcomes) == REDUCED
    assert_harmless(outcomes)


@st.composite
def hostile_entries(draw):
    chooser = DrawChooser(draw)
    if chooser.integer(0, 1):
        return Case("hypothesis/program", "hypothesis", program(chooser))
    return Case("hypothesis/mutation", "hypothesis", mutated(chooser, SEEDS))


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=hostile_entries())
def test_hypothesis_finds_no_harmful_file(harness, case):
    assert_harmless(harness.run([case], jobs=1))

"""The kill -9 soak and the churn, reduced: ``make soak`` runs them in full.

See soak.py for what they do and how duplicates are told apart.
"""

import json

from soak import FAILURES, churn, soak


def assert_clean(figures):
    assert not {key: figures[key] for key in FAILURES if figures[key]}, json.dumps(
        figures, indent=2
    )


def test_kill_minus_nine_soak(var_dir):
    figures = soak(messages=600, runner_kills=25, master_kills=1, inject_kills=3)
    assert figures["runners killed"] >= 20 and figures["masters killed"] == 1
    assert figures["delivered"] == figures["messages"] >= 600
    assert_clean(figures)


def test_churn_of_one_slice(var_dir):
    figures = churn(messages=300, replacements=8)
    assert figures["delivered"] == figures["messages"] == 300
    assert_clean(figures)

"""GNU Mailman's own tests give the same results with mailqueue's plugin enabled.

The tests of Mailman 3.3.10's packages that read queue files (mailman.core,
mailman.runners, mailman.commands: mailman_suite.DEFAULT_PACKAGES) run twice
in the plugin venv, as Mailman runs them (nose2, its unittest.cfg), without
and with ``[plugin.mailqueue]`` enabled; see mailman_suite.py, which also
runs the whole suite (make mailman-plugin-full).  Two runs of about 100 s
each, one after the other (Mailman's testing ports are fixed), after the
wheel is built and installed in the venv: 222 s in all where the venv was
already made (making it adds a pip install of Mailman).
"""

import mailman_suite
import pytest


@pytest.mark.timeout(900)
def test_mailman_tests_give_the_same_results_with_the_plugin(tmp_path):
    comparison = mailman_suite.compare(
        mailman_suite.DEFAULT_PACKAGES, work=tmp_path / "runs", timeout=400
    )
    text = comparison.text()
    # The run with the plugin really had it: its probe (Mailman loaded the
    # plugin, installed() is true, a switchboard refused a hostile pickle)
    # passed, and the readers loaded with mailqueue's loader during its tests;
    # the run without it had none of that.
    assert comparison.plugin_active, text
    assert comparison.plugin_absent, text
    assert not comparison.problems, text
    # The selection really ran (about 480 tests), the same tests both ways.
    assert comparison.without.counts()["run"] > 400, text
    assert set(comparison.without.results) == set(comparison.with_plugin.results), text
    assert not comparison.differences, text

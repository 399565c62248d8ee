"""The configuration's stack of layers, and what it refuses."""

import os

import pytest
from helpers import DAY, run

from mailqueue import (
    config,
    message_from_string,
)
from mailqueue.configuration import ConfigurationError


def test_layers_by_name(var_dir):
    config.push("one", "[runner.out]\nsleep_time: 5s\n")
    with pytest.raises(ValueError, match="a configuration layer is already called"):
        config.push("one", "")
    assert config.get("runner.out", "sleep_time") == "5s"
    assert config.get("runner.out", "nothing", "given") == "given"
    config.pop("one")
    assert config.get("runner.out", "sleep_time") is None
    with pytest.raises(KeyError, match="no configuration layer is called 'one'"):
        config.pop("one")
    with pytest.raises(ValueError, match="the defaults layer cannot be popped"):
        config.pop("defaults")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[host]\nname: a b\n", "[host] name must be a host name, not 'a b'"),
        ("[database]\nurl: mysql://x\n", "[database] url must be sqlite:///PATH or "),
        ("[paths]\nqueue_dir: $\n", "[paths] queue_dir: cannot expand '$'"),
        ("[runner.out]\nstart: maybe\n", "[runner.out] start must be yes or no"),
        ("[runner.out]\nmax_restarts: -1\n", "must be a whole number of at least 0"),
        ("[runner.out]\nsleep_time: soon\n", "must be a duration such as 1s"),
        ("[runner.out]\nprefer: first\n", "must be slice numbers and ranges"),
        ("[queues]\nmax_entry_size: 0\n", "must be a size such as 32MiB"),
        ("[server]\n", "unknown section [server]"),
        ("key: value\n", "a line before any [section]"),
    ],
)
def test_a_mistake_is_refused_and_changes_nothing(var_dir, text, message):
    before = config.runners["out"]
    with pytest.raises(ConfigurationError) as refused:
        config.push("mistake", text)
    assert message in str(refused.value)
    assert "mistake" not in config.layers
    assert config.runners["out"] == before


def test_the_configuration_tells_its_switchboards_where_bad_is(var_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere-bad"
    config.push("bad-elsewhere", f"[runner.bad]\npath: {elsewhere}\n")
    try:
        queue = config.switchboards["in"]
        filebase = queue.enqueue(message_from_string("Subject: x\n\nx\n"))
        queue.dequeue(filebase)
        queue.finish(filebase, preserve=True)
        assert os.listdir(elsewhere) == [filebase + ".psv"]
        sliced = config.switchboards.make("in", 0, 2)
        assert sliced.bad_directory == str(elsewhere)
    finally:
        config.pop("bad-elsewhere")


def test_a_misspelled_runner_section_gets_a_warning(capsys, var_dir, tmp_path):
    site = tmp_path / "site.cfg"
    site.write_text(
        f"[paths]\nvar_dir: {var_dir}\n"
        # A near miss of out: a new queue that nothing sends to.
        "[runner.outt]\ninstances: 2\n"
        # Its own class may well have senders of its own: no warning.
        "[runner.inn]\nclass: mysite.Runner\n"
        # Nothing like a built-in queue: a queue of its own, held for a person.
        "[runner.archive]\n"
        # A runner that manages no queue.
        "[runner.ticker]\nclass: mailqueue.runners.VirginRunner\npath:\n"
    )
    status, out, err = run(capsys, "-C", str(site), "queues")
    assert status == 0 and "outt" in out
    assert err == (
        f"mailqueue: warning: config file {site}, line 3: [runner.outt] makes a "
        "queue 'outt' that nothing sends to (did you mean [runner.out]?)\n"
    )
    # In Python: config.warnings.
    config.push("retyr", "[runner.retyr]\nclass: mailqueue.runners.RetryRunner\n")
    assert config.warnings == [
        "configuration 'retyr', line 1: [runner.retyr] makes a queue 'retyr' that "
        "nothing sends to (did you mean [runner.retry]?)"
    ]
    config.pop("retyr")
    assert config.warnings == []


def test_a_layer_replaced_with_a_mistake_is_kept_as_it_was(var_dir):
    config.push("site", "[runner.out]\ninstances: 2\n")
    with pytest.raises(ConfigurationError, match="must be a power of two, not 3"):
        config.replace("site", "[runner.out]\ninstances: 3\n")
    assert config.runners["out"].instances == 2
    config.replace("site", "[runner.out]\ninstances: 4\n")
    assert config.runners["out"].instances == 4
    assert config.origin("runner.out", "instances") == "configuration 'site', line 2"
    assert config.origin("runner.out", "class") is None  # a default
    config.pop("site")


def test_the_lifetime_is_five_days_unless_configured():
    assert config.max_queue_lifetime == 5 * DAY
    config.push("short", "[queues]\nmax_queue_lifetime: 2h\n")
    try:
        assert config.max_queue_lifetime == 7200.0
    finally:
        config.pop("short")
    with pytest.raises(ConfigurationError, match="max_queue_lifetime must be a dur"):
        config.push("wrong", "[queues]\nmax_queue_lifetime: forever\n")

"""The configuration's stack of layers, and what it refuses."""

import pytest

from mailqueue import config
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

"""The configuration file's syntax and values (mailqueue.configfile), alone."""

from datetime import timedelta

import pytest

from mailqueue.configfile import (
    ConfigurationError,
    boolean,
    duration,
    expand,
    loopback,
    read_layer,
    size,
    slices,
)


def test_a_layer_remembers_the_line_of_each_section_and_key():
    layer = read_layer("site", "# a comment\n[paths]\nvar_dir: /srv\n\n[queues]\n")
    assert layer.sections == {"paths": {"var_dir": "/srv"}, "queues": {}}
    assert layer.where("paths") == "configuration 'site', line 2"
    assert layer.where("paths", "var_dir") == "configuration 'site', line 3"
    assert layer.where("queues", "nowhere") == "configuration 'site'"
    assert read_layer("config file /etc/x.cfg", "").where("paths") == (
        "config file /etc/x.cfg"
    )


def test_text_that_is_not_ini_names_the_layer_and_the_line():
    with pytest.raises(ConfigurationError) as raised:
        read_layer("site", "[paths]\nvar_dir: a\nvar_dir: b\n")
    assert str(raised.value) == (
        "configuration 'site', line 3: not a valid configuration "
        "(a key given twice in one section)"
    )


def test_the_error_goes_by_its_public_name():
    assert ConfigurationError.__module__ == "mailqueue.configuration"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1", 1), ("500ms", 0.5), (" 15m ", 900), ("1.5h", 5400), ("2w", 1209600)],
)
def test_durations(text, seconds):
    assert duration(text, "here") == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("text", "number"),
    [("1048576", 2**20), ("32MiB", 2**25), ("500KB", 500_000), ("1g", 2**30)],
)
def test_sizes(text, number):
    assert size(text, "here") == number


@pytest.mark.parametrize(
    ("function", "text", "message"),
    [
        (duration, "1y", "here must be a duration such as 1s, 500ms or 15m"),
        (size, "0", "here must be a size such as 32MiB, 500KB or 1048576"),
        (size, "3 parsecs", "here must be a size"),
        (boolean, "maybe", "here must be yes or no, not 'maybe'"),
        (loopback, "localhost:80", "here must be a loopback address and a port"),
        (loopback, "127.0.0.1:0", "here must be a loopback address and a port"),
        (loopback, "10.0.0.1:9436", "here: 10.0.0.1 is not a loopback address"),
    ],
)
def test_a_value_that_is_not_what_the_key_takes_is_refused_where_it_is(
    function, text, message
):
    with pytest.raises(ConfigurationError, match=f"^{message}"):
        function(text, "here")


def test_booleans_loopbacks_and_slices():
    assert [boolean(text, "") for text in ("Yes", " on", "1", "off", "FALSE")] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert loopback(" ", "here") is None
    assert loopback("[::1]:9436", "here") == ("::1", 9436)
    assert slices("0-1, 3", 4, "here") == frozenset({0, 1, 3})
    assert slices("", 4, "here") == frozenset()
    with pytest.raises(ConfigurationError, match=r"^here: 2-4 is not a range of"):
        slices("2-4", 4, "here")
    with pytest.raises(ConfigurationError, match=r"^here must be slice numbers"):
        slices("first", 4, "here")


def test_expansion_names_a_variable_that_is_not_defined_and_its_near_miss():
    assert expand("$VAR_DIR/queue", {"VAR_DIR": "/srv"}, "here") == "/srv/queue"
    with pytest.raises(ConfigurationError) as raised:
        expand("$VAR_DIRS/queue", {"VAR_DIR": "/srv"}, "here")
    assert str(raised.value) == (
        "here uses $VAR_DIRS, which is not defined (did you mean VAR_DIR?)"
    )
    with pytest.raises(ConfigurationError, match=r"^here: cannot expand '\$'"):
        expand("$", {}, "here")

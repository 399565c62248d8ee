"""The logs (mailqueue.logs): the debug log, and fields a shell can read back."""

import logging
import os
import re
import shlex

import pytest

from mailqueue import logs
from mailqueue.logs import logging_to


@pytest.mark.parametrize(
    "value",
    ["plain", "", "two words", 'a "quote"', "back\\slash", "o'brien", "k=v", "é <x>"],
)
def test_fields_are_read_back_by_shlex(value):
    line = logs.fields(first=value, second=1)
    assert shlex.split(line) == [f"first={value}", "second=1"]


def test_with_debug_the_debug_lines_go_to_debug_log(tmp_path):
    debug = logging.getLogger("mailqueue.debug")
    level = debug.level
    try:
        with logging_to(str(tmp_path), debug=True):
            debug.debug("pass %d: %d entries", 1, 3)
        debug.debug("after the block: nowhere")
    finally:
        debug.setLevel(level)
    line = (tmp_path / "debug.log").read_text()
    assert re.fullmatch(rf".+ \[{os.getpid()}\] DEBUG pass 1: 3 entries\n", line)


def test_without_debug_there_is_no_debug_log(tmp_path):
    with logging_to(str(tmp_path)):
        logging.getLogger("mailqueue.debug").warning("not in a file")
    assert not (tmp_path / "debug.log").exists()

"""nospare's adapter: how `mailqueue conformance nospare` runs the spec on it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import mailqueue
import nospare
from mailqueue.conformance.adapter import Adapter
from mailqueue.queuetools import dump_msgdata
from mailqueue.testing import LogCapture, isolated_state, subscribe

#: Where nospare differs from the spec, and why.  Without a pool, every
#: example of "Spare files" that looks into the pool fails (the pool
#: directory is never made), and so does the one that shows a new entry
#: written into a spare.  Each example is named by its first line of
#: source, and `` #N`` for the Nth example of the section with that line.
_NO_POOL = "nospare keeps no spare files: every entry is a new file"
_SPARE_EXAMPLES = (
    "os.listdir(pool)",
    "spare = os.stat(os.path.join(pool, '0'))",
    "os.listdir(pool) #2",
    "os.stat(written).st_ino == spare.st_ino",
    "os.listdir(pool) #3",
    "os.remove(os.path.join(pool, '0'))",
    "os.symlink(outside, os.path.join(pool, '0'))",
    "os.link(outside, os.path.join(pool, '1'))",
    "os.listdir(pool) #4",
)


class NoSpareAdapter(Adapter):
    name = "nospare"
    description = "nospare 1.0: mailqueue's queues with a new file for every entry"
    known_divergences: Mapping[tuple[str, str, str], str] = {
        ("queue-files.rst", "Spare files", example): _NO_POOL
        for example in _SPARE_EXAMPLES
    }

    def namespace(self) -> Mapping[str, Any]:
        # What `from mailqueue import ...` gives the documents: nospare's
        # switchboard, and mailqueue's everything else.
        return {**vars(mailqueue), "Switchboard": nospare.Switchboard}

    @contextlib.contextmanager
    def document_state(self) -> Iterator[Mapping[str, Any]]:
        # A new var directory for each document, and its log lines kept
        # until the document shows them.
        with isolated_state(), LogCapture("mailqueue").installed() as show_log:
            yield {
                "config": mailqueue.config,
                "create_list": mailqueue.create_list,
                "dump_msgdata": dump_msgdata,
                "message_from_string": mailqueue.message_from_string,
                "subscribe": subscribe,
                "show_log": show_log,
            }

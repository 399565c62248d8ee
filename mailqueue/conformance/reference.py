"""The adapter of the reference implementation, mailqueue itself."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import mailqueue
from mailqueue.conformance.adapter import Adapter
from mailqueue.queuetools import dump_msgdata
from mailqueue.testing import LogCapture, isolated_state, subscribe

__all__ = ["ReferenceAdapter"]


class ReferenceAdapter(Adapter):
    """mailqueue's own implementation: each document gets a new var directory."""

    name = "mailqueue"
    description = f"the mailqueue reference implementation {mailqueue.__version__}"
    runs_reference_documents = True

    def namespace(self) -> Mapping[str, Any]:
        return vars(mailqueue)

    @contextlib.contextmanager
    def document_state(self) -> Iterator[Mapping[str, Any]]:
        with isolated_state(), LogCapture("mailqueue").installed() as show_log:
            yield {
                "config": mailqueue.config,
                "create_list": mailqueue.create_list,
                "dump_msgdata": dump_msgdata,
                "message_from_string": mailqueue.message_from_string,
                "subscribe": subscribe,
                "show_log": show_log,
            }

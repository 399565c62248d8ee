"""nospare: mailqueue's queues, with a new file for every entry.

mailqueue keeps a few finished entries as spare files and writes new
entries over them.  nospare never does: a site whose backups or audit
tools want every entry to be a file of its own, never reused, can use
these classes instead.  Everything else is mailqueue's.

``NOSPARE_FINISH_STRICT=1`` in the environment makes ``Switchboard.finish``
raise (after logging, as mailqueue does) when the entry is not there,
where the spec says finishing never raises: a difference planted for
mailqueue's own tests of the conformance command, to show how a failure
is reported.
"""

from __future__ import annotations

import os

import mailqueue
from mailqueue import QueueFileError, Runner

__all__ = ["QueueFileError", "Runner", "Switchboard"]


class Switchboard(mailqueue.Switchboard):
    """A mailqueue switchboard that keeps no spare files."""

    keep_spares = False

    def finish(self, filebase: str, preserve: bool = False) -> None:
        missing = not any(
            os.path.lexists(os.path.join(self.queue_directory, filebase + extension))
            for extension in (".bak", ".pck")
        )
        super().finish(filebase, preserve)
        if missing and os.environ.get("NOSPARE_FINISH_STRICT") == "1":
            raise FileNotFoundError(f"{filebase}: no such entry in {self.name}")

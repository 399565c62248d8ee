"""A pipeline runner that fails on demand, for a test Mailman site.

Imported by GNU Mailman's master and runners (in Mailman's own venv, where
``mailqueue`` is not importable), named in the site's mailman.cfg::

    [runner.pipeline]
    class: flaky_runner.FlakyPipelineRunner

A message with the header ``X-Flaky: fail`` makes ``_dispose`` raise while the
flag file ``flaky-on`` exists beside the site's var directory (``<root>/flaky-on``
for ``var_dir: <root>/var``); Mailman's Runner then shunts the message, with
``whichq`` = ``pipeline`` in its metadata.  The flag is found from
``config.VAR_DIR`` because the master passes the runners only a fixed set of
environment variables.
"""

import os
from typing import Any

from mailman.config import config
from mailman.runners.pipeline import PipelineRunner


def flag_file() -> str:
    """The path whose existence turns the failures on."""
    return os.path.join(os.path.dirname(config.VAR_DIR), "flaky-on")


class FlakyPipelineRunner(PipelineRunner):  # type: ignore[misc]
    """Mailman's PipelineRunner, raising for ``X-Flaky: fail`` while flagged."""

    def _dispose(self, mlist: Any, msg: Any, msgdata: dict[str, Any]) -> bool:
        flaky = str(msg.get("X-Flaky", "")).strip().lower() == "fail"
        if flaky and os.path.exists(flag_file()):
            raise RuntimeError("flaky handler")
        return bool(super()._dispose(mlist, msg, msgdata))

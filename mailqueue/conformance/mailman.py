"""The adapter of GNU Mailman 3.3.10's core (``pip install 'mailqueue[mailman]'``).

Mailman is started the way its own test layer starts it: with no
configuration file, the ``testing`` layout, a temporary var directory, a
SQLite test database and a fake MTA.  Each document then gets a new var
directory of its own (so new queues, ``bad`` and ``shunt`` included), a new
database with the domain ``example.com``, and log files in it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from mailqueue.conformance.adapter import Adapter, AdapterError
from mailqueue.testing import LogCapture

__all__ = ["MailmanAdapter"]

# Each of these silently redirects Mailman's configuration.
_REDIRECTING_VARIABLES = (
    "MAILMAN_VAR_DIR",
    "MAILMAN_CONFIG_FILE",
    "MAILMAN_EXTRA_TESTING_CFG",
)

_CONFIGURATION = """
[mailman]
layout: testing
site_owner: noreply@example.com
[paths.testing]
var_dir: {var_dir}
[devmode]
testing: yes
[mta]
incoming: mailman.testing.mta.FakeMTA
[passwords]
configuration: python:mailman.testing.passlib
"""


class QueueFileError(Exception):
    """Mailman has no such error: this class is never raised."""


class MailmanAdapter(Adapter):
    """GNU Mailman 3.3.10's switchboard and runner."""

    name = "mailman"
    description = "GNU Mailman 3.3.10 core"

    known_divergences: Mapping[tuple[str, str, str], str] = {
        (
            "switchboard.rst",
            "Recovering files",
            "SHOULD",
        ): "its error log words it differently ('.bak file max count, "
        "preserving file: ...')",
        (
            "switchboard.rst",
            "Queue order",
            "SHOULD",
        ): "entries with the same time are nudged apart by 0.0001 s in directory "
        "order, so a tie is not ordered by digest and can even be listed after "
        "a later entry",
        (
            "switchboard.rst",
            "Enqueuing and dequeuing",
            "SHOULD",
        ): "its error log words a failed finish differently ('Failed to "
        "unlink/preserve backup file: ...')",
        (
            "queue-files.rst",
            "Spare files",
            "SHOULD",
        ): "a new file is made for every entry and removed when it is finished: "
        "there are no spare files",
        (
            "switchboard.rst",
            "Files that are not queue entries",
            "SHOULD",
        ): "a file whose name does not parse (garbage.pck) makes listing raise "
        "ValueError, and with it Runner.run()",
        (
            "switchboard.rst",
            "Queue slices",
            "SHOULD",
        ): "slice bounds are computed in floating point, so a digest on a boundary "
        "is listed by two slices; numslices=3 fails an assertion, slice=None "
        "raises TypeError, and slice >= numslices is accepted",
        (
            "switchboard.rst",
            "Two switchboards, one queue",
            "MUST",
        ): "no slice owner: every switchboard made with recover=True recovers the "
        ".bak files, also those a live runner is still processing (the race "
        "for a .pck itself passes)",
        (
            "runner.rst",
            "When things go wrong",
            "SHOULD",
        ): "its error log words things differently; a message shunted for a "
        "missing list gets no whichq",
        (
            "runner.rst",
            "Running, sleeping and stopping",
            "SHOULD",
        ): "_clean_up() is not called when an exception ends run()",
        (
            "runner.rst",
            "Signals",
            "MUST",
        ): "a stop signal raises RunnerInterrupt inside _dispose(), so the message "
        "being processed is shunted instead of finished",
        (
            "runner.rst",
            "Signals",
            "SHOULD",
        ): "log wording differs, and SIGHUP reopens only Mailman's own log handlers",
        (
            "runner.rst",
            "Two runners, one queue",
            "MUST",
        ): "the runner that loses the race for an entry preserves 'the "
        "unparseable message': it moves the winner's .bak into bad",
        (
            "queue-files.rst",
            "Queue files are untrusted",
            "SHOULD",
        ): "queue files are loaded with pickle.load, so a crafted file runs code "
        "when it is dequeued; metadata that could not be read back safely "
        "(a Decimal) is queued",
        (
            "queue-files.rst",
            "Writing an entry durably",
            "SHOULD",
        ): "a failed enqueue raises an error that names the temporary file, not "
        "the queue",
    }

    def __init__(self) -> None:
        self._base: str | None = None

    def start(self) -> None:
        for variable in _REDIRECTING_VARIABLES:
            os.environ.pop(variable, None)
        try:
            from mailman.config import config
            from mailman.core import initialize
            from mailman.version import VERSION
        except ImportError as error:
            raise AdapterError(
                f"GNU Mailman is not installed ({error}); install mailqueue[mailman]"
            ) from None
        if VERSION != "3.3.10":
            raise AdapterError(f"this adapter is for GNU Mailman 3.3.10, not {VERSION}")
        umask = os.umask(0)
        os.umask(umask)
        # Stage 1 would create ./var unless path creation is off.
        config.create_paths = False
        initialize.initialize_1(initialize.INHIBIT_CONFIG_FILE)
        # Stage 1 sets a umask of its own; the documents expect the caller's.
        os.umask(umask)
        config.create_paths = True
        self._base = tempfile.mkdtemp(prefix="mailqueue-mailman-")
        config.push("mailqueue-conformance", _CONFIGURATION.format(var_dir=self._base))
        initialize.initialize_2(testing=True)

    def namespace(self) -> Mapping[str, Any]:
        from mailman.core.runner import Runner
        from mailman.core.switchboard import Switchboard

        return {
            "Switchboard": Switchboard,
            "Runner": Runner,
            "QueueFileError": QueueFileError,
        }

    @contextlib.contextmanager
    def document_state(self) -> Iterator[Mapping[str, Any]]:
        from mailman.config import config
        from mailman.core import logging as mailman_logging
        from mailman.interfaces.database import IDatabaseFactory
        from mailman.interfaces.domain import IDomainManager
        from mailman.model import member, user
        from mailman.testing.documentation import dump_msgdata
        from mailman.testing.helpers import specialized_message_from_string
        from zope.component import getUtility

        layer = f"mailqueue-document-{uuid.uuid4().hex}"
        var_dir = tempfile.mkdtemp(prefix="mailqueue-mailman-doc-")
        config.push(layer, f"[paths.testing]\nvar_dir: {var_dir}\n")
        try:
            config.db = getUtility(IDatabaseFactory, "testing").create()
            for name, handler in mailman_logging._handlers.items():
                handler.reopen(os.path.join(config.LOG_DIR, name))
            # The uid factories cache a lock file under the old var directory.
            for factory in (member.uid_factory, user.uid_factory):
                factory._lockobj = None
            getUtility(IDomainManager).add("example.com", "An example domain.")
            config.db.commit()
            with LogCapture("mailman").installed() as show_log:
                yield {
                    "config": config,
                    "create_list": _create_list,
                    "dump_msgdata": dump_msgdata,
                    "message_from_string": specialized_message_from_string,
                    "subscribe": _subscribe,
                    "show_log": show_log,
                }
        finally:
            config.db.abort()
            # lazr.config pops this layer and every layer pushed after it,
            # including those the document pushed and never popped.
            config.pop(layer)
            shutil.rmtree(var_dir, ignore_errors=True)


def _create_list(fqdn_listname: str) -> Any:
    from mailman.app.lifecycle import create_list
    from mailman.config import config

    mlist = create_list(fqdn_listname)
    # Mailman's runner aborts the transaction on its error paths, which would
    # take an uncommitted list with it.
    config.db.commit()
    return mlist


def _subscribe(mlist: Any, address: str, language: str | None = None) -> None:
    from mailman.config import config
    from mailman.interfaces.languages import ILanguageManager
    from mailman.interfaces.usermanager import IUserManager
    from zope.component import getUtility

    record = getUtility(IUserManager).create_address(address)
    if language is not None:
        record.preferences.preferred_language = getUtility(ILanguageManager)[language]
    mlist.subscribe(record)
    config.db.commit()

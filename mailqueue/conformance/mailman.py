"""The adapter of GNU Mailman 3.3.10's core (``pip install 'mailqueue[mailman]'``).

Mailman is started the way its own test layer starts it: with no
configuration file, the ``testing`` layout, a temporary var directory, a
SQLite test database and a fake MTA.  Each document then gets a new var
directory of its own (so new queues, ``bad`` and ``shunt`` included), a new
database with the domain ``example.com``, and log files in it.
"""

from __future__ import annotations

import atexit
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

# The documents, in the table of divergences below.
Q, R, S = "queue-files.rst", "runner.rst", "switchboard.rst"

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
        (document, section, example): reason
        for reason, examples in {
            "queue files are loaded with pickle.load, so a crafted file runs code "
            "when it is dequeued": [
                (Q, "Queue files are untrusted", "try:"),
                (Q, "Queue files are untrusted", "queue.files"),
            ],
            "metadata that could not be read back safely (a Decimal) is queued": [
                (Q, "Queue files are untrusted", "try: #2"),
            ],
            "a failed enqueue raises an error that names the temporary file, not "
            "the queue": [(Q, "Writing an entry durably", "try:")],
            "a new file is made for every entry and removed when it is finished: "
            "there are no spare files": [
                (Q, "Spare files", "os.listdir(pool)"),
                (Q, "Spare files", "spare = os.stat(os.path.join(pool, '0'))"),
                (Q, "Spare files", "os.listdir(pool) #2"),
                (Q, "Spare files", "os.stat(written).st_ino == spare.st_ino"),
                (Q, "Spare files", "os.listdir(pool) #3"),
                (Q, "Spare files", "os.remove(os.path.join(pool, '0'))"),
                (Q, "Spare files", "os.symlink(outside, os.path.join(pool, '0'))"),
                (Q, "Spare files", "os.link(outside, os.path.join(pool, '1'))"),
                (Q, "Spare files", "os.listdir(pool) #4"),
            ],
            "its error log words what went wrong differently": [
                (R, "When things go wrong", "show_log('error')"),
                (R, "When things go wrong", "show_log('error') #2"),
                (R, "When things go wrong", "show_log('error') #3"),
                (R, "When things go wrong", "show_log('error') #4"),
            ],
            "a message shunted for a missing list gets no whichq": [
                (R, "When things go wrong", "print(msgdata['whichq'])"),
            ],
            "_clean_up() is not called when an exception ends run()": [
                (R, "Running, sleeping and stopping", "try:"),
            ],
            "a stop signal raises RunnerInterrupt inside _dispose(), so the message "
            "being processed is shunted instead of finished": [
                (R, "Signals", "killed.disposed"),
            ],
            "its runner log words a stop differently": [
                (R, "Signals", "show_log('runner')"),
                (R, "Signals", "show_log('runner') #2"),
            ],
            "SIGHUP reopens only Mailman's own log handlers": [
                (R, "Signals", "with open(log_file) as new_log:"),
            ],
            "the runner that loses the race for an entry preserves 'the "
            "unparseable message': it moves the winner's .bak into bad": [
                (R, "Two runners, one queue", "bad.get_files('.psv')"),
                (
                    R,
                    "Two runners, one queue",
                    "switchboard.get_files('.bak') == [second]",
                ),
            ],
            "its error log words a failed finish differently ('Failed to "
            "unlink/preserve backup file: ...')": [
                (S, "Enqueuing and dequeuing", "show_log('error')"),
                (S, "Enqueuing and dequeuing", "show_log('error') #2"),
            ],
            "its error log words it differently ('.bak file max count, preserving "
            "file: ...')": [(S, "Recovering files", "show_log('error')")],
            "entries with the same time are nudged apart by 0.0001 s in directory "
            "order, so a tie is not ordered by digest": [
                (S, "Queue order", "switchboard.files == [tie_a, tie_b, first]"),
                (S, "Queue order", "switchboard.files == [tie_a, same_b, first]"),
            ],
            "a file whose name does not parse (garbage.pck) makes listing raise "
            "ValueError, and with it Runner.run()": [
                (S, "Files that are not queue entries", "switchboard.files == [entry]"),
                (S, "Files that are not queue entries", "show_log('error')"),
            ],
            "numslices=3 fails an assertion, slice=None raises TypeError, and "
            "slice >= numslices is accepted": [
                (S, "Queue slices", "try:"),
                (S, "Queue slices", "try: #2"),
                (S, "Queue slices", "try: #3"),
            ],
            "slice bounds are computed in floating point, so a digest on a "
            "boundary is listed by two slices, and recovered by both": [
                (S, "Queue slices", "show_slices(2)"),
                (S, "Queue slices", "show_slices(4)"),
                (
                    S,
                    "Queue slices",
                    "len(quarter.files), len(quarter.get_files('.bak'))",
                ),
                (S, "Queue slices", "check_qfiles()"),
            ],
            "no slice owner: every switchboard made with recover=True recovers the "
            ".bak files, also those a live runner is still processing": [
                (S, "Two switchboards, one queue", "owner.owner"),
                (S, "Two switchboards, one queue", "latecomer.owner"),
                (S, "Two switchboards, one queue", "check_qfiles() #2"),
                (S, "Two switchboards, one queue", "successor.owner"),
                (S, "Two switchboards, one queue", "owner.owner #2"),
                (S, "Two switchboards, one queue", "check_qfiles() #4"),
            ],
        }.items()
        for document, section, example in examples
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
        # Its divergences are 3.3.10's; another release runs only for the
        # release matrix (make conformance-matrix), which judges nothing.
        if VERSION != "3.3.10" and not os.environ.get("MAILQUEUE_ANY_MAILMAN"):
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
        # Start-up cannot be undone in a process: its var directory goes
        # when the process does.
        atexit.register(shutil.rmtree, self._base, ignore_errors=True)
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

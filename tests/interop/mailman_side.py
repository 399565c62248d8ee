"""GNU Mailman's side of the interop tests, run in a process of its own.

It runs in GNU Mailman's own venv, where ``mailqueue`` cannot be imported, and
imports nothing of it: it starts Mailman itself, with a throwaway mailman.cfg
whose var directory is a temporary directory (removed when it ends).

``python mailman_side.py write DIRECTORY``: enqueue the sample entries with
Mailman's Switchboard and message class, and print them as JSON.
``python mailman_side.py read DIRECTORY``: dequeue every entry with Mailman's
Switchboard, oldest first, and print them as JSON.
``python mailman_side.py load FILE...``: read each queue file as Mailman does,
both ways, and print a JSON list with one object per file: ``file``,
``pickle`` (two ``pickle.load`` calls, as ``mailman qfile`` and Mailman's
runners read a file) and ``dequeue`` (Mailman's ``Switchboard.dequeue`` of a
copy, which also parses an entry stored as text).  Each of the two is the
entry as :func:`describe` gives it, or ``{"error": TYPE, "text": TEXT}``.
The files themselves are left as they are.

Importing this module imports nothing of Mailman (the test process imports
:func:`describe` from it, and must not import Mailman).
"""

import contextlib
import datetime
import json
import os
import pickle
import shutil
import sys
import tempfile
import warnings

warnings.simplefilter("ignore", DeprecationWarning)

SAMPLES = [
    ("Subject: first\nMessage-ID: <first@example.com>\n\nOne.\n", {"foo": 1}),
    ("Subject: second\n\nTwo.\n", {"listid": "test.example.com", "tags": {"a", "b"}}),
    ("Subject: third\n\nThree.\n", {"when": datetime.datetime(2026, 11, 25, 4, 0)}),
    ("Subject: as text\n\nFour.\n", {"_plaintext": True, "bar": "baz"}),
]

# Each of these silently redirects Mailman's configuration.
REDIRECTING_VARIABLES = ("MAILMAN_VAR_DIR", "MAILMAN_CONFIG_FILE")
REDIRECTING_VARIABLES += ("MAILMAN_EXTRA_TESTING_CFG",)

CONFIGURATION = """\
# Written by tests/interop/mailman_side.py, removed when it ends.
[mailman]
layout: interop
site_owner: noreply@example.com

[paths.interop]
var_dir: {var_dir}

[devmode]
enabled: no

[mta]
incoming: mailman.mta.null.NullMTA
"""


def canonical(value):
    """repr(), but sets in sorted order: their order differs from process to process."""
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}({sorted(value)!r})"
    return repr(value)


def describe(filebase, msg, msgdata):
    """An entry as JSON-able text, to compare across processes and implementations.

    *msg* is a message, or the text of one (an entry stored as text, as a
    bare ``pickle.load`` gives it).
    """
    return {
        "filebase": filebase,
        "message": msg if isinstance(msg, str) else msg.as_string(),
        "message_class": f"{type(msg).__module__}.{type(msg).__qualname__}",
        "metadata": {key: canonical(value) for key, value in sorted(msgdata.items())},
    }


def start_mailman(base):
    """Initialise Mailman with a mailman.cfg of its own in *base*."""
    for variable in REDIRECTING_VARIABLES:
        os.environ.pop(variable, None)
    cfg_path = os.path.join(base, "mailman.cfg")
    with open(cfg_path, "w", encoding="utf-8") as fp:
        fp.write(CONFIGURATION.format(var_dir=os.path.join(base, "var")))
    from mailman.core.initialize import initialize

    # Whatever start-up prints must not get into the JSON on standard output.
    with contextlib.redirect_stdout(sys.stderr):
        initialize(cfg_path)


def error(exception):
    return {"error": type(exception).__name__, "text": str(exception)}


def load(path, scratch):
    """One file read both ways Mailman reads one (see the module's docstring)."""
    from mailman.core.switchboard import Switchboard

    name = os.path.basename(path)
    filebase = name.removesuffix(".pck")
    loaded = {"file": path}
    try:
        with open(path, "rb") as fp:
            msg = pickle.load(fp)
            msgdata = pickle.load(fp)
        loaded["pickle"] = describe(filebase, msg, msgdata)
    except Exception as exception:
        loaded["pickle"] = error(exception)
    # Dequeued from a queue directory of its own, so the file stays as it is.
    directory = tempfile.mkdtemp(dir=scratch)
    try:
        shutil.copyfile(path, os.path.join(directory, filebase + ".pck"))
        msg, msgdata = Switchboard("load", directory).dequeue(filebase)
        loaded["dequeue"] = describe(filebase, msg, msgdata)
    except Exception as exception:
        loaded["dequeue"] = error(exception)
    return loaded


def main(command, *arguments):
    base = tempfile.mkdtemp(prefix="mailman-side-")
    try:
        start_mailman(base)
        from mailman.core.switchboard import Switchboard
        from mailman.testing.helpers import specialized_message_from_string

        entries = []
        if command == "load":
            entries = [load(path, base) for path in arguments]
        elif command == "write":
            [directory] = arguments
            queue = Switchboard("interop", directory)
            for text, metadata in SAMPLES:
                msg = specialized_message_from_string(
                    "From: aperson@example.com\nTo: test@example.com\n" + text
                )
                filebase = queue.enqueue(msg, dict(metadata))
                stored = {k: v for k, v in metadata.items() if not k.startswith("_")}
                stored.update(version=3, _parsemsg=bool(metadata.get("_plaintext")))
                entries.append(describe(filebase, msg, stored))
        elif command == "read":
            [directory] = arguments
            queue = Switchboard("interop", directory)
            for filebase in queue.files:
                msg, msgdata = queue.dequeue(filebase)
                queue.finish(filebase)
                entries.append(describe(filebase, msg, msgdata))
        else:
            raise SystemExit(f"unknown command: {command}")
        json.dump(entries, sys.stdout)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main(*sys.argv[1:])

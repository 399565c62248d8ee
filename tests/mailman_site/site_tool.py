"""Helpers run inside GNU Mailman's own venv, for a test Mailman site.

Run by the Mailman venv's python, never by the test process::

    python site_tool.py inject CFG LIST QUEUE MESSAGES_JSON
        Initialise Mailman with CFG once and enqueue each message text of the
        JSON list in MESSAGES_JSON into QUEUE for LIST, as ``mailman inject``
        does (through ``mailman.app.inject.inject_text``).  Prints the
        filebases, one a line.

    python site_tool.py queue DIRECTORY
        Print, as one JSON list, each ``.pck`` entry of the queue DIRECTORY:
        its file name, its Message-ID and its metadata (values that are not
        JSON as their repr).

And, through ``mailman shell -r site_tool.open_posting -l LIST``:
:func:`open_posting` makes a list accept every post without moderation.
"""

import json
import os
import pickle
import sys
from typing import Any


def open_posting(mlist: Any) -> None:
    """Accept posts from members and nonmembers alike (mailman shell -r)."""
    from mailman.interfaces.action import Action

    mlist.default_member_action = Action.accept
    mlist.default_nonmember_action = Action.accept


def inject(cfg: str, listspec: str, queue: str, messages_json: str) -> None:
    from mailman.app.inject import inject_text
    from mailman.core.initialize import initialize
    from mailman.interfaces.listmanager import IListManager
    from zope.component import getUtility

    initialize(cfg)
    mlist = getUtility(IListManager).get(listspec)
    if mlist is None:
        raise SystemExit(f"No such list: {listspec}")
    with open(messages_json, encoding="utf-8") as fp:
        texts = json.load(fp)
    for text in texts:
        print(inject_text(mlist, text, switchboard=queue))


def dump_queue(directory: str) -> None:
    entries = []
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".pck"):
            continue
        with open(os.path.join(directory, name), "rb") as fp:
            msg = pickle.load(fp)
            metadata = pickle.load(fp)
        message_id = msg["message-id"] if hasattr(msg, "get") else None
        entries.append(
            {
                "file": name,
                "message_id": str(message_id).strip() if message_id else None,
                "metadata": metadata,
            }
        )
    print(json.dumps(entries, default=repr))


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "inject":
        inject(*args)
    elif command == "queue":
        dump_queue(*args)
    else:
        raise SystemExit(f"unknown command: {command}")


if __name__ == "__main__":
    main()

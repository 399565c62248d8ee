"""GNU Mailman's side of the interop tests, run in a process of its own.

``python mailman_side.py write DIRECTORY``: enqueue the sample entries with
Mailman's Switchboard and message class, and print them as JSON.
``python mailman_side.py read DIRECTORY``: dequeue every entry with Mailman's
Switchboard, oldest first, and print them as JSON.
"""

import datetime
import json
import sys
import warnings

warnings.simplefilter("ignore", DeprecationWarning)

from mailqueue.conformance.mailman import MailmanAdapter  # noqa: E402

SAMPLES = [
    ("Subject: first\nMessage-ID: <first@example.com>\n\nOne.\n", {"foo": 1}),
    ("Subject: second\n\nTwo.\n", {"listid": "test.example.com", "tags": {"a", "b"}}),
    ("Subject: third\n\nThree.\n", {"when": datetime.datetime(2026, 11, 25, 4, 0)}),
    ("Subject: as text\n\nFour.\n", {"_plaintext": True, "bar": "baz"}),
]


def canonical(value):
    """repr(), but sets in sorted order: their order differs from process to process."""
    if isinstance(value, (set, frozenset)):
        return f"{type(value).__name__}({sorted(value)!r})"
    return repr(value)


def describe(filebase, msg, msgdata):
    """An entry as JSON-able text, to compare across processes and implementations."""
    return {
        "filebase": filebase,
        "message": msg.as_string(),
        "message_class": f"{type(msg).__module__}.{type(msg).__qualname__}",
        "metadata": {key: canonical(value) for key, value in sorted(msgdata.items())},
    }


def main(command, directory):
    MailmanAdapter().start()
    from mailman.core.switchboard import Switchboard
    from mailman.testing.helpers import specialized_message_from_string

    queue = Switchboard("interop", directory)
    entries = []
    if command == "write":
        for text, metadata in SAMPLES:
            msg = specialized_message_from_string(
                "From: aperson@example.com\nTo: test@example.com\n" + text
            )
            filebase = queue.enqueue(msg, dict(metadata))
            stored = {k: v for k, v in metadata.items() if not k.startswith("_")}
            stored.update(version=3, _parsemsg=bool(metadata.get("_plaintext")))
            entries.append(describe(filebase, msg, stored))
    else:
        for filebase in queue.files:
            msg, msgdata = queue.dequeue(filebase)
            queue.finish(filebase)
            entries.append(describe(filebase, msg, msgdata))
    json.dump(entries, sys.stdout)


if __name__ == "__main__":
    main(*sys.argv[1:])

"""What the narrative documents and the tests use besides the public API.

:func:`dump_msgdata` prints metadata the way the documents show it, and
:func:`isolated_state` gives a block of code a fresh, private var directory.
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

from mailqueue.config import Configuration, config

__all__ = ["dump_msgdata", "isolated_state"]


def dump_msgdata(msgdata: dict[str, Any], *skip: str) -> None:
    """Print *msgdata* one key a line, sorted, values aligned; leave out *skip*."""
    keys = sorted(key for key in msgdata if key not in skip)
    if not keys:
        print("*Empty*")
        return
    width = max(len(key) for key in keys)
    for key in keys:
        print(f"{key:{width}}: {msgdata[key]}")


@contextlib.contextmanager
def isolated_state(configuration: Configuration = config) -> Iterator[str]:
    """Run the block with all state (queues, lists) in a new temporary directory.

    On the way out every configuration layer pushed inside the block (and
    not popped) is popped too, and the directory is removed.
    Yield the directory.
    """
    layer = f"isolated-state-{uuid.uuid4().hex}"
    with tempfile.TemporaryDirectory(prefix="mailqueue-") as var_dir:
        configuration.push(layer, f"[paths]\nvar_dir: {var_dir}\n")
        try:
            yield var_dir
        finally:
            names = configuration.layers
            for name in reversed(names[names.index(layer) :]):
                # Popping the layer also closes the list database in it.
                configuration.pop(name)

"""Real servers for tests, started on loopback and always stopped again.

    python tests/servers.py postgresql -- COMMAND...

installs nothing (``make`` installs Debian's packages first), starts a
throwaway PostgreSQL cluster (``initdb`` in a temporary directory, as the
unprivileged ``postgres`` user when run as root, on a free loopback port),
runs COMMAND with ``MAILQUEUE_TEST_DATABASE`` set to its URL, then stops the
server and removes the directory, whatever COMMAND did.  Its exit status is
COMMAND's.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _postgresql_bin(program: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))
    if not found:
        raise SystemExit(
            f"no PostgreSQL {program}: install Debian's postgresql "
            "(make postgresql-server)"
        )
    return found[-1]


@contextlib.contextmanager
def postgresql() -> Iterator[str]:
    """A PostgreSQL server on 127.0.0.1 for the block; yield its URL."""
    directory = tempfile.mkdtemp(prefix="mailqueue-postgresql-")
    as_user: list[str] = []
    if os.geteuid() == 0:
        # initdb refuses to run as root.
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(directory, "data")
    port = _free_port()
    server = None
    try:
        subprocess.run(
            [
                *as_user,
                _postgresql_bin("initdb"),
                "-D",
                data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        server = subprocess.Popen(
            [
                *as_user,
                _postgresql_bin("postgres"),
                "-D",
                data,
                "-p",
                str(port),
                "-h",
                "127.0.0.1",
                "-k",
                directory,
                "-c",
                "fsync=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(directory, "server.log"), "w"),  # noqa: SIM115
        )
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 60
        while True:
            ready = subprocess.run(
                [_postgresql_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True,
                check=False,
            )
            if ready.returncode == 0:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                with open(os.path.join(directory, "server.log")) as log:
                    raise SystemExit(f"PostgreSQL did not start:\n{log.read()}")
            time.sleep(0.1)
        yield url
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(directory, ignore_errors=True)


def main(arguments: list[str]) -> int:
    if len(arguments) < 3 or arguments[0] != "postgresql" or arguments[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    with postgresql() as url:
        environment = os.environ | {"MAILQUEUE_TEST_DATABASE": url}
        return subprocess.run(arguments[2:], env=environment, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

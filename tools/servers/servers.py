"""Real servers for tests, started on loopback and always stopped again.

    python tools/servers/servers.py postgresql -- COMMAND...

installs nothing (``make`` installs Debian's packages first), starts a
throwaway PostgreSQL cluster (``initdb`` in a temporary directory, as the
unprivileged ``postgres`` user when run as root, on a free loopback port),
runs COMMAND with ``MAILQUEUE_TEST_DATABASE`` set to its URL, then stops the
server and removes the directory, whatever COMMAND did.  Its exit status is
COMMAND's.

:func:`glusterfs` does the same for a one-brick GlusterFS volume on
127.0.1.1 (Gluster refuses ``localhost`` and ``127.0.0.1`` as a brick host),
mounted twice with the FUSE client: each mount stands for one host.
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


#: The volume options a shared queue needs (see docs/operating.rst).
CONSISTENT = [
    ("performance.stat-prefetch", "off"),
    ("performance.quick-read", "off"),
    ("performance.io-cache", "off"),
    ("performance.read-ahead", "off"),
    ("performance.readdir-ahead", "off"),
    ("performance.write-behind", "off"),
    ("performance.open-behind", "off"),
    ("performance.nl-cache", "off"),
]
#: The FUSE mount options it needs: the kernel caches no names either.
MOUNT_OPTIONS = "entry-timeout=0,attribute-timeout=0,negative-timeout=0"


class Volume:
    """A GlusterFS volume mounted twice; each mount is one host's view of it."""

    def __init__(self, directory: str, name: str) -> None:
        self.directory = directory
        self.name = name
        self.mounts = [os.path.join(directory, f"mount-{n}") for n in "ab"]

    def mount(self, where: str) -> None:
        os.makedirs(where, exist_ok=True)
        log = os.path.join(self.directory, f"{os.path.basename(where)}.log")
        subprocess.run(
            [
                "mount",
                "-t",
                "glusterfs",
                "-o",
                f"log-file={log},{MOUNT_OPTIONS}",
                f"127.0.1.1:/{self.name}",
                where,
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def client_pid(self, where: str) -> int:
        """The pid of the FUSE client process serving the mount *where*."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as stream:
                    words = stream.read().split(b"\0")
            except OSError:
                continue
            if words[0].endswith(b"glusterfs") and os.fsencode(where) in words:
                return int(entry)
        raise LookupError(f"no GlusterFS client for {where}")

    def crash(self, where: str) -> None:
        """Kill the client of *where*, as a machine that crashed would lose it."""
        os.kill(self.client_pid(where), 9)

    def unmount(self, where: str) -> None:
        subprocess.run(["umount", "-l", where], capture_output=True, check=False)


def _gluster(*arguments: str) -> None:
    subprocess.run(
        ["gluster", "--mode=script", *arguments],
        check=True,
        capture_output=True,
        timeout=120,
    )


@contextlib.contextmanager
def glusterfs() -> Iterator[Volume]:
    """A one-brick volume on 127.0.1.1, mounted twice, for the block."""
    if shutil.which("glusterd") is None or shutil.which("mount.glusterfs") is None:
        raise SystemExit("no GlusterFS: install Debian's glusterfs-server")
    if subprocess.run(["pgrep", "-x", "glusterd"], capture_output=True).returncode == 0:
        raise SystemExit("a glusterd is running already: stop it first")
    directory = tempfile.mkdtemp(prefix="mailqueue-gluster-")
    volume = Volume(directory, "mailqueue")
    working = os.path.join(directory, "glusterd")
    os.makedirs(working)
    brick = os.path.join(directory, "brick")
    os.makedirs(brick)
    volfile = os.path.join(directory, "glusterd.vol")
    with open(volfile, "w") as stream:
        # Listening on a loopback address only.
        stream.write(
            "volume management\n    type mgmt/glusterd\n"
            f"    option working-directory {working}\n"
            "    option transport-type socket\n"
            "    option transport.socket.bind-address 127.0.1.1\n"
            "    option transport.socket.listen-port 24007\n"
            "    option ping-timeout 0\n    option event-threads 1\nend-volume\n"
        )
    pid_file = os.path.join(directory, "glusterd.pid")
    try:
        subprocess.run(
            [
                "glusterd",
                "-f",
                volfile,
                f"--pid-file={pid_file}",
                "-l",
                os.path.join(directory, "glusterd.log"),
            ],
            check=True,
            timeout=60,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                _gluster("volume", "create", volume.name, f"127.0.1.1:{brick}", "force")
                break
            except subprocess.CalledProcessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        # A queue needs every host to see what another just did: no client
        # caching of names, attributes or content (CONSISTENT, above).
        for option, value in CONSISTENT:
            _gluster("volume", "set", volume.name, option, value)
        _gluster("volume", "start", volume.name)
        for where in volume.mounts:
            volume.mount(where)
        yield volume
    finally:
        for where in volume.mounts:
            volume.unmount(where)
        subprocess.run(
            ["gluster", "--mode=script", "volume", "stop", volume.name, "force"],
            capture_output=True,
            check=False,
            timeout=120,
        )
        with contextlib.suppress(OSError, ValueError), open(pid_file) as stream:
            os.kill(int(stream.read()), 15)
        # The brick and any client left: started by glusterd for this volume.
        subprocess.run(["pkill", "-f", f"glusterfsd.*{brick}"], check=False)
        subprocess.run(["pkill", "-f", f"glusterfs.*{directory}"], check=False)
        time.sleep(1)
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

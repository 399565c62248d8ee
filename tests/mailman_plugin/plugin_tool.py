"""Run inside GNU Mailman's venv (with mailqueue's wheel), never by the tests.

python plugin_tool.py classify DIRECTORY
    For each file of DIRECTORY, what mailqueue's Mailman plugin makes of
    it as Mailman's dequeue reads it (two pickles): ``accepted``, or
    ``refused: REASON``.  One JSON object, by file name.

python plugin_tool.py qfile CFG DIRECTORY
    Start GNU Mailman with CFG (so with its plugin, if CFG enables it),
    then run ``mailman qfile FILE`` (the command's own code, printing to
    /dev/null) on each file of DIRECTORY, each in a child process of its
    own with 2 GiB of address space and 10 s: ``read``, ``error: TYPE``,
    ``hang`` or ``crash: SIGNAL``.  One JSON object, by file name.
"""

import json
import os
import resource
import signal
import sys
import time

LIMIT = 2 << 30
SECONDS = 10.0


def classify(directory: str) -> None:
    from mailqueue import mailman as plugin

    found = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as fp:
            try:
                plugin.load(fp)
                plugin.load(fp)
            except Exception as error:  # what Mailman's runner would catch
                found[name] = f"refused: {type(error).__name__}: {error}"
            else:
                found[name] = "accepted"
    print(json.dumps(found))


def _qfile_child(path: str) -> None:
    from mailman.commands.cli_qfile import qfile as command

    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    try:
        command.main([path], standalone_mode=False)
    except BaseException as error:
        os.write(3, type(error).__name__.encode())
        os._exit(3)
    os._exit(0)


def qfile(cfg: str, directory: str) -> None:
    from mailman.core.initialize import initialize

    initialize(cfg)
    found = {}
    for name in sorted(os.listdir(directory)):
        reader, writer = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(reader)
            os.dup2(writer, 3)
            _qfile_child(os.path.join(directory, name))
        os.close(writer)
        deadline = time.monotonic() + SECONDS
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = None
                break
            time.sleep(0.01)
        said = os.read(reader, 200).decode(errors="replace")
        os.close(reader)
        if status is None:
            found[name] = "hang"
        elif os.WIFSIGNALED(status):
            found[name] = f"crash: {signal.Signals(os.WTERMSIG(status)).name}"
        elif os.WEXITSTATUS(status) == 0:
            found[name] = "read"
        else:
            found[name] = f"error: {said}"
    print(json.dumps(found))


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "classify":
        classify(*args)
    elif command == "qfile":
        qfile(*args)
    else:
        raise SystemExit(f"unknown command: {command}")


if __name__ == "__main__":
    main()

"""The mailqueue command as a child process: in a terminal, with no configuration."""

import contextlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest
from sites import interruptible, wait_for

from mailqueue.cli import main


def test_restart_without_a_configuration_file(tmp_path):
    # No -C, no MAILQUEUE_CONFIG: the defaults, and ./var in the working
    # directory.  restart restarts the runners, with nothing to read.
    environment = {
        key: value for key, value in os.environ.items() if key != "MAILQUEUE_CONFIG"
    }

    def mailqueue(*arguments):
        return subprocess.run(
            [sys.executable, "-m", "mailqueue", *arguments],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    started = mailqueue("start")
    assert started.stdout.startswith("mailqueue master started (pid ")
    assert started.stdout.endswith(f" on {tmp_path / 'var'}\n")
    try:
        wait_for(
            lambda: (
                len(json.loads(mailqueue("status", "--json").stdout)["runners"]) == 4
            ),
            30,
            "four runners",
        )
        before = json.loads(mailqueue("status", "--json").stdout)
        assert before["configuration"]["file"] is None
        restarted = mailqueue("restart")
        assert restarted.stdout == (
            f"mailqueue master (pid {before['master']}) is restarting its runners, "
            "each after its current entry\n"
        )
        old = {runner["pid"] for runner in before["runners"].values()}
        wait_for(
            lambda: (
                (
                    {
                        runner["pid"]
                        for runner in json.loads(mailqueue("status", "--json").stdout)[
                            "runners"
                        ].values()
                        if runner["state"] == "running"
                    }
                    - old
                ).__len__()
                == 4
            ),
            30,
            "four new runners",
        )
    finally:
        mailqueue("stop", "--timeout", "30")


def test_the_default_var_dir_is_in_the_working_directory(tmp_path):
    environment = {
        key: value for key, value in os.environ.items() if key != "MAILQUEUE_CONFIG"
    }
    shown = subprocess.run(
        [sys.executable, "-m", "mailqueue", "queues"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (shown.returncode, shown.stdout, shown.stderr) == (
        1,
        "",
        f"mailqueue: error: the var dir {tmp_path / 'var'} does not exist: nothing "
        f"has run there (the default, var in the working directory {tmp_path})\n",
    )


def test_queues_watch_redraws_until_interrupted(var_dir, tmp_path):
    config_file = tmp_path / "site.cfg"
    config_file.write_text(f"[paths]\nvar_dir: {var_dir}\n")
    # On a terminal (a pseudo-terminal here) it redraws in place.
    terminal, screen = pty.openpty()
    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailqueue",
            "-C",
            str(config_file),
            "queues",
            "--watch",
            "0.1",
        ],
        stdout=screen,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )
    os.close(screen)
    out = b""
    try:
        # Ctrl-C once it has drawn three frames (not after a guessed time:
        # a slow start would take the signal before Python handles it).
        deadline = time.monotonic() + 30
        while out.count(b"\033[H\033[2J") < 3 and time.monotonic() < deadline:
            if select.select([terminal], [], [], 1)[0]:
                out += os.read(terminal, 65536)
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=30)
    finally:
        watcher.kill()
        watcher.wait()
    with contextlib.suppress(OSError):  # EIO once the writer is gone
        while chunk := os.read(terminal, 65536):
            out += chunk
    os.close(terminal)
    assert watcher.returncode == 0, err
    text = out.decode()
    assert text.count("\033[H\033[2J") >= 3  # drawn again and again, in place
    assert text.count("queue ") == text.count("\033[H\033[2J")
    with pytest.raises(SystemExit) as exit:
        main(["queues", "--watch", "0"])
    assert exit.value.code == 2

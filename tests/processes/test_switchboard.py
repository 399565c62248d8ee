"""Two processes drain one unsliced queue: each entry is dequeued once.

And an entry a live process works on is never put back by a new owner of
the slice: whoever dequeues an entry holds a lock on its file until it
finishes it.

(Two *runners* never do this: the second stands by while the first owns the
slice; tests/processes/test_supervision.py shows that.  Dequeuing is what
decides between any two processes taking entries, whoever they are.)
"""

import os
import subprocess
import sys
import textwrap
import time

from mailqueue import Switchboard, config, message_from_string

ENTRIES = 400


RUNNER = textwrap.dedent(
    """
    import os, sys, time
    from mailqueue import Switchboard, config

    var_dir, record = sys.argv[1], sys.argv[2]
    config.push("race", f"[paths]\\nvar_dir: {var_dir}\\n[runner.race]\\n")
    queue = Switchboard("race", config.switchboards["race"].queue_directory)

    # Both processes wait on the same start line, so they race from entry one.
    open(record + ".ready", "w").close()
    while not os.path.exists(var_dir + "/go"):
        time.sleep(0.001)
    with open(record, "w") as taken:
        while files := queue.files:
            for filebase in files:
                try:
                    msg, msgdata = queue.dequeue(filebase)
                except FileNotFoundError:
                    continue  # the other process took it
                taken.write(msg["subject"] + "\\n")
                taken.flush()
                time.sleep(0.0005)  # long enough for the two to interleave
                queue.finish(filebase)
    """
)


#: One process of the ownership case, driven by commands on its stdin:
#: "own" (a switchboard with recover=True), "take" (dequeue the one entry),
#: "finish", "exit"; it answers each with a line on stdout.
PROCESS = textwrap.dedent(
    """
    import sys
    from mailqueue import Switchboard

    directory = sys.argv[1]
    board = None
    for command in sys.stdin:
        command = command.strip()
        if command == "own":
            board = Switchboard("test", directory, recover=True)
            print("owner" if board.owner else "not owner", flush=True)
        elif command == "take":
            [filebase] = board.files
            msg, msgdata = board.dequeue(filebase)
            print("took", msg["subject"], flush=True)
        elif command == "finish":
            board.finish(filebase)
            print("finished", flush=True)
        elif command == "files":
            print("files", len(board.files), flush=True)
        elif command == "exit":
            break
    """
)


class Process:
    def __init__(self, directory):
        self.popen = subprocess.Popen(
            [sys.executable, "-c", PROCESS, directory],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, command):
        self.popen.stdin.write(command + "\n")
        self.popen.stdin.flush()
        return self.popen.stdout.readline().strip()

    def exit(self):
        self.popen.stdin.write("exit\n")
        self.popen.stdin.close()
        assert self.popen.wait(timeout=30) == 0
        self.popen.stdout.close()

    def stop(self):
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(timeout=30)
        for stream in (self.popen.stdin, self.popen.stdout):
            if not stream.closed:
                stream.close()


def test_every_entry_is_processed_exactly_once(var_dir, tmp_path):
    config.push("race", "[runner.race]\n")
    mlist = config.lists.create("race@example.com")
    queue = config.switchboards["race"]
    for number in range(ENTRIES):
        msg = message_from_string(f"Subject: {number}\n\nbody\n")
        queue.enqueue(msg, listid=mlist.list_id)
    records = [tmp_path / f"runner-{n}.txt" for n in range(2)]
    processes = [
        subprocess.Popen([sys.executable, "-c", RUNNER, var_dir, str(record)])
        for record in records
    ]
    deadline = time.monotonic() + 60
    while not all(os.path.exists(f"{record}.ready") for record in records):
        assert time.monotonic() < deadline, "the processes did not start"
        time.sleep(0.01)
    open(os.path.join(var_dir, "go"), "w").close()
    for process in processes:
        assert process.wait(timeout=120) == 0
    processed = [record.read_text().split() for record in records]
    everything = processed[0] + processed[1]
    assert sorted(everything, key=int) == [str(n) for n in range(ENTRIES)]
    # Both took part, or this test would show nothing about the race.
    assert processed[0] and processed[1], [len(p) for p in processed]
    assert os.listdir(queue.queue_directory) == []
    assert os.listdir(config.switchboards["bad"].queue_directory) == []


def test_a_new_owner_leaves_alone_an_entry_a_live_process_works_on(tmp_path):
    """A owns the slice; B, not the owner, takes an entry; A exits; C owns.

    C must not put B's entry back in the queue while B works on it: that
    would have two processes process one entry with no crash at all.
    """
    directory = str(tmp_path / "test")
    queue = Switchboard("test", directory)
    queue.enqueue(message_from_string("Subject: once\n\nbody\n"))
    a, b, c = Process(directory), Process(directory), Process(directory)
    try:
        assert a.ask("own") == "owner"
        assert b.ask("own") == "not owner"
        assert b.ask("take") == "took once"
        a.exit()
        assert c.ask("own") == "owner"
        # B still has it: nothing was put back for C (or anyone) to take.
        assert c.ask("files") == "files 0"
        assert queue.get_files(".bak") != [] and queue.files == []
        assert b.ask("finish") == "finished"
        assert os.listdir(directory) == []
    finally:
        for process in (a, b, c):
            process.stop()

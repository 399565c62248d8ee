"""Two processes drain one unsliced queue: each entry is dequeued once.

(Two *runners* never do this: the second stands by while the first owns the
slice; tests/test_supervision.py shows that.  Dequeuing is what decides
between any two processes taking entries, whoever they are.)
"""

import os
import subprocess
import sys
import textwrap
import time

from mailqueue import config, message_from_string

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

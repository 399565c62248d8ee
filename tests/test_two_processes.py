"""Two runner processes drain one unsliced queue: each entry is processed once."""

import os
import subprocess
import sys
import textwrap

from mailqueue import config, message_from_string

ENTRIES = 400

RUNNER = textwrap.dedent(
    """
    import sys, time
    from mailqueue import Runner, config

    var_dir, record = sys.argv[1], sys.argv[2]
    config.push("race", f"[paths]\\nvar_dir: {var_dir}\\n[runner.race]\\n")

    class Drain(Runner):
        def _dispose(self, mlist, msg, msgdata):
            self.record.write(msg["subject"] + "\\n")
            self.record.flush()
            time.sleep(0.0005)  # long enough for the two processes to interleave
            return False

        def _snooze(self, filecnt):
            if not filecnt:
                self.stop()

    # Both processes wait on the same start line, so they race from entry one.
    while not __import__("os").path.exists(var_dir + "/go"):
        time.sleep(0.001)
    runner = Drain("race")
    with open(record, "w") as runner.record:
        runner.run()
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

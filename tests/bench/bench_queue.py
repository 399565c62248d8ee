"""Print what the queue costs on this machine: run with ``make bench``.

- one durable cycle: enqueue (two fsyncs), dequeue, finish;
- listing a queue of many entries;
- a runner draining a queue of messages for a list.

Figures are medians of several rounds; nothing here asserts a speed.
"""

import argparse
import os
import statistics
import time

from mailqueue import Runner, Switchboard, config, create_list, message_from_string
from mailqueue.testing import isolated_state

TEXT = (
    "From: aperson@example.com\nTo: test@example.com\nSubject: benchmark\n"
    "Message-ID: <bench@example.com>\n\n" + "A line of the body.\n" * 50
)


def cycle(queue, msg, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        filebase = queue.enqueue(msg, listid="test.example.com")
        queue.dequeue(filebase)
        queue.finish(filebase)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def floor(directory, payload, rounds):
    """The same cycle as bare system calls: what no implementation can beat."""
    times = []
    for number in range(rounds):
        base = os.path.join(directory, str(number))
        start = time.perf_counter()
        fd = os.open(base + ".pck.tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o660)
        os.write(fd, payload)
        os.fsync(fd)
        os.close(fd)
        os.rename(base + ".pck.tmp", base + ".pck")
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
        os.rename(base + ".pck", base + ".bak")
        with open(base + ".bak", "rb") as stream:
            stream.read()
        os.unlink(base + ".bak")
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def listing(directory, entries, rounds):
    for number in range(entries):
        name = f"{1700000000 + number * 0.001!r}+{number:040x}.pck"
        open(os.path.join(directory, name), "wb").close()
    queue = Switchboard("listing", directory)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        assert len(queue.files) == entries
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Drain(Runner):
    def _dispose(self, mlist, msg, msgdata):
        return False

    def _snooze(self, filecnt):
        if not filecnt:
            self.stop()


def drain(msg, messages, rounds):
    mlist = create_list("drain@example.com")
    rates = []
    for _ in range(rounds):
        queue = config.switchboards["drain"]
        for _ in range(messages):
            queue.enqueue(msg, listid=mlist.list_id)
        runner = Drain("drain")
        start = time.perf_counter()
        runner.run()
        rates.append(messages / (time.perf_counter() - start))
        assert queue.files == []
    return statistics.median(rates)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--messages", type=int, default=2000)
    arguments = parser.parse_args()
    msg = message_from_string(TEXT)
    with isolated_state() as var_dir:
        config.push("bench", "[runner.drain]\n")
        queue = Switchboard("cycle", os.path.join(var_dir, "cycle"))
        ours = cycle(queue, msg, arguments.cycles)
        bare = floor(
            queue.queue_directory, TEXT.encode() + bytes(300), arguments.cycles
        )
        print(
            f"durable cycle (enqueue+dequeue+finish): {ours * 1e6:.0f} µs median "
            f"of {arguments.cycles}; bare system calls: {bare * 1e6:.0f} µs; "
            f"ratio {ours / bare:.2f}"
        )
        directory = os.path.join(var_dir, "listing")
        os.makedirs(directory)
        print(
            f"listing {arguments.entries:,} entries: "
            f"{listing(directory, arguments.entries, 5) * 1e3:.0f} ms median of 5"
        )
        print(
            f"runner drain: {drain(msg, arguments.messages, 3):,.0f} messages/s "
            f"median of 3 x {arguments.messages}"
        )


if __name__ == "__main__":
    main()

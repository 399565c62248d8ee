"""Tests that start processes.

A test belongs here when it starts a process and watches it from outside:
a master and its runners (the ``site`` fixture), the ``mailqueue`` command
as a child, a second host, systemd's unit, or a hand-made child that holds
a lock.  Such a test waits on a state the process leaves (a file, a count,
a status line), never on time alone.  Unit tests of a module, in-process,
are in ``tests/test_MODULE.py``; the harnesses' reduced runs in ``tests/tools``.
"""

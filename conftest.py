"""Run the narrative documents in docs/ as tests.

The pytest plugin of :mod:`mailqueue.conformance.plugin` collects them with
Sybil and gives them their fixtures; ``pytest --implementation=NAME`` runs
the same documents against another implementation (see docs/conformance.rst).
"""

pytest_plugins = ["mailqueue.conformance.plugin"]

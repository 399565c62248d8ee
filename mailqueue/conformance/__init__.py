"""Checking an implementation against the spec documents.

:mod:`~mailqueue.conformance.adapter` defines what an implementation's adapter
provides; :mod:`~mailqueue.conformance.plugin` runs the documents with pytest;
:mod:`~mailqueue.conformance.report` reports the result.
"""

__all__: list[str] = []

"""Checking an implementation against the spec documents.

:mod:`~mailqueue.conformance.command` is ``mailqueue conformance ADAPTER``
(and ``python -m mailqueue.conformance``); :mod:`~mailqueue.conformance.adapter`
defines what an implementation's adapter provides;
:mod:`~mailqueue.conformance.spec` finds the documents the package carries;
:mod:`~mailqueue.conformance.plugin` runs them with pytest and Sybil;
:mod:`~mailqueue.conformance.report` reports the result.
"""

__all__: list[str] = []

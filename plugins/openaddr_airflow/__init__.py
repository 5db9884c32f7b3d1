"""Airflow extensions of the OpenAddresses Machine: the ``process_source`` operator, the run listener, extra links,
the Machine-task metric and the connections they read. The domain logic is in :mod:`openaddr`."""

from __future__ import annotations

"""The development stack of ``make run``: the whole Machine on one computer with no external service.

Not part of the ``openaddr`` wheel: it needs the checkout (``dags/``, ``plugins/``, ``airflow.cfg``,
``demo/``) beside it. ``python -m devstack`` is its command (:mod:`devstack.__main__`); :class:`devstack.stack.Stack`
is the API benchmarks and tests use. Its modules, by job:

==========================  ===================================================================================
:mod:`devstack.stack`       the stack: its environment, secrets, migrations, start (health wait) and stop
:mod:`devstack.supervise`   supervisord: the configuration of the stack's processes, start, ordered shutdown
:mod:`devstack.procs`       ``/proc`` scans, ports, signals, memory (what no process manager knows)
:mod:`devstack.airflow_api` the REST API client (token, health, pools, DAGs, runs)
:mod:`devstack.demo`        the demo sources and their data server
:mod:`devstack.report`      the set a run recorded, as the command prints it
:mod:`devstack.control`     a home's state from another process: refusing a second start, ``make stop``
:mod:`devstack.__main__`    the command line
==========================  ===================================================================================

It never imports Airflow: it drives the ``airflow`` command of the running interpreter's environment.
"""

from __future__ import annotations

from pathlib import Path

#: The checkout this package was imported from.
ROOT = Path(__file__).resolve().parent.parent


class StackError(Exception):
    """The development stack could not start, or one of its processes stopped."""

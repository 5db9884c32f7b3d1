"""``ProcessSourceOperator`` settings that follow the entry: the hard stop of an attempt."""

from __future__ import annotations

import datetime as dt

from openaddr_airflow.operators import DEADLINE_GRACE, EXECUTION_TIMEOUT, ProcessSourceOperator


def operator(entry: dict, **kwargs: object) -> ProcessSourceOperator:
    return ProcessSourceOperator(task_id="process_source", entry=entry, run_owner={"kind": "batch"}, **kwargs)


def test_the_hard_stop_follows_the_entry_deadline() -> None:
    task = operator({"label": "us/xx/slow/addresses/primary", "timeout": 12 * 3600.0})
    assert task.execution_timeout == EXECUTION_TIMEOUT
    task.pre_execute(context={})
    assert (
        task.execution_timeout == dt.timedelta(hours=12) + DEADLINE_GRACE == dt.timedelta(hours=12, minutes=5)
    )


def test_without_a_deadline_the_default_hard_stop_stays() -> None:
    task = operator({"label": "us/xx/plain/addresses/primary"})
    task.pre_execute(context={})
    assert task.execution_timeout == dt.timedelta(hours=3, minutes=5)


def test_an_explicit_execution_timeout_wins() -> None:
    task = operator({"timeout": 12 * 3600.0}, execution_timeout=dt.timedelta(seconds=4))
    task.pre_execute(context={})
    assert task.execution_timeout == dt.timedelta(seconds=4)

"""Machine-database outages: what is one, and how a task rides one out (issue 16, fault d).

A failover of the managed PostgreSQL, a restart or a network partition makes every statement fail for a minute or
two with a *connection* error (SQLAlchemy's ``OperationalError``/``InterfaceError``, or any ``DBAPIError`` whose
connection was invalidated). That is an **infrastructure** failure: nothing is wrong with the source, and the same
call succeeds once the database answers again. :func:`transient` says which errors are such; everything else (an
``IntegrityError``, a ``ProgrammingError``, a ``LookupError`` of ours) is a bug or bad data and is raised at once.

:func:`call` runs one Machine-database step (each of :mod:`openaddr.db.runs`'s writes is one transaction, and
idempotent per task instance: a run is keyed by its task instance and slot, :func:`~openaddr.db.runs.finish_run`
is conditional) and retries it on a transient error with exponential back-off (1, 2, 4 … at most 30 s between
tries) for up to ``budget`` seconds (``OPENADDR_DATABASE_RETRY_SECONDS``, default 300: a Multi-AZ failover takes
one to two minutes). So an outage shorter than the budget costs a task a wait, not its download and conform (a
3-hour run that ends while the database is away still records its result). Past the budget it raises
:class:`DatabaseUnavailable`, an ordinary exception: the task fails and Airflow retries it with its back-off
(``retries``, ``retry_delay``, ``retry_exponential_backoff`` of the DAGs), and the retry resumes the same run.
A source failure is never an exception here: ``process-one`` records it and the task succeeds.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ParamSpec, TypeVar

import sqlalchemy as sa
import tenacity

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: Seconds before the first retry; doubled each time, up to :data:`MAX_WAIT`.
FIRST_WAIT = 1.0
MAX_WAIT = 30.0


class DatabaseUnavailable(RuntimeError):
    """The Machine database did not answer within the retry budget: an infrastructure failure, for Airflow to retry
    (never recorded against the source)."""


def transient(error: BaseException) -> bool:
    """Whether ``error`` is a lost or refused connection to the database (retry), rather than a bug or bad data.

    :param error: an exception raised by a Machine-database call
    """
    if isinstance(error, sa.exc.DBAPIError):
        if error.connection_invalidated:
            return True
        if not isinstance(error, (sa.exc.OperationalError, sa.exc.InterfaceError)):
            return False
        if type(error.orig).__module__.startswith("sqlite3"):
            # sqlite3 raises OperationalError for a missing table as for a busy file: only the latter passes.
            text = str(error.orig).lower()
            return "locked" in text or "busy" in text
        return True
    # DisconnectionError: a pool's pre-ping gave up; TimeoutError: no pooled connection came free in time.
    return isinstance(error, (sa.exc.DisconnectionError, sa.exc.TimeoutError))


def budget_seconds() -> float:
    """``OPENADDR_DATABASE_RETRY_SECONDS`` (:class:`openaddr.settings.Settings`)."""
    from openaddr.settings import Settings

    return Settings.from_env().database_retry_seconds


def call(step: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``step(*args, **kwargs)``, retried on :func:`transient` errors for :func:`budget_seconds` seconds.

    :raises DatabaseUnavailable: the database did not answer in time (from the last error)
    """
    return Retry(budget_seconds())(step, *args, **kwargs)


class Retry:
    """Runs a step and retries it on :func:`transient` errors, waiting ``first_wait``, then twice as long each
    time, at most ``max_wait``, as long as the next try starts within ``budget`` seconds of the first (0: one try).

    :param budget: seconds
    """

    def __init__(self, budget: float, *, first_wait: float = FIRST_WAIT, max_wait: float = MAX_WAIT) -> None:
        self.budget = budget
        self.first_wait = first_wait
        self.max_wait = max_wait

    def __call__(self, step: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """:raises DatabaseUnavailable: from the last transient error once the budget is spent; other errors at
        once"""
        name = getattr(step, "__name__", repr(step))

        def warn(state: tenacity.RetryCallState) -> None:
            log.warning(
                "The Machine database did not answer %s (try %d, %.0f s so far): %s; trying again in %.0f s",
                name,
                state.attempt_number,
                state.seconds_since_start or 0.0,
                _first_line(state.outcome.exception() if state.outcome else None),
                state.upcoming_sleep,
            )

        retryer = tenacity.Retrying(
            retry=tenacity.retry_if_exception(transient),
            stop=tenacity.stop_before_delay(self.budget),
            wait=tenacity.wait_exponential(
                multiplier=self.first_wait, min=self.first_wait, max=self.max_wait
            ),
            before_sleep=warn,
            reraise=False,
        )
        try:
            return retryer(step, *args, **kwargs)
        except tenacity.RetryError as exc:
            last = exc.last_attempt.exception()
            raise DatabaseUnavailable(
                f"The Machine database did not answer {name} for {self.budget:.0f} s "
                f"({exc.last_attempt.attempt_number} tries): {_first_line(last)}"
            ) from last


def _first_line(error: BaseException | None) -> str:
    text = str(error or "").strip()
    return text.splitlines()[0] if text else type(error).__name__

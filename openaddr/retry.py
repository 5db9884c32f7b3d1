"""The one retry policy of the Machine's HTTP clients, on tenacity (processing.md §3.2, §3.3, §3.6.4; machine-ci.md §2.2).

Downloads (:mod:`openaddr.download.http`, :mod:`openaddr.download.ftp`), the ESRI dumper's requests
(:mod:`openaddr.download.esri`) and the GitHub status posts (:func:`openaddr.github.post_commit_status`) all call
:meth:`RetryPolicy.call`:

* only a **transient** failure is retried; the caller says which ones are (downloads: an error whose ``retryable``
  is true, i.e. connection errors, timeouts, 429 and 5xx; see :mod:`openaddr.download`);
* before retry *n* it waits ``delays[n]``, or what the server asked in ``Retry-After`` (delta-seconds or an HTTP
  date, :func:`retry_after_seconds`), at most ``max_retry_after``;
* a wait that would reach the **deadline** is not taken: the call ends at once with the deadline's own error
  (``StageClock.timed_out``), so no retry ever sleeps past the stage;
* once the retries are used up, the last error is raised as it is (a named error such as
  ``HTTPStatusError("503 response from …")``), never tenacity's ``RetryError``.
"""

from __future__ import annotations

import email.utils
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol, TypeVar

import tenacity

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

T = TypeVar("T")


class Deadline(Protocol):
    """What the policy needs of a stage clock (:class:`openaddr.download.StageClock` is one)."""

    def remaining(self) -> float | None:
        """Seconds left before the deadline (may be negative), or None without a deadline."""

    def timed_out(self, detail: str = "") -> Exception:
        """The error that ends the stage at its deadline."""


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait, or None when there is none or it cannot be read.

    :param value: the header: delta-seconds (``120``) or an HTTP date (``Wed, 21 Oct 2026 07:28:00 GMT``); a date
        in the past gives 0
    :param now: the current time (default: now)
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def is_retryable(error: BaseException) -> bool:
    """The default test of a transient failure: the error's ``retryable`` attribute is true."""
    return bool(getattr(error, "retryable", False))


def retry_after_of(error: BaseException) -> float | None:
    """The default ``Retry-After`` of a failure: the error's ``retry_after`` attribute (seconds), if it has one."""
    value = getattr(error, "retry_after", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return max(0.0, float(value))
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and after how long a transient failure is tried again.

    :param delays: seconds to wait before each retry; its length is the number of retries
    :param max_retry_after: the longest ``Retry-After`` honoured (a longer one is cut to it), in seconds
    :param name: what is being tried, for the log ("download", "status post", …)
    """

    delays: tuple[float, ...]
    max_retry_after: float
    name: str = "request"

    @property
    def attempts(self) -> int:
        """Tries at most: the first and one per delay."""
        return len(self.delays) + 1

    def call(
        self,
        attempt: Callable[[], T],
        *,
        transient: Callable[[BaseException], bool] = is_retryable,
        retry_after: Callable[[BaseException], float | None] = retry_after_of,
        deadline: Deadline | None = None,
        sleep: Callable[[float], object] | None = None,
        log_retries: bool = True,
    ) -> T:
        """Call ``attempt`` until it returns, retrying transient failures (see the module docstring).

        :param attempt: one try; its exceptions are the failures
        :param transient: whether a failure may be retried
        :param retry_after: the wait a failure's server asked for (``Retry-After``), or None
        :param deadline: the stage's clock; a wait that would reach its deadline ends the call at once
        :param sleep: how to wait (default: :func:`time.sleep`, looked up at call time)
        :param log_retries: log a WARNING "``<failure>``; retrying in ``<n>`` s (attempt ``<i>`` of ``<n>``)" before
            each retry; False when the caller logs every failed attempt itself
        :return: what ``attempt`` returned
        :raises Exception: the failure that is not transient, the last one once the retries are used up, or
            ``deadline.timed_out(<last failure>)`` when the next wait would reach the deadline
        """

        def wait(state: tenacity.RetryCallState) -> float:
            error = _failure(state)
            asked = retry_after(error)
            if asked is not None:
                return min(asked, self.max_retry_after)
            return self.delays[min(state.attempt_number, len(self.delays)) - 1] if self.delays else 0.0

        def stop(state: tenacity.RetryCallState) -> bool:
            if state.attempt_number >= self.attempts:
                return True
            remaining = deadline.remaining() if deadline is not None else None
            return remaining is not None and state.upcoming_sleep >= remaining

        def give_up(state: tenacity.RetryCallState) -> T:
            error = _failure(state)
            if state.attempt_number >= self.attempts:
                log.debug("%s: no retry left after %d attempts", self.name, state.attempt_number)
                raise error
            assert deadline is not None  # stop() ends early only at a deadline
            raise deadline.timed_out(str(error)) from error

        def announce(state: tenacity.RetryCallState) -> None:
            log.warning(
                "%s; retrying in %g s (attempt %d of %d)",
                _failure(state),
                state.upcoming_sleep,
                state.attempt_number + 1,
                self.attempts,
            )

        wait_for = sleep if sleep is not None else _sleep

        def pause(seconds: float) -> None:
            wait_for(seconds)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(transient),
            wait=wait,
            stop=stop,
            before_sleep=announce if log_retries else None,
            retry_error_callback=give_up,
            sleep=pause,
            reraise=True,
        )
        return retrying(attempt)


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _failure(state: tenacity.RetryCallState) -> BaseException:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    if error is None:  # pragma: no cover - only failures are retried
        raise AssertionError("retry without a failure")
    return error

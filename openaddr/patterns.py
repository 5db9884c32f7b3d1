"""Source patterns: compiled once, every match bounded in time (processing.md §7.5; issue 10).

A ``regexp`` pattern of a source file is Python ``re`` syntax *and* semantics (§7.5), and it comes from a
stranger's pull request: one catastrophic pattern (``(a+)+$`` against forty ``a`` and a ``!``) would hang a
worker, since ``re`` backtracks without limit and the run's deadline, checked between batches, never gets a turn.

Matching stays with ``re``: the alternatives measured on every corpus pattern (``benchmarks/bench_patterns.py``)
give other results (RE2: ASCII ``\\d``/``\\s``/``\\b``, no lookaround; the ``regex`` module: its own ``\\w`` and
``\\s``, e.g. for ``½``, combining accents and ``\\x1c``) or cost too much (a worker process). Instead a column of
values is matched under a periodic real-time timer (``ITIMER_REAL``, :data:`TICKS` ticks per budget). Each tick
looks at how far the column's iterator has moved since the previous tick; when it has not moved for a whole
budget's ticks, one value has been matched for at least the budget, and the tick raises
:class:`~openaddr.errors.PatternTimeout`. ``re`` checks for pending signals every 4,096 steps of a match, so the
tick is handled inside a hanging match too. The cost is a few system calls per column and nothing per value; a
match is stopped after between 1 and 1 + 1/:data:`TICKS` budgets, and a match shorter than the budget never is.

Ticks restart the system calls they interrupt (``SA_RESTART``), so reader threads in C code (GDAL, Arrow) read on
undisturbed. Python handles signals only in the main thread of a process, which is where every conform of this
project runs (the ``openaddr`` commands, ``process-one`` and its forked workers); anywhere else
:func:`bounded_map` refuses to run rather than run without a bound.
"""

from __future__ import annotations

import functools
import operator
import re
import signal
import threading
import time
from typing import TYPE_CHECKING, TypeVar

from openaddr.errors import PatternTimeout

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

_T = TypeVar("_T")
_U = TypeVar("_U")

#: Timer ticks per budget: a match is stopped at most ``budget / TICKS`` after its budget ran out.
TICKS = 4

#: Compiled patterns kept per process (a corpus run holds a few hundred distinct ones).
CACHE_SIZE = 4096


@functools.lru_cache(maxsize=CACHE_SIZE)
def compile_pattern(source: str) -> re.Pattern[str]:
    """``source`` compiled with :mod:`re`, once per process.

    :raises re.error: the pattern is not valid ``re`` syntax, including what ``re`` itself reports as another
        error (a repeat count over the C limit, nesting deep enough to exhaust the parser's recursion)
    """
    try:
        return re.compile(source)
    except (OverflowError, RecursionError) as exc:
        # `a{4294967296}` raises OverflowError, thousands of nested groups RecursionError: to the source file's
        # author both are an invalid pattern.
        raise re.error(f"{type(exc).__name__}: {exc}") from None


class _Watch:
    """The column being matched: its iterator, and how many values it had left at the previous tick."""

    __slots__ = ("describe", "iterator", "left", "stalled")

    def __init__(self, iterator: Iterator[object], describe: Callable[[], str]) -> None:
        self.iterator = iterator
        self.describe = describe
        self.left = -1
        self.stalled = 0


_active: _Watch | None = None


def _tick(signum: int, frame: object) -> None:
    watch = _active
    if watch is None:
        return
    left = operator.length_hint(watch.iterator, -1)
    if left != watch.left:
        watch.left = left
        watch.stalled = 0
        return
    watch.stalled += 1
    if watch.stalled >= TICKS:
        raise PatternTimeout(watch.describe())


def bounded_map(
    fn: Callable[[_T], _U], values: Iterable[_T], budget: float, describe: Callable[[], str]
) -> list[_U]:
    """``list(map(fn, values))``, where no single call of ``fn`` may run longer than about ``budget`` seconds.

    :param fn: matches one value (a bound method of a compiled pattern, or a function around one)
    :param values: the values (any other iterable than a list, tuple, set or dict is made a list first)
    :param budget: seconds one call may take; a call is stopped after between 1 and 1 + 1/:data:`TICKS` budgets
    :param describe: the message of the :class:`~openaddr.errors.PatternTimeout` (names source, layer, field,
        pattern); called only when a match is stopped
    :raises PatternTimeout: one call ran longer than the budget
    :raises RuntimeError: not called from the main thread, where the budget cannot be enforced
    """
    global _active
    if not isinstance(values, (list, tuple, set, frozenset, dict)):
        values = list(values)  # the tick reads progress from the iterator's remaining length
    iterator = iter(values)
    if _active is not None:
        # A match inside a match: the outer column's budget already covers this one.
        return list(map(fn, iterator))
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "source patterns run only in a process's main thread, where their time budget holds"
        )
    if not budget > 0:
        raise ValueError(f"a pattern's time budget must be > 0 seconds, not {budget!r}")
    watch = _Watch(iterator, describe)
    previous_handler = signal.signal(signal.SIGALRM, _tick)
    # Restart system calls the tick interrupts (SA_RESTART), so that a reader thread's read() in C code (GDAL,
    # Arrow) does not fail with EINTR; the match in this thread still sees the tick.
    signal.siginterrupt(signal.SIGALRM, False)
    started = time.monotonic()
    tick = max(budget / TICKS, 0.001)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, tick, tick)
    _active = watch
    try:
        return list(map(fn, iterator))
    finally:
        _active = None
        signal.setitimer(signal.ITIMER_REAL, 0)
        # None: a handler installed from C, which Python cannot put back; the default is the closest.
        signal.signal(signal.SIGALRM, signal.SIG_DFL if previous_handler is None else previous_handler)
        if previous_delay > 0:  # someone else's timer was running: give it back what is left of it
            left = max(previous_delay - (time.monotonic() - started), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, left, previous_interval)

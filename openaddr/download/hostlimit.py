"""How many requests may be in flight to one ArcGIS host at once (processing.md §3.6.4; issue 15, part 3).

A *host limiter* hands out slots: a request to a host waits for a slot, holds it while it is sent and its answer
read, and gives it back with its outcome. The limit of a host starts at ``Settings.esri_concurrency`` and moves
like TCP's congestion window (AIMD): a 429 or 503 with ``Retry-After`` halves it (never below 1), and it grows
back by one after :data:`RECOVERY_SUCCESSES` answers in a row that were not throttled, up to the setting again.

Two kinds, chosen by ``Settings.host_limiter`` (``OPENADDR_HOST_LIMITER``):

* ``local`` (the default, the embedded mode): :class:`MachineHostLimiter`, shared by every process of one machine
  (every task and processing child of a LocalExecutor, or of one Celery worker host). A slot is a lock file,
  ``<scratch>/hostlimit/<host>/slot-<i>``, held with ``flock`` while the request runs; a request takes the first
  free slot below the host's current limit, so at most that many are in flight on the machine, whichever
  processes send them. The kernel drops a dead process's locks, so the slots of a killed task come back at once.
  The host's limit and its run of successes live beside them in ``state.json``, rewritten under ``state.lock``
  (and forgotten :data:`STATE_SECONDS` after the last answer, as in Redis). :class:`LocalHostLimiter` (a
  condition variable per host) is the same limit within one process only, for tests and benchmarks;
* ``redis``: :class:`RedisHostLimiter`, for a fleet under Celery. Slots are *leases* in a Redis sorted set per host
  (``<prefix>:<host>:leases``, scored by their expiry in Redis's own clock), taken and given back by Lua scripts so
  that counting and taking is one atomic step; a lease expires ``lease_seconds`` after it was taken (longer than
  any request may last), so the slots of a worker that was killed while holding them come back by themselves. The
  host's current limit and its run of successes live in a hash beside it (``<prefix>:<host>:state``), shared by
  the fleet too. Redis is ``OPENADDR_REDIS_URL``; when it is not set or does not answer, building the limiter
  fails with :class:`HostLimiterUnavailable` naming it: never a silent fallback to the local limiter.

Written by hand (no library offers an expiring, shared, adaptive semaphore on redis-py; redis-py's ``Lock`` is a
mutex): see the README's "Design decisions".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from openaddr.errors import OpenaddrError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from openaddr.retry import Deadline
    from openaddr.settings import Settings

log = logging.getLogger(__name__)

#: Answers in a row without a throttle before a lowered limit grows by one ("recover slowly").
RECOVERY_SUCCESSES = 16
#: Seconds between two looks at a full Redis semaphore (at most; the first looks come sooner).
POLL_INTERVAL = 0.05
#: Key prefix of the Redis limiter.
REDIS_PREFIX = "openaddr:hostlimit"
#: Seconds a lowered limit is remembered in Redis after the last answer from that host.
STATE_SECONDS = 3600


class HostLimiterUnavailable(OpenaddrError):
    """The configured host limiter cannot be used (Redis mode without a URL, or Redis not answering).

    Not a source problem: the run fails as the infrastructure's failure.
    """


class Slot:
    """One slot held for one request; :meth:`throttled` says the answer asked to slow down."""

    def __init__(self) -> None:
        self.outcome: str = "ok"

    def throttled(self) -> None:
        """The answer was a 429 or 503 with ``Retry-After``: the host's limit is halved on release."""
        self.outcome = "throttled"

    def failed(self) -> None:
        """The request failed without an answer (connection error, timeout): the limit does not move."""
        self.outcome = "failed"


class HostLimiter(Protocol):
    """What the ESRI downloader needs of a limiter."""

    def acquire(self, host: str, maximum: int, deadline: Deadline | None) -> Any:
        """Wait for a slot to ``host`` (at most ``maximum`` in flight); return its token.

        :raises Exception: the deadline's own error when it passes while waiting
        """

    def release(self, host: str, token: Any, outcome: str, maximum: int) -> None:
        """Give the slot back with the outcome of its request (``ok``, ``throttled`` or ``failed``)."""

    def limit(self, host: str, maximum: int) -> int:
        """The host's current limit."""


@contextlib.contextmanager
def slot(limiter: HostLimiter, host: str, maximum: int, deadline: Deadline | None = None) -> Iterator[Slot]:
    """Hold a slot of ``limiter`` to ``host`` for the ``with`` block; an exception releases it as ``failed``."""
    token = limiter.acquire(host, maximum, deadline)
    held = Slot()
    try:
        yield held
    except BaseException:
        if held.outcome == "ok":
            held.failed()
        raise
    finally:
        limiter.release(host, token, held.outcome, maximum)


def _check(deadline: Deadline | None, host: str) -> float | None:
    """Seconds left before the deadline (None: no deadline); raises the deadline's error once it has passed."""
    remaining = deadline.remaining() if deadline is not None else None
    if remaining is not None and remaining <= 0:
        assert deadline is not None
        raise deadline.timed_out(f"waiting for a connection slot to {host}")
    return remaining


class _HostState:
    def __init__(self, maximum: int) -> None:
        self.in_flight = 0
        self.limit = maximum
        self.successes = 0


class LocalHostLimiter:
    """The in-process limiter: a condition variable and the AIMD state per host (tests and benchmarks; the
    ``local`` setting is :class:`MachineHostLimiter`, which holds across processes)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._hosts: dict[str, _HostState] = {}

    def _state(self, host: str, maximum: int) -> _HostState:
        state = self._hosts.get(host)
        if state is None:
            state = self._hosts[host] = _HostState(maximum)
        state.limit = min(state.limit, maximum)
        return state

    def acquire(self, host: str, maximum: int, deadline: Deadline | None) -> Any:
        """See :class:`HostLimiter`."""
        with self._lock:
            while True:
                state = self._state(host, maximum)
                if state.in_flight < state.limit:
                    state.in_flight += 1
                    return None
                remaining = _check(deadline, host)
                self._lock.wait(timeout=1.0 if remaining is None else min(1.0, remaining))

    def release(self, host: str, token: Any, outcome: str, maximum: int) -> None:
        """See :class:`HostLimiter`."""
        with self._lock:
            state = self._state(host, maximum)
            state.in_flight -= 1
            _adapt(state, outcome, maximum, host)
            self._lock.notify_all()

    def limit(self, host: str, maximum: int) -> int:
        """See :class:`HostLimiter`."""
        with self._lock:
            return self._state(host, maximum).limit


def _adapt(state: _HostState, outcome: str, maximum: int, host: str) -> None:
    """AIMD: halve on a throttle, one more after :data:`RECOVERY_SUCCESSES` answers in a row that were not."""
    if outcome == "throttled":
        lowered = max(1, state.limit // 2)
        if lowered < state.limit:
            log.info("%s asked to slow down: at most %d requests at once", host, lowered)
        state.limit, state.successes = lowered, 0
    elif outcome == "ok" and state.limit < maximum:
        state.successes += 1
        if state.successes >= RECOVERY_SUCCESSES:
            state.limit, state.successes = state.limit + 1, 0


#: Name of the machine-wide limiter's folder inside the scratch folder.
FOLDER_NAME = "hostlimit"


def host_folder_name(host: str) -> str:
    """A file name for ``host`` (``name:port``): its readable characters and a digest, so that two hosts never
    share a folder whatever characters they have."""
    readable = re.sub(r"[^A-Za-z0-9.-]", "_", host)[:80]
    return f"{readable}-{hashlib.sha256(host.encode()).hexdigest()[:12]}"


class MachineHostLimiter:
    """The machine-wide limiter of ``OPENADDR_HOST_LIMITER=local``: ``flock`` on slot files (see the module
    docstring). Every thread and every process that builds one on the same folder shares its slots: ``flock``
    locks belong to an open file description, and each request opens its slot file anew, so two threads of one
    process exclude each other as two processes do. A process forked while a slot is held keeps the slot's
    description open until it exits (``O_CLOEXEC`` covers ``exec`` only): the slot is then held longer, never
    shared, so the limit can only be undershot (the download's page threads end before the conform forks).

    :param folder: where the hosts' slot files live (``<scratch>/hostlimit``); created when missing
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _host(self, host: str) -> Path:
        path = self.folder / host_folder_name(host)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _read(self, folder: Path, maximum: int) -> _HostState:
        state = _HostState(maximum)
        try:
            saved = json.loads((folder / "state.json").read_bytes())
        except (OSError, ValueError):
            return state
        if not isinstance(saved, dict) or time.time() - float(saved.get("updated", 0)) > STATE_SECONDS:
            return state
        with contextlib.suppress(TypeError, ValueError):
            state.limit = max(1, min(maximum, int(saved["limit"])))
            state.successes = int(saved["successes"])
        return state

    def acquire(self, host: str, maximum: int, deadline: Deadline | None) -> Any:
        """See :class:`HostLimiter`; the token is the open, locked slot file."""
        folder = self._host(host)
        pause = 0.005
        while True:
            for index in range(self._read(folder, maximum).limit):
                fd = os.open(folder / f"slot-{index}", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                return fd
            remaining = _check(deadline, host)
            time.sleep(pause if remaining is None else max(0.0, min(pause, remaining)))
            pause = min(pause * 2, POLL_INTERVAL)

    def release(self, host: str, token: Any, outcome: str, maximum: int) -> None:
        """See :class:`HostLimiter`: the host's state is updated under its state lock, then the slot unlocked."""
        folder = self._host(host)
        try:
            if outcome != "failed":
                lock = os.open(folder / "state.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    state = self._read(folder, maximum)
                    before = (state.limit, state.successes)
                    _adapt(state, outcome, maximum, host)
                    if (state.limit, state.successes) == before:
                        return  # the common case, a host at its full limit: nothing to write
                    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".state-")
                    with os.fdopen(fd, "w") as stream:
                        json.dump(
                            {"limit": state.limit, "successes": state.successes, "updated": time.time()},
                            stream,
                        )
                    os.replace(temporary, folder / "state.json")
                finally:
                    os.close(lock)
        finally:
            os.close(token)  # closing the only descriptor of the slot file drops its lock

    def limit(self, host: str, maximum: int) -> int:
        """See :class:`HostLimiter`."""
        return self._read(self._host(host), maximum).limit


def machine_folder(settings: Settings) -> Path:
    """The machine-wide limiter's folder: ``hostlimit`` in the scratch folder (``OPENADDR_SCRATCH``, else
    ``openaddr-scratch`` in the system temporary folder, as the tasks' work folders)."""
    return settings.scratch_folder() / FOLDER_NAME


# KEYS: leases, state. ARGV: token, maximum, lease (ms). 1 when the lease was taken.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local maximum = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local limit = tonumber(redis.call('HGET', KEYS[2], 'limit')) or maximum
if limit > maximum then limit = maximum end
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
  end
  return 1
end
return 0
"""

# KEYS: leases, state. ARGV: token, outcome, maximum, recovery, state ttl (s). The host's limit after it.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local maximum = tonumber(ARGV[3])
local limit = tonumber(redis.call('HGET', KEYS[2], 'limit')) or maximum
if limit > maximum then limit = maximum end
local successes = tonumber(redis.call('HGET', KEYS[2], 'successes')) or 0
if ARGV[2] == 'throttled' then
  limit = math.max(1, math.floor(limit / 2))
  successes = 0
elseif ARGV[2] == 'ok' and limit < maximum then
  successes = successes + 1
  if successes >= tonumber(ARGV[4]) then
    limit = limit + 1
    successes = 0
  end
end
redis.call('HSET', KEYS[2], 'limit', limit, 'successes', successes)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[5]))
return limit
"""


class RedisHostLimiter:
    """The fleet-wide limiter: expiring leases in Redis (see the module docstring).

    :param url: the Redis URL (``redis://host:6379/0``)
    :param lease_seconds: how long a lease lives when its holder never gives it back (it must outlast any request)
    :param prefix: the key prefix (tests use their own)
    :raises HostLimiterUnavailable: Redis does not answer
    """

    def __init__(self, url: str, *, lease_seconds: float, prefix: str = REDIS_PREFIX) -> None:
        import redis

        self.url = url
        self.prefix = prefix
        self.lease_ms = max(1, math.ceil(lease_seconds * 1000))
        self._redis = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            raise HostLimiterUnavailable(
                f"OPENADDR_HOST_LIMITER=redis, but Redis at {_shown(url)} does not answer: {exc}"
            ) from None
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._release = self._redis.register_script(_RELEASE)

    def _keys(self, host: str) -> list[str]:
        return [f"{self.prefix}:{host}:leases", f"{self.prefix}:{host}:state"]

    def acquire(self, host: str, maximum: int, deadline: Deadline | None) -> Any:
        """See :class:`HostLimiter`."""
        import redis

        token = uuid.uuid4().hex
        pause = 0.005
        while True:
            try:
                taken = self._acquire(keys=self._keys(host), args=[token, maximum, self.lease_ms])
            except redis.RedisError as exc:
                raise HostLimiterUnavailable(
                    f"Redis at {_shown(self.url)} failed while limiting requests to {host}: {exc}"
                ) from None
            if taken == 1:
                return token
            remaining = _check(deadline, host)
            time.sleep(pause if remaining is None else min(pause, remaining))
            pause = min(pause * 2, POLL_INTERVAL)

    def release(self, host: str, token: Any, outcome: str, maximum: int) -> None:
        """See :class:`HostLimiter`."""
        import redis

        try:
            limit = self._release(
                keys=self._keys(host), args=[token, outcome, maximum, RECOVERY_SUCCESSES, STATE_SECONDS]
            )
        except redis.RedisError as exc:
            raise HostLimiterUnavailable(
                f"Redis at {_shown(self.url)} failed while limiting requests to {host}: {exc}"
            ) from None
        if outcome == "throttled":
            log.info("%s asked to slow down: at most %s requests at once across the fleet", host, limit)

    def limit(self, host: str, maximum: int) -> int:
        """See :class:`HostLimiter`."""
        value = self._redis.hget(self._keys(host)[1], "limit")
        return min(maximum, int(float(value))) if value is not None else maximum

    def close(self) -> None:
        """Close the connections."""
        self._redis.close()


def _shown(url: str) -> str:
    from openaddr.download.urls import redact_url

    return redact_url(url)


def host_limiter(settings: Settings, *, lease_seconds: float) -> HostLimiter:
    """The limiter ``settings`` choose (``OPENADDR_HOST_LIMITER``).

    :param lease_seconds: the Redis leases' life (the longest a request may take, and a margin)
    :raises HostLimiterUnavailable: Redis mode without ``OPENADDR_REDIS_URL``, or Redis not answering
    """
    if settings.host_limiter == "local":
        return MachineHostLimiter(machine_folder(settings))
    if not settings.redis_url:
        raise HostLimiterUnavailable("OPENADDR_HOST_LIMITER=redis needs OPENADDR_REDIS_URL, which is not set")
    return RedisHostLimiter(settings.redis_url, lease_seconds=lease_seconds)

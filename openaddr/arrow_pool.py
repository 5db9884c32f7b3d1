"""Arrow's process-wide default memory pool, chosen before pyarrow loads.

pyarrow reads ``ARROW_DEFAULT_MEMORY_POOL`` once, when a process first allocates through Arrow, and several of
Arrow's C++ internals (the Parquet writer's page buffers among them) allocate from that default whatever pool the
Python calls are given. Which one suits depends on the work, measured (README, Figures):

* **processing** a source (``openaddr`` commands, the zygote's children): ``system``. jemalloc kept freed batches
  mapped for a while; with batches streaming through several processes that showed as ~40 MiB more peak memory.
* **collect** (``openaddr collect``, the collect DAG's ``collect_area``): ``jemalloc``, with
  :data:`openaddr.collect.geoparquet.JEMALLOC_DECAY_MS`. The GeoParquet step's worker threads churn through
  short-lived tables; the wheels' default, mimalloc, kept about 70 MiB more of them resident (peak 315-329 MiB
  against 244-255 MiB over 3 M rows), the system allocator about 25 MiB more.

Nothing here imports pyarrow before the choice is made.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

#: The pool for processing sources.
PROCESSING = "system"
#: The pool for building collections.
COLLECT = "jemalloc"
_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"


def choose(pool: str) -> None:
    """Ask for ``pool`` as Arrow's default, unless the environment already names one (an operator's choice wins).
    When pyarrow is loaded already the request may come too late: :func:`check` says so."""
    os.environ.setdefault(_VARIABLE, pool)


def check(pool: str) -> str:
    """The backend of Arrow's default pool in this process; a warning when it is not ``pool`` although the
    environment did not ask for another (pyarrow allocated before :func:`choose` ran), naming the variable to set
    in the process's environment."""
    import pyarrow as pa

    backend = pa.default_memory_pool().backend_name
    wanted = os.environ.get(_VARIABLE, pool)
    if backend != wanted:
        log.warning(
            "Arrow's default memory pool is %s, not %s: pyarrow allocated before it could be chosen, so peak "
            "memory will be higher; set %s=%s in this process's environment",
            backend,
            wanted,
            _VARIABLE,
            wanted,
        )
    return str(backend)


__all__ = ["COLLECT", "PROCESSING", "check", "choose"]

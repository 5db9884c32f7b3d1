"""DAG settings that must be known when a DAG file is parsed, from :class:`openaddr.settings.Settings`.

Only these two variables are read here (``OPENADDR_POOL_SLOTS``, ``OPENADDR_LARGE_POOL_SLOTS``): no connections,
Airflow variables or network at parse time (style guide point 3). A malformed value fails the DAG file's import
with a message naming the variable; the other settings are validated when a task starts
(:func:`openaddr_airflow.config.settings`), so that one malformed limit fails tasks, not every DAG.
"""

from __future__ import annotations

import os

from openaddr.settings import Settings

_PARSE_TIME_FIELDS = ("pool_slots", "large_pool_slots")
_SETTINGS = Settings.from_env(
    {
        name: os.environ[name]
        for name in (Settings.variable(field) for field in _PARSE_TIME_FIELDS)
        if name in os.environ
    }
)

#: Slots of pool ``oa_sources`` (the total worker concurrency, at least 3); the batch leaves two of them to CI
#: (machine-ci.md §3.3).
POOL_SLOTS = _SETTINGS.pool_slots
#: ``process_source`` instances one batch run may have at once (``max_active_tis_per_dagrun``).
BATCH_MAX_ACTIVE_TASKS = POOL_SLOTS - 2
#: Slots of pool ``oa_large`` (the large-tier workers' concurrency, at least 1).
LARGE_POOL_SLOTS = _SETTINGS.large_pool_slots
#: Tasks one batch run may have at once: its standard share plus the whole large tier, so a long nationwide run
#: never takes a standard slot.
BATCH_MAX_ACTIVE_DAG_TASKS = BATCH_MAX_ACTIVE_TASKS + LARGE_POOL_SLOTS

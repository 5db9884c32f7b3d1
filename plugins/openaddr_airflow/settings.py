"""DAG settings that must be known when a DAG file is parsed, from the environment with safe defaults.

Only plain ``os.environ`` reads: no connections, variables or network at parse time (style guide point 3).
"""

from __future__ import annotations

import os

#: Slots of pool ``oa_sources`` (the total worker concurrency); the batch leaves two of them to CI
#: (machine-ci.md §3.3).
POOL_SLOTS = max(3, int(os.environ.get("OPENADDR_POOL_SLOTS", "16")))
#: ``process_source`` instances one batch run may have at once (``max_active_tis_per_dagrun``).
BATCH_MAX_ACTIVE_TASKS = POOL_SLOTS - 2
#: Slots of pool ``oa_large`` (the large-tier workers' concurrency).
LARGE_POOL_SLOTS = max(1, int(os.environ.get("OPENADDR_LARGE_POOL_SLOTS", "2")))
#: Tasks one batch run may have at once: its standard share plus the whole large tier, so a long nationwide run
#: never takes a standard slot.
BATCH_MAX_ACTIVE_DAG_TASKS = BATCH_MAX_ACTIVE_TASKS + LARGE_POOL_SLOTS

"""DAG settings that must be known when a DAG file is parsed, from the environment with safe defaults.

Only plain ``os.environ`` reads: no connections, variables or network at parse time (style guide point 3).
"""

from __future__ import annotations

import os

#: Slots of pool ``oa_sources`` (the total worker concurrency); the batch leaves two of them to CI
#: (machine-ci.md §3.3).
POOL_SLOTS = max(3, int(os.environ.get("OPENADDR_POOL_SLOTS", "16")))
BATCH_MAX_ACTIVE_TASKS = POOL_SLOTS - 2

"""The Machine's steps: what each Airflow task of the CI and batch DAGs does, as plain Python (machine-ci.md §4–§6).

Every task body in ``dags/`` is one call into this package; nothing here imports Airflow. The database is a
SQLAlchemy engine of the Machine database (:mod:`openaddr.db`, which holds every query), storage an
:class:`openaddr.storage.Storage`. The modules, by section:

* :mod:`~openaddr.machine.entries`: what is planned and who owns a run (:class:`PlannedEntry`, :class:`RunOwner`,
  :class:`SourceSnapshot`, the resource tiers);
* :mod:`~openaddr.machine.planning`: planning a CI job or a set's entries, grouping and tiers;
* :mod:`~openaddr.machine.batch`: batch sets (create, plan, complete);
* :mod:`~openaddr.machine.child`: the ``openaddr process-one`` child process, its deadline and memory limit;
* :mod:`~openaddr.zygote`: the zygote the child is forked from (imports done once per task);
* :mod:`~openaddr.machine.estimate`: what an entry without a previous time will cost, known before downloading;
* :mod:`~openaddr.machine.recording`: running and recording one entry, and what a failed task leaves behind;
* :mod:`~openaddr.machine.scratch`: the tasks' work folders in the scratch folder (locked, removed on exit, swept
  after a kill);
* :mod:`~openaddr.machine.merged`: merged work (§2.4), whether a job run's commit is on the default branch (checked
  when a job finishes, rechecked daily by ``openaddr_refresh_merged``);
* :mod:`~openaddr.machine.comments`: the pull-request comment of a finished job (§2.3).

The flow of a CI job (DAG ``openaddr_ci``):

1. :func:`plan_ci_job` records the job if the webhook has not, stores a snapshot of each changed source file under
   ``jobs/<job id>/sources/``, expands the files into layer entries (:class:`PlannedEntry`) and records a failed run
   for every file that cannot be read or fails strict validation (problem *invalid_source*);
2. :func:`process_source` runs once per entry (a mapped task): reuse a recent run of the same entry (§5 step 1) or
   run ``openaddr process-one`` in a subprocess with the entry's deadline and a memory limit, publish its outputs
   under ``runs/<run id>/`` and record the run; source failures are recorded, never raised;
3. :func:`finish_ci_job` recomputes the job's status.

A batch (DAG ``openaddr_batch``): :func:`create_batch_set` (list the sources at one commit, record the set, store
the snapshot under ``sets/<set id>/sources/``), :func:`plan_batch_set` (entries slowest first), :func:`process_source`
per entry, :func:`complete_batch_set`.

The names below are the package's public interface, the one the DAGs, the plugins and the tests import.
"""

from __future__ import annotations

from openaddr.machine.batch import complete_batch_set, create_batch_set, plan_batch_set
from openaddr.machine.child import (
    DEFAULT_LARGE_MEMORY_LIMIT,
    DEFAULT_MEMORY_LIMIT,
    KILL_GRACE_SECONDS,
    LARGE_MEMORY_LIMIT_VARIABLE,
    MEMORY_LIMIT_VARIABLE,
    ChildResult,
    format_bytes,
    memory_limit,
    run_process_one,
)
from openaddr.machine.entries import (
    LARGE,
    STANDARD,
    TIERS,
    Kind,
    PlannedEntry,
    RunOwner,
    SourceSnapshot,
    TriggerError,
    check_source_path,
    entry_size,
    source_name,
    worker_id,
)
from openaddr.machine.estimate import Estimate, estimate_entries
from openaddr.machine.planning import (
    ENTRY_OVERHEAD_SECONDS,
    GROUP_BUDGET_SECONDS,
    GROUP_DEADLINE_SECONDS,
    GROUP_SIZE,
    MAX_CI_FILES,
    MIN_GROUP_SECONDS,
    PULL_REQUEST_EVENTS,
    SMALL_ENTRY_SECONDS,
    TASKS_PER_SLOT,
    batch_task_groups,
    by_tier,
    ci_owner,
    ci_sources,
    finish_ci_job,
    group_entries,
    plan_ci_job,
    plan_sources,
    task_arguments,
)
from openaddr.machine.recording import process_entries, process_source, record_task_failure
from openaddr.zygote import Zygote, ZygoteError

__all__ = [
    "DEFAULT_LARGE_MEMORY_LIMIT",
    "ENTRY_OVERHEAD_SECONDS",
    "DEFAULT_MEMORY_LIMIT",
    "GROUP_BUDGET_SECONDS",
    "GROUP_DEADLINE_SECONDS",
    "GROUP_SIZE",
    "KILL_GRACE_SECONDS",
    "LARGE",
    "LARGE_MEMORY_LIMIT_VARIABLE",
    "MAX_CI_FILES",
    "MEMORY_LIMIT_VARIABLE",
    "MIN_GROUP_SECONDS",
    "PULL_REQUEST_EVENTS",
    "SMALL_ENTRY_SECONDS",
    "STANDARD",
    "TASKS_PER_SLOT",
    "TIERS",
    "ChildResult",
    "Estimate",
    "Kind",
    "PlannedEntry",
    "RunOwner",
    "SourceSnapshot",
    "TriggerError",
    "Zygote",
    "ZygoteError",
    "batch_task_groups",
    "by_tier",
    "check_source_path",
    "ci_owner",
    "ci_sources",
    "complete_batch_set",
    "create_batch_set",
    "entry_size",
    "estimate_entries",
    "finish_ci_job",
    "format_bytes",
    "group_entries",
    "memory_limit",
    "plan_batch_set",
    "plan_ci_job",
    "plan_sources",
    "process_entries",
    "process_source",
    "record_task_failure",
    "run_process_one",
    "source_name",
    "task_arguments",
    "worker_id",
]

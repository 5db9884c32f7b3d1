"""What is planned and who owns a run: the values that pass between the Machine's tasks (machine-ci.md §4–§6).

A :class:`PlannedEntry` is the argument of one mapped ``process_source`` task, a :class:`RunOwner` the job or set its
run belongs to, a :class:`SourceSnapshot` one source file as a job or set reads it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

if TYPE_CHECKING:
    from collections.abc import Mapping


Kind = Literal["ci", "batch"]
#: Resource tiers of a layer entry (``conform.size``, processing.md §2): ``large`` entries run in their own pool
#: and Celery queue, on workers with more memory and disk, under a higher memory limit (machine-ci.md §3.3).
STANDARD: Final = "standard"
LARGE: Final = "large"
TIERS: Final = (STANDARD, LARGE)


@dataclass(frozen=True)
class PlannedEntry:
    """One layer entry to process: the argument of one mapped ``process_source`` task (kept small for XCom).

    :param path: the source file in the sources repository, ``sources/us/wy/park.json``
    :param layer: layer type
    :param name: entry name
    :param source_key: storage key of the snapshot of the source file this run reads
    :param blob_sha: git blob sha of the source file
    :param digest: :func:`openaddr.db.runs.layer_digest` of the entry
    :param timeout: seconds the entry may take (its ``timeout`` hours, else 3 hours)
    :param size: resource tier, :data:`STANDARD` or :data:`LARGE` (``conform.size``)
    """

    path: str
    layer: str
    name: str
    source_key: str
    blob_sha: str | None
    digest: str
    timeout: float
    size: str = STANDARD

    @property
    def label(self) -> str:
        """``us/wy/park/addresses/primary``: how the Airflow UI names the mapped task instance."""
        return f"{source_name(self.path)}/{self.layer}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """The entry as a JSON-compatible dict, with its label."""
        return {**dataclasses.asdict(self), "label": self.label}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlannedEntry:
        """The entry from :meth:`to_dict` (extra keys ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


@dataclass(frozen=True)
class RunOwner:
    """The job or set a run belongs to.

    :param kind: ``ci`` or ``batch`` (selects the reuse window, §5 step 1)
    :param job_id: the CI job
    :param set_id: the batch set
    :param commit_sha: the commit the sources were read at
    :param rerun: a re-run request: never reuse
    :param pull_request: a CI job of a pull request (or of a re-run comment on one): untrusted sources, run under the
        standard tier's limits whatever ``conform.size`` they claim
    """

    kind: Kind
    job_id: str | None = None
    set_id: int | None = None
    commit_sha: str | None = None
    rerun: bool = False
    pull_request: bool = False


@dataclass(frozen=True)
class SourceSnapshot:
    """A source file as a job or set reads it.

    :param path: ``sources/….json``
    :param blob_sha: its git blob sha
    :param content: its bytes
    """

    path: str
    blob_sha: str | None
    content: bytes


class TriggerError(ValueError):
    """A CI trigger's conf that cannot be planned (no files, a path outside ``sources/``, bad base64, too many
    files): retrying cannot help, the DAG run fails at once with this message."""


def source_name(path: str) -> str:
    """``us/wy/park`` for ``sources/us/wy/park.json``."""
    name = path[len("sources/") :] if path.startswith("sources/") else path
    return name[: -len(".json")] if name.endswith(".json") else name


def worker_id() -> str:
    """``hostname/pid`` of this process (``runs.worker_id``)."""
    return f"{socket.gethostname()}/{os.getpid()}"[:64]


def check_source_path(path: str) -> str:
    """``path`` when it is a source file path, ``sources/….json`` without empty, ``.`` or ``..`` segments.

    :raises TriggerError: it is not
    """
    # Split by hand: PurePosixPath would hide "//" and "." segments, which become odd storage keys.
    parts = path.split("/")
    if (
        len(parts) < 2
        or parts[0] != "sources"
        or not path.endswith(".json")
        or any(part in ("", ".", "..") for part in parts)
        or "\\" in path
    ):
        raise TriggerError(f"not a source file path: {path!r} (expected sources/….json)")
    return path


def entry_size(data: Mapping[str, Any]) -> str:
    """The resource tier of a layer entry: :data:`LARGE` when its ``conform.size`` says so, else :data:`STANDARD`."""
    conform = data.get("conform")
    size = conform.get("size") if isinstance(conform, dict) else None
    return LARGE if isinstance(size, str) and size.strip().lower() == LARGE else STANDARD

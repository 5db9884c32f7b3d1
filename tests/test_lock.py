"""requirements.lock is the working set: it pins every dependency pyproject.toml names, and the installed
environment is exactly it (style guide point 19)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from typing import TYPE_CHECKING

from tests.conftest import ROOT

if TYPE_CHECKING:
    from pathlib import Path

_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(path: Path | None = None) -> list[tuple[str, str, list[str]]]:
    """(name, version, sha256 hashes) of every pin of ``path`` (default: requirements.lock), in the format uv's
    `pip compile --generate-hashes` writes."""
    pins: list[tuple[str, str, list[str]]] = []
    for line in (path or ROOT / "requirements.lock").read_text().splitlines():
        if match := _PIN.match(line):
            pins.append((normalise(match.group(1)), match.group(2), []))
        elif line.strip().startswith("--hash=sha256:"):
            pins[-1][2].append(line.strip().removeprefix("--hash=sha256:").rstrip(" \\"))
    return pins


def lock() -> dict[str, str]:
    return {name: version for name, version, _ in entries()}


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = list(project["project"]["dependencies"])
    for group in project["dependency-groups"].values():
        requirements += [item for item in group if isinstance(item, str)]
    return {normalise(_NAME.match(item).group(1)) for item in requirements}


def test_every_declared_dependency_is_pinned() -> None:
    missing = sorted(declared() - set(lock()))
    assert not missing, f"not in requirements.lock (run make lock): {missing}"


def test_every_pin_carries_its_hashes() -> None:
    # make test installs with pip's --require-hashes: a pin without a hash would fail there, one with a malformed
    # hash would only fail on the machine that downloads that file.
    bad = [name for name, _, hashes in entries() if not hashes or any(len(h) != 64 for h in hashes)]
    assert len(lock()) > 100
    assert not bad, f"pins without valid sha256 hashes: {bad}"


def test_the_environment_is_the_lock() -> None:
    wrong = {}
    for name, version in lock().items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong[name] = (version, installed)
    assert not wrong, f"installed versions differ from requirements.lock (locked, installed): {wrong}"


def test_celery_stays_below_5_7() -> None:
    # celery 5.7 removed celery.backends.database.retry, which the celery provider imports (airflow.md).
    major, minor = (int(part) for part in lock()["celery"].split(".")[:2])
    assert (major, minor) < (5, 7)

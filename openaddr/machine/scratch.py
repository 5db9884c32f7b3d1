"""Work folders of the Machine's tasks inside the scratch folder: locked while in use, removed on every exit, and
swept at the next start when a killed task left one behind (issue 10, point 3).

Each work folder ``<scratch>/run-<id>/`` has a lock file beside it, ``<scratch>/run-<id>.lock``, held with
``flock`` by the process that uses the folder. The kernel drops the lock when that process dies, however it dies
(SIGKILL, out of memory, a lost host), so a folder whose lock can be taken has no live owner and can be removed.
Lock files are unlinked by whoever holds them; after taking a lock, the holder checks that the path still names
the same file, so that two processes never believe they hold one lock (the usual recipe for unlinked lock files).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

log = logging.getLogger(__name__)

#: Name prefix of the work folders (and their lock files) in the scratch folder.
WORK_PREFIX = "run-"
LOCK_SUFFIX = ".lock"


class WorkFolderBusy(RuntimeError):
    """Another live process uses the work folder (e.g. an earlier attempt of the same task still running)."""


def _take_lock(path: Path) -> int | None:
    """An open descriptor of the lock file ``path``, locked exclusively, or None when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # unlinked by its previous holder meanwhile: take the new one


def _release(path: Path, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)


def sweep(scratch: Path) -> list[str]:
    """Remove the work folders (and lock files) of ``scratch`` that no live process holds.

    :return: the names of the folders removed
    """
    if not scratch.is_dir():
        return []
    names = {
        entry.name.removesuffix(LOCK_SUFFIX)
        for entry in scratch.iterdir()
        if entry.name.startswith(WORK_PREFIX) and not entry.is_symlink()
    }
    swept = []
    for name in sorted(names):
        lock = scratch / f"{name}{LOCK_SUFFIX}"
        fd = _take_lock(lock)
        if fd is None:
            continue  # in use
        try:
            folder = scratch / name
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
                swept.append(name)
        finally:
            _release(lock, fd)
    if swept:
        log.warning("Removed %d work folders left by killed tasks in %s: %s", len(swept), scratch, swept)
    return swept


@contextlib.contextmanager
def work_folder(scratch: Path, name: str) -> Iterator[Path]:
    """A fresh, empty work folder ``<scratch>/<name>`` for this process, removed when the block ends; folders that
    killed tasks left in ``scratch`` are swept first.

    :param name: ``run-<id>``
    :raises WorkFolderBusy: another live process holds the folder
    """
    if not name.startswith(WORK_PREFIX) or "/" in name or name in (WORK_PREFIX,):
        raise ValueError(f"not a work folder name: {name!r}")
    scratch.mkdir(parents=True, exist_ok=True)
    sweep(scratch)
    lock = scratch / f"{name}{LOCK_SUFFIX}"
    fd = _take_lock(lock)
    if fd is None:
        raise WorkFolderBusy(f"work folder {scratch / name} is in use by another process")
    folder = scratch / name
    try:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _release(lock, fd)

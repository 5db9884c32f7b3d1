"""The fake GitHub of ``devstack/fake_github.py`` as pytest fixtures.

Fixtures (load with ``pytest_plugins = ["tests.github_server"]``):

* ``github_server`` (session): a :class:`FakeGitHub` on ``127.0.0.1``; its :attr:`~FakeGitHub.base_url` is what a
  client takes as ``base_url`` (every URL it answers with is absolute on that origin, as GitHub's are);
* ``fake_github``: the same server, :meth:`~FakeGitHub.reset` before the test, so no test sees another's
  repositories, statuses or knobs.

Its endpoints and knobs are described in :mod:`devstack.fake_github`; the names tests import are re-exported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from devstack.fake_github import (
    CONTENTS_LIMIT,
    MAXIMUM_STATUSES,
    STATES,
    FakeGitHub,
    FakeRepository,
    GitHubRequest,
    git_blob_sha,
    pull_json,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "CONTENTS_LIMIT",
    "MAXIMUM_STATUSES",
    "STATES",
    "FakeGitHub",
    "FakeRepository",
    "GitHubRequest",
    "fake_github",
    "git_blob_sha",
    "github_server",
    "pull_json",
]


@pytest.fixture(scope="session")
def github_server() -> Iterator[FakeGitHub]:
    """The fake GitHub for the whole session (use ``fake_github`` for a clean one)."""
    server = FakeGitHub()
    yield server
    server.close()


@pytest.fixture
def fake_github(github_server: FakeGitHub) -> Iterator[FakeGitHub]:
    """The fake GitHub, emptied for this test."""
    github_server.reset()
    yield github_server
    github_server.reset()

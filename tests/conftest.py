"""Shared fixtures: where the read-only reference material lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("OPENADDR_SHARED", ROOT.parent / "shared")).resolve()
CORPUS = SHARED / "corpus"
FIXTURES = SHARED / "fixtures" / "machine"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The read-only ``../shared`` folder (never write into it)."""
    if not SHARED.is_dir():
        pytest.fail(f"reference material not found at {SHARED}; set OPENADDR_SHARED")
    return SHARED


@pytest.fixture(scope="session")
def corpus_sources(shared: Path) -> Path:
    """The folder of the real public source files."""
    return shared / "corpus" / "sources"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """The original Machine's real data excerpts."""
    return FIXTURES


pytest_plugins = ["tests.servers", "tests.db_fixtures", "tests.s3_server"]

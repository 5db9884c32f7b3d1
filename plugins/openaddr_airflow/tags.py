"""The one vocabulary of DAG tags (style guide point 15); a test enforces it."""

from __future__ import annotations

from enum import StrEnum


class Tag(StrEnum):
    """DAG tags, namespaced ``<facet>/<value>``."""

    KIND_CI = "kind/ci"
    KIND_BATCH = "kind/batch"
    KIND_COLLECT = "kind/collect"
    KIND_MAINTENANCE = "kind/maintenance"
    TIER_1 = "tier/1"
    TIER_2 = "tier/2"
    DATA_SOURCES = "data/sources"

"""Zips: ``format``, the kind of file a collection is: ``zip`` (the CSV address collections of machine-ci.md §8),
``geojsonl`` (zipped line-delimited GeoJSON, §8 "Addition") or ``parquet`` (GeoParquet, issue 13).

Existing rows get ``geojsonl`` when they have a ``layer`` (only the GeoJSON collections had one), else ``zip``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_FORMATS = ("zip", "geojsonl", "parquet")


def upgrade() -> None:
    """Add ``zips.format`` (not null, default ``zip``, one of the three) and fill it for existing rows.

    Batch mode: SQLite rebuilds the table to add the CHECK constraint.
    """
    quoted = ", ".join(f"'{value}'" for value in _FORMATS)
    with op.batch_alter_table("zips") as batch:
        batch.add_column(sa.Column("format", sa.Text(), nullable=False, server_default="zip"))
        batch.create_check_constraint("ck_zips_format", f"format IN ({quoted})")
    zips = sa.table("zips", sa.column("layer", sa.Text()), sa.column("format", sa.Text()))
    op.execute(sa.update(zips).where(zips.c.layer.is_not(None)).values(format="geojsonl"))


def downgrade() -> None:
    """Drop ``zips.format``; the GeoParquet rows go first (without it they would pass for GeoJSON collections)."""
    zips = sa.table("zips", sa.column("format", sa.Text()))
    op.execute(sa.delete(zips).where(zips.c.format == "parquet"))
    with op.batch_alter_table("zips") as batch:
        batch.drop_constraint("ck_zips_format", type_="check")
        batch.drop_column("format")

"""A Parquet file written in parts and stitched (:mod:`openaddr.collect.parquet_parts`): the same bytes as one
writer's file, read back by pyarrow and DuckDB, with a collection file's schema and options."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openaddr.collect.geoparquet import ADDRESS_ATTRIBUTES, _bbox, file_schema, geo_metadata, point_wkb
from openaddr.collect.parquet_parts import (
    ParquetFooterError,
    PartedParquetWriter,
    read_footer,
    write_struct,
)

if TYPE_CHECKING:
    from pathlib import Path

OPTIONS = {
    "compression": "zstd",
    "use_dictionary": ["source_path", "source_layer", "layer_name", "run_id", "street", "city"],
    "write_statistics": ["source_path", "run_id", "bbox.xmin", "bbox.ymin", "bbox.xmax", "bbox.ymax"],
    "store_schema": True,
}


def _table(rows: int, seed: int = 0) -> pa.Table:
    """Address rows in a collection file's schema, with its ``geo`` metadata."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(-123, -121, rows), rng.uniform(37, 38, rows)
    schema = file_schema("addresses").with_metadata(
        {"geo": json.dumps(geo_metadata(["Point"], [-123, 37, -121, 38]))}
    )
    attributes = [pa.array([f"{name}-{i % 53}" for i in range(rows)]) for name in ADDRESS_ATTRIBUTES]
    return pa.Table.from_arrays(
        [
            pa.array(["sources/us/ca/alameda.json"] * rows),
            pa.array(["addresses"] * rows),
            pa.array(["primary"] * rows),
            pa.array(rng.integers(1, 5, rows)),
            *attributes,
            point_wkb(x, y),
            _bbox(x, y, x, y),
        ],
        schema=schema,
    )


def _write(path: Path, table: pa.Table, group: int, parts: int | None) -> None:
    """``table`` in row groups of ``group`` rows, a ``write_table`` call each, by one ParquetWriter (``parts``
    None) or in parts of ``parts`` row groups."""
    writer = (
        pq.ParquetWriter(path, table.schema, **OPTIONS)
        if parts is None
        else PartedParquetWriter(path, table.schema, part_row_groups=parts, **OPTIONS)
    )
    for start in range(0, table.num_rows, group):
        writer.write_table(table.slice(start, group), group)
    writer.close()


def test_a_footer_is_written_back_byte_for_byte(tmp_path: Path) -> None:
    """pyarrow's own footer, read and written again unchanged, gives the same bytes: every field passes through."""
    path = tmp_path / "one.parquet"
    _write(path, _table(3000), 400, None)
    metadata, start = read_footer(path)
    out = bytearray()
    write_struct(out, metadata)
    assert bytes(out) == path.read_bytes()[start:-8]


@pytest.mark.parametrize(
    ("rows", "group", "parts"),
    [(3000, 400, 1), (3000, 400, 2), (3000, 400, 3), (3000, 700, 100), (10, 4, 1), (0, 4, 2)],
)
def test_a_parted_file_is_one_writers_file(tmp_path: Path, rows: int, group: int, parts: int) -> None:
    """Written in parts of 1, 2, 3 or more row groups than there are, or with no rows at all, the file has the
    same bytes as one ParquetWriter's, and nothing is left beside it."""
    table = _table(rows)
    _write(tmp_path / "one.parquet", table, group, None)
    _write(tmp_path / "parted.parquet", table, group, parts)
    assert (tmp_path / "parted.parquet").read_bytes() == (tmp_path / "one.parquet").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.parquet", "parted.parquet"]
    back = pq.read_table(tmp_path / "parted.parquet")
    assert back.equals(table, check_metadata=True)
    assert pq.ParquetFile(tmp_path / "parted.parquet").metadata.num_row_groups == -(-rows // group)


def test_duckdb_reads_a_parted_file_by_its_row_group_statistics(tmp_path: Path) -> None:
    """DuckDB filters the stitched file on ``bbox`` and counts as pyarrow does (its offsets are the file's)."""
    import duckdb

    table = _table(5000, seed=3)
    path = tmp_path / "parted.parquet"
    _write(path, table.sort_by([("run_id", "ascending")]), 500, 2)
    got = duckdb.sql(f"SELECT count(*), sum(run_id) FROM '{path}' WHERE bbox.xmin > -122.0").fetchall()
    xmin = table.column("bbox").combine_chunks().field("xmin").to_numpy()
    run_ids = table.column("run_id").to_numpy()
    assert got == [(int((xmin > -122.0).sum()), int(run_ids[xmin > -122.0].sum()))]


def test_discard_leaves_nothing_and_a_closed_file_takes_no_rows(tmp_path: Path) -> None:
    table = _table(900)
    writer = PartedParquetWriter(tmp_path / "x.parquet", table.schema, part_row_groups=1, **OPTIONS)
    writer.write_table(table.slice(0, 400), 400)
    writer.write_table(table.slice(400, 400), 400)  # a part stitched, a new one open
    writer.discard()
    assert list(tmp_path.iterdir()) == []
    writer = PartedParquetWriter(tmp_path / "y.parquet", table.schema, **OPTIONS)
    writer.close()
    writer.close()  # a second close does nothing
    with pytest.raises(ValueError, match=r"y\.parquet is closed"):
        writer.write_table(table, 400)
    assert pq.read_table(tmp_path / "y.parquet").num_rows == 0


def test_a_footer_that_is_not_parquet_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 20 + b"NOPE")
    with pytest.raises(ParquetFooterError, match=r"bad\.parquet: no Parquet magic"):
        read_footer(path)

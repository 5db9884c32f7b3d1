"""The bundled demo that ``make run`` conforms."""

from __future__ import annotations

import csv
import zipfile
from typing import TYPE_CHECKING

from openaddr.demo import DEMO, run_demo

if TYPE_CHECKING:
    from pathlib import Path


def test_demo_conforms_the_bundled_source(tmp_path: Path):
    assert run_demo(tmp_path) == 0
    out = tmp_path / "park" / "addresses" / "county"
    with (out / "out.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # The bundled shapefile's DBF holds 346 records (its header says so; read with the stdlib only).
    with zipfile.ZipFile(DEMO / "data" / "park.zip") as zf:
        dbf = zf.read("ParkCountyADDRESS_POINTS_point.dbf")
    assert len(rows) == int.from_bytes(dbf[4:8], "little") == 346
    assert all(r["LON"] and r["LAT"] for r in rows)

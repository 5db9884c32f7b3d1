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
    # …and the run is recorded in the Machine database, successful, with its state.
    from openaddr.db import make_engine
    from openaddr.db.runs import get_run

    run = get_run(make_engine(f"sqlite:///{tmp_path / 'machine.db'}"), 1)
    assert run is not None
    assert (run["source_path"], run["source_layer"], run["layer_name"]) == (
        "sources/us/wy/park.json",
        "addresses",
        "county",
    )
    assert run["status"] is True
    assert run["state"]["address count"] == 346

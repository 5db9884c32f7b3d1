"""The transformation to EPSG:4326 of every CRS of the corpus and the fixtures, against a committed baseline.

``tests/data/proj_baseline.json`` records, for each ``srs`` of the corpus and fixture sources and each CRS of a
fixture shapefile (``.prj``, loose or zipped) or file geodatabase, the operation PROJ uses here, its accuracy and the
grids that a better one would need. The test fails when a CRS gets a less accurate operation than recorded (a grid
lost, a PROJ upgrade) or when the corpus gains a CRS the baseline does not list. To record a change on purpose::

    OPENADDR_SHARED=../shared .venv/bin/python -m tests.openaddr.test_reprojection
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import pyogrio
import pyproj
import pytest
from pyproj.transformer import TransformerGroup

from openaddr.cli import main
from openaddr.readers.projection import (
    GRIDS_DIR,
    describe_reprojection,
    report_reprojection,
    transformer_to_wgs84,
)
from openaddr.readers.reader import crs_from_user_input, parse_srs
from tests.conftest import CORPUS, FIXTURES, SHARED

BASELINE = Path(__file__).resolve().parent.parent / "data" / "proj_baseline.json"
LABEL = "test addresses/primary"


def _srs_values(document: Any) -> list[Any]:
    if isinstance(document, dict):
        found = [v for k, v in document.items() if k == "srs"]
        return found + [s for k, v in document.items() if k != "srs" for s in _srs_values(v)]
    if isinstance(document, list):
        return [s for v in document for s in _srs_values(v)]
    return []


def _source_crss() -> dict[str, pyproj.CRS]:
    """Every ``srs`` of the corpus and fixture sources, resolved as the readers resolve it."""
    found: dict[str, pyproj.CRS] = {}
    for root in (CORPUS / "sources", FIXTURES / "sources"):
        for path in sorted(root.rglob("*.json")):
            try:
                document = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue  # the broken-source fixtures
            for value in _srs_values(document):
                crs = parse_srs(value, str(path), allow_integer=True)
                found.setdefault(f"EPSG:{crs.to_epsg()}", crs)
    return found


def _gdal_crss(path: str, label: str) -> dict[str, pyproj.CRS]:
    """The CRS GDAL reads for each layer of a dataset that has one, keyed ``label`` or ``label:layer``."""
    layers = [str(name) for name, _ in pyogrio.list_layers(path)]
    found: dict[str, pyproj.CRS] = {}
    for layer in layers:
        info = pyogrio.read_info(path, layer=layer)
        if info.get("crs"):
            key = label if len(layers) == 1 else f"{label}:{layer}"
            found[key] = crs_from_user_input(str(info["crs"]), label)
    return found


def _zipped_shapefile(archive: zipfile.ZipFile, prj: str, target: Path) -> Path:
    """The shapefile of a zipped ``.prj``, extracted with lower-case extensions as the readers link them."""
    stem = prj[:-4]
    target.mkdir()
    for name in archive.namelist():
        suffix = name[len(stem) :].lower()
        if name[: len(stem)] == stem and suffix in (".shp", ".shx", ".dbf", ".prj"):
            (target / f"layer{suffix}").write_bytes(archive.read(name))
    return target / "layer.shp"


def _fixture_file_crss(work: Path) -> dict[str, pyproj.CRS]:
    """The CRS GDAL reads from each fixture shapefile and geodatabase, keyed by its path below ``shared/``."""
    found: dict[str, pyproj.CRS] = {}
    for path in sorted(FIXTURES.rglob("*")):
        key = str(path.relative_to(SHARED))
        if path.suffix.lower() == ".prj":
            shp = path.with_suffix(".shp")
            if shp.exists():
                found.update(_gdal_crss(str(shp), key))
            else:
                found[key] = crs_from_user_input(path.read_text(encoding="latin-1"), key)
        elif path.suffix.lower() == ".gdb" and path.is_dir():
            found.update(_gdal_crss(str(path), key))
        elif path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                for name in names:
                    if name.lower().endswith(".prj"):
                        shp = _zipped_shapefile(archive, name, work / str(len(found)))
                        member = f"{key}!{name}"
                        if shp.exists():
                            found.update(_gdal_crss(str(shp), member))
                        else:
                            found[member] = crs_from_user_input(archive.read(name).decode("latin-1"), member)
            gdbs = sorted({n[: n.lower().index(".gdb/") + 4] for n in names if ".gdb/" in n.lower()})
            for gdb in gdbs:
                found.update(_gdal_crss(f"/vsizip/{path}/{gdb}", f"{key}!{gdb}"))
    return found


def current_listing() -> dict[str, dict[str, Any]]:
    """Every CRS of the corpus and the fixtures with the operation to EPSG:4326 it gets here."""
    with tempfile.TemporaryDirectory(prefix="proj-listing-") as work:
        crss = {**_source_crss(), **_fixture_file_crss(Path(work))}
    listing: dict[str, dict[str, Any]] = {}
    for key, crs in sorted(crss.items()):
        described = describe_reprojection(crs)
        listing[key] = {
            "crs": described.crs,
            "name": crs.name,
            "operation": described.operation,
            "accuracy": described.accuracy,
            "grids": list(described.grids),
            "missing grids": [m.grid for m in described.missing],
        }
    return listing


def _rank(accuracy: float | None) -> float:
    return math.inf if accuracy is None else accuracy


@pytest.fixture(scope="module")
def listing(shared: Path) -> dict[str, dict[str, Any]]:
    return current_listing()


def test_every_crs_of_the_corpus_and_fixtures_is_in_the_baseline(listing: dict[str, dict[str, Any]]) -> None:
    baseline = json.loads(BASELINE.read_text(encoding="utf-8"))
    assert sorted(set(listing) - set(baseline)) == [], f"not in {BASELINE.name}: record with {__doc__}"
    assert sorted(set(baseline) - set(listing)) == [], f"no longer in the corpus: record with {__doc__}"


def test_no_crs_gets_a_worse_operation_than_recorded(listing: dict[str, dict[str, Any]]) -> None:
    baseline = json.loads(BASELINE.read_text(encoding="utf-8"))
    worse = [
        f"{key}: {now['operation']} ({now['accuracy']} m), recorded {baseline[key]['operation']} "
        f"({baseline[key]['accuracy']} m); missing now {now['missing grids']}"
        for key, now in listing.items()
        if key in baseline and _rank(now["accuracy"]) > _rank(baseline[key]["accuracy"])
    ]
    assert worse == []


def test_the_listing_names_what_the_issue_reported(listing: dict[str, dict[str, Any]]) -> None:
    # Berlin's fixture gets the BeTA2007 grid (1 m) instead of the 2 m Helmert shift.
    berlin = listing["EPSG:3068"]
    assert (berlin["accuracy"], berlin["grids"], berlin["missing grids"]) == (1.0, ["BETA2007.gsb"], [])
    assert "DHDN to WGS 84 (4)" in berlin["operation"]
    # Where the grid is not to be had, the listing names it and the 4 m operation used.
    assert "us_noaa_vahpgn.tif" in listing["EPSG:2284"]["missing grids"]
    assert "us_noaa_wyhpgn.tif" in listing["EPSG:3738"]["missing grids"]
    assert "ca_nrc_NA83SCRS.tif" in listing["EPSG:3347"]["missing grids"]
    assert {listing[k]["accuracy"] for k in ("EPSG:2284", "EPSG:3738", "EPSG:3347")} == {4.0}


def test_every_shipped_grid_has_its_origin_and_licence_recorded() -> None:
    notice = (GRIDS_DIR / "NOTICE.md").read_text(encoding="utf-8")
    grids = sorted(p.name for p in GRIDS_DIR.iterdir() if p.name != "NOTICE.md")
    assert grids == ["BETA2007.gsb"]
    for name in grids:
        assert f"`{name}` ({(GRIDS_DIR / name).stat().st_size:,} bytes" in notice


def test_a_ballpark_operation_is_reported_as_of_unknown_accuracy(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="openaddr")
    transformer, described = transformer_to_wgs84(parse_srs("EPSG:10288", LABEL), LABEL)
    assert transformer is not None
    assert described is not None
    assert (described.accuracy, described.degraded) == (None, True)
    final = report_reprojection(described, [8.5, 50.0, 8.8, 50.2], LABEL)  # Frankfurt am Main uses it
    assert final is not None
    assert (final.accuracy, final.extent) == (None, (8.5, 50.0, 8.8, 50.2))
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING"]
    assert "unknown accuracy" in caplog.records[1].getMessage()
    assert "Ballpark" in caplog.records[1].getMessage()


def test_an_entry_without_valid_coordinates_is_described_over_the_crs_area() -> None:
    _, described = transformer_to_wgs84(parse_srs("EPSG:3347", LABEL), LABEL)
    assert report_reprojection(described, None, LABEL) is described
    assert report_reprojection(None, [0, 0, 1, 1], LABEL) is None


def test_wgs84_needs_no_transformer() -> None:
    assert transformer_to_wgs84(parse_srs("EPSG:4326", LABEL), LABEL) == (None, None)


def _conform(shared: Path, tmp_path: Path, source: str, data: str) -> tuple[Path, list[dict[str, str]]]:
    copy = tmp_path / Path(data).name
    shutil.copy(shared / "fixtures" / "machine" / "data" / data, copy)
    out = tmp_path / "out"
    source_path = shared / "fixtures" / "machine" / "sources" / source
    assert main(["conform", str(source_path), str(copy), "--layer", "addresses", "--out", str(out)]) == 0
    with (out / "out.csv").open(encoding="utf-8", newline="") as fh:
        return out, list(csv.DictReader(fh))


def test_berlin_is_conformed_with_the_beta2007_grid(shared: Path, tmp_path: Path) -> None:
    out, rows = _conform(shared, tmp_path, "de/berlin.json", "de-berlin-excerpt.zip")
    stats = json.loads((out / "stats.json").read_text())
    assert stats["reprojection"]["grids"] == ["BETA2007.gsb"]
    assert (stats["reprojection"]["accuracy"], stats["reprojection"]["missing grids"]) == (1.0, [])
    log = (out / "output.txt").read_text()
    final = next(
        line for line in log.splitlines() if "Reprojecting EPSG:3068 to EPSG:4326 over the extent" in line
    )
    assert " INFO: " in final
    assert "(accuracy 1 m, grid BETA2007.gsb)" in final
    assert "missing grid" not in log

    # The first row against the grid operation alone, and against the Helmert shift used without the grid.
    with zipfile.ZipFile(tmp_path / "de-berlin-excerpt.zip") as archive:
        name = next(n for n in archive.namelist() if n.endswith(".txt"))
        text = archive.read(name).decode("iso8859-1")
    conform = json.loads((shared / "fixtures/machine/sources/de/berlin.json").read_text())["conform"]
    first = next(csv.DictReader(text.splitlines(), delimiter=conform.get("csvsplit", ",")))
    x, y = float(first[conform["lon"]].replace(",", ".")), float(first[conform["lat"]].replace(",", "."))

    def through(operation: str) -> tuple[float, float]:
        group = TransformerGroup("EPSG:3068", "EPSG:4326", always_xy=True)
        chosen = next(t for t in group.transformers if operation in t.description)
        return chosen.transform(x, y)

    grid, helmert = through("DHDN to WGS 84 (4)"), through("DHDN to WGS 84 (3)")
    got = float(rows[0]["LON"]), float(rows[0]["LAT"])
    assert got == pytest.approx(grid, abs=5e-8)  # out.csv has 7 decimals
    shift = pyproj.Geod(ellps="WGS84").inv(*helmert, *got)[2]
    assert shift > 0.1, shift  # metres: the two operations differ measurably here


def test_a_missing_grid_is_named_in_the_log_and_the_stats(shared: Path, tmp_path: Path) -> None:
    out, _ = _conform(shared, tmp_path, "us/oh/trumbull.json", "TRU_ADDS-excerpt.zip")
    stats = json.loads((out / "stats.json").read_text())
    reprojection = stats["reprojection"]
    assert (reprojection["crs"], reprojection["accuracy"], reprojection["extent"]) == (
        "EPSG:3734",
        4.0,
        stats["bounds"],
    )
    # Over Ohio North's whole area five state grids would do better; over Trumbull County's points, Ohio's.
    assert [(m["grid"], m["accuracy"]) for m in reprojection["missing grids"]] == [
        ("us_noaa_ohhpgn.tif", 2.0)
    ]
    lines = [line for line in (out / "output.txt").read_text().splitlines() if "Reprojecting" in line]
    assert len(lines) == 2
    assert " INFO: " in lines[0]
    assert "us_noaa_inhpgn.tif" in lines[0]
    assert " WARNING: " in lines[1]
    assert "(accuracy 4 m)" in lines[1]
    assert "missing grids us_noaa_ohhpgn.tif (2 m)" in lines[1]


if __name__ == "__main__":
    if not SHARED.is_dir():
        sys.exit(f"reference material not found at {SHARED}; set OPENADDR_SHARED")
    BASELINE.parent.mkdir(exist_ok=True)
    BASELINE.write_text(json.dumps(current_listing(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {BASELINE}")

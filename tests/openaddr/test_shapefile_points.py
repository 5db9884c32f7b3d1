"""Point shapefiles read from their records, attributes from the ``.dbf`` alone: the same batches as GDAL's own
reading of the layer, on the real fixtures; anything else is left to GDAL."""

from __future__ import annotations

import shutil
import struct
import zipfile
from typing import TYPE_CHECKING

import numpy as np
import pyogrio
import pytest

from openaddr.errors import ConformError
from openaddr.readers.archives import lowercase_extension, remove_paths
from openaddr.readers.gdal import GdalReader
from openaddr.readers.sample import _gdal_rows, gdal_sample
from openaddr.readers.shapefile_points import PointRecords

if TYPE_CHECKING:
    from pathlib import Path

    from openaddr.readers.base import Batch

LABEL = "test/addresses/primary"
POINT_SHAPEFILES = [
    "conforms/lake-man.shp",
    "conforms/lake-man-epsg26943.shp",
    "us-wy-park.zip/ParkCountyADDRESS_POINTS_point.shp",
    "us-ut-excerpt.zip/AddressPoints/AddressPoints.shp",
    "us-ca-alameda_county-excerpt-mixedcase.zip/SPAD.Shp",
]


def shapefile(fixtures: Path, tmp_path: Path, name: str) -> Path:
    """A private copy of a fixture shapefile (its folder), unzipped when it comes in a zip."""
    archive, _, member = name.partition(".zip/")
    if member:
        with zipfile.ZipFile(fixtures / "data" / f"{archive}.zip") as z:
            z.extractall(tmp_path / "data")
        return tmp_path / "data" / member
    source = fixtures / name
    for sibling in source.parent.glob(f"{source.stem}.*"):
        shutil.copy(sibling, tmp_path / sibling.name)
    return tmp_path / source.name


def read(
    path: Path,
    *,
    point_records: bool,
    skip: int = 0,
    limit: int | None = None,
    conform: dict[str, str] | None = None,
) -> tuple[bool, list[Batch]]:
    with GdalReader(
        path,
        conform or {"format": "shapefile"},
        layer_type="addresses",
        label=LABEL,
        point_records=point_records,
    ) as reader:
        if limit is not None:
            reader.restrict(skip, limit)
        used = reader._points is not None
        return used, list(reader.batches(batch_size=50))


def same_batches(left: list[Batch], right: list[Batch]) -> None:
    assert [b.size for b in left] == [b.size for b in right]
    for a, b in zip(left, right, strict=True):
        assert a.columns == b.columns
        assert a.xy is not None
        assert b.xy is not None
        np.testing.assert_array_equal(a.xy[0], b.xy[0])
        np.testing.assert_array_equal(a.xy[1], b.xy[1])


@pytest.mark.parametrize("name", POINT_SHAPEFILES)
def test_point_records_read_exactly_what_gdal_reads(fixtures: Path, tmp_path: Path, name: str) -> None:
    path = shapefile(fixtures, tmp_path, name)
    used, fast = read(path, point_records=True)
    plain_used, plain = read(path, point_records=False)
    assert used
    assert not plain_used
    same_batches(fast, plain)
    # A slice of the layer, as a worker reads it.
    count = sum(b.size for b in plain)
    skip, limit = count // 3, max(1, count // 3)
    same_batches(
        read(path, point_records=True, skip=skip, limit=limit)[1],
        read(path, point_records=False, skip=skip, limit=limit)[1],
    )


@pytest.mark.parametrize("name", POINT_SHAPEFILES)
def test_the_layer_is_described_as_gdal_describes_it(fixtures: Path, tmp_path: Path, name: str) -> None:
    """Fields, count, encoding and CRS come from the .dbf and the .prj, never from GDAL opening the .shp."""
    path = shapefile(fixtures, tmp_path, name)
    opened, links = lowercase_extension(path)
    try:
        gdal = pyogrio.read_info(opened)
        records = PointRecords.open(opened)
        assert records is not None
        try:
            assert list(records.info["fields"]) == list(gdal["fields"])
            assert records.info["features"] == gdal["features"] == records.count
            assert records.info["encoding"] == gdal["encoding"]
            assert records.info["crs"] == gdal["crs"]
            assert records.info["geometry_type"] == gdal["geometry_type"] == "Point"
        finally:
            records.close()
    finally:
        remove_paths([links])


def test_without_a_prj_the_source_srs_is_needed(fixtures: Path, tmp_path: Path) -> None:
    path = shapefile(fixtures, tmp_path, POINT_SHAPEFILES[0])
    path.with_suffix(".prj").unlink()
    with pytest.raises(ConformError, match="No projection found"):
        GdalReader(path, {"format": "shapefile"}, layer_type="addresses", label=LABEL)
    used, fast = read(path, point_records=True, conform={"format": "shapefile", "srs": "EPSG:4326"})
    _, plain = read(path, point_records=False, conform={"format": "shapefile", "srs": "EPSG:4326"})
    assert used
    same_batches(fast, plain)


def test_a_deleted_dbf_record_is_skipped_in_step_with_its_point(fixtures: Path, tmp_path: Path) -> None:
    path = shapefile(fixtures, tmp_path, POINT_SHAPEFILES[2])
    dbf = path.with_suffix(".dbf")
    data = bytearray(dbf.read_bytes())
    header_length, record_length = struct.unpack("<HH", data[8:12])
    data[header_length + 5 * record_length] = ord("*")  # the sixth record, marked deleted
    dbf.write_bytes(bytes(data))

    used, fast = read(path, point_records=True)
    _, plain = read(path, point_records=False)

    assert used
    assert sum(b.size for b in plain) == 345
    same_batches(fast, plain)


def test_a_null_shape_leaves_the_file_to_gdal(fixtures: Path, tmp_path: Path) -> None:
    import fiona

    source = shapefile(fixtures, tmp_path, POINT_SHAPEFILES[2])
    target = tmp_path / "with-null" / "points.shp"
    target.parent.mkdir()
    with fiona.open(source) as layer:
        features = list(layer)
        with fiona.open(target, "w", **layer.meta) as out:
            for index, feature in enumerate(features):
                out.write(
                    fiona.Feature(
                        geometry=None if index == 3 else feature.geometry, properties=feature.properties
                    )
                )

    assert PointRecords.open(target) is None
    used, batches = read(target, point_records=True)
    assert not used
    assert sum(b.size for b in batches) == len(features)
    assert np.isnan(batches[0].xy[0][3])


def test_polygons_and_other_layers_are_left_to_gdal(fixtures: Path, tmp_path: Path) -> None:
    path = shapefile(fixtures, tmp_path, "us-ca-berkeley-excerpt.zip/Parcels.shp")
    assert PointRecords.open(path) is None
    with GdalReader(path, {"format": "shapefile"}, layer_type="parcels", label=LABEL) as reader:
        assert reader._points is None


def test_the_temporary_dbf_folder_is_removed(fixtures: Path, tmp_path: Path) -> None:
    path = shapefile(fixtures, tmp_path, POINT_SHAPEFILES[0])
    with GdalReader(path, {"format": "shapefile"}, layer_type="addresses", label=LABEL) as reader:
        assert reader._points is not None
        folder = reader._points.folder
        assert (folder / "attributes.dbf").exists()
    assert not folder.exists()


@pytest.mark.parametrize("name", POINT_SHAPEFILES)
def test_the_sample_comes_from_the_dbf_alone_as_gdal_reads_the_layer(
    fixtures: Path, tmp_path: Path, name: str
) -> None:
    path = shapefile(fixtures, tmp_path, name)
    opened, links = lowercase_extension(path)
    try:
        info = pyogrio.read_info(opened)
        decode = None if info["encoding"] == "UTF-8" else "iso8859-1"
        expected = _gdal_rows(opened, 0, {}, 10, decode)
    finally:
        remove_paths([links])
    rows, geometry_type = gdal_sample(path, {"format": "shapefile"}, LABEL, 10)
    assert (rows, geometry_type) == expected
    assert geometry_type == "Point"
    assert len(rows) == 1 + min(10, info["features"])

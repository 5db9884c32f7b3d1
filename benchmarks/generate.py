"""Generate synthetic address points for the conform benchmark.

Writes, into one folder (default ``bench-out/data-<rows>/``), the same N address points twice:

* ``addresses.shp`` (+ ``.shx``, ``.dbf``, ``.prj``, ``.cpg``) in EPSG:26943 (NAD83 / California zone 3, metres);
* ``addresses.csv`` in EPSG:4326 with the coordinates in ``X``/``Y`` columns.

Attribute fields look like a county address-point file: ``OBJECTID``, ``ADDRNUM`` ("123", "123A", "12 1/2"),
``PREDIR``, ``STNAME``, ``STTYPE``, ``UNIT`` (mostly empty), ``CITY``, ``ZIP`` and ``FULLADDR``
("123 N MAIN ST"). The data are deterministic for a given seed: rows are produced in fixed chunks of
``CHUNK_ROWS``, each from its own seeded generator, so the first million rows of a ten-million-row file are the
million-row file.

Everything streams: chunks are built column-wise with numpy/pyarrow compute and handed to GDAL
(``pyogrio.write_arrow`` over a ``RecordBatchReader``) and to Arrow's CSV writer, so memory stays at a few chunks
whatever ``--rows`` is.

Usage::

    python benchmarks/generate.py [--rows 1000000] [--seed 20250101] [--formats shp,csv] [OUT_DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyogrio
import pyproj

if TYPE_CHECKING:
    from collections.abc import Iterator

CHUNK_ROWS = 100_000
DEFAULT_ROWS = 1_000_000
DEFAULT_SEED = 20250101
DEFAULT_OUT = Path("bench-out")
SHAPEFILE_NAME = "addresses.shp"
CSV_NAME = "addresses.csv"
SHAPEFILE_CRS = "EPSG:26943"
#: Sidecars first, ``.shp`` last: a present ``.shp`` means a complete shapefile.
SHAPEFILE_PARTS = (".shx", ".dbf", ".prj", ".cpg", ".shp")

#: Bounding box (lon/lat) of the points: the San Francisco Bay Area, inside California zone 3.
LON_RANGE = (-122.55, -121.60)
LAT_RANGE = (37.20, 38.05)

#: DBF widths of the text fields (GDAL reads them from the Arrow field metadata ``GDAL:OGR:width``). Without them
#: the shapefile driver makes every text field 80 characters wide and a 10M-row DBF would exceed 4 GB.
TEXT_WIDTHS = {
    "ADDRNUM": 10,
    "PREDIR": 2,
    "STNAME": 32,
    "STTYPE": 4,
    "UNIT": 10,
    "CITY": 20,
    "ZIP": 5,
    "FULLADDR": 60,
}

PREDIRS = ["N", "S", "E", "W"]
PREDIR_SHARE = 0.25

_NAMED_STREETS = """
MAIN OAK PINE MAPLE CEDAR ELM WALNUT CHESTNUT SPRUCE WILLOW BIRCH SYCAMORE MAGNOLIA ACACIA EUCALYPTUS REDWOOD SEQUOIA
MADRONE LAUREL OLIVE ALMOND ORANGE LEMON CHERRY PEACH PLUM APPLE VINE IVY ROSE LILAC JASMINE POPPY LUPINE SAGE
WASHINGTON JEFFERSON LINCOLN MADISON MONROE ADAMS JACKSON GRANT HARRISON CLEVELAND TAYLOR POLK FILLMORE PIERCE
MARKET MISSION VALENCIA GUERRERO DOLORES CHURCH SANCHEZ NOE CASTRO DIAMOND FOLSOM HOWARD BRYANT HARRISON
SHATTUCK TELEGRAPH COLLEGE BANCROFT DURANT CHANNING DWIGHT ASHBY ALCATRAZ UNIVERSITY HEARST CEDAR VIRGINIA
FOOTHILL HILLSIDE LAKESHORE BAYVIEW OCEAN SUNSET SUNRISE HIGHLAND PARK CENTER UNION COMMERCIAL INDUSTRIAL
STEVENS CREEK WINCHESTER SARATOGA BASCOM MERIDIAN ALMADEN BLOSSOM HILL CAPITOL TULLY STORY KING ALUM ROCK
"""
_MULTI_WORD_STREETS = [
    "EL CAMINO REAL",
    "SAN PABLO",
    "SAN CARLOS",
    "ALAMEDA DE LAS PULGAS",
    "MARTIN LUTHER KING JR",
    "CESAR CHAVEZ",
    "JUNIPERO SERRA",
    "LA HONDA",
    "DE ANZA",
    "LOS GATOS",
    "MONTE VISTA",
    "VISTA DEL MAR",
    "CAÑADA",
    "PEÑA",
    "O'FARRELL",
    "ST JAMES",
    "MT DIABLO",
    "BROADWAY",
    "THE ALAMEDA",
    "THE EMBARCADERO",
]


def _ordinal(n: int) -> str:
    """``1`` → ``1ST``, ``12`` → ``12TH``, ``23`` → ``23RD``."""
    if 10 <= n % 100 <= 20:
        suffix = "TH"
    else:
        suffix = {1: "ST", 2: "ND", 3: "RD"}.get(n % 10, "TH")
    return f"{n}{suffix}"


STREET_NAMES = sorted(
    set(_NAMED_STREETS.split()) | set(_MULTI_WORD_STREETS) | {_ordinal(n) for n in range(1, 49)}
)
STREET_TYPES = ["ST", "AVE", "RD", "BLVD", "DR", "LN", "CT", "WAY", "PL", "TER", "CIR", "HWY", "PKWY", "ALY"]
STREET_TYPE_WEIGHTS = [30, 22, 10, 5, 10, 5, 6, 5, 3, 1, 1, 0.5, 1, 0.5]
NO_TYPE_SHARE = 0.06

#: (city, ZIP codes) pairs; a row draws one pair, so ZIP and CITY agree.
CITY_ZIPS = {
    "SAN FRANCISCO": ["94102", "94103", "94107", "94110", "94114", "94117", "94122", "94131"],
    "OAKLAND": ["94601", "94602", "94606", "94607", "94609", "94610", "94611", "94619"],
    "BERKELEY": ["94702", "94703", "94704", "94705", "94707", "94709", "94710"],
    "SAN JOSE": ["95110", "95112", "95116", "95118", "95120", "95123", "95125", "95128", "95136"],
    "FREMONT": ["94536", "94538", "94539", "94555"],
    "HAYWARD": ["94541", "94542", "94544", "94545"],
    "SUNNYVALE": ["94085", "94086", "94087", "94089"],
    "SANTA CLARA": ["95050", "95051", "95054"],
    "PALO ALTO": ["94301", "94303", "94306"],
    "MOUNTAIN VIEW": ["94040", "94041", "94043"],
    "REDWOOD CITY": ["94061", "94062", "94063", "94065"],
    "SAN MATEO": ["94401", "94402", "94403"],
    "DALY CITY": ["94014", "94015"],
    "RICHMOND": ["94801", "94804", "94805"],
    "CONCORD": ["94518", "94519", "94520", "94521"],
    "WALNUT CREEK": ["94595", "94596", "94597", "94598"],
    "SAN LEANDRO": ["94577", "94578", "94579"],
    "ALAMEDA": ["94501", "94502"],
    "CUPERTINO": ["95014"],
    "LOS GATOS": ["95030", "95032"],
    "MENLO PARK": ["94025"],
    "SAN RAFAEL": ["94901", "94903"],
    "LIVERMORE": ["94550", "94551"],
    "PLEASANTON": ["94566", "94588"],
}
CITY_WEIGHT = {"SAN FRANCISCO": 8, "OAKLAND": 6, "SAN JOSE": 10, "FREMONT": 4, "BERKELEY": 3}

#: House-number suffixes and their shares: most numbers are plain, some carry a letter or a fraction.
NUMBER_SUFFIXES = ["", "A", "B", "C", "D", " 1/2", "-1", "-2"]
NUMBER_SUFFIX_WEIGHTS = [90, 3, 2, 0.7, 0.3, 2.5, 0.8, 0.7]

#: Unit designators; about three rows in four have no unit.
UNIT_SHARE = 0.25
UNIT_PREFIXES = ["APT ", "#", "UNIT ", "STE ", "SPC ", "BLDG "]
UNIT_PREFIX_WEIGHTS = [40, 25, 20, 10, 3, 2]

FIELD_ORDER = ["OBJECTID", "ADDRNUM", "PREDIR", "STNAME", "STTYPE", "UNIT", "CITY", "ZIP", "FULLADDR"]


def _weights(values: list[float]) -> np.ndarray:
    """Normalise weights into probabilities."""
    arr = np.asarray(values, dtype=np.float64)
    return arr / arr.sum()


def _unit_vocabulary() -> list[str]:
    """All unit texts a row may carry (apartment numbers, suite numbers, letters)."""
    units: list[str] = []
    for prefix in UNIT_PREFIXES:
        if prefix == "STE ":
            units += [
                f"{prefix}{n}" for n in (100, 101, 110, 120, 150, 200, 201, 210, 250, 300, 310, 400, 500)
            ]
        elif prefix == "BLDG ":
            units += [f"{prefix}{c}" for c in "ABCDEF"]
        else:
            units += [f"{prefix}{n}" for n in range(1, 41)]
            units += [f"{prefix}{c}" for c in "ABCD"]
            units += [f"{prefix}{n}{c}" for n in range(1, 5) for c in "AB"]
    return units


class _Vocabulary:
    """The value lists as Arrow arrays (``take`` on them is a C loop), built once."""

    def __init__(self) -> None:
        self.predir = pa.array(PREDIRS)
        self.street = pa.array(STREET_NAMES)
        self.sttype = pa.array(STREET_TYPES)
        self.sttype_p = _weights(STREET_TYPE_WEIGHTS)
        self.suffix = pa.array(NUMBER_SUFFIXES)
        self.suffix_p = _weights(NUMBER_SUFFIX_WEIGHTS)
        pairs = [(city, zip_code) for city, zips in CITY_ZIPS.items() for zip_code in zips]
        self.city = pa.array([c for c, _ in pairs])
        self.zip = pa.array([z for _, z in pairs])
        self.city_zip_p = _weights([CITY_WEIGHT.get(c, 1) / len(CITY_ZIPS[c]) for c, _ in pairs])
        units = _unit_vocabulary()
        self.unit = pa.array(units)
        prefix_p = dict(zip(UNIT_PREFIXES, _weights(UNIT_PREFIX_WEIGHTS), strict=True))
        per_prefix = {p: sum(u.startswith(p) for u in units) for p in UNIT_PREFIXES}
        unit_w = []
        for u in units:
            prefix = next(p for p in UNIT_PREFIXES if u.startswith(p))
            unit_w.append(prefix_p[prefix] / per_prefix[prefix])
        self.unit_p = _weights(unit_w)
        self.to_projected = pyproj.Transformer.from_crs("EPSG:4326", SHAPEFILE_CRS, always_xy=True)


def _null_where(values: pa.Array, empty: np.ndarray) -> pa.Array:
    """Null out the rows where ``empty`` is true (so ``binary_join_element_wise`` can skip them)."""
    return pc.if_else(pa.array(empty), pa.scalar(None, pa.string()), values)


def _chunk(
    vocab: _Vocabulary, seed: int, index: int, n: int, first_id: int
) -> dict[str, pa.Array | np.ndarray]:
    """Build chunk ``index`` of ``n`` rows: text columns as Arrow arrays, lon/lat and projected x/y as numpy."""
    rng = np.random.default_rng([seed, index])
    # House numbers: log-uniform from 5 to 25,000, so 1 to 5 digits with short numbers common, like real streets.
    base = np.floor(np.exp(rng.uniform(np.log(5), np.log(25_000), n))).astype(np.int64)
    suffix = vocab.suffix.take(pa.array(rng.choice(len(NUMBER_SUFFIXES), n, p=vocab.suffix_p)))
    addrnum = pc.binary_join_element_wise(pc.cast(pa.array(base), pa.string()), suffix, "")

    predir = _null_where(
        vocab.predir.take(pa.array(rng.integers(0, len(PREDIRS), n))), rng.random(n) >= PREDIR_SHARE
    )
    stname = vocab.street.take(pa.array(rng.integers(0, len(STREET_NAMES), n)))
    sttype = _null_where(
        vocab.sttype.take(pa.array(rng.choice(len(STREET_TYPES), n, p=vocab.sttype_p))),
        rng.random(n) < NO_TYPE_SHARE,
    )
    unit = _null_where(
        vocab.unit.take(pa.array(rng.choice(len(vocab.unit), n, p=vocab.unit_p))), rng.random(n) >= UNIT_SHARE
    )
    pair = pa.array(rng.choice(len(vocab.city), n, p=vocab.city_zip_p))
    fulladdr = pc.binary_join_element_wise(addrnum, predir, stname, sttype, " ", null_handling="skip")

    lon = np.round(rng.uniform(*LON_RANGE, n), 7)
    lat = np.round(rng.uniform(*LAT_RANGE, n), 7)
    x, y = vocab.to_projected.transform(lon, lat)
    return {
        "OBJECTID": pa.array(np.arange(first_id, first_id + n, dtype=np.int32)),
        "ADDRNUM": addrnum,
        "PREDIR": pc.fill_null(predir, ""),
        "STNAME": stname,
        "STTYPE": pc.fill_null(sttype, ""),
        "UNIT": pc.fill_null(unit, ""),
        "CITY": vocab.city.take(pair),
        "ZIP": vocab.zip.take(pair),
        "FULLADDR": fulladdr,
        "lon": lon,
        "lat": lat,
        # Survey-grade files store centimetres.
        "x": np.round(x, 2),
        "y": np.round(y, 2),
    }


def iter_chunks(rows: int, seed: int = DEFAULT_SEED) -> Iterator[dict[str, pa.Array | np.ndarray]]:
    """Yield the columns of ``rows`` synthetic addresses, ``CHUNK_ROWS`` at a time.

    :param rows: total number of rows.
    :param seed: random seed; the same seed always gives the same rows.
    :return: an iterator of column mappings (see :func:`_chunk`).
    """
    vocab = _Vocabulary()
    for index, start in enumerate(range(0, rows, CHUNK_ROWS)):
        columns = _chunk(vocab, seed, index, CHUNK_ROWS, start + 1)
        n = min(CHUNK_ROWS, rows - start)
        # Always draw a full chunk and cut it, so a shorter file is a prefix of a longer one.
        yield columns if n == CHUNK_ROWS else {name: values[:n] for name, values in columns.items()}


def _point_wkb(x: np.ndarray, y: np.ndarray) -> pa.Array:
    """Little-endian WKB points as an Arrow binary array, built from one numpy buffer (21 bytes per point)."""
    n = len(x)
    records = np.empty(n, dtype=np.dtype([("order", "u1"), ("type", "<u4"), ("x", "<f8"), ("y", "<f8")]))
    records["order"] = 1
    records["type"] = 1
    records["x"] = x
    records["y"] = y
    offsets = np.arange(n + 1, dtype=np.int32) * records.itemsize
    return pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(records.tobytes())]
    )


def _shapefile_schema() -> pa.Schema:
    """Arrow schema of the shapefile batches, with DBF widths as GDAL field metadata."""
    fields = [pa.field("OBJECTID", pa.int32())]
    fields += [
        pa.field(name, pa.string(), metadata={"GDAL:OGR:width": str(width)})
        for name, width in TEXT_WIDTHS.items()
    ]
    return pa.schema([*fields, pa.field("geometry", pa.binary())])


def _csv_schema() -> pa.Schema:
    """Arrow schema of the CSV batches: the attribute fields, then ``X`` and ``Y`` in degrees."""
    fields = [pa.field("OBJECTID", pa.int32())] + [pa.field(name, pa.string()) for name in TEXT_WIDTHS]
    return pa.schema([*fields, pa.field("X", pa.float64()), pa.field("Y", pa.float64())])


def generate(
    out_dir: Path,
    rows: int = DEFAULT_ROWS,
    seed: int = DEFAULT_SEED,
    formats: tuple[str, ...] = ("shp", "csv"),
) -> dict[str, Path]:
    """Write the benchmark inputs into ``out_dir`` and return their paths by format.

    :param out_dir: target folder (created if needed); existing files of the same names are replaced.
    :param rows: number of address points.
    :param seed: random seed.
    :param formats: any of ``"shp"`` and ``"csv"``.
    :return: ``{"shp": <path of addresses.shp>, "csv": <path of addresses.csv>}`` for the formats written.
    :raises ValueError: for an unknown format.
    """
    unknown = set(formats) - {"shp", "csv"}
    if unknown:
        raise ValueError(f"unknown formats: {sorted(unknown)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Write into a scratch folder and move the files into place at the end, so an interrupted run never leaves a
    # complete-looking file behind.
    tmp_dir = out_dir / ".generating"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    tmp_shp = tmp_dir / SHAPEFILE_NAME
    tmp_csv = tmp_dir / CSV_NAME

    shp_schema = _shapefile_schema()
    csv_schema = _csv_schema()
    csv_writer = (
        pacsv.CSVWriter(str(tmp_csv), csv_schema, write_options=pacsv.WriteOptions(quoting_style="needed"))
        if "csv" in formats
        else None
    )

    def batches() -> Iterator[pa.RecordBatch]:
        for columns in iter_chunks(rows, seed):
            texts = [columns[name] for name in FIELD_ORDER]
            if csv_writer is not None:
                csv_writer.write_batch(
                    pa.RecordBatch.from_arrays(
                        [*texts, pa.array(columns["lon"]), pa.array(columns["lat"])], schema=csv_schema
                    )
                )
            yield pa.RecordBatch.from_arrays(
                [*texts, _point_wkb(columns["x"], columns["y"])], schema=shp_schema
            )

    try:
        if "shp" in formats:
            reader = pa.RecordBatchReader.from_batches(shp_schema, batches())
            pyogrio.write_arrow(
                reader,
                tmp_shp,
                driver="ESRI Shapefile",
                geometry_name="geometry",
                geometry_type="Point",
                crs=SHAPEFILE_CRS,
            )
        else:
            for _ in batches():  # CSV only: the generator writes the CSV as a side effect
                pass
    finally:
        if csv_writer is not None:
            csv_writer.close()

    written: dict[str, Path] = {}
    if "shp" in formats:
        for suffix in SHAPEFILE_PARTS:
            (out_dir / SHAPEFILE_NAME).with_suffix(suffix).unlink(missing_ok=True)
        for suffix in SHAPEFILE_PARTS:
            part = tmp_shp.with_suffix(suffix)
            if part.exists():
                part.replace(out_dir / part.name)
        written["shp"] = out_dir / SHAPEFILE_NAME
    if "csv" in formats:
        tmp_csv.replace(out_dir / CSV_NAME)
        written["csv"] = out_dir / CSV_NAME
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return written


def data_dir(root: Path, rows: int) -> Path:
    """The folder that holds the ``rows``-row data set under ``root`` (``bench-out/data-1000000``)."""
    return root / f"data-{rows}"


def ensure(
    root: Path, rows: int, formats: tuple[str, ...] = ("shp", "csv"), seed: int = DEFAULT_SEED
) -> dict[str, Path]:
    """Return the paths of the ``rows``-row data set under ``root``, generating the missing formats first.

    :param root: benchmark output folder (``bench-out``).
    :param rows: number of address points.
    :param formats: the formats needed (``"shp"``, ``"csv"``).
    :param seed: random seed used when generating.
    :return: paths by format.
    """
    folder = data_dir(root, rows)
    paths = {"shp": folder / SHAPEFILE_NAME, "csv": folder / CSV_NAME}
    missing = tuple(f for f in formats if not paths[f].exists())
    if missing:
        print(f"Generating {rows:,} rows ({', '.join(missing)}) into {folder} ...", flush=True)
        started = time.perf_counter()
        generate(folder, rows, seed, missing)
        print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)
    return {f: paths[f] for f in formats}


def main(argv: list[str] | None = None) -> int:
    """Command line: ``generate.py [--rows N] [--seed S] [--formats shp,csv] [OUT_DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "out_dir",
        nargs="?",
        type=Path,
        help="output folder (default bench-out/data-<rows>, where bench_conform.py looks)",
    )
    parser.add_argument(
        "--rows", type=int, default=DEFAULT_ROWS, help="number of address points (default 1,000,000)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--formats", default="shp,csv", help="comma-separated: shp, csv (default both)")
    args = parser.parse_args(argv)
    out_dir = args.out_dir or data_dir(DEFAULT_OUT, args.rows)
    started = time.perf_counter()
    written = generate(out_dir, args.rows, args.seed, tuple(f for f in args.formats.split(",") if f))
    elapsed = time.perf_counter() - started
    print(f"Wrote {args.rows:,} rows in {elapsed:.1f} s: {', '.join(map(str, written.values()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

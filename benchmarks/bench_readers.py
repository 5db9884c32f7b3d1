"""Reader comparison for the conform: pyogrio Arrow batches against fiona per-feature iteration.

Both routes read the benchmark shapefile (EPSG:26943, see ``generate.py``) into what the conform consumes: per
batch, one Python list of texts per field (null → ``''``, other values as text) plus Python lists of x and y
reprojected to EPSG:4326 with pyproj (``always_xy=True``). Each batch is dropped once built, as a streaming conform
would, so the peak RSS is the reader's own working set, not the whole file.

* **arrow-gdal-only**: ``pyogrio.raw.open_arrow`` record batches, iterated and dropped: what GDAL alone costs.
* **arrow**: the same batches; text columns via ``pyarrow.compute`` (``cast``, ``fill_null``) and
  ``to_pylist()``; points via ``shapely.from_wkb`` + ``get_coordinates`` (any geometry type); one vectorised
  ``Transformer.transform`` per batch.
* **arrow-numpy-points**: as **arrow**, but 2D points are read straight from the WKB buffer with numpy (21 bytes
  each), falling back to shapely for anything else.
* **fiona**: ``for feature in collection``; the property values and point coordinates are appended per feature,
  and each full batch is reprojected with one vectorised ``Transformer.transform``.

Every route runs in a fresh interpreter, which reports its wall time and ``getrusage(RUSAGE_SELF).ru_maxrss``
(both routes are single-process).

Usage::

    python benchmarks/bench_readers.py [--rows 1000000] [--batch-size 65536] [--out bench-out]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import generate

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

#: Route name → (reader, keyword arguments).
METHODS = {
    "arrow-gdal-only": ("arrow", {"points": "none"}),
    "arrow": ("arrow", {"points": "shapely"}),
    "arrow-numpy-points": ("arrow", {"points": "numpy"}),
    "fiona": ("fiona", {}),
}
DEFAULT_BATCH = 65_536
MIB = 1024 * 1024


def _texts(values: list[object]) -> list[str]:
    """Values of one column as texts, null as ``''``."""
    return ["" if v is None else v if type(v) is str else str(v) for v in values]


#: Little-endian 2D WKB point: byte order, geometry type, x, y (21 bytes).
_WKB_POINT = [("order", "u1"), ("type", "<u4"), ("x", "<f8"), ("y", "<f8")]


def _points_numpy(wkb: pa.BinaryArray) -> tuple[np.ndarray, np.ndarray] | None:
    """x and y straight from the WKB buffer when every value is a little-endian 2D point, else None."""
    import numpy as np

    n = len(wkb)
    if n == 0 or wkb.null_count:
        return None
    offsets = np.frombuffer(wkb.buffers()[1], dtype=np.int32, count=n + 1, offset=wkb.offset * 4)
    if not (np.diff(offsets) == 21).all():
        return None
    records = np.frombuffer(wkb.buffers()[2], dtype=np.dtype(_WKB_POINT), count=n, offset=int(offsets[0]))
    if not ((records["order"] == 1) & (records["type"] == 1)).all():
        return None
    return records["x"], records["y"]


def read_arrow(path: Path, batch_size: int, points: str = "shapely") -> int:
    """Read ``path`` through pyogrio's Arrow stream; return the number of rows.

    :param path: the shapefile.
    :param batch_size: features per Arrow batch.
    :param points: ``"shapely"`` (``from_wkb`` + ``get_coordinates``, works for any geometry), ``"numpy"`` (read
        2D points straight from the WKB buffer, shapely otherwise) or ``"none"`` (only iterate the batches: the
        cost of GDAL alone).
    :return: rows read.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyogrio.raw
    import pyproj
    import shapely

    rows = 0
    with pyogrio.raw.open_arrow(path, batch_size=batch_size, use_pyarrow=True) as (meta, reader):
        transformer = pyproj.Transformer.from_crs(meta["crs"], "EPSG:4326", always_xy=True)
        geometry = meta["geometry_name"] or "wkb_geometry"
        fields = list(meta["fields"])
        for batch in reader:
            rows += batch.num_rows
            if points == "none":
                continue
            columns = {}
            for name in fields:
                column = batch.column(name)
                if not pa.types.is_string(column.type):
                    column = pc.cast(column, pa.string())
                columns[name] = pc.fill_null(column, "").to_pylist()
            wkb = batch.column(geometry)
            xy = _points_numpy(wkb) if points == "numpy" else None
            if xy is None:
                coords = shapely.get_coordinates(shapely.from_wkb(wkb.to_numpy(zero_copy_only=False)))
                xy = coords[:, 0], coords[:, 1]
            x, y = transformer.transform(*xy)
            columns["OA:x"] = x.tolist()
            columns["OA:y"] = y.tolist()
    return rows


def read_fiona(path: Path, batch_size: int) -> int:
    """Read ``path`` feature by feature with fiona; return the number of rows."""
    import fiona
    import numpy as np
    import pyproj

    rows = 0
    with fiona.open(path) as collection:
        transformer = pyproj.Transformer.from_crs(collection.crs, "EPSG:4326", always_xy=True)
        fields = list(collection.schema["properties"])
        values: list[tuple[object, ...]] = []
        xs: list[float] = []
        ys: list[float] = []

        def flush() -> None:
            columns = {
                name: _texts(list(col)) for name, col in zip(fields, zip(*values, strict=True), strict=True)
            }
            x, y = transformer.transform(np.asarray(xs), np.asarray(ys))
            columns["OA:x"] = x.tolist()
            columns["OA:y"] = y.tolist()
            values.clear()
            xs.clear()
            ys.clear()

        for feature in collection:
            values.append(tuple(feature.properties.values()))
            x, y = feature.geometry.coordinates
            xs.append(x)
            ys.append(y)
            if len(values) == batch_size:
                rows += len(values)
                flush()
        if values:
            rows += len(values)
            flush()
    return rows


def run_one(method: str, path: Path, batch_size: int) -> dict[str, float | int]:
    """Run one route in this process and return its figures."""
    name, kwargs = METHODS[method]
    reader = {"arrow": read_arrow, "fiona": read_fiona}[name]
    started = time.perf_counter()
    rows = reader(path, batch_size, **kwargs)
    seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "seconds": seconds,
        "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line; with ``--method`` run one route and print JSON, else run every route in a child."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=generate.DEFAULT_ROWS)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument(
        "--out", type=Path, default=generate.DEFAULT_OUT, help="working folder (default bench-out)"
    )
    parser.add_argument("--method", choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.method:
        print(json.dumps(run_one(args.method, args.path, args.batch_size)))
        return 0

    shp = generate.ensure(args.out.resolve(), args.rows, formats=("shp",))["shp"]
    print(f"reading {shp} ({args.rows:,} rows) in batches of {args.batch_size:,}", flush=True)
    results: dict[str, dict[str, float | int]] = {}
    failed = False
    for method in METHODS:
        cmd = [
            sys.executable,
            __file__,
            "--method",
            method,
            "--path",
            str(shp),
            "--batch-size",
            str(args.batch_size),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{method}: FAILED (exit {proc.returncode})\n{proc.stderr}")
            failed = True
            continue
        results[method] = json.loads(proc.stdout.strip().splitlines()[-1])

    header = f"{'reader':<20} {'rows':>12} {'seconds':>9} {'rows/s':>10} {'peak RSS MiB':>13}"
    print()
    print(header)
    print("-" * len(header))
    for method, r in results.items():
        print(
            f"{method:<20} {r['rows']:>12,} {r['seconds']:>9.2f} {r['rows'] / r['seconds']:>10,.0f} "
            f"{r['maxrss_bytes'] / MIB:>13,.1f}"
        )
    print("\npeak RSS MiB: getrusage(RUSAGE_SELF).ru_maxrss of each route's fresh process")
    if "arrow" in results and "fiona" in results:
        ratio = results["fiona"]["seconds"] / results["arrow"]["seconds"]
        print(f"arrow is {ratio:.1f}x as fast as fiona")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""The GeoParquet step of collect (issue 13, 2a): rows/s and peak RSS.

Generates run zips of address rows (the run zips collect reads: ``<source>.csv`` in the 11 output columns, deflate),
spread over sources in several areas, every fifth share-alike, then feeds them all to
:class:`openaddr.collect.geoparquet.GeoParquetCollections` as collect does (each zip into ``global`` and its
area, in its licence class) and writes the 72 files. The step runs in a child process, so its peak RSS is its own
(``getrusage(RUSAGE_CHILDREN)``), not the generator's.

Usage::

    python benchmarks/bench_geoparquet.py [--rows 5000000] [--sources 100] [--out bench-out/geoparquet] [--keep]

``measure(inputs, work_dir)`` is the step alone over existing run zips, for ``bench_collect.py``: ``inputs`` are
(zip path, source name such as ``us/ca/alameda``, licence class ``""`` or ``"sa"``).

Target (issue 13): **≥ 500,000 rows/s** and **peak RSS ≤ 300 MiB** on this 2-core machine. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

if TYPE_CHECKING:
    from collections.abc import Sequence

TARGET_ROWS_PER_SECOND = 500_000
TARGET_RSS_MIB = 300
#: Source paths the generated runs cycle through, with a centre each: us_west, us_northeast, europe, asia, …
PLACES = [
    ("us/ca/alameda", -122.2, 37.7),
    ("us/ny/nyc", -74.0, 40.7),
    ("us/tx/austin", -97.7, 30.3),
    ("de/berlin", 13.4, 52.5),
    ("fr/paris", 2.35, 48.85),
    ("au/nsw", 151.2, -33.9),
    ("br/sp", -46.6, -23.5),
    ("ca/on/toronto", -79.4, 43.7),
    ("ru/moscow", 37.6, 55.75),
]
STREETS = ["Main St", "1st Ave", "Oak St", "Pine St", "Elm St", "Maple Ave", "Cedar Rd", "Lake Dr", "Hill Rd"]
CITIES = ["Springfield", "Riverside", "Fairview", "Greenville", "Salem"]


@dataclass
class Measured:
    """What :func:`measure` found: rows read and dropped, wall-clock and CPU seconds (user + system: on a shared
    machine the wall clock also counts other processes' turns), input CSV bytes, output bytes, peak RSS."""

    rows: int
    dropped: int
    seconds: float
    cpu_seconds: float
    csv_bytes: int
    parquet_bytes: int
    files: int
    peak_rss_mib: float

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def generate(folder: Path, rows: int, sources: int, seed: int = 20261207) -> list[tuple[Path, str, str]]:
    """Write ``sources`` run zips holding ``rows`` address rows in all (one in 1,000 with a bad coordinate)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    inputs = []
    per = rows // sources
    options = pacsv.WriteOptions(quoting_style="needed")
    for index in range(sources):
        place, lon0, lat0 = PLACES[index % len(PLACES)]
        source = f"{place}-{index}"
        size = per + (rows - per * sources if index == sources - 1 else 0)
        lon = lon0 + rng.normal(0, 0.3, size)
        lat = lat0 + rng.normal(0, 0.2, size)
        lon_text = pa.array(np.char.mod("%.7f", lon))
        bad = rng.random(size) < 0.001
        lon_text = pa.array(np.where(bad, "", np.char.mod("%.7f", lon)))
        table = pa.table(
            {
                "LON": lon_text,
                "LAT": pa.array(np.char.mod("%.7f", lat)),
                "NUMBER": pa.array(rng.integers(1, 9999, size).astype(str)),
                "STREET": pa.array(np.array(STREETS)[rng.integers(0, len(STREETS), size)]),
                "UNIT": pa.array(np.where(rng.random(size) < 0.1, "Apt 2", "")),
                "CITY": pa.array(np.array(CITIES)[rng.integers(0, len(CITIES), size)]),
                "DISTRICT": pa.array([""] * size),
                "REGION": pa.array(["XX"] * size),
                "POSTCODE": pa.array(rng.integers(10000, 99999, size).astype(str)),
                "ID": pa.array(np.char.mod("id%d", np.arange(size))),
                "HASH": pa.array(np.char.mod("%016x", rng.integers(0, 2**62, size))),
            }
        )
        csv_path = folder / f"{index}.csv"
        pacsv.write_csv(table, csv_path, options)
        zip_path = folder / f"{index}.zip"
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            archive.write(csv_path, f"{source}.csv")
        csv_path.unlink()
        inputs.append((zip_path, source, "sa" if index % 5 == 4 else ""))
    return inputs


def _step(inputs: Sequence[tuple[Path, str, str]], work_dir: Path, queue: Any) -> None:
    import pyarrow.parquet  # noqa: F401  (imports are not the step's time)
    import shapely  # noqa: F401

    from openaddr import arrow_pool

    arrow_pool.check(arrow_pool.COLLECT)

    from openaddr.collect.areas import AREAS, areas_of
    from openaddr.collect.geoparquet import Entry, GeoParquetCollections
    from openaddr.db.schema import LICENSE_ATTRS
    from openaddr.sources import LAYER_TYPES

    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu_before = usage.ru_utime + usage.ru_stime
    started = time.perf_counter()
    collections = GeoParquetCollections(work_dir / "geoparquet")
    for layer in LAYER_TYPES:
        for area in AREAS:
            for attr in LICENSE_ATTRS:
                collections.add_collection(area, attr, layer)
    rows = dropped = 0
    for run_id, (path, source, attr) in enumerate(inputs, 1):
        keys = [(area, attr, "addresses") for area in areas_of(source)]
        added, lost = collections.add_run_zip(
            path, Entry(f"sources/{source}.json", "addresses", "primary", run_id), keys
        )
        rows += added + lost
        dropped += lost
    files = collections.close()
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before
    queue.put((rows, dropped, seconds, cpu, sum(f.path.stat().st_size for f in files.values()), len(files)))


def measure(inputs: Sequence[tuple[Path, str, str]], work_dir: Path) -> Measured:
    """Run the GeoParquet step over run zips in a child process; its rows/s counts the rows read."""
    from openaddr import arrow_pool

    work_dir.mkdir(parents=True, exist_ok=True)
    arrow_pool.choose(
        arrow_pool.COLLECT
    )  # the child reads it as it loads pyarrow, as the collect DAG's task does
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_step, args=(list(inputs), work_dir, queue))
    process.start()
    while True:  # the child's figures, or its death (a child that died sends nothing)
        try:
            rows, dropped, seconds, cpu_seconds, parquet_bytes, files = queue.get(timeout=1)
            break
        except Empty:
            if not process.is_alive():
                raise RuntimeError(f"the GeoParquet step died (exit code {process.exitcode})") from None
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"the GeoParquet step failed (exit code {process.exitcode})")
    csv_bytes = 0
    for path, _, _ in inputs:
        with zipfile.ZipFile(path) as archive:
            csv_bytes += sum(info.file_size for info in archive.infolist())
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    return Measured(rows, dropped, seconds, cpu_seconds, csv_bytes, parquet_bytes, files, peak)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--sources", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("bench-out/geoparquet"))
    parser.add_argument("--keep", action="store_true", help="keep the generated zips and the files")
    args = parser.parse_args(argv)
    data = args.out / f"runs-{args.rows}-{args.sources}"
    if not data.is_dir():
        print(f"Generating {args.rows:,} rows in {args.sources} run zips under {data} …", flush=True)
        generate(data, args.rows, args.sources)
    inputs = sorted(
        ((path, *_source_of(path)) for path in data.glob("*.zip")), key=lambda item: int(item[0].stem)
    )
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    result = measure(inputs, work)
    zipped = sum(path.stat().st_size for path, _, _ in inputs)
    print(
        f"GeoParquet step: {result.rows:,} rows ({result.dropped:,} dropped) from {len(inputs)} run zips "
        f"({zipped / 2**20:,.0f} MiB zipped, {result.csv_bytes / 2**20:,.0f} MiB of CSV) in {result.seconds:.1f} s"
    )
    print(
        f"  {result.rows_per_second:,.0f} rows/s, {result.csv_bytes / 2**20 / result.seconds:,.1f} MiB/s of CSV; "
        f"{result.files} files, {result.parquet_bytes / 2**20:,.1f} MiB of GeoParquet"
    )
    print(
        f"  CPU {result.cpu_seconds:.1f} s (user + system): {result.rows / result.cpu_seconds:,.0f} rows per CPU second; "
        f"load average before {load[0]:.1f}, after {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    from openaddr.collect.geoparquet import default_workers

    print(
        f"  peak RSS {result.peak_rss_mib:,.0f} MiB; {default_workers()} worker threads, Arrow's default pool "
        f"{os.environ.get('ARROW_DEFAULT_MEMORY_POOL', 'the build default')}"
    )
    ok_rate = result.rows_per_second >= TARGET_ROWS_PER_SECOND
    ok_rss = result.peak_rss_mib <= TARGET_RSS_MIB
    print(f"  target ≥ {TARGET_ROWS_PER_SECOND:,} rows/s: {'met' if ok_rate else 'NOT met'}")
    print(f"  target peak RSS ≤ {TARGET_RSS_MIB} MiB: {'met' if ok_rss else 'NOT met'}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _source_of(path: Path) -> tuple[str, str]:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".csv"))
    index = int(path.stem)
    return name[: -len(".csv")], "sa" if index % 5 == 4 else ""


if __name__ == "__main__":
    sys.exit(main())

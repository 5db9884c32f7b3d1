"""Dedupe speed and memory benchmark (``make bench-dedupe``; never part of the tests).

Generates a ``global`` address collection and its ``us_west`` subset (``bench-out/dedupe-<rows>/``, reused when
present) with overlapping sources: 24 county sources (each a 0.2° square: two near the antimeridian, one across
it, the rest in California), and 6 statewide sources (a 3° square each) that repeat about two thirds of their rows
from the counties 0–8 m away, written differently (``ST``/``Street``, upper case, no postcode) — plus rows 12 m
away and other units, which must stay. Then runs :func:`openaddr.collect.dedupe.build_processed` on it in a child
process (the parent's memory is not counted: ``VmHWM``) and prints rows/s of the whole step (read and spill, decide, write
the 4 ``-processed`` zips of the open class: ``global`` and ``us_west`` with rows, ``europe`` and ``asia``
empty), the time of each phase, the dedupe's figures, and the child's peak RSS. With
``--also N`` it runs a second size too, so the two peaks show whether memory grows with the set.

Usage::

    python benchmarks/bench_dedupe.py [--rows 2000000] [--also 500000] [--shard-rows 200000] [--out bench-out]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from openaddr.canonical import OUTPUT_COLUMNS  # noqa: E402
from openaddr.collect.archive import CollectionZip, LicenseBlock  # noqa: E402

STREETS = [f"{name} {kind}" for name in ("Oak", "Main", "Pine", "Elm", "Cedar", "Lake", "Hill", "Park", "Mill",
           "Church", "Spring", "Ridge", "Valley", "Sunset", "Maple", "Walnut", "Willow", "River", "Bay", "Grant")
           for kind in ("St", "Ave", "Rd", "Blvd", "Dr", "Ln", "Ct", "Way", "Pl", "Ter")]  # fmt: skip
LONG = {"St": "Street", "Ave": "Avenue", "Rd": "Road", "Blvd": "Boulevard", "Dr": "Drive", "Ln": "Lane",
        "Ct": "Court", "Way": "Way", "Pl": "Place", "Ter": "Terrace"}  # fmt: skip
DATE = (2026, 12, 7, 0, 0, 0)


def _county_origins() -> list[tuple[float, float]]:
    origins = [(179.85, -17.2), (-180.0, -16.9), (179.9, -16.6)]  # Fiji: both sides of the antimeridian
    origins += [(-123.0 + 0.25 * (i % 8), 36.0 + 0.25 * (i // 8)) for i in range(21)]
    return origins


def _write_member(handles: list, name: str, rows: list[tuple[str, ...]]) -> None:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(OUTPUT_COLUMNS)
    writer.writerows(rows)
    data = out.getvalue().encode()
    for archive in handles:
        with archive.member(f"{name}.csv") as handle:
            handle.write(data)


def generate(rows: int, folder: Path) -> tuple[Path, Path]:
    """The global and us_west collections of ``rows`` rows (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    global_path, west_path = folder / "global.zip", folder / "us_west.zip"
    if global_path.exists() and west_path.exists():
        return global_path, west_path
    rng = np.random.default_rng(13)
    counties = _county_origins()
    per_county = int(rows * 0.7) // len(counties)
    per_state = (rows - per_county * len(counties)) // 6
    g = CollectionZip(folder / "global.part", "bench\n", DATE)
    w = CollectionZip(folder / "us_west.part", "bench\n", DATE)
    # county rows, kept as a pool the statewide sources copy from
    pool: list[tuple[float, float, str, str, str, str]] = []
    for c, (lon0, lat0) in enumerate(counties):
        lon = lon0 + rng.random(per_county) * 0.2
        lon = np.where(lon >= 180.0, lon - 360.0, lon)
        lat = lat0 + rng.random(per_county) * 0.2
        numbers = rng.integers(1, 10000, per_county)
        streets = rng.integers(0, len(STREETS), per_county)
        units = rng.integers(0, 8, per_county)
        name = f"us/ca/county{c:02d}" if lon0 < 0 and lon0 > -170 else f"fj/island{c:02d}"
        out = []
        for i in range(per_county):
            unit = f"Apt {units[i]}" if units[i] < 2 else ""
            row = (f"{lon[i]:.7f}", f"{lat[i]:.7f}", str(numbers[i]), STREETS[streets[i]], unit, "", "", "",
                   "9" + str(10000 + c), f"c{c}-{i}", f"{c:02x}{i:012x}")  # fmt: skip
            out.append(row)
            if i % 3 < 2 and lon0 > -170:
                pool.append((lon[i], lat[i], row[2], row[3], unit, row[8]))
        _write_member([g, w] if name.startswith("us/") else [g], name, out)
        g.blocks.append(LicenseBlock(name, None, None, None, None))
        if name.startswith("us/"):
            w.blocks.append(LicenseBlock(name, None, None, None, None))
    for s in range(6):
        out = []
        take = min(len(pool), per_state * 2 // 3)
        picks = rng.choice(len(pool), take, replace=False)
        for k, p in enumerate(picks.tolist()):
            lon, lat, number, street, unit, postcode = pool[p]
            metres = [rng.random() * 8, 12.5][k % 10 == 0]  # one in ten at 12.5 m: must stay
            bearing = rng.random() * 2 * np.pi
            dlat = metres * np.cos(bearing) / 111_195
            dlon = metres * np.sin(bearing) / (111_195 * np.cos(np.radians(lat)))
            head, _, kind = street.rpartition(" ")
            street2 = f"{head} {LONG[kind]}".upper() if k % 2 else street
            unit2 = "#" + unit[4:] if unit and k % 4 == 1 else unit
            out.append((f"{lon + dlon:.7f}", f"{lat + dlat:.7f}", number, street2, unit2, "", "", "",
                        "" if k % 3 else postcode, f"s{s}-{k}", f"s{s}{k:012x}"))  # fmt: skip
        lon0, lat0 = -124.0 + s * 0.5, 35.0
        for k in range(per_state - take):
            out.append((f"{lon0 + rng.random() * 3:.7f}", f"{lat0 + rng.random() * 3:.7f}", str(k), "Far Rd", "",
                        "", "", "", "", f"f{s}-{k}", f"f{s}{k:012x}"))  # fmt: skip
        name = f"us-ca-statewide{s}"
        _write_member([g, w], name, out)
        for target in (g, w):
            target.blocks.append(LicenseBlock(name, None, None, None, None))
    g.close()
    w.close()
    g.path.rename(global_path)  # only complete files are reused
    w.path.rename(west_path)
    return global_path, west_path


def _peak_kib() -> int:
    """This process's peak RSS (``VmHWM``): unlike ``ru_maxrss``, it starts afresh at ``exec``, so the parent's
    generated data does not count."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(global_path: Path, west_path: Path, shard_rows: int) -> None:
    """Run the dedupe on the generated collections; print its figures as JSON."""
    from openaddr.collect.dedupe import DedupeSettings, build_processed

    with tempfile.TemporaryDirectory(prefix="bench-dedupe-") as tmp:
        folder = Path(tmp)
        empty = {}
        for area in ("europe", "asia"):
            path = folder / f"{area}.zip"
            CollectionZip(path, "bench\n", DATE).close()
            empty[area, ""] = (path, [])
        with zipfile.ZipFile(global_path) as g, zipfile.ZipFile(west_path) as w:
            blocks_g = [
                LicenseBlock(n[:-4], None, None, None, None) for n in g.namelist() if n.endswith(".csv")
            ]
            blocks_w = [
                LicenseBlock(n[:-4], None, None, None, None) for n in w.namelist() if n.endswith(".csv")
            ]
        collections = {
            ("global", ""): (global_path, blocks_g),
            ("us_west", ""): (west_path, blocks_w),
            **empty,
        }
        baseline = _peak_kib()
        cpu = time.process_time()
        started = time.perf_counter()
        processed, stats = build_processed(
            folder, collections, "bench\n", DATE, {}, DedupeSettings(shard_rows=shard_rows)
        )
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
        figures = stats[""]
        print(
            json.dumps(
                {
                    "seconds": seconds,
                    "cpu_seconds": cpu,
                    "baseline_kib": baseline,
                    "maxrss_kib": _peak_kib(),
                    "stats": vars(figures),
                    "kept": {p.name: p.address_count for p in processed},
                    "bytes": {p.name: p.path.stat().st_size for p in processed},
                }
            )
        )


def measure(rows: int, out: Path, shard_rows: int) -> dict:
    started = time.perf_counter()
    global_path, west_path = generate(rows, out / f"dedupe-{rows}")
    print(
        f"{rows:,} rows: generated in {time.perf_counter() - started:.1f} s ({global_path.stat().st_size:,} bytes)"
    )
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "system"}
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            str(global_path),
            str(west_path),
            "--shard-rows",
            str(shard_rows),
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode:
        print(done.stderr[-3000:])
        raise SystemExit(f"the dedupe child failed ({done.returncode})")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    s = result["stats"]
    print(
        f"  whole step: {result['seconds']:.1f} s wall, {s['rows'] / result['seconds']:,.0f} rows/s; "
        f"{result['cpu_seconds']:.1f} s CPU, {s['rows'] / result['cpu_seconds']:,.0f} rows per CPU second"
    )
    print(
        f"  phases (wall): "
        f"read+spill {s['seconds_read']:.1f} s ({s['rows'] / s['seconds_read']:,.0f} rows/s), "
        f"decide {s['seconds_decide']:.1f} s ({s['records'] / max(s['seconds_decide'], 1e-9):,.0f} records/s), "
        f"write {s['seconds_write']:.1f} s"
    )
    print(
        f"  rows {s['rows']:,} (with a key {s['keyed']:,}), spill records {s['records']:,} "
        f"(+{s['records'] / max(s['keyed'], 1) - 1:.1%} guests), shards {s['shards']} "
        f"(largest {s['largest_shard']:,}, splits {s['splits']}), matching pairs {s['pairs']:,}"
    )
    print(
        f"  dropped: global {s['dropped_global']:,}, regional {s['dropped_regional']:,}; kept {result['kept']}"
    )
    print(
        f"  peak RSS (child, VmHWM): {result['maxrss_kib'] / 1024:.1f} MiB "
        f"(after the imports, before the dedupe: {result['baseline_kib'] / 1024:.1f} MiB)"
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument(
        "--also", type=int, default=500_000, help="a second size, for the memory comparison (0: none)"
    )
    parser.add_argument("--shard-rows", type=int, default=200_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], args.shard_rows)
        return 0
    sizes = [n for n in (args.also, args.rows) if n]
    results = {n: measure(n, args.out, args.shard_rows) for n in sizes}
    if len(results) == 2:
        small, big = (results[n]["maxrss_kib"] / 1024 for n in sizes)
        print(f"peak RSS {sizes[0]:,} rows: {small:.1f} MiB; {sizes[1]:,} rows: {big:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time the quality gate's coverage check (openaddr/coverage.py) against the run it belongs to.

1. The largest fixture (``us-ca-san_francisco.json``, 7,284 addresses) conformed by ``openaddr conform`` in a fresh
   process, as the task's subprocess: the check's time as the run logged it ("… (checked in X s)": building the
   country's buffered area included) against the whole run.
2. ``--rows`` generated address points (default 1,000,000; ``generate.py``'s Bay Area CSV, as ``bench_preview.py``)
   conformed the same way; then, warm in this process (best of ``--repeat``), the count on those points, and on as
   many points spread in clusters over the whole United States, next to ``shapely.contains_xy`` on every point.
3. Building the buffered, prepared area of a few countries (the first call of a process; the TopoJSON's decoding
   is shared with the preview and timed apart).

Usage::

    .venv/bin/python benchmarks/bench_coverage.py [--rows N] [--repeat N] [--out bench-out]

Never part of the tests; it prints figures and exits non-zero only when a run fails.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time
from pathlib import Path

import bench_conform
import bench_preview
import generate
import numpy as np
import shapely

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from openaddr import coverage, preview  # noqa: E402

_CHECKED = re.compile(r"(\d+) of (\d+) points of .* are outside (\w+) .* \(checked in ([0-9.]+) s\)")


def logged(out: Path) -> tuple[int, int, str, float]:
    """Outside, points, country and seconds of the run's log line."""
    found = _CHECKED.search((out / "output.txt").read_text())
    if found is None:
        raise SystemExit(f"no coverage line in {out / 'output.txt'}")
    return int(found[1]), int(found[2]), found[3], float(found[4])


def best(repeat: int, work: object) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times)


def in_run(source: Path, data: Path, out: Path, what: str) -> Path:
    seconds, state = bench_preview.conform(source, data, out)
    if not state.get("processed"):
        raise SystemExit(f"{what}: not processed ({state.get('source problem')}); see {out / 'output.txt'}")
    outside, points, code, checked = logged(out)
    print(
        f"{what}: {outside} of {points:,} points outside {code}; check {checked:.3f} s in the run of "
        f"{seconds:.2f} s ({100 * checked / seconds:.1f} %)"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    args = parser.parse_args(argv)
    work: Path = args.out.resolve() / "coverage"
    work.mkdir(parents=True, exist_ok=True)

    base = bench_preview.shared() / "fixtures" / "machine"
    folder = work / "fixture"
    folder.mkdir(exist_ok=True)
    source = shutil.copy(base / "sources" / "us-ca-san_francisco.json", folder / "us-ca-san_francisco.json")
    data = shutil.copy(base / "data" / "us-ca-san_francisco-excerpt.zip", folder / "sf.zip")
    in_run(Path(source), Path(data), folder / "out", "largest fixture, us-ca-san_francisco.json")

    csv = generate.ensure(args.out.resolve(), args.rows, ("csv",))["csv"]
    bench_source = bench_conform.write_source(
        work / "sources" / "us" / "bench" / "points.json", "csv", "http://x/a"
    )
    out = in_run(bench_source, csv, work / "points" / "out", f"{args.rows:,} generated Bay Area points")

    us = coverage.source_country({"coverage": {"country": "us"}}, "x.json")
    assert isinstance(us, coverage.Country)
    area = coverage.country_area(us.feature)
    lon, lat = preview.read_csv_points(out / "out.csv")
    rng = np.random.default_rng(14)
    centres = rng.integers(0, len(lon), 2000)
    spread_lon = np.repeat(rng.uniform(-124.0, -68.0, 2000), len(lon) // 2000 + 1)[: len(lon)]
    spread_lat = np.repeat(rng.uniform(26.0, 48.5, 2000), len(lon) // 2000 + 1)[: len(lon)]
    spread_lon = spread_lon + (lon - lon[centres].mean()) * 0.2  # town-sized clusters, the Bay Area's shape
    spread_lat = np.clip(spread_lat + (lat - lat[centres].mean()) * 0.2, -90, 90)
    print(f"\nwarm, best of {args.repeat}: seconds for {len(lon):,} points")
    print(f"{'points':32} {'count (cells)':>14} {'contains_xy':>12} {'outside':>9}")
    for name, x, y in (
        ("Bay Area (the run's)", lon, lat),
        ("2,000 clusters over the US", spread_lon, spread_lat),
    ):
        cells = best(args.repeat, lambda x=x, y=y: coverage.count_outside(us, x, y))
        plain = best(args.repeat, lambda x=x, y=y: np.count_nonzero(shapely.contains_xy(area, x, y)))
        print(f"{name:32} {cells:14.3f} {plain:12.3f} {coverage.count_outside(us, x, y):9,}")

    started = time.perf_counter()
    preview.basemap_topology.cache_clear()
    preview.basemap_topology()
    print(f"\ndecoding the TopoJSON (shared with the preview): {time.perf_counter() - started:.3f} s")
    for code in ("US", "RU", "CA", "FR", "DE", "FJ"):
        country = coverage.source_country({"coverage": {"country": code}}, "x.json")
        assert isinstance(country, coverage.Country)
        coverage.country_area.cache_clear()
        started = time.perf_counter()
        coverage.country_area(country.feature)
        print(f"  buffered, prepared area of {code}: {time.perf_counter() - started:.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

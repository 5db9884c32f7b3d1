"""Collect's zip step against the floor of its work (issue 13 point 6): ``make bench-collect``.

1. **Data** (``--size-mb``, default 2000: about 2 GB of run zips): run zips as the Machine publishes them
   (``README.txt``, ``<source>.vrt``, ``<source>.csv`` written by :class:`openaddr.outputs.PackageWriter`, ISA-L
   deflate), for sources spread over every area, some share-alike. The CSVs hold generated addresses (``out.csv``'s
   11 columns, 7-decimal coordinates) with about 1 row in 1,000 with invalid coordinates, 1 in 5,000 with a quoted
   street (a comma in it), and 1 in 100,000 at (0, 0). Made once under ``bench-out/collect-<size>/`` and reused.
2. **floor** (bare unzip + re-zip): every member but ``README.txt`` of every run zip is inflated and deflated into
   one zip, as it is, with the same reader (:func:`openaddr.collect.archive.open_member`, ISA-L inflate) and the
   same writer and deflate (:class:`openaddr.collect.archive.CollectionZip`, ISA-L level 2) as the zip step: every
   byte inflated once and deflated once, no CSV rewritten, no summary.
3. **zip step**: :func:`openaddr.collect.archive.add_run_zip` of every run zip into the 18 address collections it
   belongs to (``global`` and its area, in its licence class), as :func:`openaddr.collect.collect` does: CSVs
   rewritten and checked, summaries, ``LICENSE.txt``. Each member goes to two collections; it is deflated once
   (:class:`openaddr.collect.archive.SharedDeflate`) and written to both.

Each step runs in a fresh interpreter; the harness polls its RSS with psutil (every 50 ms) and reads its
``VmHWM``. It prints rows/s, MB/s of run zips read and of CSV inflated, the zip step as a share of the floor,
and peak RSS against the targets (zip step ≥ 50 % of the floor, peak RSS ≤ 300 MiB). It never asserts.

Then the GeoParquet step on the same run zips: ``benchmarks/bench_geoparquet.py``'s ``measure(inputs, work_dir)``
when that file exists (its own ``main`` when it has no ``measure``); otherwise the script says it is missing.

Usage::

    python benchmarks/bench_collect.py [--size-mb 2000] [--out bench-out] [--repeat 1] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GEOPARQUET = Path(__file__).resolve().parent / "bench_geoparquet.py"
TARGET_SHARE = 0.5
TARGET_RSS_MIB = 300

#: Sources of the generated set: (path below sources/, share-alike); every area is represented.
SOURCES = [
    ("us/ca/alameda", False), ("us/ca/los_angeles", False), ("us/ny/statewide", True), ("us/tx/harris", False),
    ("us/il/cook", False), ("us/wa/king", False), ("de/berlin", False), ("fr/countrywide", False),
    ("nl/countrywide", True), ("au/countrywide", False), ("br/sp/sao-paulo", True), ("ca/on/toronto", False),
    ("mx/countrywide", False), ("jp/tokyo", False), ("us/fl/miami-dade", False), ("ru/moscow", False),
]  # fmt: skip

CHUNK_ROWS = 50_000
POOL = 12


def _pool(seed: int = 20261207) -> list[tuple[bytes, int]]:
    """Encoded CSV chunks (bytes, rows) of ``CHUNK_ROWS`` rows each, through the Machine's own encoder."""
    import numpy as np

    from openaddr.outputs import encode_address_csv_columns

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import generate

    streets = [n for n in generate.STREET_NAMES]
    cities = list(generate.CITY_ZIPS)
    chunks = []
    for index in range(POOL):
        rng = np.random.default_rng(seed + index)
        n = CHUNK_ROWS
        lon0, lat0 = rng.uniform(-170, 170), rng.uniform(-60, 70)
        lon = [f"{v:.7f}" for v in lon0 + rng.uniform(-1, 1, n)]
        lat = [f"{v:.7f}" for v in lat0 + rng.uniform(-1, 1, n)]
        bad = rng.random(n) < 0.001
        for i in np.flatnonzero(bad).tolist():
            if i % 3 == 0:
                lat[i] = ""
            elif i % 3 == 1:
                lon[i] = "200.5"
            else:
                lat[i] = "nan"
        for i in np.flatnonzero(rng.random(n) < 0.00001).tolist():
            lon[i], lat[i] = "0", "0"
        numbers = [str(v) for v in rng.integers(1, 20000, n)]
        street = [streets[v] + " ST" for v in rng.integers(0, len(streets), n)]
        for i in np.flatnonzero(rng.random(n) < 0.0002).tolist():
            street[i] = street[i] + ", REAR"
        unit = ["" if v > 0.25 else f"APT {int(v * 400)}" for v in rng.random(n)]
        city = [cities[v] for v in rng.integers(0, len(cities), n)]
        empty = [""] * n
        region = ["CA"] * n
        postcode = [str(v) for v in rng.integers(90000, 96000, n)]
        ids = [str(v) for v in rng.integers(1, 10**9, n)]
        hashes = [f"{v:016x}" for v in rng.integers(0, 2**62, n)]
        columns = [lon, lat, numbers, street, unit, city, empty, region, postcode, ids, hashes]
        chunks.append((encode_address_csv_columns(columns), n))
    return chunks


def ensure_data(folder: Path, size_mb: int) -> dict[str, Any]:
    """Generate the run zips (once); return the manifest: runs (file, source, share-alike, rows), bytes."""
    manifest_path = folder / "manifest.json"
    if manifest_path.exists():
        manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        return manifest
    from openaddr.outputs import PackageWriter, csv_header

    runs_dir = folder / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pool = _pool()
    target = size_mb * 1_000_000
    runs: list[dict[str, Any]] = []
    total = 0
    number = 0
    while total < target:
        path, share_alike = SOURCES[number % len(SOURCES)]
        source = path if number < len(SOURCES) else f"{path}-{number // len(SOURCES)}"
        chunks = 4 + (number * 7) % 37  # 200,000 to 2,000,000 rows a run
        file = runs_dir / f"{number:04d}.zip"
        writer = PackageWriter(file, source, "https://example.org", "CC0")
        writer.write(csv_header())
        rows = 0
        for k in range(chunks):
            data, n = pool[(number + k) % len(pool)]
            writer.write(data)
            rows += n
        writer.commit()
        size = file.stat().st_size
        total += size
        runs.append(
            {"file": file.name, "source": source, "share_alike": share_alike, "rows": rows, "bytes": size}
        )
        number += 1
    manifest = {"runs": runs, "bytes": total, "rows": sum(r["rows"] for r in runs)}
    manifest_path.write_text(json.dumps(manifest, indent=1))
    print(
        f"generated {len(runs)} run zips, {total / 1e6:,.0f} MB, {manifest['rows']:,} rows "
        f"in {time.perf_counter() - started:.0f} s under {folder}"
    )
    return manifest


# --------------------------------------------------------------------------------------------------------------
# The steps (each in a fresh interpreter: --step)


def step_floor(folder: Path, manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    from openaddr.collect.archive import CollectionZip, open_member, open_members

    csv_bytes = 0
    target = CollectionZip(out / "floor.zip", "readme\n", (2026, 12, 7, 0, 0, 0))
    for run in manifest["runs"]:
        with zipfile.ZipFile(folder / "runs" / run["file"]) as archive:
            for info in archive.infolist():
                if info.filename == "README.txt":
                    continue
                with open_member(archive, info) as member, contextlib.ExitStack() as stack:
                    (handle,) = open_members(stack, [target], info.filename)
                    while chunk := member.read(4 << 20):
                        csv_bytes += len(chunk)
                        handle.write(chunk)
    target.close()
    return {"inflated_bytes": csv_bytes, "output_bytes": (out / "floor.zip").stat().st_size}


def step_zip(folder: Path, manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    from openaddr.collect import collection_name
    from openaddr.collect.archive import CollectionZip, LicenseBlock, add_run_zip
    from openaddr.collect.areas import AREAS, areas_of

    zips = {
        (area, attr): CollectionZip(out / collection_name(area, attr), "readme\n", (2026, 12, 7, 0, 0, 0))
        for area in AREAS
        for attr in ("", "sa")
    }
    rows = dropped = 0
    for run in manifest["runs"]:
        attr = "sa" if run["share_alike"] else ""
        targets = [zips[area, attr] for area in areas_of(run["source"])]
        added = add_run_zip(folder / "runs" / run["file"], targets)
        rows += added.rows
        dropped += added.dropped
        for target in targets:
            target.blocks.append(LicenseBlock(run["source"], "https://example.org", "CC0", "false", None))
    for collection in zips.values():
        collection.close()
    return {
        "rows_written": rows,
        "dropped": dropped,
        "output_bytes": sum(c.path.stat().st_size for c in zips.values()),
    }


def run_step(step: str, folder: Path, out: Path, profile: bool) -> dict[str, Any]:
    """Run one step in a child interpreter; its figures, seconds, ru_maxrss and the psutil-polled peak RSS."""
    import psutil

    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    command = [sys.executable, __file__, "--step", step, "--data", str(folder), "--step-out", str(out)]
    if profile:
        command.append("--profile")
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        process = psutil.Process(child.pid)
        while not done.is_set():
            with contextlib.suppress(psutil.Error):
                peak = max(peak, process.memory_info().rss)
            time.sleep(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stdout, _ = child.communicate()
    done.set()
    poller.join()
    if child.returncode:
        raise SystemExit(f"step {step} failed ({child.returncode})")
    figures: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    figures["wall_seconds"] = time.perf_counter() - started
    figures["polled_peak_rss"] = peak
    for old in out.iterdir():
        old.unlink()
    return figures


def _high_water_mark() -> int:
    """This process's peak RSS, bytes: ``VmHWM`` (``ru_maxrss`` would count the parent's RSS too, since Linux
    carries it over ``fork`` and ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(step: str, folder: Path, out: Path, profile: bool) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    function = {"floor": step_floor, "zip": step_zip}[step]
    import openaddr.collect  # imports are not the step's work
    import openaddr.collect.archive  # noqa: F401

    profiler: Any = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler()
        profiler.start()
    started, cpu = time.perf_counter(), time.process_time()
    figures = function(folder, manifest, out)
    figures["seconds"] = time.perf_counter() - started
    figures["cpu_seconds"] = time.process_time() - cpu
    if profiler is not None:
        profiler.stop()
        report = ROOT / "bench-out" / f"collect-profile-{step}.txt"
        report.write_text(profiler.output_text(unicode=True, show_all=False))
        print(f"profile: {report}", file=sys.stderr)
    figures["ru_maxrss"] = _high_water_mark()
    print(json.dumps(figures))


def geoparquet_step(folder: Path, manifest: dict[str, Any], work: Path, extra: list[str]) -> None:
    """The GeoParquet step on the same run zips: ``bench_geoparquet.measure(inputs, work_dir)`` when that module
    has it (inputs: zip path, source name, licence class), else its ``main(extra)`` on its own data; or a note
    that ``benchmarks/bench_geoparquet.py`` is not there."""
    if not GEOPARQUET.exists():
        print(
            "GeoParquet step: benchmarks/bench_geoparquet.py is not there (hook: its measure(inputs, work_dir))"
        )
        return
    spec = importlib.util.spec_from_file_location("bench_geoparquet", GEOPARQUET)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_geoparquet"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    if not hasattr(module, "measure"):
        print("GeoParquet step (bench_geoparquet.main, its own data):", flush=True)
        module.main(extra)
        return
    inputs = [
        (folder / "runs" / run["file"], run["source"], "sa" if run["share_alike"] else "")
        for run in manifest["runs"]
    ]
    measured = module.measure(inputs, work)
    print(
        f"GeoParquet step: {measured.rows:,} rows in {measured.seconds:.1f} s ({measured.cpu_seconds:.1f} CPU s): "
        f"{measured.rows / measured.seconds:,.0f} rows/s, {measured.rows / measured.cpu_seconds:,.0f} rows/CPU s, "
        f"{measured.files} files, {measured.parquet_bytes / 1e6:,.0f} MB; peak RSS {measured.peak_rss_mib:.0f} MiB "
        f"(target ≥ 500,000 rows/s, ≤ {TARGET_RSS_MIB} MiB)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=2000, help="MB of run zips to generate (default 2000)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out", help="working folder")
    parser.add_argument("--repeat", type=int, default=1, help="run each step N times; the fastest counts")
    parser.add_argument("--profile", action="store_true", help="pyinstrument profile of the zip step")
    parser.add_argument("--geoparquet-args", default="", help="extra arguments for bench_geoparquet.py")
    parser.add_argument("--step", choices=["floor", "zip"], help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--step-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.step:
        child(args.step, args.data, args.step_out, args.profile)
        return 0

    folder = args.out / f"collect-{args.size_mb}"
    manifest = ensure_data(folder, args.size_mb)
    rows, zipped = manifest["rows"], manifest["bytes"]
    print(f"data: {len(manifest['runs'])} run zips, {zipped / 1e6:,.0f} MB, {rows:,} rows ({folder})")
    results: dict[str, dict[str, Any]] = {}
    for step in ("floor", "zip"):
        best: dict[str, Any] | None = None
        for _ in range(args.repeat):
            figures = run_step(step, folder, args.out / "collect-step", args.profile and step == "zip")
            print(f"  {step}: {figures['seconds']:.1f} s, {figures['cpu_seconds']:.1f} CPU s", flush=True)
            if best is None or figures["seconds"] < best["seconds"]:
                peak = max(figures["ru_maxrss"], (best or figures)["ru_maxrss"])
                best = {**figures, "ru_maxrss": peak}
        assert best is not None
        results[step] = best
    inflated = results["floor"]["inflated_bytes"]
    print(f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(
        f"{'step':<10} {'seconds':>8} {'CPU s':>7} {'rows/s':>11} {'zip MB/s':>9} {'CSV MB/s':>9} "
        f"{'rows/CPU s':>11} {'peak RSS MiB':>13}"
    )
    for step, figures in results.items():
        seconds = figures["seconds"]
        rss = max(figures["ru_maxrss"], figures["polled_peak_rss"]) / (1 << 20)
        print(
            f"{step:<10} {seconds:>8.1f} {figures['cpu_seconds']:>7.1f} {rows / seconds:>11,.0f} "
            f"{zipped / 1e6 / seconds:>9.1f} {inflated / 1e6 / seconds:>9.1f} "
            f"{rows / figures['cpu_seconds']:>11,.0f} {rss:>13.0f}"
        )
    share = results["floor"]["seconds"] / results["zip"]["seconds"]
    cpu_share = results["floor"]["cpu_seconds"] / results["zip"]["cpu_seconds"]
    zip_rss = max(results["zip"]["ru_maxrss"], results["zip"]["polled_peak_rss"]) / (1 << 20)
    print(f"zip step: {results['zip']['rows_written']:,} rows written, {results['zip']['dropped']:,} dropped")
    print(
        f"zip step = {share:.0%} of the bare unzip + re-zip by wall time, {cpu_share:.0%} by CPU time (target "
        f"≥ {TARGET_SHARE:.0%}: {'met' if share >= TARGET_SHARE else 'NOT met'} by wall time); peak RSS "
        f"{zip_rss:.0f} MiB (target ≤ {TARGET_RSS_MIB} MiB: {'met' if zip_rss <= TARGET_RSS_MIB else 'NOT met'})"
    )
    geoparquet_step(folder, manifest, args.out / "collect-geoparquet", args.geoparquet_args.split())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

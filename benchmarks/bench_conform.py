"""Conform speed and memory benchmark (``make bench``; never part of the tests).

Runs ``openaddr conform`` as a subprocess on generated address points (see ``generate.py``):

* **shapefile**: 1,000,000 points (``--rows``) in EPSG:26943, reprojected to EPSG:4326;
* **csv**: the same points as a CSV in EPSG:4326 with ``X``/``Y`` columns;
* **ogr2ogr** (when it is on ``PATH``): ``ogr2ogr -f CSV -t_srs EPSG:4326 -lco GEOMETRY=AS_XY`` on the same
  shapefile, as a yardstick;
* ``--memory-check``: the shapefile case again with 10,000,000 points, for its peak RSS;
* ``--readers``: also runs ``bench_readers.py`` (pyogrio Arrow batches against fiona per-feature iteration).

Both conform cases use ``regexp`` (number out of ``FULLADDR``) and ``join`` (street) besides plain fields.

Each run is started by a small helper process, which times it and reports
``getrusage(RUSAGE_CHILDREN).ru_maxrss`` (the largest single process of the run); meanwhile this script polls the
helper's whole process tree with psutil and records the peaks of the **sums** over all processes, worker processes
included, of RSS (shared pages counted in every process) and of PSS (shared pages divided among their sharers: the
tree's real footprint). The table shows all three; the memory target is judged on both sums.

The script prints figures and the targets; it never asserts. It exits non-zero only when a run fails.

Usage::

    python benchmarks/bench_conform.py [--rows 1000000] [--repeat 1] [--memory-check] [--readers] [--no-ogr2ogr]
        [--keep] [--out bench-out]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import generate

if TYPE_CHECKING:
    from collections.abc import Callable

try:
    import psutil
except ImportError:  # the bench dependency group installs it; without it only getrusage figures remain
    psutil = None

TARGET_ROWS_PER_S = 200_000
TARGET_PEAK_RSS_MIB = 300.0
MEMORY_CHECK_ROWS = 10_000_000
POLL_SECONDS = 0.1
PSS_EVERY = 5
MIB = 1024 * 1024

#: Run by a fresh interpreter for every measurement, so ``RUSAGE_CHILDREN`` covers exactly one run.
_HELPER = """
import json, resource, subprocess, sys, time
result, log, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(log, "wb") as out:
    started = time.perf_counter()
    code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(result, "w") as f:
    json.dump({"returncode": code, "seconds": seconds, "maxrss_kib": usage.ru_maxrss}, f)
"""

#: The conform shared by both cases: regexp and join besides plain field references.
CONFORM = {
    "number": {"function": "regexp", "field": "FULLADDR", "pattern": "^(\\S+)\\s"},
    "street": {"function": "join", "fields": ["PREDIR", "STNAME", "STTYPE"]},
    "unit": "UNIT",
    "city": "CITY",
    "postcode": "ZIP",
}


@dataclass
class Measurement:
    """Figures of one run."""

    name: str
    rows_in: int
    returncode: int
    seconds: float
    #: Peak of the summed RSS of the whole process tree (psutil polling), or None without psutil.
    tree_rss_bytes: int | None
    #: Peak of the summed PSS of the whole process tree, or None when not measurable.
    tree_pss_bytes: int | None
    #: ``ru_maxrss`` of ``RUSAGE_CHILDREN``: the largest single process of the run.
    max_process_bytes: int
    processes: int
    log: Path
    rows_out: int | None = None

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.returncode == 0

    @property
    def rows_per_s(self) -> float:
        """Input rows per wall-clock second."""
        return self.rows_in / self.seconds if self.seconds else 0.0

    @property
    def peak_rss_bytes(self) -> int:
        """Summed RSS peak, never less than the largest process (polling can miss a short peak)."""
        return max(self.tree_rss_bytes or 0, self.max_process_bytes)


def _tree_memory(root: psutil.Process, with_pss: bool) -> tuple[int, int | None, int]:
    """Summed RSS, summed PSS and count of the processes below ``root`` (the helper itself is not counted).

    :param root: the helper process.
    :param with_pss: also read PSS (``/proc/<pid>/smaps_rollup``, about 5 ms per large process, against well
        under 1 ms for RSS alone); the PSS sum is None when not read or not readable.
    :return: ``(rss, pss, count)``.
    """
    rss = pss = count = 0
    pss_ok = with_pss
    try:
        children = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, None, 0
    for proc in children:
        try:
            if pss_ok:
                info = proc.memory_full_info()  # RSS and PSS of the same instant
                rss += info.rss
                pss += info.pss
            else:
                rss += proc.memory_info().rss
            count += 1
        except psutil.AccessDenied:
            pss_ok = False
        except (psutil.NoSuchProcess, AttributeError):
            pass
    return rss, (pss if pss_ok else None), count


def measure(name: str, cmd: list[str], rows_in: int, work_dir: Path) -> Measurement:
    """Run ``cmd`` through the helper, timing it and tracking its memory.

    :param name: label for the table.
    :param cmd: the command line.
    :param rows_in: input rows, for rows/s.
    :param work_dir: folder for the helper's result file and the command's log (created).
    :return: the measurement.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    result = work_dir / "measure.json"
    log = work_dir / "command.log"
    result.unlink(missing_ok=True)
    print(f"  running {name}: {' '.join(map(str, cmd))}", flush=True)
    helper = subprocess.Popen([sys.executable, "-c", _HELPER, str(result), str(log), *map(str, cmd)])
    peak_rss: int | None = None
    peak_pss: int | None = None
    processes = 0
    if psutil is not None:
        peak_rss = 0
        root = psutil.Process(helper.pid)
        polls = 0
        while helper.poll() is None:
            # PSS is costly to read, and the polling shares the run's two cores: read it on every
            # PSS_EVERY-th poll only.
            rss, pss, count = _tree_memory(root, with_pss=polls % PSS_EVERY == 0)
            polls += 1
            peak_rss = max(peak_rss, rss)
            if pss is not None:
                peak_pss = max(peak_pss or 0, pss)
            processes = max(processes, count)
            time.sleep(POLL_SECONDS)
    helper.wait()
    if not result.exists():
        return Measurement(name, rows_in, helper.returncode or 1, 0.0, peak_rss, peak_pss, 0, processes, log)
    data = json.loads(result.read_text())
    return Measurement(
        name,
        rows_in,
        data["returncode"],
        data["seconds"],
        peak_rss,
        peak_pss,
        data["maxrss_kib"] * 1024,
        processes,
        log,
    )


def write_source(path: Path, fmt: str, data_url: str) -> Path:
    """Write a v2 source file with one address entry using :data:`CONFORM`.

    :param path: where to write it.
    :param fmt: conform ``format`` (``shapefile`` or ``csv``).
    :param data_url: the ``data`` URL (never fetched: ``conform`` works on a local INPUT).
    :return: ``path``.
    """
    conform: dict[str, object] = {"format": fmt}
    if fmt == "csv":
        conform |= {"lon": "X", "lat": "Y"}
    conform |= CONFORM
    source = {
        "schema": 2,
        # A US Census entry, so the run does not also report "Missing or incomplete coverage".
        "coverage": {
            "US Census": {"geoid": "06", "name": "California", "state": "California"},
            "country": "us",
            "state": "ca",
        },
        "layers": {
            "addresses": [
                {
                    "name": "bench",
                    "protocol": "http",
                    "data": data_url,
                    "website": "https://example.com/bench",
                    "license": "Public Domain",
                    "conform": conform,
                }
            ]
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(source, indent=4) + "\n", encoding="utf-8")
    return path


def openaddr_command() -> list[str]:
    """The ``openaddr`` console script next to this interpreter, or ``python -m openaddr.cli``."""
    script = Path(sys.executable).with_name("openaddr")
    return [str(script)] if script.exists() else [sys.executable, "-m", "openaddr.cli"]


def count_output_rows(out_dir: Path) -> int | None:
    """Address count of a conform run: ``index.json``'s ``address count``, else the data rows of ``out.csv``."""
    for index in sorted(out_dir.rglob("index.json")):
        try:
            keys, values = json.loads(index.read_text(encoding="utf-8"))
            count = dict(zip(keys, values, strict=True)).get("address count")
        except (ValueError, TypeError):
            continue
        if isinstance(count, int):
            return count
    for out_csv in sorted(out_dir.rglob("out.csv")):
        with out_csv.open(newline="", encoding="utf-8") as f:
            return max(sum(1 for _ in csv.reader(f)) - 1, 0)
    return None


def run_conform(
    name: str, source: Path, input_path: Path, rows: int, runs_dir: Path, keep: bool
) -> Measurement:
    """Run ``openaddr conform`` on one input into a fresh output folder and measure it."""
    out_dir = runs_dir / name
    shutil.rmtree(out_dir, ignore_errors=True)
    fingerprint = hashlib.md5(f"bench-{name}".encode()).hexdigest()
    cmd = [
        *openaddr_command(),
        "conform",
        str(source),
        str(input_path),
        "--layer",
        "addresses",
        "--fingerprint",
        fingerprint,
        "--out",
        str(out_dir / "out"),
    ]
    m = measure(name, cmd, rows, out_dir)
    if m.ok:
        m.rows_out = count_output_rows(out_dir / "out")
    if m.ok and not keep:
        shutil.rmtree(out_dir / "out", ignore_errors=True)
    return m


def run_ogr2ogr(shp: Path, rows: int, runs_dir: Path, keep: bool) -> Measurement:
    """Time ``ogr2ogr -f CSV -t_srs EPSG:4326 -lco GEOMETRY=AS_XY`` on the shapefile."""
    name = f"ogr2ogr-shapefile-{rows}"
    out_dir = runs_dir / name
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    out_csv = out_dir / "out.csv"
    cmd = ["ogr2ogr", "-f", "CSV", "-t_srs", "EPSG:4326", "-lco", "GEOMETRY=AS_XY", str(out_csv), str(shp)]
    m = measure(name, cmd, rows, out_dir)
    if m.ok:
        m.rows_out = rows
        if not keep:
            out_csv.unlink(missing_ok=True)
    return m


def best_of(repeat: int, run: Callable[[], Measurement]) -> Measurement:
    """Call ``run`` ``repeat`` times; return the fastest run with the highest memory figures of all runs.

    The first failed run is returned as it is (and stops the repetition).
    """
    runs: list[Measurement] = []
    for _ in range(max(repeat, 1)):
        m = run()
        if not m.ok:
            return m
        runs.append(m)
    fastest = min(runs, key=lambda m: m.seconds)

    def peak(values: list[int | None]) -> int | None:
        known = [v for v in values if v is not None]
        return max(known) if known else None

    return dataclasses.replace(
        fastest,
        tree_rss_bytes=peak([m.tree_rss_bytes for m in runs]),
        tree_pss_bytes=peak([m.tree_pss_bytes for m in runs]),
        max_process_bytes=max(m.max_process_bytes for m in runs),
        processes=max(m.processes for m in runs),
    )


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:,.1f}"


def print_table(results: list[Measurement]) -> None:
    """Print the figures of every run."""
    header = (
        f"{'run':<28} {'rows in':>11} {'rows out':>11} {'seconds':>8} {'rows/s':>9} "
        f"{'RSS sum MiB':>12} {'PSS sum MiB':>12} {'max proc MiB':>13} {'procs':>5}"
    )
    print()
    print(header)
    print("-" * len(header))
    for m in results:
        if not m.ok:
            print(f"{m.name:<28} FAILED (exit {m.returncode}); log: {m.log}")
            continue
        rows_out = "-" if m.rows_out is None else f"{m.rows_out:,}"
        print(
            f"{m.name:<28} {m.rows_in:>11,} {rows_out:>11} {m.seconds:>8.2f} {m.rows_per_s:>9,.0f} "
            f"{_mib(m.tree_rss_bytes):>12} {_mib(m.tree_pss_bytes):>12} {_mib(m.max_process_bytes):>13} "
            f"{m.processes or '-':>5}"
        )
    print()


def print_method() -> None:
    """Say how memory was measured."""
    if psutil is not None:
        print(
            "RSS sum / PSS sum MiB: peak over the run of the summed RSS / PSS of every process of the run, "
            f"worker processes included (psutil; RSS polled every {POLL_SECONDS * 1000:.0f} ms, PSS every "
            f"{POLL_SECONDS * PSS_EVERY * 1000:.0f} ms). "
            "RSS counts pages shared between processes (forked workers, libraries) in each of them; PSS divides "
            "them among their sharers, so the PSS sum is the tree's real footprint."
        )
    else:
        print("RSS sum / PSS sum MiB: not measured (psutil is not installed).")
    print(
        "max proc MiB: getrusage(RUSAGE_CHILDREN).ru_maxrss in a fresh helper process: the peak RSS of the "
        "largest single process of the run. procs: most processes seen at once."
    )


def print_targets(results: list[Measurement]) -> None:
    """Compare the shapefile runs with the targets and the conform with ogr2ogr."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    limit = TARGET_PEAK_RSS_MIB
    for m in results:
        if not m.ok or not m.name.startswith("conform-shapefile"):
            continue
        print(
            f"target {m.name}: >= {TARGET_ROWS_PER_S:,} rows/s: {m.rows_per_s:,.0f} "
            f"({verdict(m.rows_per_s >= TARGET_ROWS_PER_S)})"
        )
        memory = [("RSS sum" if m.tree_rss_bytes is not None else "max proc", m.peak_rss_bytes)]
        if m.tree_pss_bytes is not None:
            memory.append(("PSS sum", m.tree_pss_bytes))
        figures = "; ".join(
            f"{label} {value / MIB:,.1f} ({verdict(value / MIB <= limit)})" for label, value in memory
        )
        print(f"target {m.name}: peak memory <= {limit:.0f} MiB: {figures}")
        if m.rows_out is not None and m.rows_out != m.rows_in:
            print(f"  note: {m.name} wrote {m.rows_out:,} rows for {m.rows_in:,} input rows")
    ours = {m.rows_in: m for m in results if m.ok and m.name.startswith("conform-shapefile")}
    for m in results:
        if m.ok and m.name.startswith("ogr2ogr") and m.rows_in in ours and m.rows_per_s:
            conform = ours[m.rows_in]
            print(
                f"speed vs ogr2ogr ({m.rows_in:,} rows): conform {conform.rows_per_s:,.0f} rows/s / ogr2ogr "
                f"{m.rows_per_s:,.0f} rows/s = {conform.rows_per_s / m.rows_per_s:.2f}"
            )


def main(argv: list[str] | None = None) -> int:
    """Command line; returns 1 when any run failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows", type=int, default=generate.DEFAULT_ROWS, help="rows per case (default 1,000,000)"
    )
    parser.add_argument(
        "--memory-check",
        action="store_true",
        help=f"also run the shapefile case with {MEMORY_CHECK_ROWS:,} rows and report its peak RSS",
    )
    parser.add_argument("--readers", action="store_true", help="also run bench_readers.py (pyogrio vs fiona)")
    parser.add_argument("--no-ogr2ogr", action="store_true", help="skip the ogr2ogr comparison")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each 1x case N times and report the fastest (memory: the highest of all runs)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the outputs of each run under OUT/runs/")
    parser.add_argument(
        "--out", type=Path, default=generate.DEFAULT_OUT, help="working folder (default bench-out)"
    )
    args = parser.parse_args(argv)

    root: Path = args.out.resolve()
    runs_dir = root / "runs"
    sources = root / "sources" / "bench"
    shp_source = write_source(sources / "shapefile.json", "shapefile", "https://example.com/addresses.zip")
    csv_source = write_source(sources / "csv.json", "csv", "https://example.com/addresses.csv")

    print(
        f"conform benchmark: {args.rows:,} rows, best of {args.repeat}; {os.cpu_count()} CPUs; python {sys.version.split()[0]}; "
        f"openaddr: {' '.join(openaddr_command())}",
        flush=True,
    )
    data = generate.ensure(root, args.rows)
    cases = [("shapefile", shp_source, data["shp"]), ("csv", csv_source, data["csv"])]
    results = [
        best_of(
            args.repeat,
            lambda case=case, source=source, path=path: run_conform(
                f"conform-{case}-{args.rows}", source, path, args.rows, runs_dir, args.keep
            ),
        )
        for case, source, path in cases
    ]
    ogr2ogr = shutil.which("ogr2ogr")
    if args.no_ogr2ogr:
        pass
    elif ogr2ogr is None:
        print("  ogr2ogr not on PATH: no comparison (Debian: apt-get install gdal-bin)", flush=True)
    else:
        version = subprocess.run([ogr2ogr, "--version"], capture_output=True, text=True).stdout.strip()
        print(f"  ogr2ogr: {version}", flush=True)
        results.append(best_of(args.repeat, lambda: run_ogr2ogr(data["shp"], args.rows, runs_dir, args.keep)))
    if args.memory_check:
        big = generate.ensure(root, MEMORY_CHECK_ROWS, formats=("shp",))
        results.append(
            run_conform(
                f"conform-shapefile-{MEMORY_CHECK_ROWS}",
                shp_source,
                big["shp"],
                MEMORY_CHECK_ROWS,
                runs_dir,
                args.keep,
            )
        )

    print_table(results)
    print_method()
    print_targets(results)
    failed = [m for m in results if not m.ok]
    for m in failed:
        tail = m.log.read_text(errors="replace").splitlines()[-15:] if m.log.exists() else []
        print(f"\n{m.name} failed with exit {m.returncode}; last lines of {m.log}:")
        for line in tail:
            print(f"  {line}")

    if args.readers:
        print("\nreader comparison (bench_readers.py):", flush=True)
        readers = [
            sys.executable,
            str(Path(__file__).with_name("bench_readers.py")),
            "--rows",
            str(args.rows),
            "--out",
            str(root),
        ]
        readers_failed = subprocess.call(readers) != 0
    else:
        readers_failed = False
    return 1 if failed or readers_failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Time the preview image (openaddr/preview.py) against the run it belongs to.

Three figures, each next to the time of the whole ``openaddr conform`` that drew it:

1. every fixture source that conforms (``fixtures/machine``, copied into ``--out`` first), the largest by address
   count reported: the preview's time as the run logged it ("Drew the preview … in X s", a cold process: imports
   and the basemap's decoding included) and warm (best of ``--repeat`` in this process);
2. ``--rows`` generated address points (default 1,000,000; ``generate.py``'s Bay Area CSV, the ``bench_conform.py``
   source): the same two figures, and the warm time split into reading ``out.csv``, drawing and PNG encoding;
3. ``--rows`` generated building outlines (small squares over the same area) in ``out.geojson``: reading and
   drawing only (no conform).

Usage::

    .venv/bin/python benchmarks/bench_preview.py [--rows N] [--repeat N] [--out bench-out]

Never part of the tests; it prints figures and exits non-zero only when a run fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import bench_conform
import generate
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from openaddr import preview  # noqa: E402

_DREW = re.compile(r"Drew the preview of .* in ([0-9.]+) s")


def shared() -> Path:
    return Path(os.environ.get("OPENADDR_SHARED", ROOT.parent / "shared"))


def conform(source: Path, data: Path, out: Path, layer: str = "addresses") -> tuple[float, dict[str, object]]:
    """Run ``openaddr conform`` as the task's subprocess would; return its wall time and state."""
    shutil.rmtree(out, ignore_errors=True)
    fingerprint = hashlib.md5(str(source).encode()).hexdigest()
    cmd = [*bench_conform.openaddr_command(), "conform", str(source), str(data), "--layer", layer]
    cmd += ["--fingerprint", fingerprint, "--out", str(out)]
    started = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    seconds = time.perf_counter() - started
    index = out / "index.json"
    if not index.exists():
        return seconds, {}
    keys, values = json.loads(index.read_text())
    return seconds, dict(zip(keys, values, strict=True))


def logged_preview_seconds(out: Path) -> float | None:
    found = _DREW.search((out / "output.txt").read_text(errors="replace"))
    return float(found.group(1)) if found else None


def best(repeat: int, run: object) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()  # type: ignore[operator]
        times.append(time.perf_counter() - started)
    return min(times)


def fixtures(work: Path, repeat: int) -> bool:
    from fixture_cases import CASES

    base = shared() / "fixtures" / "machine"
    rows = []
    for source_name, data_name, problem in CASES:
        if problem is not None:
            continue
        folder = work / "fixtures" / source_name.replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        source = shutil.copy(base / "sources" / source_name, folder / Path(source_name).name)
        data = shutil.copy(base / "data" / data_name, folder / data_name)
        seconds, state = conform(Path(source), Path(data), folder / "out")
        if state.get("preview") != "preview.png":
            print(f"  {source_name}: no preview ({state.get('source problem')})")
            continue
        warm = best(repeat, lambda out=folder / "out": preview.render_state_preview(out, "addresses"))
        count = int(state.get("address count") or 0)
        rows.append((count, source_name, seconds, logged_preview_seconds(folder / "out"), warm))
    if not rows:
        print("no fixture drew a preview")
        return False
    rows.sort(reverse=True)
    print(f"{'fixture':40} {'addresses':>10} {'conform s':>10} {'preview s (in run)':>19} {'warm s':>8}")
    for count, name, seconds, logged, warm in rows[:5]:
        print(f"{name:40} {count:>10,} {seconds:>10.2f} {logged or float('nan'):>19.3f} {warm:>8.3f}")
    count, name, seconds, logged, warm = rows[0]
    share = 100 * (logged or 0) / seconds
    print(f"largest fixture {name}: preview {logged:.3f} s of the run's {seconds:.2f} s ({share:.0f} %)\n")
    return True


def million_points(work: Path, rows: int, repeat: int) -> bool:
    data = generate.ensure(work, rows, ("csv",))["csv"]
    source = bench_conform.write_source(
        work / "sources" / "bench" / "preview-csv.json", "csv", "http://x/a.csv"
    )
    out = work / "runs" / "preview-points" / "out"
    seconds, state = conform(source, data, out)
    if state.get("preview") != "preview.png":
        print(
            f"the {rows:,}-point run drew no preview: {state.get('source problem')}; see {out / 'output.txt'}"
        )
        return False
    logged = logged_preview_seconds(out) or float("nan")
    lon, lat = preview.read_csv_points(out / "out.csv")
    read = best(repeat, lambda: preview.read_csv_points(out / "out.csv"))
    draw = best(repeat, lambda: preview.render_points(lon, lat))
    image = preview.render_points(lon, lat)
    assert image is not None
    encode = best(repeat, lambda: preview.png_bytes(image))
    whole = best(repeat, lambda: preview.render_state_preview(out, "addresses"))
    print(
        f"{rows:,} points ({len(lon):,} valid): conform {seconds:.2f} s in all, preview {logged:.3f} s in the run "
        f"({100 * logged / seconds:.1f} %)"
    )
    print(
        f"  warm: {whole:.3f} s = read out.csv {read:.3f} s + draw {draw:.3f} s + PNG {encode:.3f} s "
        f"({(out / 'preview.png').stat().st_size:,} bytes)\n"
    )
    return True


def million_buildings(work: Path, rows: int, repeat: int) -> bool:
    rng = np.random.default_rng(14)
    lon = rng.uniform(-122.5, -121.8, rows)
    lat = rng.uniform(37.3, 37.9, rows)
    size = rng.uniform(0.0001, 0.0003, rows)
    out = work / "runs" / "preview-buildings"
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with (out / "out.geojson").open("w") as fh:
        for i in range(0, rows, 100_000):
            x0, y0, d = lon[i : i + 100_000], lat[i : i + 100_000], size[i : i + 100_000]
            fh.writelines(
                f'{{"type":"Feature","geometry":{{"type":"Polygon","coordinates":[[[{a:.7f},{b:.7f}],'
                f"[{a + s:.7f},{b:.7f}],[{a + s:.7f},{b + s:.7f}],[{a:.7f},{b + s:.7f}],[{a:.7f},{b:.7f}]]]}},"
                f'"properties":{{"hash":"h","id":"","height":"","levels":""}}}}\n'
                for a, b, s in zip(x0.tolist(), y0.tolist(), d.tolist(), strict=True)
            )
    print(f"(wrote {rows:,} building squares in {time.perf_counter() - started:.1f} s)")
    chunks = list(preview.read_geojson_geometries(out / "out.geojson"))
    read = best(repeat, lambda: list(preview.read_geojson_geometries(out / "out.geojson")))
    draw = best(repeat, lambda: preview.render_geometries(chunks))
    whole = best(repeat, lambda: preview.render_state_preview(out, "buildings"))
    print(
        f"{rows:,} building outlines: {whole:.3f} s = read out.geojson {read:.3f} s + draw and encode "
        f"{draw:.3f} s (warm)\n"
    )
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    args = parser.parse_args(argv)
    work: Path = args.out.resolve()
    work.mkdir(parents=True, exist_ok=True)
    ok = fixtures(work, args.repeat)
    ok = million_points(work, args.rows, args.repeat) and ok
    ok = million_buildings(work, args.rows, args.repeat) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

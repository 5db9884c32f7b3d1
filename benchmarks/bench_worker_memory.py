"""Peak memory of one worker slot: ``openaddr process-one`` (the subprocess a ``process_source`` task runs) on the
largest conforming fixture and on a generated source of N rows (issue 16: worker concurrency sized by memory).

    .venv/bin/python benchmarks/bench_worker_memory.py                 # the fixture only
    .venv/bin/python benchmarks/bench_worker_memory.py --rows 10000000 # also a 10M-row shapefile source

The data is given as a ``file:`` URL (``OPENADDR_ALLOW_FILE_URLS=1``), so the run copies it as it would download it,
computes its fingerprint, unpacks it and conforms it: every stage of a real entry but the network. Figures as in
``bench_conform.py`` (README there): the peak of the summed RSS and PSS of the process tree, and the largest
single process. Never part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_conform import _mib, measure, openaddr_command, write_source  # noqa: E402
from generate import ensure  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("OPENADDR_SHARED", ROOT.parent / "shared")) / "fixtures" / "machine"
#: The largest fixture whose source conforms (Oakland's larger excerpt has a broken conform on purpose).
FIXTURE = ("us-ca-san_francisco.json", "us-ca-san_francisco-excerpt.zip")


def fixture_source(out: Path) -> Path:
    """The San Francisco fixture source with its data as a ``file:`` URL of a copy in ``out``."""
    name, data = FIXTURE
    copy = out / data
    shutil.copyfile(FIXTURES / "data" / data, copy)
    document = json.loads((FIXTURES / "sources" / name).read_text(encoding="utf-8"))
    entry = document["layers"]["addresses"][0] if "layers" in document else document
    entry["data"] = copy.as_uri()
    path = out / "us" / "ca" / "san_francisco.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def generated_source(out: Path, rows: int) -> Path:
    """A v2 shapefile source of ``rows`` generated rows, zipped without compression (as many agencies serve)."""
    shapefile = ensure(ROOT / "bench-out", rows, ("shp",))["shp"]
    archive = out / f"addresses-{rows}.zip"
    if not archive.exists():
        print(f"  zipping {shapefile.parent} ...", flush=True)
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zipped:
            for part in sorted(shapefile.parent.glob(f"{shapefile.stem}.*")):
                zipped.write(part, part.name)
    return write_source(out / "us" / "ca" / f"generated_{rows}.json", "shapefile", archive.as_uri())


def addresses(out: Path) -> int | None:
    for index in out.rglob("index.json"):
        keys, values = json.loads(index.read_text())
        count = dict(zip(keys, values, strict=True)).get("address count")
        if count is not None:
            return int(count)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, help="also a generated shapefile source of this many rows")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "worker-memory")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["OPENADDR_ALLOW_FILE_URLS"] = "1"
    cases = [("fixture san_francisco", fixture_source(args.out))]
    if args.rows:
        cases.append((f"generated {args.rows:,} rows", generated_source(args.out, args.rows)))
    print(
        f"{'case':<28} {'exit':>4} {'seconds':>8} {'addresses':>11} {'RSS sum':>8} {'PSS sum':>8} {'max proc':>8}"
    )
    status = 0
    for name, source in cases:
        out = args.out / "runs" / source.stem
        shutil.rmtree(out, ignore_errors=True)
        command = [*openaddr_command(), "process-one", str(source), "--out", str(out)]
        result = measure(name, command, 0, args.out / "logs" / source.stem)
        count = addresses(out)
        print(
            f"{name:<28} {result.returncode:>4} {result.seconds:>8.1f} {count or 0:>11,} "
            f"{_mib(result.peak_rss_bytes):>8} {_mib(result.tree_pss_bytes):>8} {_mib(result.max_process_bytes):>8}  (MiB)",
            flush=True,
        )
        status = status or result.returncode
        shutil.rmtree(out, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

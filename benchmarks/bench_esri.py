"""``make bench-esri``: ArcGIS paging one page at a time against pages fetched concurrently (issue 15, part 4).

A generated point layer (``--features``, default 200,000; the layer advertises ``maxRecordCount`` 1000, so 200
pages) is served by the tests' loopback ArcGIS replay server (``tests/esri_server.py``) in a process of its own,
every feature page answered after ``--latency`` seconds (default 0.2). The layer is downloaded by
:func:`openaddr.download.esri.download_esri` twice, with ``esri_concurrency`` 1 (the sequential download) and
``--concurrency`` (default 4); the script prints both times, the speed-up, the most pages the server saw in
flight at once, and whether the two cache CSVs are byte-identical (their MD5, which is the fingerprint). The
target (issue 15) is a speed-up of at least 3.5 at concurrency 4. It never asserts; it exits 1 when the bytes
differ or a download fails.

``--quick`` is a dry run: 20,000 features (20 pages).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # esri_server.py: the tests' loopback ArcGIS server
sys.path.insert(0, str(ROOT))

NAME = "bench-points"
TARGET = 3.5

# The server process: serves the generated layer with the latency, prints the layer URL, stops on stdin's end,
# then prints the most feature pages it saw in flight at once.
SERVER = """
import sys
from pathlib import Path
from esri_server import serve
with serve(Path(sys.argv[1])) as server:
    print(server.layer_url(sys.argv[2], latency=float(sys.argv[3])), flush=True)
    for line in sys.stdin:
        print(server.max_in_flight, flush=True)
        server.max_in_flight = 0
"""


def layer(folder: Path, features: int) -> Path:
    """The generated layer's recordings (made once per size)."""
    from esri_server import generate_layer

    data = folder / f"esri-{features}"
    if not (data / f"{NAME}-0.json").exists():
        started = time.perf_counter()
        generate_layer(data, NAME, features, page_size=1000)
        print(f"Generated {features:,} features in {time.perf_counter() - started:.1f} s ({data})")
    return data


def source(folder: Path, url: str) -> Path:
    path = folder / "sources" / "xx" / "bench.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "coverage": {"country": "xx"},
        "data": url,
        "protocol": "ESRI",
        "conform": {"format": "geojson", "number": "NUMBER", "street": "STREET", "city": "CITY"},
    }
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def run(path: Path, work: Path, concurrency: int) -> tuple[float, str, int]:
    """Download the layer with ``concurrency``: seconds, MD5 and bytes of the cache CSV."""
    from openaddr.download.esri import download_esri
    from openaddr.download.hostlimit import LocalHostLimiter
    from openaddr.settings import Settings
    from openaddr.sources import load_source

    entry = load_source(path).entries(layer="addresses")[0]
    settings = Settings(allow_private_hosts=True, esri_concurrency=concurrency)
    started = time.perf_counter()
    result = download_esri(entry, work, settings=settings, limiter=LocalHostLimiter())
    elapsed = time.perf_counter() - started
    digest = hashlib.md5(result.path.read_bytes()).hexdigest()
    return elapsed, digest, result.size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=200_000)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds every page waits (default 0.2)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="a dry run: 20,000 features")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench-out", help="working folder (default bench-out/)"
    )
    args = parser.parse_args()
    features = 20_000 if args.quick else args.features
    args.out.mkdir(parents=True, exist_ok=True)
    data = layer(args.out, features)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(data), NAME, str(args.latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert server.stdin is not None
    assert server.stdout is not None
    try:
        url = server.stdout.readline().strip()
        if not url:
            print("The replay server did not start", file=sys.stderr)
            return 1
        # The server loads the layer on its first request: before any timing.
        with urllib.request.urlopen(f"{url}?f=json", timeout=120) as response:
            response.read()
        pages = -(-features // 1000)
        print(
            f"Layer: {features:,} features, {pages} pages of 1000, {args.latency * 1000:.0f} ms a page "
            f"(cpus: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f})"
        )
        results = {}
        with tempfile.TemporaryDirectory(prefix="bench-esri-", dir=args.out) as tmp:
            work = Path(tmp)
            path = source(work, url)
            for concurrency in (1, args.concurrency):
                elapsed, digest, size = run(path, work / f"c{concurrency}", concurrency)
                server.stdin.write("\n")
                server.stdin.flush()
                in_flight = int(server.stdout.readline())
                results[concurrency] = (elapsed, digest)
                print(
                    f"concurrency {concurrency}: {elapsed:7.2f} s  {pages / elapsed:6.1f} pages/s  "
                    f"{size:,} bytes  md5 {digest}  at most {in_flight} pages in flight"
                )
        (sequential, first), (concurrent, second) = results[1], results[args.concurrency]
        speedup = sequential / concurrent
        same = first == second
        print(
            f"speed-up at concurrency {args.concurrency}: {speedup:.2f}x (target >= {TARGET}x: "
            f"{'met' if speedup >= TARGET else 'NOT met'})"
        )
        print(f"cache CSVs byte-identical: {'yes' if same else 'NO'}")
        return 0 if same else 1
    finally:
        server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    sys.exit(main())

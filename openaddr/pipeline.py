"""Stream a reader's batches through the conform into the output files, on one or more cores.

Reading (GDAL, CSV parsing, reprojection) happens in the calling process; the per-row Python work (attribute
functions, canonicalisation, HASH, encoding) runs in :class:`BatchTransformer`, either in-process or in a pool of
worker processes when the machine has cores to spare. Batches are written back in input order, and the number of
batches in flight is bounded, so memory stays flat whatever the input size (processing.md §13).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from openaddr.outputs import (
    AtomicFile,
    Stats,
    csv_header,
    encode_address_csv,
    encode_address_geojson,
    encode_feature_geojson,
    package_name,
    write_json,
    write_package,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from openaddr.readers.base import Batch
    from openaddr.sources import LayerEntry

log = logging.getLogger(__name__)

#: Below this many rows in the first batch, a worker pool costs more than it saves.
PARALLEL_THRESHOLD = 20_000


@dataclass
class BatchResult:
    """The encoded outputs of one batch."""

    csv: bytes
    geojson: bytes
    stats: Stats


class BatchTransformer:
    """Conform, canonicalise, hash and encode batches of one layer entry.

    :param conform: the entry's conform object
    :param layer_type: the entry's layer type
    :param label: names the entry in messages
    :param seed: the HASH seed (the fingerprint, §8.2)
    """

    def __init__(self, conform: Mapping[str, Any], layer_type: str, label: str, seed: str) -> None:
        from openaddr.conform import Conform

        self.conform = Conform(conform, layer_type, label=label)
        self.layer_type = layer_type
        self.seed = seed

    def __call__(self, columns: dict[str, list[str]], size: int, geometries: list[Any] | None) -> BatchResult:
        """Transform one batch (the fields of :class:`~openaddr.readers.base.Batch`)."""
        from openaddr.readers.base import OA_X, OA_Y

        attrs = self.conform.apply(columns, size)
        stats = Stats(count=size)
        if self.layer_type == "addresses":
            from openaddr.canonical import ADDRESS_COLUMNS, address_rows

            rows = address_rows(columns[OA_X], columns[OA_Y], attrs, self.seed)
            for i, name in enumerate(ADDRESS_COLUMNS[2:], start=2):
                stats.add_filled(name.lower(), [row[i] for row in rows])
            stats.add_coordinates([row[0] for row in rows], [row[1] for row in rows])
            return BatchResult(
                encode_address_csv(rows), encode_address_geojson(rows, attrs.get("accuracy")), stats
            )

        from openaddr.canonical import feature_hashes
        from openaddr.conform import ATTRIBUTES

        names = ATTRIBUTES[self.layer_type]
        geojson, wkt = _geometry_texts(geometries, size)
        values = {name: [v if v is not None else "" for v in attrs[name]] for name in names}
        hashes = feature_hashes(self.seed, values, wkt)
        for name in names:
            stats.add_filled(name, values[name])
        stats.add_coordinates(columns[OA_X], columns[OA_Y])
        return BatchResult(b"", encode_feature_geojson(geojson, names, values, hashes), stats)


def _geometry_texts(geometries: list[Any] | None, size: int) -> tuple[list[str | None], list[str | None]]:
    """GeoJSON and WKT of each geometry, coordinates rounded to 7 decimals (§8.3, §9.3)."""
    if geometries is None:
        return [None] * size, [None] * size
    import numpy as np
    import shapely

    array = np.asarray(geometries, dtype=object)
    present = ~shapely.is_missing(array)
    rounded = array.copy()
    if present.any():
        rounded[present] = shapely.transform(array[present], lambda c: np.round(c, 7), include_z=None)
    geojson = [None if g is None else shapely.to_geojson(g) for g in rounded]
    wkt = [None if g is None else shapely.to_wkt(g, trim=True, rounding_precision=-1) for g in rounded]
    return geojson, wkt


# Worker-process state: one transformer per worker, built by the pool initializer.
_worker: BatchTransformer | None = None


def _init_worker(conform: Mapping[str, Any], layer_type: str, label: str, seed: str) -> None:
    global _worker
    _worker = BatchTransformer(conform, layer_type, label, seed)


def _work(columns: dict[str, list[str]], size: int, geometries: list[Any] | None) -> BatchResult:
    assert _worker is not None
    return _worker(columns, size, geometries)


def worker_count() -> int:
    """Worker processes to use: ``OPENADDR_WORKERS`` or the number of usable cores (0 → in-process)."""
    env = os.environ.get("OPENADDR_WORKERS")
    if env is not None:
        return max(0, int(env))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return cores if cores > 1 else 0


def run_pipeline(
    entry: LayerEntry, reader: Any, transform: BatchTransformer, state_dir: Path, state: dict[str, Any]
) -> int:
    """Write ``out.csv`` (address layers), ``out.geojson``, ``stats.json`` and the zip; return the row count.

    Nothing is left under a final name unless the whole entry succeeded with at least one row.
    """
    addresses = entry.layer == "addresses"
    conform = entry.conform or {}
    csv_out = AtomicFile(state_dir / "out.csv") if addresses else None
    geo_out = AtomicFile(state_dir / "out.geojson")
    outputs = [f for f in (csv_out, geo_out) if f is not None]
    stats = Stats()
    pool: ProcessPoolExecutor | None = None
    try:
        if csv_out is not None:
            csv_out.write(csv_header())

        def emit(result: BatchResult) -> None:
            if csv_out is not None:
                csv_out.write(result.csv)
            geo_out.write(result.geojson)
            stats.merge(result.stats)

        workers = worker_count()
        in_flight: deque[Future[BatchResult]] = deque()
        for batch in reader.batches():
            batch_: Batch = batch
            if pool is None and workers and batch_.size >= PARALLEL_THRESHOLD:
                import multiprocessing

                pool = ProcessPoolExecutor(
                    max_workers=workers,
                    mp_context=multiprocessing.get_context("forkserver"),
                    initializer=_init_worker,
                    initargs=(dict(conform), entry.layer, entry.label, transform.seed),
                )
                log.debug("Conforming with %d worker processes", workers)
            if pool is None:
                emit(transform(batch_.columns, batch_.size, batch_.geometries))
                continue
            in_flight.append(pool.submit(_work, batch_.columns, batch_.size, batch_.geometries))
            while len(in_flight) > workers:
                emit(in_flight.popleft().result())
        while in_flight:
            emit(in_flight.popleft().result())
    except BaseException:
        for f in outputs:
            f.discard()
        raise
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    skipped = getattr(reader, "skipped", 0)
    if skipped:
        log.warning("Skipped %d records of %s", skipped, entry.label)
    if stats.count == 0:
        for f in outputs:
            f.discard()
        return 0
    for f in outputs:
        f.commit()
    write_json(state_dir / "stats.json", stats.as_dict())
    if csv_out is not None:
        name = package_name(entry.source.path, entry.name, first_address_entry=entry.index == 0)
        zip_path = state_dir / f"{name.rsplit('/', 1)[-1]}.zip"
        write_package(zip_path, name, csv_out.path, state.get("website"), state.get("license"))
        state["processed"] = "out.csv"
    else:
        state["processed"] = "out.geojson"
    log.info("Converted %d rows of %s", stats.count, entry.label)
    return stats.count

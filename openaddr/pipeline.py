"""Stream a reader's batches through the conform into the output files, on one or more cores.

The per-row Python work (attribute functions, canonicalisation, HASH, encoding) is :class:`BatchTransformer`. Three
strategies, chosen by :func:`run_pipeline`:

* small inputs, or one core: read and transform in this process;
* seekable GDAL layers (shapefile, FileGDB, GeoPackage) on several cores: forked workers each read, transform and
  write their own slices of the layer into part files, joined in order here (only slice bounds cross processes);
* other large inputs (CSV, GeoJSON, ESRI caches): read here, transform in forked workers, write back in order.

Output is always in input order, and the batches in flight are bounded, so memory stays flat whatever the input
size (processing.md §13).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openaddr.errors import ConformError
from openaddr.outputs import (
    AtomicFile,
    OutputBudget,
    PackageWriter,
    Stats,
    csv_header,
    encode_address_csv_columns,
    encode_address_geojson,
    encode_feature_geojson,
    package_name,
    write_json,
)
from openaddr.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from openaddr.sources import LayerEntry

log = logging.getLogger(__name__)

#: Below this many expected rows, a worker pool costs more than it saves.
PARALLEL_THRESHOLD = 50_000
#: Records per batch: large enough to amortise the per-batch work, small enough to keep memory flat. Measured on
#: the 1M-row benchmark (benchmarks/README.md): 5,000 rows gives the same speed as 20,000 at two thirds of the
#: memory of the three processes. ``OPENADDR_BATCH_SIZE`` (``Settings.batch_size``) overrides it.
BATCH_SIZE: int = Settings.model_fields["batch_size"].default


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
        self.conform_object = dict(conform)
        self.label = label
        self.layer_type = layer_type
        self.seed = seed

    def __call__(
        self,
        columns: dict[str, list[str]],
        size: int,
        geometries: list[Any] | None,
        xy: tuple[Any, Any] | None = None,
    ) -> BatchResult:
        """Transform one batch (the fields of :class:`~openaddr.readers.base.Batch`)."""
        from openaddr.readers.base import OA_X, OA_Y

        attrs = self.conform.apply(columns, size)
        stats = Stats(count=size)
        if self.layer_type == "addresses":
            from openaddr.canonical import ADDRESS_COLUMNS, address_columns

            address = address_columns(columns[OA_X], columns[OA_Y], attrs, self.seed, xy)
            for name, values in zip(ADDRESS_COLUMNS[2:], address.columns[2:], strict=False):
                stats.add_filled(name.lower(), values)
            if address.lonlat is not None:
                stats.add_values(*address.lonlat)
            else:
                stats.add_coordinates(address.columns[0], address.columns[1])
            return BatchResult(
                encode_address_csv_columns(address.columns),
                encode_address_geojson(address, attrs.get("accuracy")),
                stats,
            )

        from openaddr.canonical import feature_hashes
        from openaddr.conform import ATTRIBUTES

        names = ATTRIBUTES[self.layer_type]
        geojson, wkt = _geometry_texts(geometries, size)
        texts = {name: [v if v is not None else "" for v in attrs[name]] for name in names}
        hashes = feature_hashes(self.seed, texts, wkt)
        for name in names:
            stats.add_filled(name, texts[name])
        stats.add_coordinates(columns[OA_X], columns[OA_Y])
        return BatchResult(b"", encode_feature_geojson(geojson, names, texts, hashes), stats)


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

        def round7(coordinates: np.ndarray) -> np.ndarray:
            return np.round(coordinates, 7)

        # include_z=None (shapely >= 2.1) keeps each geometry's own dimensions; types-shapely still says bool.
        rounded[present] = shapely.transform(array[present], round7, include_z=None)  # type: ignore[call-overload]
    geojson = [None if g is None else shapely.to_geojson(g) for g in rounded]
    wkt = [None if g is None else shapely.to_wkt(g, trim=True, rounding_precision=-1) for g in rounded]
    return geojson, wkt


# Worker-process state: one transformer per worker, built by the pool initializer.
_worker: BatchTransformer | None = None


def _init_worker(conform: Mapping[str, Any], layer_type: str, label: str, seed: str) -> None:
    global _worker
    _worker = BatchTransformer(conform, layer_type, label, seed)


def _work(
    columns: dict[str, list[str]], size: int, geometries: list[Any] | None, xy: tuple[Any, Any] | None
) -> BatchResult:
    assert _worker is not None
    return _worker(columns, size, geometries, xy)


def _expected_rows(reader: Any) -> int:
    """The feature count GDAL reports, else a guess from the file size (about 100 bytes a record)."""
    count = getattr(reader, "feature_count", 0)
    if count:
        return int(count)
    path = getattr(reader, "path", None)
    try:
        return int(path.stat().st_size // 100) if path is not None and path.is_file() else 0
    except OSError:
        return 0


def worker_count(settings: Settings | None = None) -> int:
    """Worker processes to use: ``OPENADDR_WORKERS`` (``Settings.workers``) or the number of usable cores
    (0 → in-process).

    :param settings: the settings to follow (default: :meth:`Settings.from_env`)
    """
    workers = (settings or Settings.from_env()).workers
    if workers is not None:
        return workers
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return cores if cores > 1 else 0


def _fork_pool(workers: int, initializer: Any = None, initargs: tuple[Any, ...] = ()) -> ProcessPoolExecutor:
    """A pool of forked workers, all started now.

    Forking happens before the reader starts any thread, so the children copy a quiet process and share its
    imported libraries copy-on-write (a pool of fresh interpreters would import pyarrow, GDAL and PROJ again).
    """
    import multiprocessing

    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=initializer,
        initargs=initargs,
    )
    pool.submit(int).result()  # a fork pool starts every worker at its first task: now, not later
    log.debug("Conforming with %d worker processes", workers)
    return pool


def _run_streamed(
    reader: Any,
    transform: BatchTransformer,
    columns: list[str] | None,
    workers: int,
    csv_out: _CsvOutputs | None,
    geo_out: AtomicFile,
    tick: Callable[[int], None],
    budget: OutputBudget,
    batch_size: int = BATCH_SIZE,
) -> Stats:
    """Read in this process; transform here, or in ``workers`` processes with results written back in order."""
    stats = Stats()

    def emit(result: BatchResult) -> None:
        budget.charge(_output_bytes(result))
        if csv_out is not None:
            csv_out.write(result.csv)
        geo_out.write(result.geojson)
        stats.merge(result.stats)
        tick(result.stats.count)

    if not workers:
        for batch in reader.batches(batch_size, columns=columns):
            emit(transform(batch.columns, batch.size, batch.geometries, batch.xy))
        return stats
    pool = _fork_pool(
        workers,
        _init_worker,
        (transform.conform_object, transform.layer_type, transform.label, transform.seed),
    )
    try:
        in_flight: deque[Future[BatchResult]] = deque()
        for batch in reader.batches(batch_size, columns=columns):
            in_flight.append(pool.submit(_work, batch.columns, batch.size, batch.geometries, batch.xy))
            del batch
            while len(in_flight) > 2 * workers:  # keeps every worker busy while the oldest is written
                emit(in_flight.popleft().result())
        while in_flight:
            emit(in_flight.popleft().result())
    finally:
        pool.shutdown(cancel_futures=True)
    return stats


def _output_bytes(result: BatchResult) -> int:
    """What a batch adds to the outputs: ``out.csv`` and the zip's CSV member (uncompressed), ``out.geojson``."""
    return 2 * len(result.csv) + len(result.geojson)


# The job of the forked slice workers: they inherit it, so nothing but slice bounds crosses the pipe.
_slice_job: tuple[Any, BatchTransformer, list[str] | None, Path, OutputBudget, int] | None = None


def _conform_slice(index: int, skip: int, limit: int) -> tuple[Stats, int]:
    """Read, transform and write one slice of the layer into part files (runs in a forked worker)."""
    assert _slice_job is not None
    reader, transform, columns, parts, budget, batch_size = _slice_job
    reader.restrict(skip, limit)
    stats = Stats()
    with (parts / f"{index}.csv").open("wb") as csv_part, (parts / f"{index}.geojson").open("wb") as geo_part:
        for batch in reader.batches(batch_size, columns=columns):
            result = transform(batch.columns, batch.size, batch.geometries, batch.xy)
            budget.charge(_output_bytes(result))
            csv_part.write(result.csv)
            geo_part.write(result.geojson)
            stats.merge(result.stats)
    return stats, reader.skipped


def _run_sliced(
    reader: Any,
    transform: BatchTransformer,
    columns: list[str] | None,
    workers: int,
    csv_out: _CsvOutputs | None,
    geo_out: AtomicFile,
    state_dir: Path,
    tick: Callable[[int], None],
    budget: OutputBudget,
    batch_size: int = BATCH_SIZE,
) -> tuple[Stats, int]:
    """Each worker reads, transforms and writes its own slices of a seekable layer; parts are joined in order.

    Only slice bounds and statistics cross process boundaries, so the work scales with the cores.
    """
    global _slice_job
    import math
    import shutil
    import tempfile

    count = reader.feature_count
    # Many slices per worker: they finish at nearly the same time, so no core idles at the end.
    size = max(batch_size, math.ceil(count / (workers * 8)))
    slices = [(i, skip, min(size, count - skip)) for i, skip in enumerate(range(0, count, size))]
    parts = Path(tempfile.mkdtemp(prefix=".parts-", dir=state_dir))
    stats, skipped = Stats(), 0
    _slice_job = (reader, transform, columns, parts, budget, batch_size)
    try:
        pool = _fork_pool(workers)
        try:
            futures = [pool.submit(_conform_slice, *bounds) for bounds in slices]
            for (index, _, _), future in zip(slices, futures, strict=True):
                slice_stats, slice_skipped = future.result()
                stats.merge(slice_stats)
                tick(slice_stats.count)
                skipped += slice_skipped
                if csv_out is not None:
                    csv_out.append_file(parts / f"{index}.csv")
                geo_out.append_file(parts / f"{index}.geojson")
                for suffix in (".csv", ".geojson"):
                    (parts / f"{index}{suffix}").unlink()
        finally:
            pool.shutdown(cancel_futures=True)
    finally:
        _slice_job = None
        shutil.rmtree(parts, ignore_errors=True)
    return stats, skipped


class _CsvOutputs:
    """``out.csv`` and the CSV member of the published zip, fed the same bytes."""

    def __init__(self, csv_file: AtomicFile, package: PackageWriter) -> None:
        self.csv_file = csv_file
        self.package = package

    def write(self, data: bytes) -> None:
        self.csv_file.write(data)
        self.package.write(data)

    def append_file(self, path: Path) -> None:
        self.csv_file.append_file(path)
        self.package.append_file(path)

    def commit(self) -> None:
        self.csv_file.commit()
        self.package.commit()

    def discard(self) -> None:
        self.csv_file.discard()
        self.package.discard()


class ConformTimeout(ConformError):
    """The run's deadline passed while conforming (processing.md §13)."""


class _Progress:
    """Checks the deadline between batches and reports the records read so far."""

    def __init__(self, deadline: float | None, callback: Callable[[int], None] | None) -> None:
        self.deadline = deadline
        self.callback = callback
        self.started = time.time()
        self.count = 0

    def __call__(self, rows: int) -> None:
        self.count += rows
        if self.callback is not None:
            self.callback(self.count)
        if self.deadline is not None and time.time() > self.deadline:
            elapsed = timedelta(seconds=round(time.time() - self.started))
            raise ConformTimeout(f"Timed out after {elapsed}")


def run_pipeline(
    entry: LayerEntry,
    reader: Any,
    transform: BatchTransformer,
    state_dir: Path,
    state: dict[str, Any],
    *,
    deadline: float | None = None,
    progress: Callable[[int], None] | None = None,
    max_output_bytes: int | None = None,
    settings: Settings | None = None,
) -> int:
    """Write ``out.csv`` (address layers), ``out.geojson``, ``stats.json`` and the zip; return the row count.

    Nothing is left under a final name unless the whole entry succeeded with at least one row.

    :param deadline: ``time.time()`` after which the entry fails with "Timed out after …" (checked per batch)
    :param progress: called with the number of records conformed so far
    :param max_output_bytes: bytes the outputs may take (default: ``settings.max_output_bytes``)
    :param settings: batch size, workers and output cap (default: :meth:`Settings.from_env`)
    :raises OutputTooLargeError: the outputs would go over ``max_output_bytes`` (partial outputs removed)
    """
    tick = _Progress(deadline, progress)
    settings = settings or Settings.from_env()
    if max_output_bytes is None:
        max_output_bytes = settings.max_output_bytes
    budget = OutputBudget(max_output_bytes, entry.label)
    from openaddr.conform import source_columns
    from openaddr.readers.projection import report_reprojection

    addresses = entry.layer == "addresses"
    conform = entry.conform or {}
    csv_out: _CsvOutputs | None = None
    if addresses:
        name = package_name(entry.source.path, entry.name, first_address_entry=entry.index == 0)
        zip_path = state_dir / f"{name.rsplit('/', 1)[-1]}.zip"
        csv_out = _CsvOutputs(
            AtomicFile(state_dir / "out.csv"),
            PackageWriter(zip_path, name, state.get("website"), state.get("license")),
        )
    geo_out = AtomicFile(state_dir / "out.geojson")
    outputs: list[Any] = [f for f in (csv_out, geo_out) if f is not None]
    columns = source_columns(conform, entry.layer, reader.columns)
    workers = worker_count(settings)
    try:
        if csv_out is not None:
            csv_out.write(csv_header())
        if workers and getattr(reader, "seekable", False) and reader.feature_count >= PARALLEL_THRESHOLD:
            stats, skipped = _run_sliced(
                reader,
                transform,
                columns,
                workers,
                csv_out,
                geo_out,
                state_dir,
                tick,
                budget,
                settings.batch_size,
            )
        else:
            use_pool = workers > 0 and _expected_rows(reader) >= PARALLEL_THRESHOLD
            stats = _run_streamed(
                reader,
                transform,
                columns,
                workers if use_pool else 0,
                csv_out,
                geo_out,
                tick,
                budget,
                settings.batch_size,
            )
            skipped = getattr(reader, "skipped", 0)
    except BaseException:
        for f in outputs:
            f.discard()
        raise

    if skipped:
        log.warning("Skipped %d records of %s", skipped, entry.label)
    if stats.count == 0:
        for f in outputs:
            f.discard()
        return 0
    for f in outputs:
        f.commit()
    document = stats.as_dict()
    reprojection = report_reprojection(getattr(reader, "reprojection", None), document["bounds"], entry.label)
    document["reprojection"] = reprojection.as_dict() if reprojection is not None else None
    write_json(state_dir / "stats.json", document)
    if csv_out is not None:
        state["processed"] = "out.csv"
    else:
        state["processed"] = "out.geojson"
    log.info("Converted %d rows of %s", stats.count, entry.label)
    return stats.count

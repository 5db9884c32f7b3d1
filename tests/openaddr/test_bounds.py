"""Bounded resources per run (issue 10, item 3): every defect found by attacking ``openaddr`` with hostile inputs.

Each test runs the real command on a real fixture (copied into ``tmp_path`` before it is cut or mutated) and
asserts a named source problem with exit 1, no partial output, nothing left behind; the memory tests run the
command in a fresh helper interpreter and read its children's peak RSS (``getrusage(RUSAGE_CHILDREN)``) against
a generous bound. The helper also caps the address space, so an unbounded reader fails fast instead of taking the
machine down.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from typing import TYPE_CHECKING, Any

import pytest

from openaddr.cli import main
from openaddr.errors import ConformError
from openaddr.readers.archives import ArchiveError, prepare_input, work_folder
from openaddr.readers.gdal import GdalReader
from openaddr.readers.limits import JsonShape, RecordTooLargeError

if TYPE_CHECKING:
    from pathlib import Path

GIB = 2**30
#: Peak RSS a hostile input may cost a run (the issue's bound for the fuzz suite).
MEMORY_BOUND = GIB
COVERAGE = {"country": "us", "state": "oh"}
CONFORM_FAILED = "Could not conform source data"

#: Runs a command and prints the peak RSS of its process tree's largest process and its exit code, as JSON.
_HELPER = """
import json, resource, subprocess, sys
resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))
code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"code": code, "maxrss": usage.ru_maxrss * 1024}))
"""


def write_source(folder: Path, conform: dict[str, Any], name: str = "source.json") -> Path:
    path = folder / name
    document = {"coverage": COVERAGE, "protocol": "http", "data": "http://example.com/x", "conform": conform}
    path.write_text(json.dumps(document))
    return path


def conform(source: Path, data: Path, out: Path) -> tuple[int, dict[str, Any], str]:
    """``openaddr conform`` in this process: exit code, state and ``output.txt``."""
    code = main(["conform", str(source), str(data), "--layer", "addresses", "--out", str(out)])
    keys, values = json.loads((out / "index.json").read_text())
    return code, dict(zip(keys, values, strict=True)), (out / "output.txt").read_text()


def measured_conform(source: Path, data: Path, out: Path, **env: str) -> tuple[int, int]:
    """``openaddr conform`` in a fresh process tree: exit code and peak RSS in bytes."""
    command = [sys.executable, "-m", "openaddr", "conform", str(source), str(data)]
    command += ["--layer", "addresses", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-c", _HELPER, *command],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **env},
        check=True,
    )
    figures = json.loads(result.stdout)
    return figures["code"], figures["maxrss"]


def assert_failed_cleanly(out: Path, code: int, state: dict[str, Any], log: str, words: str) -> None:
    assert code == 1
    assert state["source problem"] == CONFORM_FAILED
    assert words in log
    assert not (out / "out.csv").exists()
    assert not list(out.glob("*.zip"))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no .part, .parts-*, .work


def copy_shapefile(fixtures: Path, stem: str, target: Path) -> Path:
    target.mkdir(exist_ok=True)
    for suffix in (".shp", ".shx", ".dbf", ".prj"):
        source = fixtures / "conforms" / f"{stem}{suffix}"
        if source.exists():
            shutil.copyfile(source, target / source.name)
    return target / f"{stem}.shp"


def cut(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


@pytest.fixture
def trumbull(fixtures: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Trumbull's source file and its shapefile (347 records), extracted into ``tmp_path``."""
    folder = tmp_path / "trumbull"
    with zipfile.ZipFile(fixtures / "data" / "TRU_ADDS-excerpt.zip") as archive:
        archive.extractall(folder)
    source = tmp_path / "trumbull.json"
    shutil.copyfile(fixtures / "sources" / "us" / "oh" / "trumbull.json", source)
    return source, folder / "TRU_ADDS.shp"


LAKE_MAN = {"number": "NUMBER", "street": "STRNAME", "format": "shapefile"}


# --- memory: one record's depth or size ----------------------------------------------------------------------


def test_deeply_nested_geojson_properties_are_refused_in_little_memory(tmp_path: Path) -> None:
    depth = (
        40_000  # 200 KB of nesting: took 23.5 GB before the depth guard (ijson's prefixes grow with depth²)
    )
    feature = '{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {"a": '
    text = (
        '{"type": "FeatureCollection", "features": ['
        + feature
        + '{"a": ' * depth
        + "1"
        + "}" * depth
        + "}}]}"
    )
    data = tmp_path / "deep.geojson"
    data.write_text(text)
    source = write_source(tmp_path, {"format": "geojson", "number": "a", "street": "a"})
    out = tmp_path / "out"
    code, peak = measured_conform(source, data, out)
    assert code == 1
    assert peak < MEMORY_BOUND
    log = (out / "output.txt").read_text()
    assert "nests deeper than 64 levels" in log
    assert "OPENADDR_MAX_JSON_DEPTH" in log


def test_csv_field_of_200_mb_is_refused_in_little_memory(tmp_path: Path) -> None:
    data = tmp_path / "huge.csv"
    with data.open("w") as fh:
        fh.write("X,Y,NUMBER,STREET\n1,2,3,Main\n")
        fh.write('1,2,3,"')
        chunk = "a" * 2**20
        for _ in range(200):  # one 200 MB field: used 1.6 GB before the field limit
            fh.write(chunk)
        fh.write('"\n')
    source = write_source(
        tmp_path, {"format": "csv", "lon": "X", "lat": "Y", "number": "NUMBER", "street": "STREET"}
    )
    out = tmp_path / "out"
    code, peak = measured_conform(source, data, out)
    assert code == 1
    assert peak < MEMORY_BOUND
    log = (out / "output.txt").read_text()
    assert "OPENADDR_MAX_RECORD_BYTES" in log
    assert "huge.csv" in log


def test_csv_field_over_the_limit_names_the_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENADDR_MAX_RECORD_BYTES", str(2**20))
    data = tmp_path / "wide.csv"
    # A quoted field of 3 MB in short lines: the line limit does not see it, the field limit does. (Arrow reads
    # blocks of 1 MiB and refuses a record straddling blocks, so such a record always falls back to the csv
    # module, where the limits apply.)
    data.write_text('X,Y,NUMBER,STREET\n1,2,3,Main\n1,2,3,"' + "a\n" * 1_500_000 + '"\n')
    source = write_source(
        tmp_path, {"format": "csv", "lon": "X", "lat": "Y", "number": "NUMBER", "street": "STREET"}
    )
    code, state, log = conform(source, data, tmp_path / "out")
    assert_failed_cleanly(tmp_path / "out", code, state, log, "larger than 1048576 characters")
    assert "on line" in log


def test_geojson_feature_over_the_record_limit_is_refused(
    fixtures: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENADDR_MAX_RECORD_BYTES", "3000")  # Bucks's features are 1.5 KB or less but one
    data = tmp_path / "bucks.geojson"
    shutil.copyfile(fixtures / "data" / "us-pa-bucks.geojson", data)
    source = tmp_path / "bucks.json"
    shutil.copyfile(fixtures / "sources" / "us" / "pa" / "bucks.json", source)
    code, state, log = conform(source, data, tmp_path / "out")
    if code == 0:  # every feature under the limit: make one longer
        document = json.loads(data.read_text())
        document["features"][1]["properties"]["MUNI"] = "x" * 5000
        data.write_text(json.dumps(document))
        shutil.rmtree(tmp_path / "out")
        code, state, log = conform(source, data, tmp_path / "out")
    assert_failed_cleanly(tmp_path / "out", code, state, log, "has a record of more than 3000 bytes")


@pytest.mark.parametrize(
    ("text", "depth", "longest"),
    [
        ('{"a": [1, 2, {"b": "[[[["}]}', 3, 27),
        ('{"a": "\\"[[[", "b": [[[1]]]}', 4, 29),
        ('{"a": "x\\\\", "b": [[1]]}', 3, 24),
    ],
)
def test_json_shape_follows_strings_and_escapes_across_chunks(text: str, depth: int, longest: int) -> None:
    data = text.encode()
    for size in (1, 2, 3, 7, len(data)):
        shape = JsonShape("t.json", "t", max_record_bytes=10**6, max_depth=depth)
        for start in range(0, len(data), size):
            shape.feed(data[start : start + size])
        assert shape.depth == 0
        assert not shape.in_string
        too_deep = JsonShape("t.json", "t", max_record_bytes=10**6, max_depth=depth - 1)
        with pytest.raises(RecordTooLargeError, match="nests deeper"):
            _feed(too_deep, data, size)


def _feed(shape: JsonShape, data: bytes, size: int) -> None:
    for start in range(0, len(data), size):
        shape.feed(data[start : start + size])


def _reference_shape(data: bytes) -> tuple[int, int]:
    """Deepest nesting and longest member of a JSON text, byte by byte (the guard's definitions, slowly)."""
    depth = deepest = longest = last = 0
    in_string = escaped = False
    for i, byte in enumerate(data):
        char = chr(byte)
        structural = False
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string, structural = False, True
        elif char == '"':
            in_string, structural = True, True
        elif char in "{[":
            depth, structural = depth + 1, True
        elif char in "}]":
            depth, structural = depth - 1, True
        deepest = max(deepest, depth)
        if structural and not in_string and depth <= 2:
            longest, last = max(longest, i + 1 - last), i + 1
    return deepest, max(longest, len(data) - last)


def _random_value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(5 if depth < 8 else 2)
    if kind == 0:
        return "".join(rng.choice('ab"\\[]{}é\n') for _ in range(rng.randrange(12)))
    if kind == 1:
        return rng.choice([1, 2.5, None, True])
    if kind == 2:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_random_value(rng, 99): _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_json_shape_agrees_with_a_byte_by_byte_reading() -> None:
    rng = random.Random(10)
    for _ in range(300):
        document = {"type": "FeatureCollection", "features": [_random_value(rng, 2) for _ in range(5)]}
        data = json.dumps(document, ensure_ascii=rng.random() < 0.5).encode()
        deepest, longest = _reference_shape(data)
        size = rng.choice([1, 2, 3, 5, 16, 64, len(data)])
        shape = JsonShape("t.json", "t", max_record_bytes=longest, max_depth=deepest)
        _feed(shape, data, size)
        assert (shape.depth, shape.in_string) == (0, False)
        with pytest.raises(RecordTooLargeError, match="nests deeper"):
            _feed(JsonShape("t.json", "t", max_record_bytes=longest, max_depth=deepest - 1), data, size)
        with pytest.raises(RecordTooLargeError, match="has a record of more than"):
            _feed(JsonShape("t.json", "t", max_record_bytes=longest - 1, max_depth=deepest), data, size)


def test_json_member_length_counts_from_one_top_level_member_to_the_next() -> None:
    text = b'{"features": [{"a": "' + b"x" * 100 + b'"}, {"a": 1}]}'
    JsonShape("t.json", "t", max_record_bytes=120, max_depth=10).feed(text)
    with pytest.raises(RecordTooLargeError, match="more than 100 bytes"):
        JsonShape("t.json", "t", max_record_bytes=100, max_depth=10).feed(text)


def test_limits_are_settings_with_production_defaults() -> None:
    from openaddr.settings import Settings

    default = Settings.from_env({})
    assert (default.max_record_bytes, default.max_json_depth, default.max_output_bytes) == (
        32 * 2**20,
        64,
        100 * GIB,
    )
    env = {
        "OPENADDR_MAX_RECORD_BYTES": "10",
        "OPENADDR_MAX_JSON_DEPTH": "3",
        "OPENADDR_MAX_OUTPUT_BYTES": "7",
    }
    assert Settings.from_env(env).max_output_bytes == 7
    with pytest.raises(ValueError, match="OPENADDR_MAX_OUTPUT_BYTES"):
        Settings.from_env({"OPENADDR_MAX_OUTPUT_BYTES": "lots"})


# --- output size ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["0", "2"])
def test_outputs_over_the_cap_are_a_named_problem_and_removed(
    trumbull: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: str
) -> None:
    import openaddr.pipeline

    monkeypatch.setenv("OPENADDR_MAX_OUTPUT_BYTES", "20000")  # Trumbull's 347 rows make ~120 KB of outputs
    monkeypatch.setenv("OPENADDR_WORKERS", workers)
    monkeypatch.setattr(
        openaddr.pipeline, "PARALLEL_THRESHOLD", 10
    )  # with workers: the sliced path, part files
    source, shp = trumbull
    out = tmp_path / "out"
    code, state, log = conform(source, shp, out)
    assert_failed_cleanly(out, code, state, log, "exceed 20000 bytes (OPENADDR_MAX_OUTPUT_BYTES)")
    assert not (out / "out.geojson").exists()

    monkeypatch.setenv("OPENADDR_MAX_OUTPUT_BYTES", str(100 * GIB))
    code, state, _ = conform(source, shp, out)
    assert code == 0
    assert state["address count"] == 347


# --- work folder ---------------------------------------------------------------------------------------------


@pytest.fixture
def system_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temporary folder, redirected so that a test sees whatever is left in it."""
    folder = tmp_path / "system-temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_failed_open_of_a_point_shapefile_leaves_no_dbf_folder(
    fixtures: Path, tmp_path: Path, system_temp: Path
) -> None:
    shp = copy_shapefile(fixtures, "lake-man", tmp_path / "data")
    work = tmp_path / "work"
    work.mkdir()
    with work_folder(work), pytest.raises(ConformError, match="EPSG:99999999"):
        GdalReader(shp, {**LAKE_MAN, "srs": "EPSG:99999999"}, layer_type="addresses", label="t")
    assert list(work.iterdir()) == []
    assert list(system_temp.iterdir()) == []


def test_work_folder_is_inside_the_run_and_removed_on_failure(
    fixtures: Path, tmp_path: Path, system_temp: Path
) -> None:
    shp = copy_shapefile(fixtures, "lake-man", tmp_path / "data")
    source = write_source(tmp_path, {**LAKE_MAN, "srs": "EPSG:99999999"})
    out = tmp_path / "out"
    code, state, log = conform(source, shp, out)
    assert_failed_cleanly(out, code, state, log, "EPSG:99999999")
    assert list(system_temp.iterdir()) == []  # the openaddr-dbf-* folders leaked here


def test_leftovers_of_a_killed_run_are_swept_at_the_next_start(
    fixtures: Path, tmp_path: Path, system_temp: Path
) -> None:
    shp = copy_shapefile(fixtures, "lake-man", tmp_path / "data")
    source = write_source(tmp_path, LAKE_MAN)
    out = tmp_path / "out"
    (out / ".work" / "unzipped").mkdir(parents=True)
    (out / ".work" / "unzipped" / "big.part").write_bytes(b"x" * 1000)
    (out / ".parts-abc").mkdir()
    (out / ".parts-abc" / "0.csv").write_bytes(b"x")
    (out / ".out.csv.part").write_bytes(b"x")
    code, state, _ = conform(source, shp, out)
    assert code == 0
    assert state["address count"] == 6
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert list(system_temp.iterdir()) == []


# --- nothing written next to an input, no special files ------------------------------------------------------


def test_gml_input_gets_no_gfs_beside_it(fixtures: Path, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    gml = folder / "lake-man-gml.gml"
    shutil.copyfile(fixtures / "conforms" / "lake-man-gml.gml", gml)
    source = write_source(
        tmp_path, {"number": "NUMBER", "street": "STRNAME", "format": "xml", "srs": "EPSG:4326"}
    )
    code, state, _ = conform(source, gml, tmp_path / "out")
    assert code == 0
    assert state["address count"] == 6
    assert sorted(p.name for p in folder.iterdir()) == ["lake-man-gml.gml"]


def test_fifo_input_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "addresses.csv"
    os.mkfifo(fifo)
    source = write_source(tmp_path, {"format": "csv", "lon": "X", "lat": "Y", "number": "N", "street": "S"})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "openaddr", "conform", str(source), str(fifo), "--layer", "addresses"]
    result = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=120)
    # INPUT is given on the command line: a bad usage (exit 2), refused before anything opens it.
    assert (result.returncode, result.stderr.strip()) == (
        2,
        f"openaddr conform: {fifo} is not a regular file or a folder",
    )
    assert not out.exists()


def test_fifo_inside_an_input_folder_is_never_opened(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    os.mkfifo(folder / "addresses.csv")
    source = write_source(tmp_path, {"format": "csv", "lon": "X", "lat": "Y", "number": "N", "street": "S"})
    code, state, log = conform(source, folder, tmp_path / "out")
    assert_failed_cleanly(tmp_path / "out", code, state, log, "No csv file found")


def test_device_input_is_refused(tmp_path: Path) -> None:
    source = write_source(tmp_path, {"format": "csv", "lon": "X", "lat": "Y", "number": "N", "street": "S"})
    command = [sys.executable, "-m", "openaddr", "conform", str(source), "/dev/zero", "--layer", "addresses"]
    result = subprocess.run(
        [*command, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120
    )
    assert (result.returncode, result.stderr.strip()) == (
        2,
        "openaddr conform: /dev/zero is not a regular file or a folder",
    )


def test_fifo_archive_member_is_refused(fixtures: Path, tmp_path: Path) -> None:
    archive = tmp_path / "fifo.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(fixtures / "conforms" / "lake-man.shp", "lake-man.shp")
        member = zipfile.ZipInfo("lake-man.dbf")
        member.create_system = 3
        member.external_attr = (stat.S_IFIFO | 0o644) << 16
        zf.writestr(member, b"")
    with pytest.raises(ArchiveError, match="Refusing to extract a FIFO from the archive: 'lake-man.dbf'"):
        prepare_input(archive, tmp_path / "unzipped", compression="zip", file=None)


# --- no silent partial output --------------------------------------------------------------------------------


def test_dbf_cut_in_half_is_a_named_problem(fixtures: Path, tmp_path: Path) -> None:
    shp = copy_shapefile(fixtures, "lake-man", tmp_path / "data")
    cut(shp.with_suffix(".dbf"), 0.5)  # gave 2 of 6 rows and exit 0
    source = write_source(tmp_path, LAKE_MAN)
    code, state, log = conform(source, shp, tmp_path / "out")
    assert_failed_cleanly(tmp_path / "out", code, state, log, "lake-man.dbf is incomplete (cut short?)")
    assert "says 6 records" in log


@pytest.mark.parametrize("suffix", [".shp", ".dbf"])
def test_trumbull_cut_to_a_third_is_a_named_problem(
    trumbull: tuple[Path, Path], tmp_path: Path, suffix: str
) -> None:
    source, shp = trumbull
    cut(shp.with_suffix(suffix), 1 / 3)  # gave 114 of 347 rows and exit 0
    code, state, log = conform(source, shp, tmp_path / "out")
    assert_failed_cleanly(tmp_path / "out", code, state, log, f"TRU_ADDS{suffix} is incomplete (cut short?)")


def test_trumbull_zip_cut_short_is_a_named_problem(
    fixtures: Path, trumbull: tuple[Path, Path], tmp_path: Path
) -> None:
    source, _ = trumbull
    archive = tmp_path / "TRU_ADDS.zip"
    shutil.copyfile(fixtures / "data" / "TRU_ADDS-excerpt.zip", archive)
    cut(archive, 0.6)
    code, state, log = conform(source, archive, tmp_path / "out")
    assert_failed_cleanly(tmp_path / "out", code, state, log, "Corrupt zip file TRU_ADDS.zip")


def test_zip_member_with_bad_data_is_a_named_problem(
    fixtures: Path, trumbull: tuple[Path, Path], tmp_path: Path
) -> None:
    source, shp = trumbull
    archive = tmp_path / "TRU_ADDS.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(shp.parent.iterdir()):
            zf.write(path, path.name)
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("TRU_ADDS.dbf")
    start = info.header_offset + 30 + len(info.filename.encode())
    data[start + 5000 : start + 5010] = b"\0" * 10  # the member's bytes changed: its CRC disagrees
    archive.write_bytes(bytes(data))
    code, state, log = conform(source, archive, tmp_path / "out")
    assert_failed_cleanly(tmp_path / "out", code, state, log, "Corrupt zip member 'TRU_ADDS.dbf'")


def test_shx_disagreeing_with_the_dbf_is_a_named_problem(trumbull: tuple[Path, Path], tmp_path: Path) -> None:
    source, shp = trumbull
    shx = shp.with_suffix(".shx")
    data = bytearray(shx.read_bytes()[: 100 + 8 * 200])  # a .shx of 200 records, its header updated
    data[24:28] = (len(data) // 2).to_bytes(4, "big")
    shx.write_bytes(bytes(data))
    code, state, log = conform(source, shp, tmp_path / "out")
    assert_failed_cleanly(
        tmp_path / "out", code, state, log, "TRU_ADDS.shx has 200 records and TRU_ADDS.dbf 347"
    )


def test_shape_over_the_record_limit_is_refused(
    trumbull: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENADDR_MAX_RECORD_BYTES", "19")  # Trumbull's points are 20 bytes each
    source, shp = trumbull
    code, state, log = conform(source, shp, tmp_path / "out")
    assert_failed_cleanly(
        tmp_path / "out", code, state, log, "shape 1 of TRU_ADDS.shp is 20 bytes, more than 19"
    )


def test_gml_cut_short_is_a_named_problem(fixtures: Path, tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    gml = folder / "lake-man-gml.gml"
    shutil.copyfile(fixtures / "conforms" / "lake-man-gml.gml", gml)
    cut(
        gml, 0.8
    )  # GDAL read it without an error (0 of 6 features here; a long file gives the features before the cut)
    source = write_source(
        tmp_path, {"number": "NUMBER", "street": "STRNAME", "format": "xml", "srs": "EPSG:4326"}
    )
    code, state, log = conform(source, gml, tmp_path / "out")
    assert_failed_cleanly(tmp_path / "out", code, state, log, "lake-man-gml.gml is incomplete (cut short?)")
    assert "closing tag of its root element <ogr:FeatureCollection>" in log


def test_filegdb_table_cut_short_is_a_named_problem(fixtures: Path, tmp_path: Path) -> None:
    gdb = tmp_path / "lake-man-gdb.gdb"
    shutil.copytree(fixtures / "conforms" / "lake-man-gdb.gdb", gdb)
    for path in [gdb, *gdb.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    cut(gdb / "a00000009.gdbtable", 0.6)  # the lake_man table: GDAL gave 1 of 6 rows, without an error
    source = write_source(tmp_path, {"number": "NUMBER", "street": "STRNAME", "format": "gdb"})
    code, state, log = conform(source, gdb, tmp_path / "out")
    assert_failed_cleanly(tmp_path / "out", code, state, log, "a00000009.gdbtable is incomplete (cut short?)")


def test_geojson_that_ends_early_is_a_named_problem(fixtures: Path, tmp_path: Path) -> None:
    data = tmp_path / "bucks.geojson"
    shutil.copyfile(fixtures / "data" / "us-pa-bucks.geojson", data)
    cut(data, 0.7)
    source = tmp_path / "bucks.json"
    shutil.copyfile(fixtures / "sources" / "us" / "pa" / "bucks.json", source)
    code, state, log = conform(source, data, tmp_path / "out")
    assert_failed_cleanly(tmp_path / "out", code, state, log, "it ends early at byte")
    assert "(cut short?)" in log

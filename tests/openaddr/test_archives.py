"""Archives (processing.md §4) and choosing the input file (§5) on the real fixture zips and hostile ones."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from openaddr.errors import ConformError, UnknownFormatError
from openaddr.readers.archives import ArchiveError, ArchiveLimits, lowercase_extension, prepare_input, sniff
from openaddr.readers.choose import choose_input

if TYPE_CHECKING:
    import io


def _members(path: Path) -> dict[str, bytes]:
    """Regular members of a zip by name, read with the standard library (the independent route)."""
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist() if not i.is_dir()}


def _relative(paths: list[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def _make_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


# --- real fixture zips -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zip_name", "file", "expected_suffixes"),
    [
        # us-ut: conform.file names a path with a sub-folder; its companions come along, the rest stays
        ("us-ut-excerpt.zip", "AddressPoints/AddressPoints.shp", {".shp", ".shx", ".dbf", ".prj"}),
        # be-wa-brussels: the .cpg is not extracted (it would change how GDAL decodes text)
        ("be-wa-brussels.zip", "shp/UrbAdm_AdPt.shp", {".shp", ".shx", ".dbf", ".prj"}),
        # it-52: a zip with a directory record
        ("it-52-statewide.zip", "shp/civici-excerpt.shp", {".shp", ".shx", ".dbf", ".prj"}),
    ],
)
def test_zip_filter_extracts_the_named_shapefile_and_companions(
    fixtures: Path, tmp_path: Path, zip_name: str, file: str, expected_suffixes: set[str]
) -> None:
    source = fixtures / "data" / zip_name
    members = _members(source)
    stem = file.rsplit(".", 1)[0].lower()
    expected = sorted(
        n for n in members if n.lower().rsplit(".", 1)[0] == stem and Path(n).suffix in expected_suffixes
    )
    assert len(expected) == len(expected_suffixes)

    paths = prepare_input(source, tmp_path, compression="zip", file=file)

    assert _relative(paths, tmp_path) == expected
    for p, name in zip(paths, expected, strict=True):
        assert p.read_bytes() == members[name]


def test_zip_filter_is_case_insensitive(fixtures: Path, tmp_path: Path) -> None:
    paths = prepare_input(
        fixtures / "data" / "us-ut-excerpt.zip",
        tmp_path,
        compression="zip",
        file="addresspoints/ADDRESSPOINTS.SHP",
    )
    assert sorted(p.suffix for p in paths) == [".dbf", ".prj", ".shp", ".shx"]


def test_zip_without_filter_extracts_everything_sorted(fixtures: Path, tmp_path: Path) -> None:
    source = fixtures / "data" / "us-ca-alameda_county-excerpt-mixedcase.zip"
    members = _members(source)

    paths = prepare_input(source, tmp_path, compression=None, file=None)

    assert _relative(paths, tmp_path) == sorted(members)
    assert all(p.read_bytes() == members[p.name] for p in paths)


@pytest.mark.parametrize(
    "zip_name", ["lake-man-gdb-othername-nodir.zip", "lake-man-gdb-othername.zip", "lake-man.gdb.zip"]
)
def test_zip_lists_gdb_folders_also_without_directory_records(
    fixtures: Path, tmp_path: Path, zip_name: str
) -> None:
    source = fixtures / "data" / zip_name
    members = _members(source)
    folders = {n.split("/")[0] for n in members}
    assert folders == {"lake-man-gdb.gdb"}

    paths = prepare_input(source, tmp_path, compression="zip", file=None)

    assert _relative(paths, tmp_path) == sorted(
        ["lake-man-gdb.gdb", *members], key=lambda n: tuple(n.split("/"))
    )
    assert (tmp_path / "lake-man-gdb.gdb").is_dir()
    chosen = choose_input(paths, tmp_path, {"format": "gdb"}, "http")
    assert chosen == tmp_path / "lake-man-gdb.gdb"


@pytest.mark.parametrize(
    ("file", "how"),
    [
        ("elsewhere/AddressPoints.shp", "basename"),  # wrong folder: members whose basename matches
        ("no-such-file.shp", "all"),  # nothing matches: everything, §5 decides
    ],
)
def test_zip_filter_fallbacks(fixtures: Path, tmp_path: Path, file: str, how: str) -> None:
    source = fixtures / "data" / "us-ut-excerpt.zip"
    members = _members(source)

    paths = prepare_input(source, tmp_path, compression="zip", file=file)

    if how == "basename":
        assert sorted(p.name for p in paths) == sorted(
            Path(n).name for n in members if Path(n).stem == "AddressPoints"
        )
    else:
        assert _relative(paths, tmp_path) == sorted(members)


@pytest.mark.parametrize(
    ("path", "compression"),
    [
        ("conforms/lake-man.shp", "zip"),  # a bare shapefile whose source JSON still says zip
        ("conforms/lake-man-3740.csv", None),
        ("conforms/lake-man-gml.gml", "zip"),
        ("conforms/lake-man-gdb.gdb", "zip"),  # a folder
    ],
)
def test_inputs_that_are_not_archives_are_used_as_they_are(
    fixtures: Path, tmp_path: Path, path: str, compression: str | None
) -> None:
    source = fixtures / path
    assert prepare_input(source, tmp_path, compression=compression, file=None) == [source]
    assert not any(tmp_path.iterdir())


def test_archives_are_recognised_by_their_first_bytes(fixtures: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "download.bin"
    shutil.copyfile(fixtures / "data" / "nl.zip", renamed)
    assert sniff(renamed) == "zip"

    paths = prepare_input(renamed, tmp_path / "out", compression=None, file=None)

    assert [p.name for p in paths] == list(_members(fixtures / "data" / "nl.zip"))


@pytest.mark.parametrize("compression", ["ZIP", "Zip", "zip"])
def test_compression_is_compared_in_any_case(fixtures: Path, tmp_path: Path, compression: str) -> None:
    paths = prepare_input(fixtures / "data" / "nl.zip", tmp_path, compression=compression, file=None)
    assert [p.name for p in paths] == ["bagadres.csv"]


def test_unknown_compression_is_a_conform_failure(fixtures: Path, tmp_path: Path) -> None:
    with pytest.raises(ConformError, match="Unknown compression"):
        prepare_input(fixtures / "data" / "nl.zip", tmp_path, compression="rar", file=None)


# --- gzip -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "out"), [("cache.csv.gz", "cache.csv"), ("cache.bin", "cache.bin.out")])
def test_gzip_is_stream_decompressed_to_the_name_without_gz(
    fixtures: Path, tmp_path: Path, name: str, out: str
) -> None:
    data = _members(fixtures / "data" / "BAN_licence_gratuite_repartage_974.zip")[
        "BAN_licence_gratuite_repartage_974.csv"
    ]
    packed = tmp_path / name
    packed.write_bytes(gzip.compress(data))

    paths = prepare_input(
        packed, tmp_path / "work", compression=None if name.endswith(".gz") else "gzip", file=None
    )

    assert paths == [tmp_path / "work" / out]
    assert paths[0].read_bytes() == data


def test_corrupt_gzip_fails(tmp_path: Path) -> None:
    packed = tmp_path / "cache.csv.gz"
    packed.write_bytes(gzip.compress(os.urandom(10_000))[:5_000])
    with pytest.raises(ArchiveError, match="Corrupt gzip"):
        prepare_input(packed, tmp_path / "work", compression="gzip", file=None)
    assert not (tmp_path / "work" / "cache.csv").exists()


# --- nested zips ------------------------------------------------------------------------------------------


def _nest(tmp_path: Path, levels: int) -> Path:
    """level0.zip ⊃ level1.zip ⊃ … ⊃ data.csv."""
    data = b"lon,lat\n1,2\n"
    blob = _make_zip(tmp_path / f"level{levels}.zip", {"data.csv": data}).read_bytes()
    for level in range(levels - 1, -1, -1):
        blob = _make_zip(tmp_path / f"level{level}.zip", {f"level{level + 1}.zip": blob}).read_bytes()
    return tmp_path / "level0.zip"


def test_nested_zips_are_expanded_into_sibling_folders(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    outer = _nest(tmp_path / "src", 2)

    paths = prepare_input(outer, tmp_path / "work", compression="zip", file=None)

    assert _relative(paths, tmp_path / "work") == ["level1/level2/data.csv"]
    assert paths[0].read_bytes() == b"lon,lat\n1,2\n"


def test_nested_zips_stop_at_depth_three(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    outer = _nest(tmp_path / "src", 5)

    paths = prepare_input(outer, tmp_path / "work", compression="zip", file=None)

    # level1, level2 and level3 are expanded; level4.zip, inside level3, stays a file
    assert _relative(paths, tmp_path / "work") == ["level1/level2/level3/level4.zip"]


def test_nested_zips_are_filtered(tmp_path: Path) -> None:
    inner = _make_zip(tmp_path / "inner.zip", {"a.shp": b"s", "a.dbf": b"d", "a.cpg": b"c", "b.txt": b"t"})
    outer = _make_zip(tmp_path / "outer.zip", {"shapes.zip": inner.read_bytes(), "readme.txt": b"r"})

    paths = prepare_input(outer, tmp_path / "work", compression="zip", file="a.shp")

    assert _relative(paths, tmp_path / "work") == ["shapes/a.dbf", "shapes/a.shp"]


# --- member names -----------------------------------------------------------------------------------------


def test_member_names_flagged_utf8_are_utf8(tmp_path: Path) -> None:
    source = _make_zip(tmp_path / "names.zip", {"Adresse Straße/Hauptstraße.csv": b"x"})
    with zipfile.ZipFile(source) as z:
        assert z.infolist()[0].flag_bits & 0x800

    paths = prepare_input(source, tmp_path / "work", compression="zip", file=None)

    assert _relative(paths, tmp_path / "work") == ["Adresse Straße/Hauptstraße.csv"]


def test_member_names_without_the_flag_are_cp437(tmp_path: Path) -> None:
    source = _make_zip(tmp_path / "names.zip", {"cafX.csv": b"x"})
    raw = source.read_bytes()
    assert raw.count(b"cafX.csv") == 2  # local header and central directory
    source.write_bytes(raw.replace(b"cafX.csv", "caf\u00e9.csv".encode("cp437")))

    paths = prepare_input(source, tmp_path / "work", compression="zip", file=None)

    assert [p.name for p in paths] == [b"caf\x82.csv".decode("cp437")]
    assert paths[0].name == "café.csv"


# --- hostile archives -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../evil.csv", "data/../../evil.csv", "/tmp/evil.csv", "..\\evil.csv", "C:/evil.csv"]
)
def test_zip_slip_fails(tmp_path: Path, name: str) -> None:
    source = tmp_path / "slip.zip"
    with zipfile.ZipFile(source, "w") as z:
        z.writestr(zipfile.ZipInfo("ok.csv"), b"fine")
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # ZipInfo() would sanitise the name; hostile archives are not so kind
        z.writestr(info, b"evil")

    with pytest.raises(ArchiveError, match="Unsafe"):
        prepare_input(source, tmp_path / "work", compression="zip", file=None)
    assert not (tmp_path / "evil.csv").exists()
    assert not list((tmp_path / "work").rglob("*.csv"))


def test_symlink_members_fail(tmp_path: Path) -> None:
    source = tmp_path / "link.zip"
    with zipfile.ZipFile(source, "w") as z:
        info = zipfile.ZipInfo("passwd.csv")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")

    with pytest.raises(ArchiveError, match="link"):
        prepare_input(source, tmp_path / "work", compression="zip", file=None)
    assert not any(p.is_symlink() for p in (tmp_path / "work").rglob("*"))


def test_archive_over_the_size_cap_fails(tmp_path: Path) -> None:
    source = _make_zip(tmp_path / "big.zip", {"a.csv": b"x" * 50_000, "b.csv": b"y" * 50_000})
    limits = ArchiveLimits(max_total_bytes=60_000)

    with pytest.raises(ArchiveError, match="Archive too large"):
        prepare_input(source, tmp_path / "work", compression="zip", file=None, limits=limits)


def test_archive_over_the_ratio_cap_fails(tmp_path: Path) -> None:
    source = _make_zip(tmp_path / "bomb.zip", {"zeros.csv": bytes(2_000_000)})
    assert source.stat().st_size * 100 < 2_000_000
    limits = ArchiveLimits(max_ratio=100, ratio_floor=0)

    with pytest.raises(ArchiveError, match="Archive too large"):
        prepare_input(source, tmp_path / "work", compression="zip", file=None, limits=limits)


def test_size_cap_counts_bytes_written_not_headers(tmp_path: Path) -> None:
    """A member whose headers understate its size is stopped by the bytes actually written."""
    payload = b"z" * 200_000
    source = tmp_path / "liar.zip"
    with zipfile.ZipFile(source, "w", zipfile.ZIP_STORED) as z:
        z.writestr("a.csv", payload)
    raw = bytearray(source.read_bytes())
    # Patch the declared sizes (local header offset 18/22, central directory offset 20/24) to 10 bytes.
    local = raw.find(b"PK\x03\x04")
    central = raw.find(b"PK\x01\x02")
    for offset in (local + 18, local + 22, central + 20, central + 24):
        raw[offset : offset + 4] = (10).to_bytes(4, "little")
    source.write_bytes(bytes(raw))

    with pytest.raises(ArchiveError):
        prepare_input(
            source, tmp_path / "work", compression="zip", file=None, limits=ArchiveLimits(max_total_bytes=100)
        )


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_zip_fails(fixtures: Path, tmp_path: Path, damage: str) -> None:
    good = (fixtures / "data" / "us-ut-excerpt.zip").read_bytes()
    source = tmp_path / "broken.zip"
    source.write_bytes(good[: len(good) // 2] if damage == "truncated" else good[:4] + os.urandom(2000))

    with pytest.raises(ArchiveError, match="Corrupt zip"):
        prepare_input(source, tmp_path / "work", compression="zip", file=None)


def test_corrupt_member_data_fails(tmp_path: Path) -> None:
    source = _make_zip(tmp_path / "crc.zip", {"a.csv": b"hello world " * 100}, zipfile.ZIP_STORED)
    raw = bytearray(source.read_bytes())
    at = raw.find(b"hello world")
    raw[at : at + 5] = b"HELLO"
    source.write_bytes(bytes(raw))

    with pytest.raises(ArchiveError, match="Corrupt zip member"):
        prepare_input(source, tmp_path / "work", compression="zip", file=None)


# --- extension case (§4.4) --------------------------------------------------------------------------------


def test_mixed_case_shapefile_gets_lower_case_links(fixtures: Path, tmp_path: Path) -> None:
    paths = prepare_input(
        fixtures / "data" / "us-ca-alameda_county-excerpt-mixedcase.zip",
        tmp_path,
        compression="zip",
        file=None,
    )
    shp = next(p for p in paths if p.suffix.lower() == ".shp")
    assert shp.name == "SPAD.Shp"

    opened, tmp = lowercase_extension(shp)
    try:
        assert tmp is not None
        assert opened.name == "SPAD.shp"
        assert sorted(p.name for p in tmp.iterdir()) == ["SPAD.dbf", "SPAD.prj", "SPAD.shp", "SPAD.shx"]
        assert (tmp / "SPAD.dbf").read_bytes() == (tmp_path / "SPAD.Dbf").read_bytes()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # nothing was written beside the input
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_lower_case_extensions_need_no_link(fixtures: Path) -> None:
    path = fixtures / "conforms" / "lake-man.shp"
    assert lowercase_extension(path) == (path, None)


# --- choosing the input (§5) ------------------------------------------------------------------------------


def _touch(root: Path, *names: str) -> list[Path]:
    paths = []
    for name in names:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if name.lower().endswith(".gdb"):
            p.mkdir(exist_ok=True)
        else:
            p.write_bytes(b"")
        paths.append(p)
    return sorted(paths, key=lambda p: p.relative_to(root).parts)


@pytest.mark.parametrize(
    ("names", "conform", "protocol", "expected"),
    [
        (["a.dbf", "a.SHP"], {"format": "shapefile"}, "http", "a.SHP"),
        (["a.shp", "x/b.shp"], {"format": "shapefile", "file": "X/B.shp"}, "http", "x/b.shp"),
        (["a.shp", "x/b.shp"], {"format": "shapefile-polygon", "file": "b.shp"}, "http", "x/b.shp"),
        # a full-path match wins over an earlier basename match
        (["a/b.shp", "b.shp"], {"format": "shapefile", "file": "b.shp"}, "http", "b.shp"),
        (["a/b.shp", "c/b.shp"], {"format": "shapefile", "file": "x/b.shp"}, "http", "a/b.shp"),
        (["x.gdb/a.gdbtable", "x.gdb/b.gdbtable", "x.gdb"], {"format": "gdb"}, "http", "x.gdb"),
        (["d/Y.GDB/a.gdbtable"], {"format": "gdb"}, "http", "d/Y.GDB"),
        (["a.geojson", "b.json"], {"format": "geojson", "file": "b.json"}, "http", "b.json"),
        (["a.txt", "b.CSV", "c.csv"], {"format": "csv"}, "http", "b.CSV"),
        (["a.txt", "b.dsv"], {"format": "csv"}, "http", "a.txt"),
        (["a.csv", "STADFANG.dsv"], {"format": "csv", "file": "stadfang.DSV"}, "http", "STADFANG.dsv"),
        (["a.xml", "b.GML", "c.gml"], {"format": "xml"}, "http", "b.GML"),
        (
            ["p/lodzkie.gml", "p/slaskie.gml"],
            {"format": "xml", "file": "p/slaskie.gml"},
            "http",
            "p/slaskie.gml",
        ),
        (["doc.kml"], {"format": "xml", "file": "doc.kml"}, "http", "doc.kml"),
        (["a.gpkg"], {"format": "gpkg"}, "http", "a.gpkg"),
        (["cache.csv"], {"format": "geojson"}, "ESRI", "cache.csv"),
        (["cache.csv"], {"format": "csv"}, "esri", "cache.csv"),
    ],
)
def test_choose_input(
    tmp_path: Path, names: list[str], conform: dict[str, str], protocol: str, expected: str
) -> None:
    paths = _touch(tmp_path, *names)
    assert choose_input(paths, tmp_path, conform, protocol) == tmp_path / expected


@pytest.mark.parametrize(
    ("names", "conform", "message"),
    [
        (["a.csv"], {"format": "shapefile"}, "No shapefile file found"),
        (["a.shp", "b.shp"], {"format": "shapefile"}, "No shapefile file found"),
        (
            ["a.shp", "b.shp"],
            {"format": "shapefile", "file": "c.shp"},
            "Source names file c.shp but it was not found",
        ),
        (["a.csv"], {"format": "csv", "file": "b.csv"}, "Source names file b.csv but it was not found"),
        (["a.xml"], {"format": "xml"}, "No xml file found"),
        (["a.json"], {"format": "gpkg"}, "No gpkg file found"),
    ],
)
def test_choose_input_failures(
    tmp_path: Path, names: list[str], conform: dict[str, str], message: str
) -> None:
    paths = _touch(tmp_path, *names)
    with pytest.raises(ConformError, match=message) as info:
        choose_input(paths, tmp_path, conform, "http")
    assert not isinstance(info.value, UnknownFormatError)


@pytest.mark.parametrize("fmt", [None, "excel", "GeoJSON"])
def test_choose_input_unknown_format(tmp_path: Path, fmt: str | None) -> None:
    paths = _touch(tmp_path, "a.csv")
    with pytest.raises(UnknownFormatError):
        choose_input(paths, tmp_path, {"format": fmt}, "http")


def test_nested_gdb_zip_gives_the_inner_geodatabase(fixtures: Path, tmp_path: Path) -> None:
    """An inner ``x.gdb.zip`` expands into a folder ``x.gdb`` that holds the real ``x.gdb``."""
    inner = (fixtures / "data" / "lake-man.gdb.zip").read_bytes()
    outer = _make_zip(tmp_path / "outer.zip", {"lake-man.gdb.zip": inner})

    paths = prepare_input(outer, tmp_path / "work", compression="zip", file=None)

    chosen = choose_input(paths, tmp_path / "work", {"format": "gdb"}, "http")
    assert chosen == tmp_path / "work" / "lake-man.gdb" / "lake-man-gdb.gdb"


def test_sorted_listing_puts_folders_before_dotted_names(tmp_path: Path) -> None:
    source = _make_zip(tmp_path / "order.zip", {"a.b.csv": b"1", "a/b.csv": b"2", "A.csv": b"3"})
    paths = prepare_input(source, tmp_path / "work", compression="zip", file=None)
    assert _relative(paths, tmp_path / "work") == ["A.csv", "a/b.csv", "a.b.csv"]


def test_extraction_reads_members_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Members are streamed: no single read asks for more than the chunk size."""
    import openaddr.readers.archives as archives

    source = _make_zip(tmp_path / "big.zip", {"a.csv": os.urandom(300_000)})
    sizes: list[int] = []
    original = archives._copy

    def spy(src: io.BufferedIOBase, dst: io.BufferedIOBase, budget: object) -> None:
        real_read = src.read

        def read(n: int = -1) -> bytes:
            sizes.append(n)
            return real_read(n)

        src.read = read  # type: ignore[method-assign]
        original(src, dst, budget)  # type: ignore[arg-type]

    monkeypatch.setattr(archives, "_CHUNK", 65536)
    monkeypatch.setattr(archives, "_copy", spy)
    prepare_input(source, tmp_path / "work", compression="zip", file=None)
    assert sizes
    assert all(0 < n <= 65536 for n in sizes)

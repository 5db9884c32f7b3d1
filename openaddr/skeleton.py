"""A suggested conform for a layer entry that has data but no conform (machine-ci.md §9.1, "missing conform").

When an entry has no ``conform`` the Machine still downloads the data and takes its sample (processing.md §9.4),
then ends with ``missing_conform``. :func:`suggest_conform` turns the sample's real field names into a skeleton a
source author can start from: the reader's ``format`` (from the data file the sample read, and ``file`` when the
format alone would not choose it), and for each attribute of the layer type (processing.md §7.1) the most likely
field by name: case-insensitive, ignoring ``_``/spaces/camel case and a leading ``SITUS``/``SITE``/``PROP`` word,
through lists of common synonyms. A street split into prefix/name/type/suffix fields becomes a ``join``; a single
full-address field (``ADDRESS``, ``SITEADDR``, or any ``…ADD…`` field whose sample values start with a house
number) becomes ``prefixed_number`` + ``postfixed_street`` (and ``postfixed_unit`` when the values carry units).
``split`` is rejected by the Machine (processing.md §2.4), so it is never suggested.

Nothing is guessed when no field is recognised: a required attribute without a field is left as an empty field
name (which never matches, processing.md §7.3) and the conform's ``notes`` lists the data's fields. Field names are
hostile input: at most :data:`MAX_FIELDS` are considered, names longer than :data:`MAX_FIELD_LENGTH` are never
used and are shortened where listed; every place that shows the skeleton escapes it (:func:`skeleton_text`).

:func:`check_skeleton` places the skeleton into the entry of its source and validates it with the source
validator (:mod:`openaddr.validation`), recording any problem. :func:`suggest_for_entry` is what
:mod:`openaddr.process` calls: it writes ``skeleton.json`` into the state directory, which the Machine publishes
and records in the run's state under :data:`STATE_KEY`.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    from pathlib import Path

    from openaddr.sources import LayerEntry

log = logging.getLogger(__name__)

#: Fields of the data considered, at most (the rest are counted, not read).
MAX_FIELDS = 500
#: A field name longer than this is never put into a skeleton (and is shortened where it is listed).
MAX_FIELD_LENGTH = 100
#: Field names listed in the skeleton's ``notes`` and in its record, at most.
LISTED_FIELDS = 60
#: The ``notes`` text, at most (characters).
NOTES_LIMIT = 1500
#: The largest ``skeleton.json`` read back (bytes); a bigger one is ignored.
FILE_LIMIT = 64 * 1024
#: The state key (machine-ci.md §7.2) that holds the skeleton record of a run.
STATE_KEY = "conform skeleton"
#: The file in the state directory.
FILE_NAME = "skeleton.json"

_SUFFIX_FORMATS = {
    ".shp": "shapefile",
    ".json": "geojson",
    ".geojson": "geojson",
    ".csv": "csv",
    ".gml": "xml",
    ".kml": "xml",
    ".gdb": "gdb",
    ".gpkg": "gpkg",
}

# -- field names ---------------------------------------------------------------------------------------------------

#: Leading words that only say "of the site": ``SITUS_ADDR_NUM`` is an ``ADDR_NUM``.
_NOISE = frozenset(
    {"SITUS", "SITE", "SIT", "SA", "PROP", "PROPERTY", "LOC", "LOCATION", "PHYS", "PHYSICAL", "PRIM"}
)
#: Words of fields about someone else's address (owner, mailing): never an address attribute.
_OTHER_PARTY = ("MAIL", "OWNER", "OWNR", "BILL", "TAXPAYER")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NUMBER_START = re.compile(r"^\s*(?:\d+(?:[ -]\d/\d)?|\d+-\d+|\d+-?[A-Z])\s+\S", re.IGNORECASE)
_UNIT_PHRASE = re.compile(
    r"\s(?:(?:UNIT|APARTMENT|APT\.?|SUITE|STE\.?|BUILDING|BLDG\.?|LOT)\s+|#).+$", re.IGNORECASE
)


@dataclass(frozen=True)
class _Field:
    name: str
    key: str  # upper-case letters and digits of the name, accents dropped
    stripped: str  # the key without leading noise words
    tokens: tuple[str, ...]
    values: tuple[str, ...]

    @property
    def usable(self) -> bool:
        return bool(self.key) and len(self.name) <= MAX_FIELD_LENGTH and not self.name.startswith("OA:")


def _tokens(name: str) -> list[str]:
    plain = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    words: list[str] = []
    for part in re.split(r"[\W_]+", plain):
        words.extend(w.upper() for w in _CAMEL.sub(" ", part).split() if w)
    return words


def _make_field(name: str, values: Sequence[str]) -> _Field:
    tokens = _tokens(name[: MAX_FIELD_LENGTH + 1])
    rest = list(tokens)
    while len(rest) > 1 and rest[0] in _NOISE:
        rest.pop(0)
    return _Field(name, "".join(tokens), "".join(rest), tuple(tokens), tuple(values))


# -- synonyms ------------------------------------------------------------------------------------------------------

Spec = Sequence[str | re.Pattern[str]]

_GENERIC_IDS: tuple[str, ...] = (
    "ID",
    "GLOBALID",
    "GUID",
    "UUID",
    "UID",
    "OBJECTID",
    "OBJECTID1",
    "OID",
    "FID",
    "GID",
)
_NUMBER: Spec = (
    "ADDRNUM", "ADDNUM", "ADDRESSNUMBER", "ADDRESSNUM", "ADDRNUMBER", "ADDNUMBER", "ADDNUMB", "ADDRNO",
    "ADDRESSNO", "HOUSENUM", "HOUSENUMBER", "HOUSENO", "HOUSENR", "HSENUM", "HSENO", "HSNUM", "STNUM", "STNO",
    "STREETNUM", "STREETNUMBER", "STREETNO", "STRNUM", "CIVICNUM", "CIVICNUMBER", "CIVICNO", "CIVIC", "BLDGNUM",
    "NUMBER", "NUM", "NUMERO", "NUMEROCIVICO", "HAUSNUMMER", "HAUSNR", "HNR", "HUISNUMMER", "NR", "NO",
)  # fmt: skip
_FULL_STREET: Spec = (
    "FULLSTREET", "STREETFULL", "FULLSTREETNAME", "STREETNAMEFULL", "FULLSTNAME", "STNAMEFULL", "FULLNAME",
    "FULLST", "STFULL", "FULLRDNAME", "FULLROADNAME",
)  # fmt: skip
_STREET_NAME: Spec = (
    "STREETNAME", "STNAME", "STRNAME", "STNM", "STREETNM", "FEANME", "FENAME", "FNAME", "ROADNAME", "RDNAME",
    "STREET", "STR", "STRASSE", "STRASSENNAME", "RUE", "VOIE", "CALLE", "VIA", "STRAAT", "STRAATNAAM", "ULICA",
    "ROAD",
)  # fmt: skip
#: Street parts, in ``join`` order: substrings of the key (or the whole key when it is short).
_PREDIR = (
    "PREDIR",
    "DIRPRE",
    "FEDIRP",
    "FDPRE",
    "PREFIXDIR",
    "DIRECTIONPRE",
    "PREDIRECTION",
    "PREFIX",
    "DIRECTION",
)
_PRETYPE = ("PRETYPE", "PRETYP", "PREFIXTYPE")
_POSTDIR = (
    "POSTDIR",
    "POSDIR",
    "SUFDIR",
    "DIRSUF",
    "FDSUF",
    "FEDIRS",
    "SUFFIXDIR",
    "POSTDIRECTION",
    "DIRSUFFIX",
)
_TYPE = (
    "STREETTYPE", "STTYPE", "STRTYPE", "SUFFIXTYPE", "SUFTYPE", "POSTTYPE", "POSTYP", "FTYPE", "FEATYP", "FETYPE",
    "ROADTYPE", "RDTYPE", "STREETSUFFIX", "STREETSUFX", "STSUFFIX", "STSUFX", "STSUF", "SUFFIX", "SUFX", "TYPE",
)  # fmt: skip
_NOT_STREET = ("UNIT", "APT", "ZIP", "NUM", "POSTAL", "POSTCODE", "CITY", "LOT")
_FULL_ADDRESS: Spec = (
    "FULLADDRESS", "FULLADDR", "FULLADD", "ADDRFULL", "ADDRESSFULL", "ADDFULL", "ADDRESS", "ADDR", "ADDRESS1",
    "ADDR1", "STADDR", "STREETADDR", "STREETADDRESS", "ADDRESSLINE1", "ADRESSE", "ADRES", "DIRECCION",
    "INDIRIZZO", "ANSCHRIFT",
)  # fmt: skip
_UNIT: Spec = (
    "UNIT", "UNITNUM", "UNITNUMBER", "UNITNO", "UNITID", "UNITVALUE", "UNITDESIG", "UNITDESIGNATOR", "APT",
    "APTNUM", "APTNO", "APARTMENT", "SUITE", "STE", "SUITENUM", "ADDRUNIT", "ADDUNIT", "SUBADDRESS", "SUBADDR",
)  # fmt: skip
_UNIT_TYPE: Spec = ("UNITTYPE", "UNITTYP", "UNITDESC", "APTTYPE")
_CITY: Spec = (
    "CITY", "CITYNAME", "MUNICIPALITY", "MUNI", "MUNINAME", "MUNNAME", "MUNICIPAL", "TOWN", "TOWNNAME", "LOCALITY",
    "POSTALCITY", "POSTCITY", "POSTCOMM", "POSTALCOMMUNITY", "COMMUNITY", "CITYTOWN", "VILLAGE", "PLACENAME",
    "PLACE", "COMMUNE", "NOMCOMMUNE", "NOMCOM", "GEMEINDE", "ORT", "ORTSNAME", "WOONPLAATS", "GEMEENTE", "MIASTO",
    "MIEJSCOWOSC", "COMUNE", "MUNICIPIO", "CIUDAD", "LOCALIDAD", "VILLE", "STADT", "KOMMUNE", "POSTTOWN",
    "TOWNSHIP",
)  # fmt: skip
_DISTRICT: Spec = ("COUNTY", "COUNTYNAME", "CNTY", "CNTYNAME", "DISTRICT", "DISTRICTNAME", "KREIS", "LANDKREIS",
                   "BOROUGH", "PARISH")  # fmt: skip
_REGION: Spec = (
    "STATE", "STATENAME", "STATEABBR", "STATEABBREV", "STATECODE", "STATEPROV", "PROVINCE", "PROV", "REGION",
    "REGIONNAME", "BUNDESLAND", "ESTADO", "WOJEWODZTWO", "PROVINCIE",
)  # fmt: skip
_POSTCODE: Spec = (
    "ZIP", "ZIPCODE", "ZIP5", "ZIPCD", "ZIPCODE5", "POSTCODE", "POSTALCODE", "POSTAL", "POSTCD", "POSTNUMMER",
    "PLZ", "POSTLEITZAHL", "CODEPOSTAL", "CODPOSTAL", "CODIGOPOSTAL", "POSTNR", "POSTNUMBER", "KODPOCZTOWY",
    "POSTALZIP", "ZIPPOSTAL",
)  # fmt: skip
_ADDRESS_ID: Spec = (
    "ADDRESSID", "ADDRID", "ADDID", "ADDRESSPOINTID", "ADDRPTID", "ADDPTID", "ADRID",
    re.compile(r"ADD(?:R|RESS)?(?:PT|POINT)ID$"), *_GENERIC_IDS,
)  # fmt: skip
_LON: Spec = ("LON", "LONG", "LONGITUDE", "LNG", "X", "XCOORD", "XCOORDINATE", "POINTX", "COORDX", "XCORD",
              "EASTING", "LONGITUD")  # fmt: skip
_LAT: Spec = (
    "LAT",
    "LATITUDE",
    "Y",
    "YCOORD",
    "YCOORDINATE",
    "POINTY",
    "COORDY",
    "YCORD",
    "NORTHING",
    "LATITUD",
)
_PID: Spec = (
    "PID", "PARCELID", "PARCELNUM", "PARCELNUMBER", "PARCELNO", "PARCELPIN", "PIN", "APN", "TAXPIN", "TAXID",
    "TAXPARCELID", "PRCLID", "PARID", "PARCELKEY", "PARNO", "PARCELCODE", "GISPIN", "PROPERTYID", "PROPID",
    "PARCEL", *_GENERIC_IDS,
)  # fmt: skip
_BUILDING_ID: Spec = ("BUILDINGID", "BLDGID", "BLDID", "BUILDID", "STRUCTUREID", "STRUCTID", *_GENERIC_IDS)
_HEIGHT: Spec = ("HEIGHT", "HGT", "HEIGHTM", "BLDGHEIGHT", "BLDGHGT", "BUILDINGHEIGHT", "ROOFHEIGHT",
                 "HEIGHTROOF", "MAXHEIGHT", "HOEHE", "HAUTEUR", "ALTURA")  # fmt: skip
_LEVELS: Spec = (
    "LEVELS", "NUMLEVELS", "BUILDINGLEVELS", "BLDGLEVELS", "FLOORS", "NUMFLOORS", "NOFLOORS", "FLOORCOUNT",
    "STORIES", "STOREYS", "NUMSTORIES", "NOSTORIES", "NUMBEROFFLOORS", "NUMBEROFSTOREYS", "GESCHOSSE", "ETAGES",
)  # fmt: skip
_SEGMENT_ID: Spec = ("SEGMENTID", "SEGID", "ROADID", "CENTERLINEID", "CLID", "STREETID", "TLID", "LINKID",
                     *_GENERIC_IDS)  # fmt: skip
_ONEWAY: Spec = ("ONEWAY", "ONEWAYDIR", "ONEWAYFLAG", "ONEWAYIND", "DIRONEWAY", "TRAFFICDIR", "TRAFDIR")
_SPEED: Spec = ("SPEED", "SPEEDLIMIT", "SPEEDLIM", "SPDLIMIT", "SPDLMT", "MAXSPEED", "POSTEDSPEED", "SPEEDMPH",
                "SPEEDLIMITMPH", "SPEEDKMH", "SPEEDKPH", "MAXSPD")  # fmt: skip
_CLASS: Spec = ("CLASS", "CLASSIFICATION", "ROADCLASS", "RDCLASS", "FUNCCLASS", "FUNCTIONALCLASS", "FCLASS",
                "FUNCLASS", "FC", "CFCC", "MTFCC", "HIGHWAY")  # fmt: skip
_SURFACE: Spec = (
    "SURFACE",
    "SURFACETYPE",
    "SURFTYPE",
    "SURFTYP",
    "PAVED",
    "PAVEMENT",
    "PAVEMENTTYPE",
    "SURF",
)


def _range(side: str, end: str) -> re.Pattern[str]:
    s = {"L": "(?:L|LEFT|LT|LFT)", "R": "(?:R|RIGHT|RT|RGT)"}[side]
    e = {"F": "(?:F|FR|FROM|FRM|LO|LOW|START)", "T": "(?:T|TO|HI|HIGH|END)"}[end]
    a = "(?:ADD|ADDR|ADDRESS|HN|NUM)?"
    return re.compile(rf"^(?:{s}{e}{a}|{e}{a}{s}|{a}{s}{e}|{a}{e}{s})$")


def _zip_side(side: str) -> re.Pattern[str]:
    s = {"L": "(?:L|LEFT|LT)", "R": "(?:R|RIGHT|RT)"}[side]
    z = "(?:ZIP|ZIPCODE|POSTCODE|POSTAL|POSTALCODE|PLZ)"
    return re.compile(rf"^(?:{z}{s}|{s}{z})$")


# -- matching ------------------------------------------------------------------------------------------------------


def _matches(spec: str | re.Pattern[str], key: str) -> bool:
    return bool(spec.search(key)) if isinstance(spec, re.Pattern) else key == spec


def _find(
    spec: Spec, fields: Sequence[_Field], used: set[str], accept: Callable[[_Field], bool] | None = None
) -> _Field | None:
    """The field of the best-ranked synonym: the whole key before the key without its noise words, then field
    order."""
    for synonym in spec:
        for attr in ("key", "stripped"):
            for f in fields:
                if f.name in used or not _matches(synonym, getattr(f, attr)):
                    continue
                if accept is None or accept(f):
                    return f
    return None


def _part(fields: Sequence[_Field], used: set[str], words: Sequence[str]) -> _Field | None:
    for word in words:
        for f in fields:
            key = f.stripped
            if f.name in used or any(w in key for w in _NOT_STREET):
                continue
            if (word in key and len(word) >= 5) or key == word:
                return f
    return None


def _has_digit(f: _Field) -> bool:
    values = [v for v in f.values if v.strip()]
    return not values or any(any(c.isdigit() for c in v) for v in values)


def _starts_with_number(f: _Field) -> bool:
    values = [v for v in f.values if v.strip()]
    return bool(values) and sum(1 for v in values if _NUMBER_START.match(v)) * 2 > len(values)


def _address_like(f: _Field) -> bool:
    words = {"ADD", "ADDR", "ADDRESS", "ADRESSE", "ADRES"}
    return bool(words & set(f.tokens)) and _starts_with_number(f)


@dataclass
class _Mapper:
    fields: list[_Field]
    used: set[str] = field(default_factory=set)
    matched: dict[str, list[str]] = field(default_factory=dict)
    conform: dict[str, Any] = field(default_factory=dict)

    def take(self, attribute: str, value: Any, *used: _Field) -> None:
        self.conform[attribute] = value
        self.matched[attribute] = [f.name for f in used]
        self.used.update(f.name for f in used)

    def simple(self, attribute: str, spec: Spec, accept: Callable[[_Field], bool] | None = None) -> bool:
        found = _find(spec, self.fields, self.used, accept)
        if found is not None:
            self.take(attribute, found.name, found)
        return found is not None

    def street(self, attribute: str) -> bool:
        """A full street field, else a ``join`` of the street's parts, else the name alone."""
        if self.simple(attribute, _FULL_STREET):
            return True

        def plain(f: _Field) -> bool:  # "123 Main St" values make a full address, not a street name
            return not _starts_with_number(f)

        name = _find(_STREET_NAME, self.fields, self.used, plain) or _find(
            ("NAME",), self.fields, self.used, plain
        )
        if name is None:
            return False
        taken = {name.name}
        found: dict[str, _Field] = {}
        # Found most specific first (a SUFFIXDIR is a post-direction before it could be a SUFFIX type) …
        for part, words in (
            ("pretype", _PRETYPE),
            ("postdir", _POSTDIR),
            ("predir", _PREDIR),
            ("type", _TYPE),
        ):
            hit = _part(self.fields, self.used | taken, words)
            if hit is not None:
                found[part] = hit
                taken.add(hit.name)
        # … and joined in reading order.
        found["name"] = name
        parts = [found[p] for p in ("predir", "pretype", "name", "type", "postdir") if p in found]
        if len(parts) == 1:
            if name.key == "NAME":  # a bare NAME is a street only beside other street parts
                return False
            self.take(attribute, name.name, name)
        else:
            self.take(
                attribute, {"function": "join", "fields": [p.name for p in parts], "separator": " "}, *parts
            )
        return True


# -- the skeleton --------------------------------------------------------------------------------------------------


@dataclass
class Skeleton:
    """A suggested conform and what it was built from.

    :param layer: the layer type
    :param conform: the suggested conform object
    :param matched: attribute → the fields it reads
    :param missing: required attributes no field was found for (left as an empty field name)
    :param fields: the data's field names as listed (at most :data:`LISTED_FIELDS`, each shortened)
    :param field_count: how many fields the data has
    :param hints: what the author must still check (projected coordinates, values needing a ``map``)
    :param issues: schema problems of the skeleton placed into its source (empty: it validates)
    """

    layer: str
    conform: dict[str, Any]
    matched: dict[str, list[str]]
    missing: list[str]
    fields: list[str]
    field_count: int
    hints: list[str] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        """True when the skeleton, placed into its source, validates."""
        return not self.issues

    def record(self) -> dict[str, Any]:
        """The JSON record kept in ``skeleton.json`` and the run's state."""
        return {
            "layer": self.layer,
            "conform": self.conform,
            "matched": self.matched,
            "missing": self.missing,
            "fields": self.fields,
            "field_count": self.field_count,
            "hints": self.hints,
            "issues": self.issues,
            "valid": self.valid,
        }

    def summary(self) -> str:
        """One line for the log."""
        found = ", ".join(f"{a} ← {'+'.join(_short(n) for n in names)}" for a, names in self.matched.items())
        text = f"from {self.field_count} field(s): {found or 'no field recognised'}"
        if self.missing:
            text += f"; no field for {', '.join(self.missing)}"
        return text


def _short(name: str, limit: int = MAX_FIELD_LENGTH) -> str:
    name = re.sub(r"[\x00-\x1f\x7f\u2028\u2029]", "?", name)
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _listed(names: Sequence[str], total: int) -> tuple[list[str], str]:
    shown = [_short(n) for n in names[:LISTED_FIELDS]]
    text = ", ".join(shown)
    if len(text) > NOTES_LIMIT - 100:
        text = text[: NOTES_LIMIT - 101] + "…"
    if total > len(shown):
        text += f" (and {total - len(shown)} more)"
    return shown, text


def _is_projected(f: _Field, bound: float) -> bool:
    numbers = []
    for v in f.values:
        try:
            numbers.append(abs(float(v.replace(",", "."))))
        except ValueError:
            continue
    return bool(numbers) and any(n > bound for n in numbers)


def suggest_conform(
    layer: str,
    rows: Sequence[Sequence[Any]],
    *,
    data_format: str,
    file: str | None = None,
    csvsplit: str | None = None,
) -> Skeleton:
    """A skeleton conform from a sample (row 0 the field names, then records).

    :param layer: ``addresses``, ``parcels``, ``buildings`` or ``centerlines``
    :param rows: the sample rows (:func:`openaddr.readers.sample.take_sample`)
    :param data_format: the conform ``format`` of the data
    :param file: the ``file`` to name, when the format alone would choose another file
    :param csvsplit: the CSV delimiter, when not a comma
    """
    header = [("" if n is None else str(n)) for n in (rows[0] if rows else [])]
    total = len(header)
    fields: list[_Field] = []
    for index, name in enumerate(header[:MAX_FIELDS]):
        values = [
            ("" if row[index] is None else str(row[index]))[:200] for row in rows[1:] if index < len(row)
        ]
        fields.append(_make_field(name, values))
    usable = [f for f in fields if f.usable]
    own = [f for f in usable if not any(w in f.key for w in _OTHER_PARTY)]
    conform: dict[str, Any] = {"format": data_format}
    if file:
        conform["file"] = file
    if csvsplit:
        conform["csvsplit"] = csvsplit
    m = _Mapper(own)
    m.conform.update(conform)
    hints: list[str] = []
    required: tuple[str, ...] = ()
    if layer == "addresses":
        required = ("number", "street")
        full = (
            _find(_FULL_ADDRESS, own, m.used, _starts_with_number)
            or _find(_STREET_NAME, own, m.used, _starts_with_number)
            or next((f for f in own if _address_like(f)), None)
        )
        if not m.simple("number", _NUMBER, _has_digit) and full is not None:
            m.take("number", {"function": "prefixed_number", "field": full.name}, full)
        if not m.street("street") and full is not None:
            street: dict[str, Any] = {"function": "postfixed_street", "field": full.name}
            units = any(_UNIT_PHRASE.search(v) for v in full.values)
            if units:
                street["may_contain_units"] = True
            m.take("street", street, full)
            if units and not _find(_UNIT, own, m.used):
                m.take("unit", {"function": "postfixed_unit", "field": full.name}, full)
        if "unit" not in m.conform:
            unit = _find(_UNIT, own, m.used)
            kind = _find(_UNIT_TYPE, own, m.used | ({unit.name} if unit else set()))
            if unit is not None and kind is not None:
                m.take(
                    "unit",
                    {"function": "join", "fields": [kind.name, unit.name], "separator": " "},
                    kind,
                    unit,
                )
            elif unit is not None:
                m.take("unit", unit.name, unit)
        m.simple("city", _CITY)
        m.simple("district", _DISTRICT)
        m.simple("region", _REGION)
        m.simple("postcode", _POSTCODE)
        m.simple("id", _ADDRESS_ID, lambda f: not any(w in f.key for w in ("PARCEL", "APN")))
        if data_format == "csv":
            m.fields = usable  # coordinates may have any name
            for attr, spec, bound in (("lon", _LON, 180.0), ("lat", _LAT, 90.0)):
                if m.simple(attr, spec):
                    found = next(f for f in usable if f.name == m.conform[attr])
                    if _is_projected(found, bound):
                        hints.append(f"{attr} values are not degrees: add the data's srs (EPSG:…)")
                else:
                    hints.append(f"no {attr} column recognised: CSV conforms need lon and lat")
    elif layer == "parcels":
        required = ("pid",)
        m.fields = usable
        m.simple("pid", _PID)
    elif layer == "buildings":
        m.fields = usable
        m.simple("id", _BUILDING_ID)
        m.simple("height", _HEIGHT)
        m.simple("levels", _LEVELS)
    elif layer == "centerlines":
        m.simple("id", _SEGMENT_ID)
        m.street("name")
        m.simple("oneway", _ONEWAY)
        speed = _find(_SPEED, own, m.used)
        if speed is not None:
            value: Any = speed.name
            if "MPH" in speed.key:
                value = {"function": "mph_to_kph", "field": speed.name}
            m.take("speed", value, speed)
        m.simple("classification", _CLASS)
        m.simple("surface", _SURFACE)
        for attr, pattern in (
            ("addr_from_left", _range("L", "F")),
            ("addr_to_left", _range("L", "T")),
            ("addr_from_right", _range("R", "F")),
            ("addr_to_right", _range("R", "T")),
            ("zip_left", _zip_side("L")),
            ("zip_right", _zip_side("R")),
        ):
            m.simple(attr, (pattern,))
        for attr in ("oneway", "classification", "surface"):
            if attr in m.conform:
                hints.append(f"{attr} values must be the schema's words: a map function may be needed")
    missing = [a for a in required if a not in m.conform]
    listed, text = _listed(header, total)
    for attr in missing:
        m.conform[attr] = ""  # an empty field name never matches (processing.md §7.3): a placeholder
    if missing:
        notes = f"Suggested by the Machine: fill in {', '.join(missing)}. Fields in the data: {text}"
        m.conform["notes"] = notes[:NOTES_LIMIT]
    ordered = {k: m.conform[k] for k in (*conform, *_ORDER.get(layer, ()), "notes") if k in m.conform}
    matched = {k: m.matched[k] for k in _ORDER.get(layer, ()) if k in m.matched}
    return Skeleton(layer, ordered, matched, missing, listed, total, hints)


_ORDER = {
    "addresses": ("number", "street", "unit", "city", "district", "region", "postcode", "id", "lon", "lat"),
    "parcels": ("pid",),
    "buildings": ("id", "height", "levels"),
    "centerlines": (
        "id", "name", "oneway", "speed", "classification", "surface", "addr_from_left", "addr_to_left",
        "addr_from_right", "addr_to_right", "zip_left", "zip_right",
    ),
}  # fmt: skip


def check_skeleton(entry: LayerEntry, skeleton: Skeleton) -> Skeleton:
    """Place the skeleton into the entry of its source and validate the source (strict or advisory as the file
    is); record the problems found at the conform's path in ``skeleton.issues``."""
    from openaddr.validation import conform_errors, schema_errors

    document = copy.deepcopy(dict(entry.source.document))
    target = document["layers"][entry.layer][entry.index]
    target["conform"] = copy.deepcopy(skeleton.conform)
    prefix = ("layers", entry.layer, entry.index, "conform")
    issues = [*schema_errors(document, advisory=not entry.source.strict), *conform_errors(document)]
    skeleton.issues = [str(i) for i in issues if i.parts[:4] == prefix][:20]
    return skeleton


def data_format(path: Path, protocol: str) -> str:
    """The conform ``format`` that reads ``path`` (ESRI entries read their cache as ``geojson``)."""
    if str(protocol).lower() == "esri":
        return "geojson"
    return _SUFFIX_FORMATS.get(path.suffix.lower(), "csv")


def suggest_for_entry(
    entry: LayerEntry, paths: list[Path], root: Path, protocol: str, rows: Sequence[Sequence[Any]] | None
) -> Skeleton | None:
    """The skeleton of an entry without conform, from its extracted data and its sample; None without a sample."""
    from openaddr.errors import OpenaddrError
    from openaddr.readers.choose import choose_input
    from openaddr.readers.sample import csv_sample, sample_input

    path = sample_input(paths, root, None, protocol)
    if path is None or not rows:
        return None
    fmt = data_format(path, protocol)
    file = None
    try:
        chosen: Path | None = choose_input(paths, root, {"format": fmt}, protocol)
    except OpenaddrError:
        chosen = None
    if chosen != path and str(protocol).lower() != "esri":
        try:
            file = path.relative_to(root).as_posix()
        except ValueError:
            file = path.name
    csvsplit = None
    if fmt == "csv" and str(protocol).lower() != "esri" and len(rows[0]) == 1:
        for delimiter in (";", "|", "\t"):
            if delimiter in str(rows[0][0]):
                rows, _ = csv_sample(path, "utf-8", delimiter, entry.label, len(rows) - 1)
                csvsplit = delimiter
                break
    return check_skeleton(
        entry, suggest_conform(entry.layer, rows, data_format=fmt, file=file, csvsplit=csvsplit)
    )


def write_skeleton(state_dir: Path, skeleton: Skeleton) -> Path:
    """Write the skeleton's record as ``skeleton.json`` into ``state_dir``; return its path."""
    path = state_dir / FILE_NAME
    path.write_text(json.dumps(skeleton.record(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_skeleton(path: Path) -> dict[str, Any] | None:
    """A ``skeleton.json`` as written by :func:`write_skeleton`; None when absent, too big or not a record."""
    try:
        if path.stat().st_size > FILE_LIMIT:
            log.warning("Ignoring %s: over %d bytes", path, FILE_LIMIT)
            return None
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return dict(data) if is_record(data) else None


def is_record(data: Any) -> TypeGuard[Mapping[str, Any]]:
    """True for a skeleton record (a dict whose ``conform`` is an object)."""
    return isinstance(data, Mapping) and isinstance(data.get("conform"), Mapping)


def skeleton_text(conform: Mapping[str, Any]) -> str:
    """The conform as indented JSON that is safe to show anywhere: ASCII only, and the characters that mean
    something to HTML or Markdown (`` ` < > & ``) written as JSON escapes, so the text cannot end a code block or
    open a tag; it is still the same JSON."""
    text = json.dumps(conform, indent=2, ensure_ascii=True)
    for char in "`<>&":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text

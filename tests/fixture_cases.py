"""The fixture sources whose data is in ``fixtures/machine/data``, shared by the conform and process-one tests.

Each case: source file (below ``fixtures/machine/sources``), data file (below ``fixtures/machine/data``), and the
source problem expected, or None for a success. The problems were read off the sources and data by hand.
"""

from __future__ import annotations

# source file (below fixtures/machine/sources) → data file (below fixtures/machine/data), expected problem
CASES: list[tuple[str, str, str | None]] = [
    ("be/wa/brussels-fr.json", "be-wa-brussels.zip", None),
    ("de/berlin.json", "de-berlin-excerpt.zip", None),
    ("fr-paris.json", "BAN_licence_gratuite_repartage_75.zip", None),
    ("fr/la-réunion.json", "BAN_licence_gratuite_repartage_974.zip", None),
    ("iceland.json", "iceland.zip", None),
    ("it-52-statewide.json", "it-52-statewide.zip", None),
    ("jp-fukushima1.json", "jp-fukushima.zip", "Could not conform source data"),  # advanced_merge is rejected
    ("jp-fukushima2.json", "jp-fukushima.zip", None),
    ("lake-man-gdb.json", "lake-man.gdb.zip", None),
    ("lake-man-gdb-nested.json", "lake-man-gdb-othername.zip", None),
    ("lake-man-gdb-nested-nodir.json", "lake-man-gdb-othername-nodir.zip", None),
    ("nl/countrywide.json", "nl.zip", None),
    ("pl-dolnoslaskie.json", "pl.zip", None),
    ("pl-lodzkie.json", "pl.zip", None),
    ("us-ca-alameda_county.json", "us-ca-alameda_county-excerpt.zip", None),
    ("us-ca-alameda_county_v2.json", "us-ca-alameda_county-excerpt.zip", None),
    ("us-ca-alameda_county-mixedcase.json", "us-ca-alameda_county-excerpt-mixedcase.zip", None),
    ("us-ca-berkeley.json", "us-ca-berkeley-excerpt.zip", "Source is missing a conform object"),
    ("us-ca-berkeley-apn.json", "us-ca-berkeley-excerpt.zip", None),
    ("us-ca-oakland.json", "us-ca-oakland-excerpt.zip", "Unknown source conform format"),
    ("us-ca-oakland-skip.json", "us-ca-oakland-excerpt.zip", "Source says to skip"),
    ("us-ca-san_francisco.json", "us-ca-san_francisco-excerpt.zip", None),
    # every feature of this excerpt has a null geometry (read the file): nothing to publish
    ("us-mi-grand_traverse.json", "us-mi-grand-traverse.geojson.zip", "Found no addresses in source data"),
    ("us-ut.json", "us-ut-excerpt.zip", None),
    ("us-wy-park.json", "us-wy-park.zip", None),
    ("us/nj/statewide.json", "nj-statewide.gdb.zip", None),
    ("us/oh/trumbull.json", "TRU_ADDS-excerpt.zip", None),
    ("us/or/portland.json", "us-or-portland.zip", None),
    ("us/pa/bucks.json", "us-pa-bucks.geojson.zip", None),
    ("us/va/statewide.json", "VA_SiteAddress-excerpt.zip", None),
]

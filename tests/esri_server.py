"""A loopback ArcGIS REST replay server for the ESRI downloader tests (processing.md §3.6), as pytest fixtures.

It answers the requests esridump and :mod:`openaddr.download.esri` send (GET and form-encoded POST) from the
responses the original Machine recorded in ``fixtures/machine/data/``:

* ``<name>-metadata.json`` — the layer itself (``?f=json``);
* ``<name>-count-only.json`` — ``returnCountOnly=true``;
* ``<name>-ids-only.json`` — ``returnIdsOnly=true`` (when it was not recorded, the ids of the recorded features);
* ``<name>-statistics.json`` — ``outStatistics``;
* ``<name>-probe.json`` — esridump's one-row pagination probe (``resultRecordCount=1`` with a field list);
* ``<name>-0.json`` — the recorded page of features. It is served slice by slice in offset mode (a later page past
  its end is empty), filtered by the ``<oid> > lo AND <oid> <= hi`` / ``>= lo AND <= hi`` ranges of the OID modes,
  and whole for envelope queries.

A request the recordings cannot answer gets the JSON error an ArcGIS server gives for a bad query. Layer paths are
``/<name>/<MapServer|FeatureServer>/<n>`` in any case; :meth:`ReplayServer.layer_url` also registers *behaviours*
(failure modes such as a page answering 500, or a count larger than the features served) under a path prefix.

Use it through the ``esri_server`` fixture: ``from esri_server import esri_server_fixture`` in a test module.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

_LAYER_PATH = re.compile(
    r"^/(?:_(?P<scenario>\d+)/)?(?P<name>[^/]+)/(?i:mapserver|featureserver)/\d+/?(?P<query>query/?)?$"
)
_OID_RANGE = re.compile(
    r"^\s*(?P<field>\S+)\s*(?P<low_op>>=|>)\s*(?P<low>-?\d+)\s+AND\s+(?P=field)\s*<=\s*(?P<high>-?\d+)\s*$",
    re.I,
)
_QUERY_ERROR = {"error": {"code": 400, "message": "Unable to complete operation.", "details": []}}
_PAGE_ERROR = {"error": {"code": 400, "message": "Failed to execute query.", "details": []}}


@dataclass
class Behaviour:
    """How a scenario departs from the recording.

    :param page_status: feature pages answer this HTTP status (e.g. 500) with a text body
    :param failures: with ``page_status``, only the first ``failures`` feature-page requests fail (None: all)
    :param retry_after: with ``page_status``, the ``Retry-After`` header of the failing answers
    :param page_error: feature pages answer HTTP 200 with a JSON ``error`` object
    :param extra_count: ``returnCountOnly`` reports this many features more than the recording serves
    :param cap: a page holds at most this many features, whatever ``resultRecordCount`` asks (servers cap pages
        below ``maxRecordCount``)
    :param drop: the first ``drop`` feature-page requests get their connection closed without an answer
    :param slow: the first ``slow`` feature-page requests are answered after ``delay`` seconds
    :param delay: see ``slow``
    :param metadata: keys replaced in the layer metadata (e.g. ``maxRecordCount``, ``supportsPagination``)
    :param unsupported: request kinds (:attr:`Request.kind`: ``count``, ``ids``, ``statistics``) answered with the
        JSON error of a server that does not support them
    :param redirect: the layer metadata request answers ``302 Found`` to this URL
    :param ragged: offset pages hold at most ``3 + offset // 2 % 3`` features (3 to 5): sizes that keep changing
        from page to page, the same for the same offset
    :param latency: seconds every feature page waits before its answer (the benchmark's 200 ms)
    :param latencies: seconds the n-th feature-page request of the scenario waits, cycled (pages answered out of
        the order they were asked in)
    """

    page_status: int | None = None
    failures: int | None = None
    retry_after: str | None = None
    page_error: bool = False
    extra_count: int = 0
    cap: int | None = None
    drop: int = 0
    slow: int = 0
    delay: float = 0.5
    metadata: dict[str, Any] = field(default_factory=dict)
    unsupported: tuple[str, ...] = ()
    redirect: str | None = None
    ragged: bool = False
    latency: float = 0.0
    latencies: tuple[float, ...] = ()


@dataclass
class Arrival:
    """A feature-page request as the server saw it arrive.

    :param in_flight: feature-page requests being answered at that moment, this one included
    :param offset: its ``resultOffset`` (None in the OID and envelope modes)
    :param status: the HTTP status it was answered with (0 until answered)
    """

    in_flight: int
    offset: int | None
    status: int = 0


@dataclass
class Request:
    """One request the server received.

    :param method: ``GET`` or ``POST``
    :param path: the URL path
    :param params: query-string and form parameters together
    :param headers: the request headers
    """

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]

    @property
    def kind(self) -> str:
        """``metadata``, ``count``, ``ids``, ``statistics``, ``probe`` or ``features``."""
        p = self.params
        if not self.path.rstrip("/").lower().endswith("/query"):
            return "metadata"
        if p.get("returnCountOnly") == "true":
            return "count"
        if p.get("returnIdsOnly") == "true":
            return "ids"
        if "outStatistics" in p:
            return "statistics"
        if p.get("resultRecordCount") == "1" and p.get("outFields", "*") != "*":
            return "probe"
        return "features"


class Recording:
    """The recorded responses of one layer."""

    def __init__(self, data: Path, name: str) -> None:
        self.name = name
        self.metadata = _load(data / f"{name}-metadata.json")
        self.count = _load(data / f"{name}-count-only.json")
        self.statistics = _load(data / f"{name}-statistics.json")
        self.probe = _load(data / f"{name}-probe.json")
        self.page = _load(data / f"{name}-0.json")
        self.features: list[dict[str, Any]] = list((self.page or {}).get("features") or [])
        # Each feature's JSON, encoded once: a page's body is joined from them (json.dumps of a whole page of
        # 1000 features for every request would cost the benchmark's machine more than the client's work).
        self.encoded: dict[int, str] = {id(f): json.dumps(f) for f in self.features}
        fields = (self.metadata or {}).get("fields") or []
        self.oid_field = (self.metadata or {}).get("objectIdField") or next(
            (f["name"] for f in fields if f.get("type") == "esriFieldTypeOID"), None
        )
        ids = _load(data / f"{name}-ids-only.json")
        if ids is None and self.oid_field and self.features:
            # Not recorded: answer with the ids of the recorded features (no invented data).
            ids = {"objectIdFieldName": self.oid_field, "objectIds": self.feature_oids()}
        self.ids = ids

    def body(self, document: Any) -> bytes:
        """``document`` as JSON; a page's recorded features from their cached encoding."""
        features = document.get("features") if isinstance(document, dict) else None
        if not isinstance(features, list) or not all(id(f) in self.encoded for f in features):
            return json.dumps(document).encode("utf-8")
        rest = json.dumps({k: v for k, v in document.items() if k != "features"})
        members = ", ".join(self.encoded[id(f)] for f in features)
        return f'{rest[:-1]}{", " if len(rest) > 2 else ""}"features": [{members}]}}'.encode()

    def feature_oids(self) -> list[Any]:
        """The object ids of the recorded features, in order."""
        return [(f.get("attributes") or {}).get(self.oid_field) for f in self.features]


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


class ReplayServer(ThreadingHTTPServer):
    """The threaded replay server on 127.0.0.1 (port chosen by the system).

    :param data: the folder of recorded responses (``fixtures/machine/data``)
    """

    daemon_threads = True

    def __init__(self, data: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.data = data
        self.recordings: dict[str, Recording] = {}
        self.behaviours: dict[int, Behaviour] = {0: Behaviour()}
        self.requests: list[Request] = []
        self.dropped: dict[int, int] = {}
        self.slowed: dict[int, int] = {}
        self.failed: dict[int, int] = {}
        self.lock = threading.Lock()
        #: Feature-page requests being answered now, the most ever at once, and each one's arrival in order. A
        #: request counts from its arrival until just before its answer is written, within the time its client
        #: holds a slot, so ``max_in_flight`` never exceeds what the client let through.
        self.in_flight = 0
        self.max_in_flight = 0
        self.arrivals: list[Arrival] = []
        self.feature_requests: dict[int, int] = {}

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def layer_url(self, name: str, *, service: str = "MapServer", layer: int = 0, **behaviour: Any) -> str:
        """The URL of a recorded layer, optionally with a :class:`Behaviour` (keyword arguments).

        :param name: a recording name, e.g. ``us-pa-lancaster``
        :param service: the service segment as the source spells it (``MapServer``, ``Mapserver``, …)
        :param layer: the layer number in the URL
        """
        prefix = ""
        if behaviour:
            with self.lock:
                scenario = len(self.behaviours)
                self.behaviours[scenario] = Behaviour(**behaviour)
            prefix = f"/_{scenario}"
        return f"{self.base_url}{prefix}/{name}/{service}/{layer}"

    def recording(self, name: str) -> Recording | None:
        """The recording of a layer, or None when nothing was recorded under that name."""
        with self.lock:
            if name not in self.recordings:
                if not (self.data / f"{name}-metadata.json").exists():
                    return None
                self.recordings[name] = Recording(self.data, name)
            return self.recordings[name]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client gave up on a slow answer (a broken pipe is what the test wanted)."""

    def queries(self, kind: str | None = None) -> list[Request]:
        """The requests received so far, optionally only those of one :attr:`Request.kind`."""
        with self.lock:
            return [r for r in self.requests if kind is None or r.kind == kind]


class _Handler(BaseHTTPRequestHandler):
    server: ReplayServer
    protocol_version = "HTTP/1.1"
    # Answer in one write without Nagle's delay: keep-alive requests would otherwise wait ~40 ms each.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:
        self._answer(dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True)))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8")
        params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        params.update(parse_qsl(body, keep_blank_values=True))
        self._answer(params)

    def _answer(self, params: dict[str, str]) -> None:
        path = urlsplit(self.path).path
        request = Request(self.command, path, params, dict(self.headers.items()))
        with self.server.lock:
            self.server.requests.append(request)
        match = _LAYER_PATH.match(path)
        recording = self.server.recording(match["name"]) if match else None
        behaviour = self.server.behaviours.get(int(match["scenario"] or 0)) if match else None
        if match is None or recording is None or behaviour is None:
            self._send(404, b"Not found", "text/plain")
            return
        kind = request.kind
        if kind == "metadata" and behaviour.redirect:
            self.send_response(302)
            self.send_header("Location", behaviour.redirect)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if kind == "features":
            scenario = int(match["scenario"] or 0)
            offset = params.get("resultOffset")
            arrival = Arrival(0, int(offset) if offset is not None and offset.isdigit() else None)
            with self.server.lock:
                self.server.in_flight += 1
                self.server.max_in_flight = max(self.server.max_in_flight, self.server.in_flight)
                arrival.in_flight = self.server.in_flight
                self.server.arrivals.append(arrival)
                number = self.server.feature_requests.get(scenario, 0)
                self.server.feature_requests[scenario] = number + 1
            try:
                self._features_answer(scenario, recording, behaviour, params, arrival, number)
            finally:
                with self.server.lock:
                    if not arrival.status:  # dropped, or the client went away: no longer in flight
                        self.server.in_flight -= 1
            return
        self._json(_response(recording, behaviour, kind, params))

    def _features_answer(
        self,
        scenario: int,
        recording: Recording,
        behaviour: Behaviour,
        params: dict[str, str],
        arrival: Arrival,
        number: int,
    ) -> None:
        delay = behaviour.latency
        if behaviour.latencies:
            delay += behaviour.latencies[number % len(behaviour.latencies)]
        if delay:
            time.sleep(delay)
        kind = "features"
        with self.server.lock:
            dropped = self.server.dropped.get(scenario, 0)
            if dropped < behaviour.drop:
                self.server.dropped[scenario] = dropped + 1
                self.close_connection = True
                return
            slowed = self.server.slowed.get(scenario, 0)
            if slowed < behaviour.slow:
                self.server.slowed[scenario] = slowed + 1
        if slowed < behaviour.slow:
            time.sleep(behaviour.delay)
        with self.server.lock:
            failed = self.server.failed.get(scenario, 0)
            failing = behaviour.page_status is not None and (
                behaviour.failures is None or failed < behaviour.failures
            )
            if failing:
                self.server.failed[scenario] = failed + 1
        if failing and behaviour.page_status is not None:
            headers = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else {}
            self._answered(arrival, behaviour.page_status)
            self._send(behaviour.page_status, b"Internal server error", "text/plain", headers)
            return
        if behaviour.page_error:
            self._answered(arrival, 200)
            self._json(_PAGE_ERROR)
            return
        body = recording.body(_response(recording, behaviour, kind, params))
        self._answered(arrival, 200)
        self._send(200, body, "application/json; charset=utf-8")

    def _answered(self, arrival: Arrival, status: int) -> None:
        with self.server.lock:
            arrival.status = status
            self.server.in_flight -= 1

    def _json(self, document: Any) -> None:
        self._send(200, json.dumps(document).encode("utf-8"), "application/json; charset=utf-8")

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _response(recording: Recording, behaviour: Behaviour, kind: str, params: dict[str, str]) -> Any:
    if kind == "metadata":
        return {**recording.metadata, **behaviour.metadata}
    if kind in behaviour.unsupported:
        return _QUERY_ERROR
    if kind == "count":
        if recording.count is None:
            return _QUERY_ERROR
        return {"count": recording.count["count"] + behaviour.extra_count}
    if kind == "ids":
        return recording.ids if recording.ids is not None else _QUERY_ERROR
    if kind == "statistics":
        return recording.statistics if recording.statistics is not None else _QUERY_ERROR
    if kind == "probe" and recording.probe is not None:
        return recording.probe
    if recording.page is None:
        return _QUERY_ERROR
    return {**recording.page, "features": _features(recording, behaviour, params)}


def _features(recording: Recording, behaviour: Behaviour, params: dict[str, str]) -> list[dict[str, Any]]:
    features = recording.features
    if "resultOffset" in params:
        offset = int(params["resultOffset"])
        size = int(params.get("resultRecordCount") or len(features))
        if behaviour.cap is not None:
            size = min(size, behaviour.cap)
        if behaviour.ragged:
            size = min(size, 3 + offset // 2 % 3)
        return features[offset : offset + size]
    match = _OID_RANGE.match(params.get("where", ""))
    if match is None:  # where=1=1 or an envelope: everything recorded
        return features
    low, high = int(match["low"]), int(match["high"])
    inclusive = match["low_op"] == ">="
    known = set((recording.ids or {}).get("objectIds") or [])
    oids = recording.feature_oids()
    if all(oid in known for oid in oids):
        return [
            f
            for f, oid in zip(features, oids, strict=True)
            if isinstance(oid, int) and (low <= oid if inclusive else low < oid) and oid <= high
        ]
    # The recorded page does not hold the recorded ids (us-ca-carson): it answers the range of the smallest id.
    first = min(known) if known else None
    hit = first is not None and (low <= first if inclusive else low < first) and first <= high
    return features if hit else []


@pytest.fixture(name="esri_server")
def esri_server_fixture(fixtures: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ReplayServer]:
    """``esri_server``: a running :class:`ReplayServer` over ``fixtures/machine/data``; the private-address guard is
    lifted through the environment.

    Test modules import this function (``from esri_server import esri_server_fixture``) to use the fixture.
    """
    # The server listens on loopback, which the guard refuses in production (processing.md §3.1).
    monkeypatch.setenv("OPENADDR_ALLOW_PRIVATE_URLS", "1")
    with serve(fixtures / "data") as server:
        yield server


def generate_layer(folder: Path, name: str, features: int, *, page_size: int = 1000, seed: int = 15) -> None:
    """Write the recordings of a generated point layer of ``features`` features into ``folder`` (the tests' and
    ``benchmarks/bench_esri.py``'s layer): metadata with offset paging (``maxRecordCount`` ``page_size``),
    statistics and ids, the count, the ids and one page of every feature.

    Attributes hold a number, a street (some with a comma or a quote, so the CSV quotes them), a city, a float and
    a null; coordinates have 7 decimals, as ArcGIS answers ``geometryPrecision=7``.
    """
    import random

    rng = random.Random(seed)
    streets = ["Main St", "Oak Ave", 'The "Loop"', "Elm, North", "Ñandú Way", "1st St"]
    rows = []
    for oid in range(1, features + 1):
        rows.append(
            {
                "attributes": {
                    "OBJECTID": oid,
                    "NUMBER": str(rng.randint(1, 9999)),
                    "STREET": rng.choice(streets),
                    "CITY": rng.choice(["Springfield", "Shelbyville", None]),
                    "AREA": round(rng.uniform(0, 1000), 3),
                },
                "geometry": {
                    "x": round(rng.uniform(-123.0, -121.0), 7),
                    "y": round(rng.uniform(37.0, 38.0), 7),
                },
            }
        )
    fields = [
        {"name": "OBJECTID", "type": "esriFieldTypeOID", "alias": "OBJECTID"},
        {"name": "NUMBER", "type": "esriFieldTypeString", "alias": "NUMBER"},
        {"name": "STREET", "type": "esriFieldTypeString", "alias": "STREET"},
        {"name": "CITY", "type": "esriFieldTypeString", "alias": "CITY"},
        {"name": "AREA", "type": "esriFieldTypeDouble", "alias": "AREA"},
    ]
    metadata = {
        "currentVersion": 10.91,
        "name": name,
        "type": "Feature Layer",
        "geometryType": "esriGeometryPoint",
        "objectIdField": "OBJECTID",
        "fields": fields,
        "maxRecordCount": page_size,
        "supportsStatistics": True,
        "advancedQueryCapabilities": {"supportsPagination": True, "supportsStatistics": True},
        "extent": {
            "xmin": -123.0,
            "ymin": 37.0,
            "xmax": -121.0,
            "ymax": 38.0,
            "spatialReference": {"wkid": 4326},
        },
    }
    documents = {
        "metadata": metadata,
        "count-only": {"count": features},
        "ids-only": {"objectIdFieldName": "OBJECTID", "objectIds": list(range(1, features + 1))},
        "statistics": {"features": [{"attributes": {"THE_MIN": 1, "THE_MAX": features}}]},
        "0": {"objectIdFieldName": "OBJECTID", "geometryType": "esriGeometryPoint", "features": rows},
    }
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, document in documents.items():
        (folder / f"{name}-{suffix}.json").write_text(json.dumps(document), encoding="utf-8")


@contextlib.contextmanager
def serve(data: Path) -> Iterator[ReplayServer]:
    """A running :class:`ReplayServer` over the recordings in ``data``, shut down on exit."""
    server = ReplayServer(data)
    # A short poll interval keeps shutdown() quick (the default waits up to 0.5 s per test).
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), name="esri-replay", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

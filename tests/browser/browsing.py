"""What the browser tests share: the recorded data's names, the watched tab, link and width helpers."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urldefrag, urlsplit

from openaddr.db.runs import get_run
from tests.conftest import ROOT

if TYPE_CHECKING:
    from flask import Flask
    from playwright.sync_api import ConsoleMessage, Page, Request, Response

    from openaddr.storage import LocalStorage

#: Where Debian puts its chromium; ``shutil.which`` finds it elsewhere on the PATH.
CHROMIUM = "/usr/bin/chromium"
INSTALL = "apt-get install -y --no-install-recommends chromium"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
#: The recorded data: owner and repository of the set (the one "/" shows), and the commit of set and job.
OWNER = REPOSITORY = "openaddresses"
COMMIT = "5eed" + "0" * 36
JOB_COMMIT = "c1" + "0" * 38

# Source files as the sources repository holds them: fixture sources, their data on the loopback server.
PARK = "sources/us/wy/park.json"
SAN_FRANCISCO = "sources/us/ca/san_francisco.json"
ALAMEDA = "sources/us/ca/alameda_county.json"
OAKLAND = "sources/us/ca/oakland.json"
BERKELEY = "sources/us/ca/berkeley.json"
BROKEN = "sources/zz/broken.json"
SOURCES = {
    PARK: ("us-wy-park.json", "/data/us-wy-park.zip"),
    SAN_FRANCISCO: ("us-ca-san_francisco.json", "/data/us-ca-san_francisco-excerpt.zip"),
    ALAMEDA: ("us-ca-alameda_county_v2.json", "/data/us-ca-alameda_county-excerpt.zip"),
    OAKLAND: ("us-ca-oakland-skip.json", "/data/us-ca-oakland-excerpt.zip"),
    BERKELEY: ("us-ca-berkeley-404.json", "/browser/missing.zip"),  # 404: "Failed to produce cache data"
}


def artifacts_folder() -> Path:
    """``$TEST_ARTIFACTS`` (default ``<checkout>/test-artifacts``): where the browser tests leave screenshots."""
    return Path(os.environ.get("TEST_ARTIFACTS") or ROOT / "test-artifacts").resolve()


def screenshots_folder() -> Path:
    """``<artifacts>/screenshots``, created."""
    folder = artifacts_folder() / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclasses.dataclass
class Watched:
    """A tab and what went wrong in it: console errors, uncaught page errors, failed requests, answers ≥ 400."""

    page: Page
    problems: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(f"console error: {message.text} ({message.location.get('url')})")

    def _failed(self, request: Request) -> None:
        self.problems.append(f"request failed: {request.method} {request.url}: {request.failure}")

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.request.method} {response.url}")

    def take(self) -> list[str]:
        """The problems seen since the last call."""
        problems, self.problems = self.problems, []
        return problems


def same_origin(base: str, url: str) -> bool:
    """``url`` is on the site at ``base`` (scheme, host and port)."""
    a, b = urlsplit(base), urlsplit(url)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def links(page: Page, base: str) -> list[str]:
    """Every same-origin ``<a href>`` of the page, absolute, without fragment, in page order, once each."""
    hrefs: list[str] = page.eval_on_selector_all("a[href]", "links => links.map(link => link.href)")
    found = dict.fromkeys(urldefrag(href).url for href in hrefs if same_origin(base, href))
    return list(found)


def overflow(page: Page) -> tuple[int, int]:
    """``(document width, viewport width)``: the page overflows horizontally when the first is larger."""
    widths: list[int] = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    return widths[0], widths[1]


@dataclasses.dataclass
class Site:
    """The app on loopback: its URL, storage folder and database URL."""

    url: str
    app: Flask
    storage: LocalStorage
    database_url: str


@dataclasses.dataclass
class Results:
    """What ``results`` recorded: the set, the job, and every run by source path (and owner)."""

    set_id: int
    job_id: str
    set_runs: dict[str, dict[str, Any]]
    job_runs: dict[str, dict[str, Any]]

    @property
    def runs(self) -> list[dict[str, Any]]:
        """Every run, set first."""
        return [*self.set_runs.values(), *self.job_runs.values()]

    def sample(self, run: dict[str, Any], site: Site) -> list[list[Any]]:
        """The run's published sample (its lines), read from the storage."""
        url = run["state"]["sample"]
        return json.loads(site.storage.get_bytes(url.removeprefix(f"{site.url}/files/")))


def fixture_source(fixtures: Path, name: str, url: str) -> bytes:
    """A fixture source with its data URL pointing at the loopback server (v1 or each v2 address entry)."""
    document = json.loads((fixtures / "sources" / name).read_text(encoding="utf-8"))
    for entry in document["layers"]["addresses"] if "layers" in document else [document]:
        entry["data"] = url
    return json.dumps(document, ensure_ascii=False, indent=4).encode()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def machine_runs(
    engine: Any, *, set_id: int | None = None, job_id: str | None = None
) -> list[dict[str, Any]]:
    """The runs of a set or a job, as the database has them."""
    from openaddr.db import runs as db_runs

    rows = db_runs.set_runs(engine, set_id) if set_id is not None else db_runs.job_runs(engine, str(job_id))
    return [run for row in rows if (run := get_run(engine, row["id"])) is not None]

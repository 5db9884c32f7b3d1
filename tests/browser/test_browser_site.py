"""The results site in headless Chromium: every link followed, the sample toggle, phone widths, screenshots.

The pages are those of machine-ci.md §9, filled from a database of real runs (``results`` in this folder's
conftest). A page listed in :data:`PAGES` before it exists goes into :data:`LANDING` too: its tests are strict
xfails until it lands (then take it out, and the marks go).
"""

from __future__ import annotations

import collections
import dataclasses
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from tests.browser.browsing import DESKTOP, PARK, PHONE, links, overflow, screenshots_folder

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from tests.browser.browsing import Results, Site, Watched

pytestmark = pytest.mark.integration

#: The site's pages every crawl starts from (machine-ci.md §9): ``{set}``, ``{job}``, ``{run}`` and ``{source}``
#: are filled from the recorded data (:func:`fill`). Extend it when a page is added.
PAGES = (
    "/",
    "/sets/",
    "/sets/{set}/",
    "/jobs/",
    "/jobs/{job}",
    "/runs/{run}/",
    "/runs/{run}/sample.html",
    "/sources/{source}",
    "/health/sources",
    "/latest/set",
    "/review/",
)
#: Pages of :data:`PAGES` not built yet: their tests are strict xfails, so they fail loudly once the pages exist.
LANDING: frozenset[str] = frozenset()
LANDS_LATER = "page not built yet"
#: Pages screenshotted at both widths, by the name of their file.
SCREENSHOTS = {
    "home": "/",
    "set": "/sets/{set}/",
    "job": "/jobs/{job}",
    "source": "/sources/{source}",
    "run": "/runs/{run}/",
}
#: A crawl stops with a failure past this many URLs (a paging loop, say).
CRAWL_LIMIT = 500


def seeds(templates: Iterable[str]) -> list[Any]:
    """``templates`` as test parameters, those in :data:`LANDING` marked as strict xfails."""
    return [
        pytest.param(
            template,
            id=template,
            marks=[pytest.mark.xfail(strict=True, reason=LANDS_LATER)] if template in LANDING else [],
        )
        for template in templates
    ]


def fill(template: str, results: Results) -> str:
    """A page's path from its template: the set, the job, the Park run of the set, the Park source."""
    source = PARK.removeprefix("sources/").removesuffix(".json")
    park = results.set_runs[PARK]["id"]
    return template.format(set=results.set_id, job=results.job_id, run=park, source=source)


@dataclasses.dataclass
class Crawl:
    """What a crawl saw: every URL visited with its final status, the HTML pages among them, what went wrong, and
    the same-origin links it was told not to follow."""

    statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    pages: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    not_followed: set[str] = dataclasses.field(default_factory=set)


def visit(watched: Watched, url: str, crawl: Crawl) -> list[str]:
    """Open ``url`` and check it; return the same-origin links of an HTML page.

    Every URL is first fetched with the tab's request context (files such as zips would start a download in the
    tab); an HTML answer is then opened in the tab, where console errors, page errors, failed sub-requests, a
    missing viewport declaration and horizontal overflow are problems.
    """
    answer = watched.page.request.get(url)
    crawl.statuses[url] = answer.status
    if answer.status >= 400:
        crawl.problems.append(f"HTTP {answer.status}: {url}")
        return []
    kind = answer.headers.get("content-type", "").split(";")[0].strip()
    if kind == "application/json":
        try:
            json.loads(answer.body())
        except ValueError as error:
            crawl.problems.append(f"not JSON: {url}: {error}")
    if kind != "text/html":
        return []
    response = watched.page.goto(url, wait_until="load")
    assert response is not None
    crawl.pages.append(url)
    crawl.problems.extend(f"{problem} (on {url})" for problem in watched.take())
    if not watched.page.locator('meta[name="viewport"]').count():
        crawl.problems.append(f"no <meta name=viewport> (a phone shows it zoomed out): {url}")
    width, viewport = overflow(watched.page)
    if width > viewport:
        crawl.problems.append(f"wider than the viewport ({width} > {viewport} px): {url}")
    return links(watched.page, url)


def crawl_site(
    watched: Watched, site: Site, starts: Iterable[str], follow: Callable[[str], bool] = lambda path: True
) -> Crawl:
    """Breadth first from ``starts`` (paths), each URL once: every same-origin link whose path ``follow`` accepts
    is visited; the others are noted in ``not_followed``."""
    crawl = Crawl()
    queue = collections.deque(f"{site.url}{path}" for path in dict.fromkeys(starts))
    seen = set(queue)
    while queue:
        if len(crawl.statuses) >= CRAWL_LIMIT:
            crawl.problems.append(f"more than {CRAWL_LIMIT} URLs; left: {list(queue)[:10]}")
            break
        url = queue.popleft()
        for link in visit(watched, url, crawl):
            if link in seen:
                continue
            if not follow(urlsplit(link).path):
                crawl.not_followed.add(link)
                continue
            seen.add(link)
            queue.append(link)
    return crawl


def run_pages(results: Results) -> list[str]:
    return [f"/runs/{run['id']}/" for run in results.runs]


# -- every link -------------------------------------------------------------------------------------------------


def test_the_run_pages_their_files_and_the_runs_they_copy_all_answer(
    page: Watched, site: Site, results: Results
) -> None:
    """What exists on every branch: each run's page and every file it links, through the site's own links."""
    crawl = crawl_site(
        page, site, run_pages(results), follow=lambda path: path.startswith(("/runs/", "/files/"))
    )

    assert crawl.problems == []
    assert all(status == 200 for status in crawl.statuses.values()), crawl.statuses
    visited = set(crawl.statuses)
    for run in results.runs:
        assert f"{site.url}/runs/{run['id']}/" in crawl.pages
        # Every published file named by the state was reached by following the page's links.
        state = run["state"] or {}
        for key in ("cache", "sample", "processed", "output"):
            if state.get(key):
                assert state[key] in visited, (run["source_path"], key)
    park = results.set_runs[PARK]
    assert park["status"] is True
    assert f"{site.url}/files/runs/{park['id']}/index.json" in visited
    # The CI job's Park run is a copy of the set's: its page links the original.
    assert results.job_runs[PARK]["copy_of"] == park["id"]


@pytest.mark.xfail(bool(LANDING), strict=True, reason=LANDS_LATER)
def test_every_page_reached_from_the_home_page_and_the_seeds_answers_without_errors(
    page: Watched, site: Site, results: Results
) -> None:
    crawl = crawl_site(page, site, [*(fill(template, results) for template in PAGES), *run_pages(results)])

    assert crawl.problems == [], "\n".join(crawl.problems)
    assert len(crawl.pages) >= len(PAGES) + len(results.runs) - 1  # /latest/set lands on the set's page
    for run in results.runs:
        assert f"{site.url}/runs/{run['id']}/" in crawl.pages


@pytest.mark.parametrize("template", seeds(PAGES))
def test_each_page_opens_without_errors_and_fits_a_phone(
    template: str, page: Watched, site: Site, results: Results
) -> None:
    crawl = Crawl()
    visit(page, f"{site.url}{fill(template, results)}", crawl)

    assert crawl.problems == []
    assert crawl.pages, f"{template} is not an HTML page"


# -- the sample toggle ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", seeds(["/sets/{set}/", "/jobs/{job}"]))
def test_a_runs_sample_opens_and_closes(template: str, page: Watched, site: Site, results: Results) -> None:
    """Each run row's sample is a native ``<details class="sample">`` with ``<summary>Sample</summary>`` and a
    table: hidden until the summary is clicked, hidden again on a second click."""
    response = page.page.goto(f"{site.url}{fill(template, results)}")
    assert response is not None
    assert response.status == 200
    samples = page.page.locator("details.sample")
    assert samples.count() >= 1
    park = results.set_runs[PARK]
    header, first = results.sample(park, site)[:2]
    opened_park = False
    for index in range(samples.count()):
        details = samples.nth(index)
        summary, table = details.locator("summary"), details.locator("table")
        assert summary.inner_text().strip() == "Sample"
        assert not table.is_visible()
        summary.click()
        table.wait_for(state="visible")
        assert details.evaluate("element => element.open")
        table.locator("tr").first.wait_for()  # site.js fills it from the run's sample on the first opening
        text = table.inner_text()
        assert text.strip()
        if all(name in text for name in header):
            opened_park = True
            assert all(str(value) in text for value in first if value not in (None, ""))
        summary.click()
        table.wait_for(state="hidden")
        assert not details.evaluate("element => element.open")
    assert opened_park, "no sample shows Park's first line"
    assert page.take() == []


# -- the preview image ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", seeds(["/runs/{run}/", "/jobs/{job}", "/sources/{source}"]))
def test_the_preview_image_loads(template: str, page: Watched, site: Site, results: Results) -> None:
    """Park's run draws a preview (machine-ci.md §5 step 3): its run, job and source pages show the PNG, which
    the browser loads and decodes at its full size, 1024 × 768."""
    response = page.page.goto(f"{site.url}{fill(template, results)}", wait_until="load")
    assert response is not None
    assert response.status == 200
    images = page.page.locator("figure.preview img")
    assert images.count() >= 1
    for index in range(images.count()):
        image = images.nth(index)
        image.scroll_into_view_if_needed()
        page.page.wait_for_function("element => element.complete", arg=image.element_handle())
        assert image.evaluate("element => [element.naturalWidth, element.naturalHeight]") == [1024, 768]
        assert "/preview.png" in str(image.get_attribute("src"))
    assert page.take() == []


# -- screenshots ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "template"), [pytest.param(*item, id=item[0]) for item in SCREENSHOTS.items()]
)
def test_screenshots_at_desktop_and_phone_widths(
    name: str, template: str, page: Watched, site: Site, results: Results, request: pytest.FixtureRequest
) -> None:
    if template in LANDING:
        request.applymarker(pytest.mark.xfail(strict=True, reason=LANDS_LATER))
    folder = screenshots_folder()
    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page.page.set_viewport_size(viewport)
        response = page.page.goto(f"{site.url}{fill(template, results)}", wait_until="load")
        assert response is not None
        assert response.status == 200, f"{template}: HTTP {response.status}"
        path = folder / f"{name}-{width}.png"
        page.page.screenshot(path=path, full_page=True)
        assert path.stat().st_size > 0
        scroll, inner = overflow(page.page)
        assert scroll <= inner, f"{name} at {width} width is {scroll} px wide in {inner} px"
    assert page.take() == []

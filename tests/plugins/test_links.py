"""The extra links are http(s) URLs that Airflow 3's UI shows, or empty (no button) — never ``file:`` URLs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from openaddr.storage import LocalStorage, S3Storage
from openaddr_airflow.links import ResultsSiteLink, RunOutputsLink, http_url, run_links

if TYPE_CHECKING:
    from pathlib import Path


def test_a_served_local_storage_and_a_site_give_http_links(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, public_url="http://127.0.0.1:5000/files/")
    links = run_links(storage, 17, "http://127.0.0.1:5000/")
    assert links == {
        "outputs": "http://127.0.0.1:5000/files/runs/17/index.json",
        "site": "http://127.0.0.1:5000/runs/17/",
    }


def test_a_reused_run_links_the_outputs_of_the_run_that_published_them(tmp_path: Path) -> None:
    """A copy publishes nothing under its own id: its outputs are the original's, its page is its own."""
    storage = LocalStorage(tmp_path, public_url="http://127.0.0.1:5000/files")
    assert run_links(storage, 18, "http://127.0.0.1:5000", published_by=17) == {
        "outputs": "http://127.0.0.1:5000/files/runs/17/index.json",
        "site": "http://127.0.0.1:5000/runs/18/",
    }


def test_an_unserved_local_storage_gives_no_link_rather_than_a_file_url(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    assert storage.url("runs/3/index.json").startswith("file://")
    assert run_links(storage, 3, None) == {"outputs": "", "site": ""}


def test_a_bucket_without_public_url_gives_its_https_url() -> None:
    storage = S3Storage("results-bucket", "machine", client=object())
    outputs = run_links(storage, 9, "https://results.openaddresses.io")["outputs"]
    assert outputs.startswith("https://")
    assert outputs.endswith("/machine/runs/9/index.json")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://batch.openaddresses.io/runs/1/", "https://batch.openaddresses.io/runs/1/"),
        ("http://127.0.0.1:5000/runs/1/", "http://127.0.0.1:5000/runs/1/"),
        ("file:///srv/storage/runs/1/index.json", ""),
        ("/runs/1/", ""),
        ("http:///runs/1/", ""),
        ("javascript:alert(1)", ""),
        (None, ""),
        ("", ""),
    ],
)
def test_only_absolute_http_urls_pass(url: str | None, expected: str) -> None:
    assert http_url(url) == expected


def test_the_links_read_what_the_operator_recorded(tmp_path: Path) -> None:
    class Recorded:
        run_links = run_links(LocalStorage(tmp_path), 5, "http://site.test")

    ti_key = None
    assert RunOutputsLink().get_link(Recorded(), ti_key=ti_key) == ""  # type: ignore[arg-type]
    assert ResultsSiteLink().get_link(Recorded(), ti_key=ti_key) == "http://site.test/runs/5/"  # type: ignore[arg-type]

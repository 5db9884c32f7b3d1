"""Extra links from a ``process_source`` task instance to its run's outputs and to the results site."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar
from urllib.parse import urlsplit

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

    from openaddr.storage import Storage


def http_url(url: str | None) -> str:
    """``url`` when it is an absolute http(s) URL with a host, else ``""``: Airflow 3's UI drops every other
    link (``file:``, relative, null), so the task hands over no link rather than a dead one."""
    if not url:
        return ""
    parts = urlsplit(url)
    return url if parts.scheme in ("http", "https") and parts.netloc else ""


def run_links(
    storage: Storage, run_id: int | str, base_url: str | None, *, published_by: int | str | None = None
) -> dict[str, str]:
    """The extra links of the task instance that recorded run ``run_id``.

    ``outputs``: the storage's public URL of ``runs/<id>/index.json`` (``openaddr_results_public_url``, or the
    bucket's https URL) of the run that published the files: ``published_by`` for a run that reused an earlier one
    (its ``copy_of``: a copy publishes nothing of its own); ``site``: ``<base URL>/runs/<id>/``
    (``openaddr_base_url``), the page of ``run_id`` itself. Each is ``""`` when no http(s) URL can be made — never a
    ``file:`` URL.
    """
    from openaddr.storage import run_prefix

    site = http_url((base_url or "").rstrip("/"))
    return {
        "outputs": http_url(storage.url(f"{run_prefix(published_by or run_id)}/index.json")),
        "site": f"{site}/runs/{run_id}/" if site else "",
    }


class RunOutputsLink(BaseOperatorLink):
    """ "Run outputs": the published state (``runs/<id>/index.json``) of the run the task instance recorded.

    The worker evaluates links right after ``execute`` and stores them as XComs (Airflow 3), so the operator hands
    the URL over in its ``run_links`` attribute.
    """

    name: ClassVar[str] = "Run outputs"
    key: ClassVar[str] = "outputs"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """The URL, or an empty string (no button) when the task recorded no run."""
        return str(getattr(operator, "run_links", {}).get(self.key) or "")


class ResultsSiteLink(RunOutputsLink):
    """ "Results site": the run's page on the Machine's results site (``<base URL>/runs/<id>/``)."""

    name: ClassVar[str] = "Results site"
    key: ClassVar[str] = "site"

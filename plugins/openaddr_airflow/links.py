"""Extra links from a ``process_source`` task instance to its run's outputs and to the results site."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


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

"""Registers the Machine's Airflow components (style guide point 9)."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from openaddr_airflow.links import ResultsSiteLink, RunOutputsLink
from openaddr_airflow.listeners import run_listener


class OpenaddrPlugin(AirflowPlugin):
    """The run listener and the ``process_source`` extra links."""

    name = "openaddr"
    listeners = [run_listener]
    operator_extra_links = [RunOutputsLink(), ResultsSiteLink()]

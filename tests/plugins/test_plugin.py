"""The plugin registers what the Machine needs, and only Airflow 3 plugin components (style guide point 9)."""

from __future__ import annotations

from airflow import plugins_manager

from openaddr_airflow.links import ResultsSiteLink, RunOutputsLink
from openaddr_airflow.listeners import RunListener
from openaddr_airflow.plugin import OpenaddrPlugin


def test_airflow_loads_the_plugin_from_the_plugins_folder() -> None:
    loaded, _ = plugins_manager._get_plugins()  # no public accessor in 3.3; get_plugin_info only gives names
    plugins = {plugin.name: plugin for plugin in loaded}
    assert plugins_manager.get_import_errors() == {}
    assert "openaddr" in plugins
    listeners = [listener for plugin in plugins.values() for listener in plugin.listeners]
    assert any(isinstance(listener, RunListener) for listener in listeners)
    links = plugins_manager.get_operator_extra_links()
    assert {type(link) for link in links} >= {RunOutputsLink, ResultsSiteLink}


def test_the_plugin_declares_only_listeners_and_links() -> None:
    declared = {
        name
        for name in (
            "hooks",
            "executors",
            "macros",
            "flask_blueprints",
            "fastapi_apps",
            "timetables",
            "menu_links",
        )
        if getattr(OpenaddrPlugin, name, None)
    }
    assert declared == set()
    assert [link.name for link in OpenaddrPlugin.operator_extra_links] == ["Run outputs", "Results site"]

"""Registers the ops dashboard (execplatform.dashboard_app) with Airflow's api-server and UI."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from execplatform.dashboard_app import create_app


class OpsDashboardPlugin(AirflowPlugin):
    name = "ops_dashboard"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/ops", "name": "Ops dashboard"}]
    external_views = [{"name": "Ops dashboard", "href": "/ops/", "destination": "nav", "url_route": "ops"}]

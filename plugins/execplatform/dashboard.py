"""The ops dashboard: a read-only FastAPI app served by Airflow's api-server behind its login.

Registered by plugins/ops_dashboard_plugin.py under /ops, with an entry in the UI's navigation.
"""

from __future__ import annotations

import html
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1f2937; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; font-size: .85rem; }
th, td { border: 1px solid #d1d5db; padding: .25rem .5rem; text-align: left; }
th { background: #f3f4f6; } .note { color: #4b5563; font-size: .85rem; }
"""


def _cell(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def render(panels) -> str:
    parts = [f"<!doctype html><html><head><title>Ops dashboard</title><style>{STYLE}</style></head><body>",
             "<h1>Execution platform: operations</h1>"]  # fmt: skip
    for panel in panels:
        parts.append(f"<h2>{_cell(panel.title)}</h2>")
        if panel.note:
            parts.append(f"<p class='note'>{_cell(panel.note)}</p>")
        head = "".join(f"<th>{_cell(c)}</th>" for c in panel.columns)
        body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in panel.rows)
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body or '<tr><td>none yet</td></tr>'}</tbody></table>")
    parts.append("</body></html>")
    return "".join(parts)


def create_app(conn_id: str = "app_db") -> FastAPI:
    from airflow.api_fastapi.core_api.security import requires_authenticated

    app = FastAPI(title="Ops dashboard", dependencies=[Depends(requires_authenticated())])

    @app.get("/", response_class=HTMLResponse)
    def overview() -> str:
        from execplatform.operators.backup import app_cursor
        from include.dashboard import all_panels

        with app_cursor(conn_id) as cur:
            return render(all_panels(cur))

    return app

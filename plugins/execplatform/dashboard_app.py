"""The ops dashboard: a FastAPI app served by Airflow's api-server behind its login.

Registered by plugins/ops_dashboard_plugin.py under /ops, with an entry in the UI's navigation.
Every page is read-only, and so are the offer-serving endpoints (`/offers/shares`, and
`/offers/decision/<user id>`, which records only the decision it serves, as an impression). The
one action (roll the offer model back) is a POST that triggers `offer_model_retrain` with
`rollback = true` as the logged-in user. It names the champion the page showed (`champion_id`)
and is refused (409) when another is champion by then; the DAG checks the name again when it
runs, so a double-submitted rollback moves the champion back once. It is accepted only from a
page of the same origin (the Origin, or failing that the Referer, header must name this server:
the deployment's `[api] base_url`, as a browser behind a TLS-terminating proxy sees it, or the
address the request came to), so another site cannot make a logged-in browser send it.

A login is not enough: the auth manager decides. Each page needs access to the dashboard (the
auth manager's custom view `Ops dashboard`) and read access to the runs of the DAGs whose data it
shows (`PAGE_DAGS`); the rollback, to trigger `offer_model_retrain`. Alerts are shown only for the
DAGs the user may read. A refusal is a 403 and a `permission_denied` security event.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from include.ids import APP_DB
from include.offers.registry import PLOTS

ROLLBACK_DAG = "offer_model_retrain"
DASHBOARD = "Ops dashboard"  # the plugin's name: the auth manager's custom view of it
# The DAGs whose data each page shows: a user needs read access to the runs of every one of them.
PAGE_DAGS = {
    "overview": ("db_backup", "db_migrate", "task_batch", "db_restore"),
    "models": ("offer_model_retrain",),
    "offers": ("offer_model_retrain", "roi_sync", "offer_feedback"),
    "audits": ("adversarial_audit",),
}
PLOTTED_VERSIONS = 3  # the newest versions whose stored plots the models page shows

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1f2937; }
nav a { margin-right: 1rem; } nav a.current { font-weight: bold; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; font-size: .85rem; }
th, td { border: 1px solid #d1d5db; padding: .25rem .5rem; text-align: left; }
th { background: #f3f4f6; } .note { color: #4b5563; font-size: .85rem; }
.flash { background: #ecfdf5; border: 1px solid #10b981; padding: .5rem; }
figure { display: inline-block; margin: 0 1rem 1rem 0; } figcaption { font-size: .85rem; }
"""


def _cell(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _nav(current: str, pages) -> str:
    links = "".join(
        f"<a href='{'.' if page == 'overview' else page}' class='{'current' if page == current else ''}'>"
        f"{_cell(page.capitalize())}</a>"
        for page in pages
    )
    return f"<nav>{links}</nav>"


def _table(panel) -> str:
    head = "".join(f"<th>{_cell(c)}</th>" for c in panel.columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in panel.rows)
    title = _cell(panel.title)
    note = f"<p class='note'>{_cell(panel.note)}</p>" if panel.note else ""
    return (
        f"<section class='panel' data-panel='{title}' data-rows='{len(panel.rows)}'><h2>{title}</h2>{note}"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body or '<tr><td>none yet</td></tr>'}</tbody></table>"
        "</section>"
    )


def render(panels, *, page: str = "overview", pages=("overview",), extra: str = "", flash: str = "") -> str:
    parts = [
        f"<!doctype html><html><head><title>Ops dashboard: {_cell(page)}</title><style>{STYLE}</style>"
        "</head><body><h1>Execution platform: operations</h1>",
        _nav(page, pages),
    ]
    if flash:
        parts.append(f"<p class='flash' id='flash'>{_cell(flash)}</p>")
    parts.extend(_table(panel) for panel in panels)
    parts.append(extra)
    parts.append("</body></html>")
    return "".join(parts)


def model_extras(plotted: list[tuple[int, int]], champion: tuple[int, int] | None) -> str:
    """The rollback form, naming the (version id, version number) of the champion it rolls back,
    and the stored plots of (version id, version number) pairs."""
    form = (
        "<p class='note'>no champion to roll back</p>"
        if champion is None
        else "<form method='post' action='models/rollback'>"
        f"<input type='hidden' name='champion_id' value='{champion[0]}'>"
        f"<button type='submit' id='rollback'>Roll back the champion v{champion[1]} (trigger "
        f"{ROLLBACK_DAG} with rollback = true)</button></form>"
    )
    figures = "".join(
        f"<figure><img src='models/{vid}/{plot}.png' alt='{plot} v{version}' data-plot='{plot}'>"
        f"<figcaption>v{version}: {'ROC' if plot == 'roc' else 'calibration'}</figcaption></figure>"
        for vid, version in plotted
        for plot in PLOTS
    )
    return form + (f"<h2>Plots</h2>{figures}" if figures else "<p class='note'>no stored plots yet</p>")


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def same_origin(request: Request, base_url: str | None = None) -> bool:
    """Whether the request comes from a page of this server (a browser sends Origin on POST): of
    the deployment's base URL (`[api] base_url`, read when `base_url` is None; what a browser
    sees behind a proxy that terminates TLS), or of the address the request came to."""
    if base_url is None:
        from airflow.configuration import conf

        base_url = conf.get("api", "base_url", fallback="") or ""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        return False
    own = {_origin(str(request.base_url))} | ({_origin(base_url)} if base_url else set())
    return _origin(source) in own


def denied(user, dag_ids, method: str = "GET") -> list[str]:
    """What the auth manager refuses `user` of this dashboard and of the runs of `dag_ids`; [] when
    nothing is."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.configuration import conf

    manager = get_auth_manager()
    if not manager.is_authorized_custom_view(method="GET", resource_name=DASHBOARD, user=user):
        return [f"the {DASHBOARD}"]
    teams = conf.getboolean("core", "multi_team", fallback=False)

    def details(dag_id: str) -> DagDetails:
        from airflow.models.dag import DagModel

        return DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id) if teams else None)

    return [
        f"{method} runs of {dag_id}"
        for dag_id in dag_ids
        if not manager.is_authorized_dag(
            method=method, access_entity=DagAccessEntity.RUN, details=details(dag_id), user=user
        )
    ]


def _plotted(cur, versions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The versions whose evaluation plots are stored (in the database, `model_version_plots`)."""
    cur.execute(
        "SELECT DISTINCT model_version_id FROM model_version_plots WHERE model_version_id = ANY(%s)",
        ([vid for vid, _ in versions],),
    )
    stored = {r[0] for r in cur.fetchall()}
    return [(vid, version) for vid, version in versions if vid in stored]


def _offer_champion(cur):
    """The offer model's champion (the registry's Version), or None."""
    from include.offers import registry
    from include.offers.model import MODEL_NAME

    return registry.champion(cur, MODEL_NAME)


def create_app(conn_id: str = APP_DB) -> FastAPI:
    from airflow.api_fastapi.core_api.security import get_user, requires_authenticated

    from include.observability.dashboard_panels import PAGES

    app = FastAPI(title="Ops dashboard", dependencies=[Depends(requires_authenticated())])

    def refuse(request: Request, user, missing: list[str]) -> None:
        """403, and a `permission_denied` security event (logged; stored while the database takes it)."""
        import logging

        from execplatform.hooks.app_db_hook import AppDatabaseHook
        from include.observability.security_events import log_security_event

        event = dict(path=request.url.path, method=request.method, missing=missing)
        try:
            with AppDatabaseHook(conn_id).cursor() as cur:
                log_security_event(cur, "permission_denied", "warning", actor=user.get_name(), **event)
        except Exception as exc:  # the refusal stands, and the log line says what was refused
            log_security_event(None, "permission_denied", "warning", actor=user.get_name(), **event)
            logging.getLogger(__name__).warning("permission_denied not stored: %s", type(exc).__name__)
        raise HTTPException(403, f"{DASHBOARD}: not permitted: {', '.join(missing)}")

    def allowed(page_name: str, method: str = "GET", dag_ids=None):
        """A dependency: the user may see `page_name` (or `method` the runs of `dag_ids`)."""

        # a default, not an annotation: this module's annotations are strings FastAPI cannot resolve
        def check(request: Request, user=Depends(get_user)):  # noqa: B008
            if missing := denied(user, dag_ids or PAGE_DAGS[page_name], method):
                refuse(request, user, missing)
            return user

        return check

    def readable_alerts(panel, user):
        """The alerts of the DAGs `user` may read (an alert names its DAG and carries its text)."""
        column = panel.columns.index("dag_id")
        dags = {row[column] for row in panel.rows}
        readable = {d for d in dags if d and not denied(user, [d])}
        panel.rows = [row for row in panel.rows if row[column] in readable]
        return panel

    def page(name: str, user, flash: str = "") -> str:
        from execplatform.hooks.app_db_hook import AppDatabaseHook
        from include.observability.dashboard_panels import page_panels

        extra = ""
        with AppDatabaseHook(conn_id).cursor() as cur:
            panels = [
                readable_alerts(p, user) if p.title == "Recent alerts" else p for p in page_panels(cur, name)
            ]
            if name == "models":
                newest = [(row[0], row[2]) for row in panels[0].rows[:PLOTTED_VERSIONS]]
                current = _offer_champion(cur)
                extra = model_extras(_plotted(cur, newest), current and (current.id, current.version))
        if name == "overview":
            panels.append(_recovery_events())
        return render(panels, page=name, pages=tuple(PAGES), extra=extra, flash=flash)

    def _recovery_events():
        from execplatform.steps.backup_steps import backup_catalog
        from include.observability.dashboard_panels import recovery_events

        try:
            return recovery_events(backup_catalog().events(limit=20))
        except Exception as exc:  # S3 unreachable: the rest of the page still shows
            return recovery_events([], note=f"the S3 catalog could not be read: {type(exc).__name__}")

    # defaults, not annotations (see `allowed`)
    @app.get("/", response_class=HTMLResponse)
    def overview(user=Depends(allowed("overview"))) -> str:  # noqa: B008
        return page("overview", user)

    @app.get("/models", response_class=HTMLResponse)
    def models_page(triggered: str = "", user=Depends(allowed("models"))) -> str:  # noqa: B008
        flash = (
            f'Triggered {ROLLBACK_DAG} run {triggered} with conf {{"rollback": true}}' if triggered else ""
        )
        return page("models", user, flash)

    @app.get("/offers", response_class=HTMLResponse)
    def offers_page(user=Depends(allowed("offers"))) -> str:  # noqa: B008
        return page("offers", user)

    @app.get("/audits", response_class=HTMLResponse)
    def audits_page(user=Depends(allowed("audits"))) -> str:  # noqa: B008
        return page("audits", user)

    @app.get("/offers/shares", dependencies=[Depends(allowed("offers"))])
    def offer_shares() -> dict[str, Any]:
        """The bandit's current shares per segment and the policy version they belong to."""
        from execplatform.hooks.app_db_hook import AppDatabaseHook
        from include.offers.serving import current_shares

        try:
            with AppDatabaseHook(conn_id).cursor() as cur:
                return current_shares(cur)
        except LookupError as missing:
            raise HTTPException(404, str(missing)) from None

    @app.get("/offers/decision/{user_id}", dependencies=[Depends(allowed("offers"))])
    def offer_decision(user_id: int) -> dict[str, Any]:
        """The offer to show user `user_id` now, drawn from the current shares. It changes no
        share or offer: it only records the decision (the impression the bandit learns from),
        once per user and policy version, so asking again returns the same decision."""
        from dataclasses import asdict

        from execplatform.hooks.app_db_hook import AppDatabaseHook
        from include.offers.serving import decide

        try:
            with AppDatabaseHook(conn_id).cursor() as cur:
                [decision] = decide(cur, [user_id])
        except LookupError as missing:
            raise HTTPException(404, str(missing)) from None
        return asdict(decision)

    @app.get("/models/{version_id}/{plot}.png", dependencies=[Depends(allowed("models"))])
    def plot_png(version_id: int, plot: str) -> Response:
        from execplatform.hooks.app_db_hook import AppDatabaseHook
        from include.offers import registry

        if plot not in PLOTS:
            raise HTTPException(404, f"no plot {plot!r}; plots are {', '.join(PLOTS)}")
        with AppDatabaseHook(conn_id).cursor() as cur:
            data = registry.stored_plots(cur, version_id).get(plot)
        if data is None:
            raise HTTPException(404, f"no stored {plot} plot for model version {version_id}")
        return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.post("/models/rollback")
    def rollback(
        request: Request,
        champion_id: int = Form(0),  # noqa: B008
        user=Depends(allowed("models", "POST", (ROLLBACK_DAG,))),  # noqa: B008
    ) -> RedirectResponse:
        from airflow.api.common.trigger_dag import trigger_dag
        from airflow.utils.types import DagRunTriggeredByType

        from execplatform.hooks.app_db_hook import AppDatabaseHook

        if not same_origin(request):
            raise HTTPException(
                403, "rollback refused: the request did not come from this dashboard's origin"
            )
        if champion_id <= 0:
            raise HTTPException(
                400, "rollback refused: it must name the champion it rolls back (champion_id)"
            )
        with AppDatabaseHook(conn_id).cursor() as cur:
            current = _offer_champion(cur)
        if current is None or current.id != champion_id:
            now = f"v{current.version} (id {current.id})" if current else "none"
            raise HTTPException(
                409,
                f"rollback refused: the page showed champion id {champion_id}, the champion is now "
                f"{now}; reload the page",
            )
        run = trigger_dag(
            ROLLBACK_DAG,
            triggered_by=DagRunTriggeredByType.UI,
            conf={"rollback": True, "champion_id": champion_id},
            triggering_user_name=user.get_name(),
        )
        models_url = request.scope.get("root_path", "") + "/models"
        return RedirectResponse(f"{models_url}?triggered={quote(run.run_id)}", status_code=303)

    return app

"""The project's one alert path: a notifier whose level decides the channels."""

from __future__ import annotations

import html
import logging
import os
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseNotifier

from include.ids import APP_DB, AWS, SMTP
from include.observability.alert_levels import CHANNELS, Level

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.sdk import Context

    from include.observability.alerting import Alert, Grouping


class PlatformAlertNotifier(BaseNotifier):
    """
    Send an alert through the channels of its level (see ``include.observability.alert_levels.CHANNELS``).

    info: a structured log line; warning: + a CloudWatch datapoint and an ``alerts`` row;
    error: + an email to the owners; critical: + a Sentry event. Repeats of the same DAG, task
    and error within ``group_window`` only count in the ``alerts`` row; they are not re-sent.
    A channel that fails is logged and counted and never raises: the alert must not hide or
    replace the failure it reports.

    Use it as ``on_failure_callback``/``on_retry_callback``, or call :func:`send_alert` from a task.

    :param level: ``info``, ``warning``, ``error`` or ``critical``.
    :param title: one line saying what happened (templated); defaults to the exception.
    :param to: email recipients; defaults to the ``ALERT_EMAIL_TO`` environment variable.
    :param group_window: repeats within it are grouped; defaults to ``ALERT_GROUP_WINDOW_MINUTES``
        (30 minutes).
    """

    template_fields = ("title",)

    def __init__(
        self,
        level: str = "error",
        title: str | None = None,
        *,
        to: list[str] | None = None,
        group_window: timedelta | None = None,
        app_conn_id: str = APP_DB,
        aws_conn_id: str = AWS,
        smtp_conn_id: str = SMTP,
    ) -> None:
        super().__init__()
        self.level = Level.parse(level)
        self.title = title
        self.to = to
        self.group_window = group_window
        self.app_conn_id = app_conn_id
        self.aws_conn_id = aws_conn_id
        self.smtp_conn_id = smtp_conn_id

    # -- the alert ---------------------------------------------------------------------------

    def alert_from(self, context: Context) -> Alert:
        from airflow.sdk._shared.secrets_masker import redact

        from include.observability.alerting import Alert

        ti = context.get("ti")
        exception = context.get("exception")
        # redact: an error message may quote a secret the task fetched (a DSN, a header)
        error = redact(f"{type(exception).__name__}: {exception}") if exception is not None else None
        return Alert(
            level=self.level,
            title=redact(self.title) if self.title else error or "alert",
            dag_id=getattr(ti, "dag_id", None),
            task_id=getattr(ti, "task_id", None),
            run_id=getattr(ti, "run_id", None) or context.get("run_id"),
            try_number=getattr(ti, "try_number", None),
            error=error,
            log_url=_log_url(ti),
        )

    def notify(self, context: Context) -> None:
        alert = self.alert_from(context)
        channels = CHANNELS[alert.level]
        failed: list[str] = []

        def guarded(channel: str, send: Callable[[], Any]) -> Any:
            try:
                return send()
            except Exception:
                failed.append(channel)
                self.log.exception("alert channel %s failed for %s", channel, alert.subject())
                return None

        self.log.log(logging.getLevelName(alert.level.name), "ALERT %s", alert.body())
        grouping = guarded("table", lambda: self._record(alert)) if "table" in channels else None
        if "metric" in channels:
            guarded("metric", lambda: self._put_metrics(self._alert_metrics(alert)))
        # sent once per group window; when the table is down we cannot tell, so we send
        if grouping is None or grouping.is_first:
            if "email" in channels:
                guarded("email", lambda: self._email(alert, grouping))
            if "sentry" in channels:
                guarded("sentry", lambda: self._sentry(alert))
        else:
            self.log.info("grouped: occurrence %d of %s", grouping.occurrences, alert.fingerprint)
        if failed:
            self._count_channel_failures(alert, grouping, failed)

    # -- channels ----------------------------------------------------------------------------

    def _record(self, alert: Alert) -> Grouping:
        from execplatform.hooks.app_db_hook import AppDatabaseHook
        from include.observability.alerting import DEFAULT_GROUP_WINDOW, record

        window = self.group_window or _window_from_env() or DEFAULT_GROUP_WINDOW
        with AppDatabaseHook(self.app_conn_id).cursor() as cur:
            return record(cur, alert, window)

    def _put_metrics(self, metrics: list) -> None:
        from execplatform.hooks.cloudwatch_hook import publish_metrics

        publish_metrics(metrics, aws_conn_id=self.aws_conn_id)

    def _alert_metrics(self, alert: Alert) -> list:
        """AlertRaised per level (fleet-wide and per task); TaskFailed per DAG for failures,
        with exactly the dimensions the alarms in include/observability/alarms.py watch."""
        from include.observability.metrics import Metric, standard_dimensions

        level = {"Level": alert.level.name}
        metrics = [
            Metric("AlertRaised", 1.0, dimensions={**standard_dimensions(), **level}),
            Metric(
                "AlertRaised",
                1.0,
                dimensions={
                    **standard_dimensions(dag_id=alert.dag_id, task_id=alert.task_id),
                    **level,
                },
            ),
        ]
        if alert.error is not None and alert.level >= Level.ERROR:
            metrics.append(Metric("TaskFailed", 1.0, dimensions=standard_dimensions(dag_id=alert.dag_id)))
        return metrics

    def _email(self, alert: Alert, grouping: Grouping | None) -> None:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        to = self.to or [
            a.strip() for a in os.environ.get("ALERT_EMAIL_TO", "platform-oncall@localhost").split(",")
        ]
        body = alert.body(grouping.grouped_before if grouping else 0)
        SmtpNotifier(
            to=to,
            subject=alert.subject(),
            html_content=f"<pre>{html.escape(body)}</pre>",
            smtp_conn_id=self.smtp_conn_id,
        ).notify({})

    def _sentry(self, alert: Alert) -> None:
        import sentry_sdk

        if not sentry_sdk.get_client().is_active():
            raise RuntimeError("Sentry is not configured: set [sentry] sentry_on and sentry_dsn")
        register_sentry_scrubber()
        with sentry_sdk.new_scope() as scope:
            scope.set_tag("alert_level", alert.level.name.lower())
            for key in ("dag_id", "task_id", "run_id"):
                scope.set_tag(key, getattr(alert, key))
            scope.set_extra("log_url", alert.log_url)
            sentry_sdk.capture_message(alert.body(), level="fatal")
        sentry_sdk.flush(timeout=5)

    def _count_channel_failures(self, alert: Alert, grouping: Grouping | None, failed: list[str]) -> None:
        """Counted where it can be: the alert's row and a metric; each attempt is itself guarded."""
        from include.observability.metrics import Metric, standard_dimensions

        if "metric" not in failed:  # CloudWatch itself down: the log line above is the count
            try:
                self._put_metrics(
                    [
                        Metric(
                            "AlertChannelFailed",
                            float(len(failed)),
                            dimensions=standard_dimensions(),
                        ),
                        *(
                            Metric(
                                "AlertChannelFailed",
                                1.0,
                                dimensions={**standard_dimensions(), "Channel": c},
                            )
                            for c in failed
                        ),
                    ]
                )
            except Exception:
                self.log.warning("could not count the failure of channels %s in CloudWatch", failed)
        if grouping is not None:
            try:
                from execplatform.hooks.app_db_hook import AppDatabaseHook
                from include.observability.alerting import count_channel_failure
                from include.observability.security_events import log_security_event

                with AppDatabaseHook(self.app_conn_id).cursor() as cur:
                    for _ in failed:
                        count_channel_failure(cur, grouping.alert_id)
                    log_security_event(
                        cur,
                        "alert_channel_failed",
                        "warning",
                        actor="PlatformAlertNotifier",
                        channels=failed,
                        alert_id=grouping.alert_id,
                        subject=alert.subject(),
                    )
            except Exception:
                self.log.warning("could not count channel failures %s in the alerts table", failed)


class RunMetricsNotifier(BaseNotifier):
    """
    Publish a DAG run's outcome and duration to CloudWatch: ``DagRunSucceeded`` (1 or 0) and
    ``DagRunDuration`` (seconds), per DAG. A DAG-level success and failure callback; it logs
    and swallows its own errors, since the run's state is already decided.

    :param aws_conn_id: the AWS connection for CloudWatch.
    """

    def __init__(self, aws_conn_id: str = AWS) -> None:
        super().__init__()
        self.aws_conn_id = aws_conn_id

    def render_template_fields(self, context: Context, jinja_env=None) -> None:
        """Nothing to render; and under `airflow dags test` the DAG in the context is a
        SerializedDAG without a template environment, which made the default fail."""

    def notify(self, context: Context) -> None:
        from datetime import UTC, datetime

        from execplatform.hooks.cloudwatch_hook import publish_metrics
        from include.observability.metrics import Metric

        try:
            dag_run = context["dag_run"]
            dims = {"DagId": dag_run.dag_id}
            succeeded = dag_run.state == "success"
            seconds = ((dag_run.end_date or datetime.now(UTC)) - dag_run.start_date).total_seconds()
            publish_metrics(
                [
                    Metric("DagRunSucceeded", 1.0 if succeeded else 0.0, dimensions=dims),
                    Metric("DagRunDuration", max(seconds, 0.0), unit="Seconds", dimensions=dims),
                ],
                aws_conn_id=self.aws_conn_id,
            )
        except Exception:
            self.log.exception("could not publish the run metrics of %s", context.get("dag_run"))


def run_metrics_callbacks() -> dict[str, Any]:
    """The `@dag(...)` arguments that publish every run's outcome and duration."""
    return {
        "on_success_callback": RunMetricsNotifier(),
        "on_failure_callback": RunMetricsNotifier(),
    }


def send_alert(level: str, title: str, **kwargs: Any) -> None:
    """Raise a non-failure alert from inside a running task (naming it), or from elsewhere (a
    library call, a test) without a task to name."""
    from airflow.sdk import get_current_context

    try:
        context = get_current_context()
    except RuntimeError:  # no task is running here
        context = {}
    PlatformAlertNotifier(level, title, **kwargs).notify(context)


def _log_url(ti) -> str | None:
    try:
        return ti.log_url if ti is not None else None
    except Exception:  # outside a task runner (unit tests, DAG-level callbacks)
        return None


def _window_from_env() -> timedelta | None:
    minutes = os.environ.get("ALERT_GROUP_WINDOW_MINUTES")
    return timedelta(minutes=float(minutes)) if minutes else None


def scrub_sentry_event(event: dict, hint: dict | None = None) -> dict:
    """Sentry event processor: secrets Airflow knows of, and values under secret-looking keys."""
    from airflow.sdk._shared.secrets_masker import redact

    from include.observability.security_events import redact as redact_keys

    return redact_keys(redact(event))


_scrubber_registered = False


def register_sentry_scrubber() -> None:
    """Every Sentry event of this process passes the scrubber, Airflow's own captures included.

    Airflow passes ``[sentry] before_send`` to the SDK as an unimported string when the section
    has other keys, so a global event processor is the dependable hook.
    """
    global _scrubber_registered
    if _scrubber_registered:
        return
    from sentry_sdk.scope import add_global_event_processor

    add_global_event_processor(scrub_sentry_event)
    _scrubber_registered = True


# In a task process with Sentry on, the SDK is already loaded when the DAG file (and so this
# module) is parsed: scrub from the first event. Elsewhere, importing sentry_sdk is not worth it.
if "sentry_sdk" in sys.modules:
    register_sentry_scrubber()


def alert_callbacks(on_failure: str = "error", on_retry: str | None = "warning") -> dict[str, Any]:
    """The `default_args` entries that route a DAG's task failures (and retries) to the alert path."""
    callbacks: dict[str, Any] = {"on_failure_callback": PlatformAlertNotifier(level=on_failure)}
    if on_retry:
        callbacks["on_retry_callback"] = PlatformAlertNotifier(level=on_retry)
    return callbacks

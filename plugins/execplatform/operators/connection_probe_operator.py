"""Probe one Airflow connection over its real protocol and record latency and outcome."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook, BaseOperator

from include.ids import APP_DB, AWS
from include.observability.alarms import HEALTHCHECK_NAMESPACE

if TYPE_CHECKING:
    from collections.abc import Callable

    from airflow.sdk import Context

    from include.observability.healthcheck import ProbeResult


class ConnectionDownError(Exception):
    """A probed service did not answer as it should."""


def _probe_postgres(conn_id: str) -> str:
    from execplatform.hooks.app_db_hook import AppDatabaseHook

    with AppDatabaseHook(conn_id).cursor() as cur:
        cur.execute("SELECT version()")
        return cur.fetchone()[0]


def _probe_aws(conn_id: str) -> str:
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    from execplatform.hooks.cloudwatch_hook import publish_metrics
    from include.observability.metrics import Metric

    buckets = S3Hook(aws_conn_id=conn_id).get_conn().list_buckets()["Buckets"]
    succeeded = [Metric("ProbeSucceeded", 1.0, dimensions={"ConnId": conn_id})]
    publish_metrics(
        succeeded, namespace=HEALTHCHECK_NAMESPACE, standard_dimensions=False, aws_conn_id=conn_id
    )
    return f"S3 lists {len(buckets)} buckets; CloudWatch accepted a datapoint"


def _probe_stripe(conn_id: str) -> str:
    from execplatform.hooks.stripe_hook import StripeHook

    customers = StripeHook(stripe_conn_id=conn_id).get_conn().v1.customers.list({"limit": 1})
    return f"Stripe listed customers ({len(customers.data)} on the first page)"


def _probe_smtp(conn_id: str) -> str:
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id=conn_id) as hook:
        ok, message = hook.test_connection()  # an SMTP NOOP on the open session
    if not ok:
        raise ConnectionDownError(message)
    return "SMTP NOOP answered 250"


def _probe_redis(conn_id: str) -> str:
    from airflow.providers.redis.hooks.redis import RedisHook

    if not RedisHook(redis_conn_id=conn_id).get_conn().ping():
        raise ConnectionDownError("PING was not answered with PONG")
    return "PING answered PONG"


PROBES: dict[str, Callable[[str], str]] = {
    "postgres": _probe_postgres,
    "aws": _probe_aws,
    "stripe": _probe_stripe,
    "smtp": _probe_smtp,
    "redis": _probe_redis,
}


class ConnectionProbeOperator(BaseOperator):
    """
    Reach one connection with a real round trip, record the result, fail if it is down.

    The result (ok, latency, what the service answered or the error) is upserted into the app
    DB's ``healthcheck_results`` keyed by run and connection, so a retry replaces its row.

    :param conn_id: the connection to probe (templated); its conn_type picks the probe.
    :param results_conn_id: the postgres connection of the app DB that keeps the results.
    :param metrics_conn_id: the AWS connection that receives ``ProbeFailed`` datapoints.
    """

    template_fields = ("conn_id",)

    def __init__(
        self,
        *,
        conn_id: str,
        results_conn_id: str = APP_DB,
        metrics_conn_id: str = AWS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self.results_conn_id = results_conn_id
        self.metrics_conn_id = metrics_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        from include.observability.healthcheck import run_probe

        conn_type = BaseHook.get_connection(self.conn_id).conn_type
        if conn_type not in PROBES:
            raise ValueError(f"connection {self.conn_id!r} has conn_type {conn_type!r}; no probe for it")
        result = run_probe(self.conn_id, lambda: PROBES[conn_type](self.conn_id))
        self.log.info(
            "%s: ok=%s latency=%.1f ms %s",
            self.conn_id,
            result.ok,
            result.latency_ms,
            result.detail,
        )
        self._record(context["run_id"], result)
        if not result.ok:
            self._count_failure()
            raise ConnectionDownError(f"connection {self.conn_id!r} is down: {result.detail}")
        return {"conn_id": result.conn_id, "latency_ms": round(result.latency_ms, 1)}

    def _count_failure(self) -> None:
        """A `ProbeFailed` datapoint for the connection's alarm; AWS may be what is down."""
        from execplatform.hooks.cloudwatch_hook import publish_metrics
        from include.observability.metrics import Metric

        failed = [Metric("ProbeFailed", 1.0, dimensions={"ConnId": self.conn_id})]
        try:
            publish_metrics(
                failed,
                namespace=HEALTHCHECK_NAMESPACE,
                standard_dimensions=False,
                aws_conn_id=self.metrics_conn_id,
            )
        except Exception:
            self.log.exception("could not count the failed probe of %s in CloudWatch", self.conn_id)

    def _record(self, run_id: str, result: ProbeResult) -> None:
        from execplatform.hooks.app_db_hook import AppDatabaseHook
        from include.observability.healthcheck import record
        from include.observability.security_events import log_security_event

        def connection_failed(cursor) -> None:
            log_security_event(
                cursor,
                "connection_failed",
                "error",
                actor=f"{self.dag_id}.{self.task_id}",
                conn_id=self.conn_id,
                run_id=run_id,
                error=result.detail,
            )

        try:
            with AppDatabaseHook(self.results_conn_id).cursor() as cursor:
                record(cursor, run_id, result)
                if not result.ok:
                    connection_failed(cursor)
        except Exception:
            if result.ok:
                raise
            # the app DB itself may be what is down; the probe's own failure is the news
            self.log.exception("could not record the failed probe of %s", self.conn_id)
            connection_failed(None)  # the JSON event line still reaches the task log

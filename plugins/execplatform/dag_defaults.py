"""What every DAG shares, defined once: connection ids, Assets, default args and schedules.

Schedules can be shortened without editing a DAG file: `DAG_SCHEDULE_OVERRIDES` holds a JSON
object mapping DAG ids to a cron expression or preset, e.g. ``{"db_backup": "* * * * *"}``; each
scheduled DAG passes its own schedule (or the cron part of an asset-or-time schedule) through
:func:`schedule_for`. Read from the environment, not a Variable: parsing must not query the
metadata database.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from typing import Any, TypeVar

from airflow.sdk import Asset, AssetAlias, AssetWatcher, Param

from execplatform.notifiers.alert_notifier import alert_callbacks
from include.ids import APP_DB, AWS, REDIS, REHEARSAL_DB, SMTP, STRIPE, TASK_EXECUTOR

__all__ = ["APP_DB", "AWS", "REDIS", "REHEARSAL_DB", "SMTP", "STRIPE", "TASK_EXECUTOR"]

# Assets: what one DAG produces and another is scheduled on
BACKUP_VERIFIED = Asset("app_db_backup_verified")  # db_backup, db_migrate -> db_migrate's gate, audit
MIGRATION_APPLIED = Asset("app_db_migration_applied")  # db_migrate -> adversarial_audit
OFFER_FEEDBACK = Asset("offer_feedback_enough")  # offer_feedback -> offer_model_retrain
MODEL_PROMOTED = Asset("offer_model_promoted")  # offer_model_retrain -> adversarial_audit
# through an alias, so that a retrain run that keeps the champion emits nothing
MODEL_PROMOTION = AssetAlias("offer_model_promotion")


def __getattr__(name: str) -> Asset:
    """``TASK_QUEUE``: execution tasks are ready to run, an event of the triggerer
    (``QueuedTasksTrigger`` listens to the app database's notifications), on which task_batch
    starts within seconds; the trigger runs only while a DAG scheduled on it is unpaused. Made on
    first use: only task_batch needs the trigger's module, and the other DAG files parse faster
    without it (bench/bench_dag_parse.py)."""
    if name != "TASK_QUEUE":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from execplatform.triggers.queued_tasks_trigger import QueuedTasksTrigger

    global TASK_QUEUE
    TASK_QUEUE = Asset(
        "execution_tasks_ready",
        watchers=[AssetWatcher(name="execution_tasks_notify", trigger=QueuedTasksTrigger())],
    )
    return TASK_QUEUE


# where backups go (the bucket must exist; the local stack creates it): each in a folder of its
# own under BACKUP_PREFIX, with its catalog entry; recovery events under BACKUP_PREFIX/_events/
BACKUP_BUCKET = os.environ.get("BACKUP_BUCKET", "execplatform-backups")
BACKUP_PREFIX = os.environ.get("BACKUP_PREFIX", "backups")


def number_param(
    default: float,
    *,
    minimum: float,
    maximum: float,
    description: str,
    integer: bool = False,
    exclusive_minimum: bool = False,
) -> Param:
    """A number param that refuses what its DAG cannot use: below `minimum` (or at it, with
    `exclusive_minimum`), above `maximum`, and not finite.

    JSON Schema's bounds are comparisons, and NaN compares false with all of them: `minimum` and
    `maximum` let it through, and a trigger's conf can carry it (Python's JSON reader takes
    `NaN`). So a non-integer number also gets `not: {exclusiveMaximum: minimum}` ("not below the
    minimum"; `not: {maximum: minimum}`, "not at or below it", when the minimum is excluded),
    which is false for NaN; infinity is above every maximum. An integer's type refuses both.
    Every number param of every DAG has a maximum (tests/dags/test_dag_integrity.py)."""
    schema: dict[str, Any] = {"type": "integer" if integer else "number", "maximum": maximum}
    if exclusive_minimum:
        schema["exclusiveMinimum"] = minimum
        finite = {"maximum": minimum}
    else:
        schema["minimum"] = minimum
        finite = {"exclusiveMaximum": minimum}
    if not integer:
        schema["not"] = finite
    return Param(default, description=description, **schema)


def non_production() -> bool:
    """Whether this deployment says it is not production (`PLATFORM_NON_PRODUCTION=true`, set by
    the local stack and the tests, never by a production deployment): only then may a run skip
    its approval, or be approved by the user who triggered it."""
    return os.environ.get("PLATFORM_NON_PRODUCTION", "").strip().lower() in ("1", "true", "yes")


def default_args(
    owner: str = "platform",
    *,
    on_failure: str = "error",
    on_retry: str | None = "warning",
    retry_delay: timedelta = timedelta(seconds=30),
) -> dict[str, Any]:
    """A DAG's task defaults: its owner, two retries, and failures (and retries) routed to the
    alert path at the given levels (``info``, ``warning``, ``error``, ``critical``)."""
    return {
        "owner": owner,
        "retries": 2,
        "retry_delay": retry_delay,
        **alert_callbacks(on_failure=on_failure, on_retry=on_retry),
    }


OVERRIDES_VAR = "DAG_SCHEDULE_OVERRIDES"
Schedule = TypeVar("Schedule")


def schedule_for(dag_id: str, default: Schedule) -> Schedule | str:
    """The override for `dag_id` in `DAG_SCHEDULE_OVERRIDES`, else `default`."""
    raw = os.environ.get(OVERRIDES_VAR, "").strip()
    if not raw:
        return default
    try:
        overrides = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{OVERRIDES_VAR} is not valid JSON: {exc}") from exc
    if not isinstance(overrides, dict):
        kind = type(overrides).__name__
        raise ValueError(f"{OVERRIDES_VAR} must be a JSON object of dag_id -> cron, got {kind}")
    override = overrides.get(dag_id)
    if override is None:
        return default
    if not isinstance(override, str) or not override.strip():
        raise ValueError(f"{OVERRIDES_VAR}[{dag_id!r}] must be a cron expression or preset, got {override!r}")
    return override

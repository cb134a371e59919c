"""adversarial_audit's indicator step: compute and store the day's leading indicators, then alert
on every new trend change and every drifted distribution (error or warning per indicator)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from execplatform.hooks.app_db_hook import AppDatabaseHook
from include.ids import AWS

logger = logging.getLogger(__name__)


def load_champion(cur, aws_conn_id: str):
    """The champion offer model with its training window, or None when there is none yet (its
    indicators are then absent)."""
    from execplatform.steps.offer_steps import s3_client
    from include.audit.indicators import Champion
    from include.offers import model, registry

    version = registry.champion(cur, model.MODEL_NAME)
    if version is None:
        return None
    cur.execute("SELECT trained_from, trained_to FROM model_versions WHERE id = %s", (version.id,))
    trained_from, trained_to = cur.fetchone()
    if trained_from is None or trained_to is None:
        return None
    pipeline = registry.fetch_model(s3_client(aws_conn_id), version)
    return Champion(lambda frame: model.predict(pipeline, frame), trained_from, trained_to)


def record_indicators(
    conn_id: str,
    day: date,
    *,
    days: int = 1,
    aws_conn_id: str = AWS,
    alert: Callable[[str, str], None] | None = None,
) -> dict[str, Any]:
    """Indicators of `day` and the `days - 1` before it (a gap left by a missed run fills in),
    trend changes over every series, and an alert for each new change and each drift, at its
    indicator's level (`include.audit.indicators.CHANGE_ALERT_LEVELS`: error for trust and model
    quality, warning for the rest)."""
    from include.audit import indicators

    if alert is None:
        from execplatform.notifiers.alert_notifier import send_alert as alert
    with AppDatabaseHook(conn_id).cursor() as cur:
        if not indicators.ready(cur):
            logger.warning("no indicator_values table: revision 0005 is not applied; indicators skipped")
            return {"day": day.isoformat(), "skipped": "revision 0005 not applied"}
        champion = load_champion(cur, aws_conn_id)
        changed = 0
        for offset in range(days - 1, -1, -1):
            values = indicators.compute(cur, day - timedelta(days=offset), champion)
            changed += indicators.store(cur, day - timedelta(days=offset), values)
        changes = indicators.detect_changes(cur)
    logger.info(
        "leading indicators of %s (%d rows inserted or changed):\n%s",
        day,
        changed,
        indicators.table(values),
    )
    drifted = indicators.drifted(values)
    for change in changes:
        alert(indicators.alert_level(change.indicator), change.title())
    for value in drifted:
        alert(
            indicators.alert_level(value.indicator),
            f"drift in {value.indicator}[{value.dimension}] on {day}: PSI {value.value:.4f} "
            f"over its threshold {value.threshold:.4f} (n={value.sample_size})",
        )
    return {
        "day": day.isoformat(),
        "values": len(values),
        "changed_rows": changed,
        "trend_changes": [change.title() for change in changes],
        "drifted": [f"{v.indicator}[{v.dimension}]" for v in drifted],
    }

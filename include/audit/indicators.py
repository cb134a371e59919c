"""Leading indicators: one value per day, indicator and dimension, and the trend changes in them.

Each indicator is a function `(cur, day) -> [Value]`. An input that does not exist yet (a
table not migrated, no tasks finished that day, no champion model) gives no value: the day
is absent from that series, never a zero that would look like good news.

| indicator | dimension | value of the day |
| --- | --- | --- |
| `task_failure_rate` | | failed or dead / finished tasks |
| `task_p95_duration_ms` | task type | p95 of `duration_ms` of tasks finished |
| `queue_age_p95_s` | | p95 of the wait from `available_at` to `started_at` |
| `cache_hit_ratio` | | cache hits / tasks of the task_batch runs measured |
| `backup_restore_s` | | slowest timed restore of the backups verified |
| `offer_redemption_rate` | | redemptions / impressions |
| `trust_tasks_unconfirmed` | | share of succeeded tasks whose payload or result fails validation |
| `trust_redemptions_unpaid` | | share of redemptions with no succeeded payment (synced from Stripe) |
| `trust_roi_gap_cents` | segment | attributed minus incremental ROI (include/offers/roi.py) |
| `model_auc`, `model_calibration_error` | | the champion on that day's impressions |
| `feature_psi` | feature | PSI against the champion's training window (include/audit/drift.py) |
| `prediction_psi` | | PSI of the champion's predictions, same reference |

`store` upserts (a re-run with the same inputs changes nothing, not even `computed_at`);
`detect_changes` runs the CUSUM detector (include/audit/changepoint.py) over every series and
keeps each change point once, so only a new one is alerted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from include.audit.changepoint import cusum
from include.migrations import table_exists


@dataclass(frozen=True)
class Value:
    indicator: str
    value: float
    dimension: str = ""
    sample_size: int | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class Change:
    indicator: str
    dimension: str
    day: date
    direction: str
    reference_mean: float
    score: float
    value: float

    def title(self) -> str:
        series = f"{self.indicator}[{self.dimension}]" if self.dimension else self.indicator
        return (
            f"trend change in {series}: {self.direction} from a mean of {self.reference_mean:.4g} "
            f"to {self.value:.4g} on {self.day.isoformat()}"
        )


# The alert a trend change on each indicator raises: `error` (email to the owners) for the
# indicators of trust inflation and of the model's quality, where a change means the platform's
# numbers or its model can no longer be taken at their word; `warning` (log, metric, table) for
# speed and volume, which dashboards and thresholds already watch. A PSI over its threshold
# alerts at its indicator's level too. Every indicator is listed (tests hold INDICATORS to it).
CHANGE_ALERT_LEVELS: dict[str, str] = {
    "task_failure_rate": "warning",
    "task_p95_duration_ms": "warning",
    "queue_age_p95_s": "warning",
    "cache_hit_ratio": "warning",
    "backup_restore_s": "warning",
    "offer_redemption_rate": "warning",
    "model_auc": "error",
    "model_calibration_error": "error",
    "feature_psi": "error",
    "prediction_psi": "error",
    "trust_tasks_unconfirmed": "error",
    "trust_redemptions_unpaid": "error",
    "trust_roi_gap_cents": "error",
}


def alert_level(indicator: str) -> str:
    """The level of a trend-change alert on `indicator` (one not in the table: `warning`)."""
    return CHANGE_ALERT_LEVELS.get(indicator, "warning")


def _bounds(day: date) -> tuple[datetime, datetime]:
    from datetime import UTC

    start = datetime.combine(day, time(), UTC)
    return start, start + timedelta(days=1)


def _ratio(indicator: str, numerator, denominator) -> list[Value]:
    return (
        [Value(indicator, float(numerator) / denominator, sample_size=int(denominator))]
        if denominator
        else []
    )


# --- the queue --------------------------------------------------------------------------------------


def task_failure_rate(cur, day: date) -> list[Value]:
    cur.execute(
        "SELECT count(*) FILTER (WHERE status IN ('failed', 'dead')), count(*) FROM execution_tasks "
        "WHERE finished_at >= %s AND finished_at < %s AND status IN ('succeeded', 'failed', 'dead')",
        _bounds(day),
    )
    failed, finished = cur.fetchone()
    return _ratio("task_failure_rate", failed, finished)


def task_p95_duration(cur, day: date) -> list[Value]:
    cur.execute(
        "SELECT task_type, percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_ms), count(*) "
        "FROM execution_tasks WHERE finished_at >= %s AND finished_at < %s AND duration_ms IS NOT NULL "
        "GROUP BY task_type ORDER BY task_type",
        _bounds(day),
    )
    return [Value("task_p95_duration_ms", float(p95), task_type, n) for task_type, p95, n in cur.fetchall()]


def queue_age(cur, day: date) -> list[Value]:
    cur.execute(
        "SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - available_at)),"
        " count(*) FROM execution_tasks WHERE started_at >= %s AND started_at < %s",
        _bounds(day),
    )
    p95, n = cur.fetchone()
    return [Value("queue_age_p95_s", max(float(p95), 0.0), sample_size=n)] if n else []


def cache_hit_ratio(cur, day: date) -> list[Value]:
    if not table_exists(cur, "task_batch_metrics"):
        return []
    cur.execute(
        "SELECT coalesce(sum(cache_hits), 0), coalesce(sum(tasks), 0) FROM task_batch_metrics "
        "WHERE measured_at >= %s AND measured_at < %s",
        _bounds(day),
    )
    hits, tasks = cur.fetchone()
    return _ratio("cache_hit_ratio", hits, tasks)


def backup_restore_time(cur, day: date) -> list[Value]:
    cur.execute(
        "SELECT max(restore_seconds), count(restore_seconds) FROM backups "
        "WHERE status = 'verified' AND verified_at >= %s AND verified_at < %s",
        _bounds(day),
    )
    seconds, n = cur.fetchone()
    return [Value("backup_restore_s", float(seconds), sample_size=n)] if n else []


# --- offers -----------------------------------------------------------------------------------------


def offer_redemption_rate(cur, day: date) -> list[Value]:
    cur.execute(
        "SELECT count(*) FILTER (WHERE event_type = 'redemption'), count(*) FILTER (WHERE event_type = "
        "'impression') FROM user_events WHERE occurred_at >= %s AND occurred_at < %s",
        _bounds(day),
    )
    redemptions, impressions = cur.fetchone()
    return _ratio("offer_redemption_rate", redemptions, impressions)


# --- trust inflation: what the platform reports against what an independent check confirms -----------


def result_confirmed(task_type: str, payload: Any, result: Any) -> bool:
    """A success is confirmed when its input passes the handlers' own validation and its result is
    a non-empty JSON object (what every handler returns)."""
    from include.execution.task_handlers import PermanentError, validate_payload

    try:
        validate_payload(task_type, payload)
    except PermanentError:
        return False
    return isinstance(result, dict) and bool(result)


def trust_tasks_unconfirmed(cur, day: date) -> list[Value]:
    cur.execute(
        "SELECT task_type, payload, result FROM execution_tasks "
        "WHERE status = 'succeeded' AND finished_at >= %s AND finished_at < %s",
        _bounds(day),
    )
    rows = cur.fetchall()
    unconfirmed = sum(not result_confirmed(t, p, r) for t, p, r in rows)
    return _ratio("trust_tasks_unconfirmed", unconfirmed, len(rows))


def trust_redemptions_unpaid(cur, day: date) -> list[Value]:
    cur.execute(
        """
        SELECT count(*) FILTER (WHERE NOT EXISTS (
                   SELECT FROM payments p WHERE p.user_id = e.user_id AND p.offer_id = e.offer_id
                                            AND p.status = 'succeeded')),
               count(*)
        FROM user_events e
        WHERE e.event_type = 'redemption' AND e.occurred_at >= %s AND e.occurred_at < %s
        """,
        _bounds(day),
    )
    unpaid, redemptions = cur.fetchone()
    return _ratio("trust_redemptions_unpaid", unpaid, redemptions)


def trust_roi_gap(cur, day: date) -> list[Value]:
    """The ROI of the live assignment as it stood at the end of `day` (a later recomputation
    leaves that day's stored value as it was)."""
    if not table_exists(cur, "offer_roi"):
        return []
    from include.offers.roi import LIVE_ASSIGNMENT_SQL

    cur.execute(
        f"""
        SELECT segment, roi_gap_cents, treated_users FROM offer_roi
        WHERE model_version_id = {LIVE_ASSIGNMENT_SQL}
          AND roi_gap_cents IS NOT NULL AND computed_at < %s
        ORDER BY segment
        """,  # noqa: S608 (a module constant)
        (_bounds(day)[1],),
    )
    return [Value("trust_roi_gap_cents", float(gap), segment, n) for segment, gap, n in cur.fetchall()]


# --- the model --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Champion:
    """The live model: `predict(frame) -> probabilities`, and the window it was trained on."""

    predict: Callable[[Any], Any]
    trained_from: datetime
    trained_to: datetime


def impressions(cur, start: datetime, end: datetime, limit: int = 50_000):
    from include.offers.jobs import _rows
    from include.offers.model import TRAINING_ROWS_SQL

    sql = (
        f"SELECT * FROM ({TRAINING_ROWS_SQL}) AS rows WHERE occurred_at >= %s AND occurred_at < %s "  # noqa: S608
        "ORDER BY occurred_at LIMIT %s"
    )
    return _rows(cur, sql, (start, end, limit))


def calibration_error(y, p, bins: int = 10) -> float:
    """Expected calibration error: |observed - predicted| per quantile bin, weighted by its size."""
    import numpy as np

    order = np.argsort(p)
    parts = [part for part in np.array_split(order, bins) if len(part)]
    return float(sum(len(part) * abs(y[part].mean() - p[part].mean()) for part in parts) / len(p))


def _codes(reference, current):
    """Categorical columns as integer codes in the reference's order (a new category gets its own)."""
    categories = {c: i for i, c in enumerate(sorted(set(reference)))}
    return (
        [categories[c] for c in reference],
        [categories.get(c, len(categories)) for c in current],
    )


def model_indicators(cur, day: date, champion: Champion | None) -> list[Value]:
    """AUC, calibration error and PSI of the features and predictions on the day's impressions."""
    if champion is None:
        return []
    import numpy as np

    from include.offers.model import CATEGORICAL, FEATURES, LABEL

    fresh = impressions(cur, *_bounds(day))
    if fresh.empty:
        return []
    reference = impressions(cur, champion.trained_from, champion.trained_to)
    y = fresh[LABEL].astype(int).to_numpy()
    p = np.asarray(champion.predict(fresh), dtype=float)
    values = [Value("model_calibration_error", calibration_error(y, p), sample_size=len(y))]
    if 0 < y.sum() < len(y):
        from sklearn.metrics import roc_auc_score

        values.append(Value("model_auc", float(roc_auc_score(y, p)), sample_size=len(y)))
    pairs = {name: (reference[name].tolist(), fresh[name].tolist()) for name in FEATURES}
    for name in CATEGORICAL:
        pairs[name] = _codes(*pairs[name])
    for name, (ref, cur_values) in pairs.items():
        values += _psi("feature_psi", name, ref, cur_values)
    if len(reference):
        values += _psi("prediction_psi", "", np.asarray(champion.predict(reference), dtype=float), p)
    return values


def _psi(indicator: str, dimension: str, reference, current) -> list[Value]:
    from include.audit.drift import drift

    try:
        found = drift(reference, current)
    except ValueError:  # too few values for a PSI worth reading: absent that day
        return []
    return [Value(indicator, found.psi, dimension, found.n_current, found.threshold)]


INDICATORS: tuple[Callable[[Any, date], list[Value]], ...] = (
    task_failure_rate,
    task_p95_duration,
    queue_age,
    cache_hit_ratio,
    backup_restore_time,
    offer_redemption_rate,
    trust_tasks_unconfirmed,
    trust_redemptions_unpaid,
    trust_roi_gap,
)


def compute(cur, day: date, champion: Champion | None = None) -> list[Value]:
    values = [value for indicator in INDICATORS for value in indicator(cur, day)]
    return values + model_indicators(cur, day, champion)


# --- storage and trend changes ----------------------------------------------------------------------


def ready(cur) -> bool:
    """Whether revision 0005 (the indicator tables) is applied."""
    return table_exists(cur, "indicator_values") and table_exists(cur, "indicator_changes")


def store(cur, day: date, values: Iterable[Value]) -> int:
    """Upsert the day's values; returns how many rows were inserted or changed."""
    changed = 0
    for v in values:
        cur.execute(
            """
            INSERT INTO indicator_values (day, indicator, dimension, value, sample_size, threshold)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT (day, indicator, dimension) DO UPDATE SET
                value = EXCLUDED.value, sample_size = EXCLUDED.sample_size, threshold = EXCLUDED.threshold,
                computed_at = now()
            WHERE (indicator_values.value, indicator_values.sample_size, indicator_values.threshold)
                  IS DISTINCT FROM (EXCLUDED.value, EXCLUDED.sample_size, EXCLUDED.threshold)
            """,
            (day, v.indicator, v.dimension, v.value, v.sample_size, v.threshold),
        )
        changed += cur.rowcount
    return changed


def series(cur) -> dict[tuple[str, str], list[tuple[date, float]]]:
    cur.execute(
        "SELECT indicator, dimension, day, value FROM indicator_values ORDER BY indicator, dimension, day"
    )
    found: dict[tuple[str, str], list[tuple[date, float]]] = {}
    for indicator, dimension, day, value in cur.fetchall():
        found.setdefault((indicator, dimension), []).append((day, value))
    return found


def change_points(points: list[tuple[date, float]], **detector: Any) -> list[tuple[date, float, Any]]:
    """(day, value, ChangePoint) of each change the detector signals in one series."""
    return [(points[c.index][0], points[c.index][1], c) for c in cusum([v for _, v in points], **detector)]


def detect_changes(cur, **detector: Any) -> list[Change]:
    """Run the detector over every series; store each change point once and return the new ones."""
    new = []
    for (indicator, dimension), points in series(cur).items():
        for day, value, cp in change_points(points, **detector):
            cur.execute(
                "INSERT INTO indicator_changes (indicator, dimension, day, direction, reference_mean, score) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (indicator, dimension, day, cp.direction, cp.reference_mean, cp.score),
            )
            if cur.rowcount:
                new.append(
                    Change(indicator, dimension, day, cp.direction, cp.reference_mean, cp.score, value)
                )
    return new


def drifted(values: Iterable[Value]) -> list[Value]:
    return [v for v in values if v.threshold is not None and v.value > v.threshold]


def table(values: Iterable[Value]) -> str:
    """The values as a fixed-width text table, for the task log."""
    lines = [f"{'indicator':<26} {'dimension':<20} {'value':>14} {'n':>8} {'threshold':>10}"]
    for v in values:
        threshold = f"{v.threshold:.4g}" if v.threshold is not None else "-"
        lines.append(
            f"{v.indicator:<26} {v.dimension:<20} {v.value:>14.6g} {v.sample_size or 0:>8} {threshold:>10}"
        )
    return "\n".join(lines)

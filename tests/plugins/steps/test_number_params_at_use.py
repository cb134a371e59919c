"""Where a number param is used, a value the schema would refuse fails the task at once, naming it,
before any service is touched: NaN, the infinities, and what the code cannot compute with."""

from __future__ import annotations

import math

import pytest
from airflow.sdk.exceptions import AirflowFailException

from include.bounds import OutOfBounds, bounded

NOT_FINITE = (math.nan, math.inf, -math.inf)


def _migration_params(**changes):
    return {
        "lock_timeout_ms": 1000,
        "statement_timeout_ms": 300_000,
        "lock_retries": 3,
        "backfill_batch_size": 10_000,
        **changes,
    }


def _steps():
    """(name, the step called with `value` for the number it takes)."""
    from execplatform.steps import audit_steps, backup_steps, migration_steps, offer_steps, queue_steps

    return {
        "statement_timeout_ms": lambda v: migration_steps.settings_from_params(
            _migration_params(statement_timeout_ms=v)
        ),
        "backfill_batch_size": lambda v: migration_steps.settings_from_params(
            _migration_params(backfill_batch_size=v)
        ),
        "max_backup_age_hours": lambda v: migration_steps.fresh_backup_id("nowhere", v),
        "report_window_hours": lambda v: queue_steps.publish_task_metrics("run", None, [], window_hours=v),
        "keep_daily": lambda v: backup_steps.apply_retention(keep_daily=v, keep_weekly=1),
        "valid_days": lambda v: offer_steps.train_challenger("s3://nowhere", v),
        "holdout_share": lambda v: offer_steps.assign_offers(v, 1000),
        "discount_budget_cents": lambda v: offer_steps.assign_offers(0.1, v),
        "min_exploration": lambda v: offer_steps.update_bandit(v, 300, 3),
        "budget_per_impression_cents": lambda v: offer_steps.update_bandit(0.1, v, 3),
        "retire_after_days": lambda v: offer_steps.update_bandit(0.1, 300, v),
        "margin_auc": lambda v: offer_steps.promote_or_keep({}, v),
        "backup_max_age_hours": lambda v: audit_steps.check_gate(
            "nowhere", 1, "backup_fresh_and_restored", {"backup_max_age_hours": v}
        ),
    }


@pytest.mark.parametrize("name", sorted(_steps()))
@pytest.mark.parametrize("value", [*NOT_FINITE, 10**12])
def test_a_step_refuses_a_number_it_cannot_use_naming_it(name, value):
    with pytest.raises(AirflowFailException, match=name):
        _steps()[name](value)


def test_the_migration_session_takes_what_postgres_takes():
    """`SET statement_timeout` takes at most INT_MAX milliseconds; a backfill batch of 10**9 rows
    is one UPDATE of the whole table."""
    from execplatform.steps.migration_steps import settings_from_params

    settings = settings_from_params(_migration_params(statement_timeout_ms=2**31 - 1))
    assert settings.statement_timeout_ms == 2**31 - 1
    for changes in ({"statement_timeout_ms": 2**31}, {"backfill_batch_size": 10**9}, {"lock_retries": 2.5}):
        with pytest.raises(AirflowFailException):
            settings_from_params(_migration_params(**changes))


@pytest.mark.parametrize(
    "arguments",
    [
        {"budget_seconds": math.nan},  # `elapsed >= nan` is never true: the drain would never stop
        {"budget_seconds": math.inf},
        {"batch_size": 10**9},
        {"concurrency": 0},
    ],
)
def test_a_drain_refuses_a_budget_or_size_it_cannot_run_with_before_it_connects(arguments):
    from include.execution.drain import drain
    from include.execution.task_handlers import Services

    with pytest.raises(OutOfBounds):
        drain("host=nowhere.invalid", services=Services(), **arguments)


def test_bounded_names_the_value_and_keeps_its_kind():
    assert bounded("x", 3, low=1, high=5, integer=True) == 3
    assert bounded("x", 2.5, low=0, low_open=True) == 2.5
    for value, message in (
        (math.nan, "x must be finite, got nan"),
        (0, "x must be above 0"),
        (6, "x must be at most 5"),
        (True, "x must be a number"),
        ("3", "x must be a number"),
        (2.5, "x must be a whole number"),
    ):
        with pytest.raises(OutOfBounds, match=message):
            bounded("x", value, low=0, low_open=True, high=5, integer=True)

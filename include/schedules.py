"""Schedules that a test or a demo can shorten without editing a DAG file.

`DAG_SCHEDULE_OVERRIDES` holds a JSON object mapping DAG ids to a cron expression or preset,
e.g. ``{"db_backup": "* * * * *"}``; each scheduled DAG passes its own schedule (or the cron
part of an asset-or-time schedule) through :func:`schedule_for`. Read from the environment, not
a Variable: parsing must not query the metadata database.
"""

from __future__ import annotations

import json
import os
from typing import TypeVar

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
        raise ValueError(f"{OVERRIDES_VAR} must be a JSON object of dag_id -> cron, got {type(overrides).__name__}")
    override = overrides.get(dag_id)
    if override is None:
        return default
    if not isinstance(override, str) or not override.strip():
        raise ValueError(f"{OVERRIDES_VAR}[{dag_id!r}] must be a cron expression or preset, got {override!r}")
    return override

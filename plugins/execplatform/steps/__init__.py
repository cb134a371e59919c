"""The task callables of the DAGs, one module per concern (named for what its steps do): each
step reaches its services through the hooks and calls the domain library in `include`."""

from __future__ import annotations

from typing import Any


def checked_number(name: str, value: Any, **bounds: Any) -> Any:
    """A number from a param, as `include.bounds.bounded` (finite, within `bounds`); else the task
    fails without retries, naming it: a retry cannot make the value usable."""
    from airflow.sdk.exceptions import AirflowFailException

    from include.bounds import OutOfBounds, bounded

    try:
        return bounded(name, value, **bounds)
    except OutOfBounds as exc:
        raise AirflowFailException(str(exc)) from None

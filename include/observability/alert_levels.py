"""Alert levels and the channels each reaches: what a DAG file needs to name a level, without the
rest of `alerting` (its records and grouping), which only a firing alert loads."""

from __future__ import annotations

from enum import IntEnum


class Level(IntEnum):
    INFO = 10
    WARNING = 20
    ERROR = 30
    CRITICAL = 40

    @classmethod
    def parse(cls, value: str | Level) -> Level:
        if isinstance(value, Level):
            return value
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError(
                f"alert level {value!r} is not one of {[lv.name.lower() for lv in cls]}"
            ) from None


# Each level adds channels to the one below it.
CHANNELS: dict[Level, tuple[str, ...]] = {
    Level.INFO: ("log",),
    Level.WARNING: ("log", "metric", "table"),
    Level.ERROR: ("log", "metric", "table", "email"),
    Level.CRITICAL: ("log", "metric", "table", "email", "sentry"),
}

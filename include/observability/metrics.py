"""CloudWatch metrics as plain values: datums, the platform's standard dimensions, request batches."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

NAMESPACE = "ExecPlatform"

# PutMetricData's per-request limits: 1000 MetricDatum and a 1 MB body. The byte budget stays
# below 1 MiB so that the request envelope (action, version, namespace) always fits beside it.
MAX_DATUMS_PER_REQUEST = 1000
MAX_BYTES_PER_REQUEST = 1_000_000
MAX_DIMENSIONS = 30

STANDARD_UNITS = frozenset(
    {
        "Seconds",
        "Microseconds",
        "Milliseconds",
        "Bytes",
        "Kilobytes",
        "Megabytes",
        "Gigabytes",
        "Terabytes",
        "Bits",
        "Kilobits",
        "Megabits",
        "Gigabits",
        "Terabits",
        "Percent",
        "Count",
        "Bytes/Second",
        "Kilobytes/Second",
        "Megabytes/Second",
        "Gigabytes/Second",
        "Terabytes/Second",
        "Bits/Second",
        "Kilobits/Second",
        "Megabits/Second",
        "Gigabits/Second",
        "Terabits/Second",
        "Count/Second",
        "None",
    }
)


def dimension_list(dimensions: Mapping[str, Any]) -> list[dict[str, str]]:
    """CloudWatch's ``[{"Name", "Value"}]`` form, sorted by name; empty or None values dropped."""
    return [
        {"Name": name, "Value": str(value)}
        for name, value in sorted(dimensions.items())
        if value is not None and str(value) != ""
    ]


@dataclass(frozen=True)
class Metric:
    """One datapoint. A naive ``timestamp`` is taken as UTC; None lets CloudWatch stamp it."""

    name: str
    value: float
    unit: str = "Count"
    dimensions: Mapping[str, str] = field(default_factory=dict)
    timestamp: datetime | None = None

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 255:
            raise ValueError(f"metric name {self.name!r} must have 1 to 255 characters")
        if isinstance(self.value, bool) or not isinstance(self.value, int | float):
            raise ValueError(f"metric {self.name!r}: value {self.value!r} is not a number")
        if not math.isfinite(self.value):
            raise ValueError(f"metric {self.name!r}: value {self.value!r} is not finite")
        if self.unit not in STANDARD_UNITS:
            raise ValueError(f"metric {self.name!r}: unit {self.unit!r} is not a CloudWatch unit")
        dims = dimension_list(self.dimensions)
        if len(dims) > MAX_DIMENSIONS:
            raise ValueError(
                f"metric {self.name!r}: {len(dims)} dimensions, CloudWatch allows {MAX_DIMENSIONS}"
            )
        for dim in dims:
            if len(dim["Name"]) > 255 or len(dim["Value"]) > 1024:
                raise ValueError(f"metric {self.name!r}: dimension {dim['Name'][:40]!r} is too long")

    def to_datum(self) -> dict[str, Any]:
        """The MetricDatum dict that PutMetricData takes."""
        datum: dict[str, Any] = {
            "MetricName": self.name,
            "Value": float(self.value),
            "Unit": self.unit,
        }
        dims = dimension_list(self.dimensions)
        if dims:
            datum["Dimensions"] = dims
        if self.timestamp is not None:
            ts = self.timestamp
            datum["Timestamp"] = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
        return datum


def standard_dimensions(
    dag_id: str | None = None,
    task_id: str | None = None,
    task_type: str | None = None,
    environment: str | None = None,
) -> dict[str, str]:
    """The dimensions every platform metric carries; those not given are left out.

    ``task_type`` is the execution task's type (``implementation``, ``self_improvement``...);
    ``environment`` defaults to ``$PLATFORM_ENVIRONMENT``, else ``local``.
    """
    dims = {
        "DagId": dag_id,
        "TaskId": task_id,
        "TaskType": task_type,
        "Environment": environment or os.environ.get("PLATFORM_ENVIRONMENT") or "local",
    }
    return {name: value for name, value in dims.items() if value}


def _encoded_size(value: Any, key: str) -> int:
    if isinstance(value, Mapping):
        return sum(_encoded_size(v, f"{key}.{k}") for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(_encoded_size(v, f"{key}.member.{i}") for i, v in enumerate(value, 1))
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return len(key) + len(quote(text, safe="")) + 2  # "=" and "&"


def datum_size(datum: Mapping[str, Any]) -> int:
    """An upper bound of the bytes one datum adds to a PutMetricData request.

    It is the datum's size in the query (form-encoded) protocol, the most verbose of those
    botocore may speak to CloudWatch (CBOR and JSON are smaller), at the widest member index.
    """
    return _encoded_size(datum, f"MetricData.member.{MAX_DATUMS_PER_REQUEST}")


def chunk_metric_data(
    datums: Iterable[Mapping[str, Any]],
    max_count: int = MAX_DATUMS_PER_REQUEST,
    max_bytes: int = MAX_BYTES_PER_REQUEST,
) -> Iterator[list[Mapping[str, Any]]]:
    """Group datums, in order, into request-sized lists: at most `max_count` and `max_bytes`.

    A datum that alone exceeds `max_bytes` could never be sent: it raises ValueError naming it.
    """
    chunk: list[Mapping[str, Any]] = []
    chunk_bytes = 0
    for datum in datums:
        size = datum_size(datum)
        if size > max_bytes:
            raise ValueError(
                f"metric {datum.get('MetricName')!r}: one datum takes about {size} bytes, "
                f"over the {max_bytes}-byte budget of a request"
            )
        if chunk and (len(chunk) >= max_count or chunk_bytes + size > max_bytes):
            yield chunk
            chunk, chunk_bytes = [], 0
        chunk.append(datum)
        chunk_bytes += size
    if chunk:
        yield chunk

"""An OTLP/HTTP metrics receiver that keeps what Airflow's components export, so people and tests
can read it: each POST to /v1/metrics becomes one JSON line in `<folder>/metrics.jsonl`, with the
exporting service and every metric's name and data points (value and attributes).

Airflow's `[metrics] otel_on` with the standard `OTEL_EXPORTER_OTLP_METRICS_*` variables points
at it (devstack.stack.otel_metrics_env); production points them at an OpenTelemetry Collector
(README, "Airflow's metrics").
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from devstack.http_sink import SinkHandler, serve

METRICS_FILE = "metrics.jsonl"


def _points(metric) -> list[dict]:
    """A metric's data points: the value (a sum's or gauge's; a histogram's or summary's count)
    and attributes."""
    kind = metric.WhichOneof("data")
    points = []
    for p in getattr(metric, kind).data_points if kind else ():
        if kind in ("histogram", "exponential_histogram", "summary"):
            value = p.count
        else:
            value = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
        attributes = {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in p.attributes}
        points.append({"value": value, "attributes": attributes})
    return points


def decode(body: bytes) -> list[dict]:
    """An ExportMetricsServiceRequest (protobuf) as one record per resource."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    request = ExportMetricsServiceRequest.FromString(body)
    records = []
    for resource_metrics in request.resource_metrics:
        resource = {a.key: a.value.string_value for a in resource_metrics.resource.attributes}
        metrics = {
            metric.name: _points(metric)
            for scope in resource_metrics.scope_metrics
            for metric in scope.metrics
        }
        records.append(
            {"received_at": time.time(), "service": resource.get("service.name"), "metrics": metrics}
        )
    return records


def read_metric_names(folder: Path) -> set[str]:
    """Every metric name the sink in `folder` has received."""
    path = folder / METRICS_FILE
    if not path.exists():
        return set()
    return {name for line in path.read_text().splitlines() for name in json.loads(line)["metrics"]}


def make_handler(folder: Path) -> type[BaseHTTPRequestHandler]:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

    folder.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    class MetricsHandler(SinkHandler):
        sink_name = "otlp sink"

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.read_body()
            if self.path != "/v1/metrics":
                self.send_error(404, f"only /v1/metrics is received here, not {self.path}")
                return
            lines = "".join(json.dumps(record) + "\n" for record in decode(body))
            with lock, (folder / METRICS_FILE).open("a") as out:
                out.write(lines)
            answer = ExportMetricsServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    return MetricsHandler


def main() -> None:
    serve(make_handler, __doc__)


if __name__ == "__main__":
    main()

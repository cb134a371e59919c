"""The stack's OTLP receiver, fed by the OpenTelemetry SDK's own OTLP/HTTP exporter (the one
Airflow uses), in this process."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer

from devstack.otlp_sink import METRICS_FILE, make_handler, read_metric_names


def test_what_the_otlp_exporter_sends_is_kept_with_its_points(tmp_path):
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import Histogram, MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource

    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(tmp_path))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        exporter = OTLPMetricExporter(endpoint=f"http://127.0.0.1:{server.server_port}/v1/metrics")
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        # Airflow aggregates its timers as exponential histograms
        timers = View(instrument_type=Histogram, aggregation=ExponentialBucketHistogramAggregation())
        provider = MeterProvider([reader], Resource.create({"service.name": "scheduler"}), views=[timers])
        meter = provider.get_meter("test")
        meter.create_counter("airflow.scheduler_heartbeat").add(3)
        meter.create_histogram("airflow.dagrun.duration.success").record(1.5, {"dag_id": "db_backup"})
        meter.create_gauge("airflow.pool.open_slots").set(7.5, {"pool_name": "default_pool"})
        provider.shutdown()  # exports what was recorded, once
    finally:
        server.shutdown()
    assert read_metric_names(tmp_path) == {
        "airflow.scheduler_heartbeat",
        "airflow.dagrun.duration.success",
        "airflow.pool.open_slots",
    }
    [record] = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert record["service"] == "scheduler"
    assert record["metrics"]["airflow.scheduler_heartbeat"] == [{"value": 3, "attributes": {}}]
    assert record["metrics"]["airflow.dagrun.duration.success"] == [
        {"value": 1, "attributes": {"dag_id": "db_backup"}}
    ]
    assert record["metrics"]["airflow.pool.open_slots"] == [
        {"value": 7.5, "attributes": {"pool_name": "default_pool"}}
    ]

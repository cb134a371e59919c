"""The stack's supervisor stops its services the way `make down` and Ctrl-C rely on."""

from __future__ import annotations

import sys

from devstack.stack import WORKLOAD, Service, Supervisor, free_port, http_answers

# A service that, once asked to stop, reports to the sink one last time (as an Airflow component
# flushes its metrics to the OTLP receiver) and writes down whether the sink answered.
LAST_REPORT = """
import signal, socket, sys, time

def stop(*_):
    time.sleep(0.5)  # the sink, signalled at the same moment, would be gone by now
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 2).close()
        answer = "answered"
    except OSError:
        answer = "gone"
    open(sys.argv[2], "w").write(answer)
    sys.exit(0)

signal.signal(signal.SIGTERM, stop)
open(sys.argv[3], "w").close()  # ready: stopping it now goes through stop()
time.sleep(60)
"""


def test_a_server_stops_after_the_services_that_report_to_it(tmp_path):
    port, report, ready = free_port(), tmp_path / "last-report.txt", tmp_path / "ready"
    supervisor = Supervisor(tmp_path / "logs")
    sink = [sys.executable, "-m", "devstack.otlp_sink", "--port", str(port), "--folder", str(tmp_path)]
    supervisor.start(Service("otlp", sink, http_answers(f"http://127.0.0.1:{port}/")))
    client = [sys.executable, "-c", LAST_REPORT, str(port), str(report), str(ready)]
    supervisor.start(Service("client", client, ready.exists, stop_layer=WORKLOAD))
    sink_proc, client_proc = (s.proc for s in supervisor.services)

    supervisor.stop_all(grace=10)

    assert report.read_text() == "answered"
    assert client_proc.returncode == 0, "the client ended by itself, not by SIGKILL"
    assert sink_proc.returncode is not None and supervisor.services == []

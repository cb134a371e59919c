"""A Sentry ingest endpoint that records every envelope it receives, so tests can read them.

The DSN `http://<key>@127.0.0.1:<port>/<project>` points sentry-sdk at it; each envelope is
kept as one file in the folder, decompressed.
"""

from __future__ import annotations

import json
import time
import uuid
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from devstack.http_sink import SinkHandler, serve
from include.audit.alarm_check import read_envelopes  # the sink's folder, read back

__all__ = ["make_handler", "read_envelopes"]


def make_handler(folder: Path) -> type[BaseHTTPRequestHandler]:
    folder.mkdir(parents=True, exist_ok=True)

    class EnvelopeHandler(SinkHandler):
        sink_name = "sentry sink"

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.read_body()
            name = f"{time.time_ns()}-{uuid.uuid4().hex}.envelope"
            (folder / f".{name}").write_bytes(body)
            (folder / f".{name}").rename(folder / name)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"id": uuid.uuid4().hex}).encode())

    return EnvelopeHandler


def main() -> None:
    serve(make_handler, __doc__)


if __name__ == "__main__":
    main()

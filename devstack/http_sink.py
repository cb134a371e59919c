"""What the local stack's HTTP sinks (Sentry's envelopes, OTLP metrics) share: the request body
read and decompressed, a GET that names the sink, a quiet log, and the command line that serves a
folder."""

from __future__ import annotations

import argparse
import gzip
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class SinkHandler(BaseHTTPRequestHandler):
    sink_name = "sink"

    def read_body(self) -> bytes:
        """The request's body, decompressed as its Content-Encoding says (gzip or deflate)."""
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        encoding = self.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
        return body

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(f"{self.sink_name}\n".encode())

    def log_message(self, format, *args) -> None:  # keep the stack's log quiet
        pass


def serve(make_handler: Callable[[Path], type[BaseHTTPRequestHandler]], description: str) -> None:
    """The sink's command line: `--port` and `--folder` (and `--host`), served until killed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--folder", type=Path, required=True)
    args = parser.parse_args()
    ThreadingHTTPServer((args.host, args.port), make_handler(args.folder)).serve_forever()

"""A Sentry ingest endpoint that records every envelope it receives, so tests can read them.

The DSN `http://<key>@127.0.0.1:<port>/<project>` points sentry-sdk at it; each envelope is
kept as one file in the folder, decompressed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from include.audit.alarm_check import read_envelopes  # the sink's folder, read back

__all__ = ["make_handler", "read_envelopes"]


def make_handler(folder: Path) -> type[BaseHTTPRequestHandler]:
    folder.mkdir(parents=True, exist_ok=True)

    class EnvelopeHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            encoding = self.headers.get("Content-Encoding", "")
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            name = f"{time.time_ns()}-{uuid.uuid4().hex}.envelope"
            (folder / f".{name}").write_bytes(body)
            (folder / f".{name}").rename(folder / name)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(json.dumps({"id": uuid.uuid4().hex}).encode())

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"sentry sink\n")

        def log_message(self, format, *args) -> None:  # keep the stack's log quiet
            pass

    return EnvelopeHandler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--folder", type=Path, required=True)
    args = parser.parse_args()
    ThreadingHTTPServer((args.host, args.port), make_handler(args.folder)).serve_forever()


if __name__ == "__main__":
    main()

"""The reference task executor: the AI service's HTTP contract, answering deterministically.

    POST /v1/execute   {"task_type", "ai_model", "input"}  ->  200 {"output", "model_version"}
    GET  /v1/models/<ai_model>                            ->  200 {"ai_model", "version"}

The executor is the authority on which models exist: its catalog is ``--models``
(comma-separated; default the models the seed's tasks name, devstack.demo_data.AI_MODELS, and the
handlers' DEFAULT_AI_MODEL). Any other model gets 404 {"error": "unknown ai_model '...'"} on
both routes, and nothing is executed.

The answer depends only on the task type, the model, its version and the input, after
``--latency-ms`` (default 50). Faults for tests and demos, through the admin endpoints:

    POST /admin/faults  {"latency_ms": 50, "fail_next": [503, 400, "slow", ...],
                         "slow_ms": 5000, "model_versions": {"gpt-4.1": "2"},
                         "models": ["gpt-5"],   # models are added to the catalog
                         "oversized_bytes": 67108864, "trickle_ms": 200}
    GET  /admin/stats   ->  {"executions", "requests", "in_flight", "pending_faults",
                             "by_digest", "models", "refused_models"}
    POST /admin/reset       (faults, versions, counts, and the catalog back to --models)

A reset first waits for the executions in flight (a "slow" one a client gave up on still
counts when it ends), so nothing started before a reset is counted after it.

Each entry of ``fail_next`` answers one request of /v1/execute:

- an HTTP status;
- ``{"status": 429, "retry_after": "2"}``: that status with a ``Retry-After`` header;
- ``"slow"``: sleeps ``slow_ms`` before answering normally, to provoke client timeouts;
- ``"trickle"``: answers normally, its body one byte every ``trickle_ms`` (each read of the
  client's is quick; only a deadline on the whole answer ends it);
- ``"oversized"``: a 200 whose body is ``oversized_bytes`` long, its Content-Length sent;
- ``"oversized_unsized"``: the same without a Content-Length (the body ends when the connection
  closes), so the client learns its size only by reading it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import posixpath
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


def default_models() -> tuple[str, ...]:
    """The models the platform's tasks name: the seed's, and what a task without one runs on."""
    from devstack.demo_data import AI_MODELS
    from include.execution.task_handlers import DEFAULT_AI_MODEL

    return (DEFAULT_AI_MODEL, *AI_MODELS)


class ExecutorState:
    def __init__(self, latency_ms: float, models: Iterable[str] | None = None) -> None:
        self.lock = threading.Lock()
        self.latency_ms = latency_ms
        self.slow_ms = 5000.0
        self.trickle_ms = 200.0
        self.oversized_bytes = 64 * 1024 * 1024
        self.fail_next: list = []
        self.catalog = frozenset(default_models() if models is None else models)  # what a reset returns to
        self.models = set(self.catalog)
        self.model_versions: dict[str, str] = {}
        self.by_digest: Counter[str] = Counter()
        self.refused_models: Counter[str] = Counter()  # unknown models asked for, on either route
        self.requests = 0  # calls of /v1/execute, faults included
        self.in_flight = 0  # calls of /v1/execute not yet answered
        self.idle = threading.Condition(self.lock)  # notified when in_flight falls to 0

    def unknown(self, model: str) -> dict | None:
        """The 404 body for a model outside the catalog (counted), else None."""
        with self.lock:
            if model in self.models:
                return None
            self.refused_models[model] += 1
            known = sorted(self.models)
        return {"error": f"unknown ai_model {model!r}; this executor serves {known}"}

    def next_fault(self):
        with self.lock:
            self.requests += 1
            return self.fail_next.pop(0) if self.fail_next else None

    @contextmanager
    def executing(self) -> Iterator[None]:
        """Counts one /v1/execute call in flight until it is answered (or its client is gone)."""
        with self.lock:
            self.in_flight += 1
        try:
            yield
        finally:
            with self.lock:
                self.in_flight -= 1
                if not self.in_flight:
                    self.idle.notify_all()

    def reset(self) -> None:
        with self.lock:
            self.idle.wait_for(lambda: not self.in_flight, timeout=self.slow_ms / 1000 + 5)
            self.fail_next, self.model_versions, self.models = [], {}, set(self.catalog)
            self.by_digest.clear()
            self.refused_models.clear()
            self.requests = 0


def answer(task_type: str, ai_model: str, version: str, task_input) -> dict:
    canonical = json.dumps([task_type, ai_model, version, task_input], sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return {
        "output": {"summary": f"{task_type} done by {ai_model}", "digest": digest},
        "model_version": version,
    }


class Handler(BaseHTTPRequestHandler):
    state: ExecutorState
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connections
    # headers and body go out as two writes: with Nagle on, the second waits for the client's
    # delayed ACK (about 40 ms a request)
    disable_nagle_algorithm = True

    def log_message(self, *args) -> None:  # one line per request would drown the stack's log
        pass

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def _route(self) -> str:
        """The request's path with its dot segments resolved, as a reverse proxy or most web
        frameworks resolve them before routing: `/v1/models/a/../../admin/stats` is
        `/admin/stats`. An encoded `%2F` is not a separator, so it stays inside its segment."""
        path = urlsplit(self.path).path
        return posixpath.normpath(path) if path.startswith("/") else path

    def do_GET(self) -> None:
        state = self.state
        path = self._route()
        if path.startswith("/v1/models/"):
            model = unquote(path.removeprefix("/v1/models/"))
            if refusal := state.unknown(model):
                self._send(404, refusal)
                return
            self._send(200, {"ai_model": model, "version": state.model_versions.get(model, "1")})
        elif path == "/admin/stats":
            with state.lock:
                self._send(
                    200,
                    {
                        "executions": sum(state.by_digest.values()),
                        "requests": state.requests,
                        "in_flight": state.in_flight,
                        "pending_faults": len(state.fail_next),
                        "by_digest": dict(state.by_digest),
                        "models": sorted(state.models),
                        "refused_models": dict(state.refused_models),
                    },
                )
        elif path == "/health":
            self._send(200, {"ok": True})
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        state = self.state
        try:
            body = self._body()
        except ValueError as exc:
            self._send(400, {"error": f"body is not JSON: {exc}"})
            return
        path = self._route()
        if path == "/admin/faults":
            with state.lock:
                state.latency_ms = float(body.get("latency_ms", state.latency_ms))
                state.slow_ms = float(body.get("slow_ms", state.slow_ms))
                state.trickle_ms = float(body.get("trickle_ms", state.trickle_ms))
                state.oversized_bytes = int(body.get("oversized_bytes", state.oversized_bytes))
                state.fail_next = list(body.get("fail_next", state.fail_next))
                state.model_versions.update(body.get("model_versions", {}))
                state.models.update(body.get("models", []))
            self._send(200, {"ok": True})
        elif path == "/admin/reset":
            state.reset()
            self._send(200, {"ok": True})
        elif path == "/v1/execute":
            with state.executing():
                self._execute(body)
        else:
            self._send(404, {"error": f"no route {self.path}"})

    def _execute(self, body) -> None:
        state = self.state
        fault = state.next_fault()
        if isinstance(fault, int):
            self._send(fault, {"error": f"injected fault: HTTP {fault}"})
            return
        if isinstance(fault, dict):
            status = int(fault.get("status", 503))
            headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
            self._send(status, {"error": f"injected fault: HTTP {status}"}, headers)
            return
        if fault in ("oversized", "oversized_unsized"):
            self._send_oversized(sized=fault == "oversized")
            return
        time.sleep((state.slow_ms if fault == "slow" else state.latency_ms) / 1000)
        missing = [k for k in ("task_type", "ai_model", "input") if k not in body]
        if missing:
            self._send(422, {"error": f"missing fields: {missing}"})
            return
        if refusal := state.unknown(body["ai_model"]):
            self._send(404, refusal)
            return
        version = state.model_versions.get(body["ai_model"], "1")
        result = answer(body["task_type"], body["ai_model"], version, body["input"])
        if fault == "trickle":
            self._send_trickling(result)
            return
        with state.lock:
            state.by_digest[result["output"]["digest"]] += 1
        self._send(200, result)

    def _send_oversized(self, sized: bool) -> None:
        """A 200 of `oversized_bytes` (one JSON string), written until the client hangs up."""
        size = self.state.oversized_bytes
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if sized:
            self.send_header("Content-Length", str(size))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        block = b"x" * (1 << 20)
        try:
            self.wfile.write(b'"')
            for start in range(1, size - 1, len(block)):
                self.wfile.write(block[: min(len(block), size - 1 - start)])
            self.wfile.write(b'"')
        except OSError:  # the client refused it and hung up
            self.close_connection = True

    def _send_trickling(self, result: dict) -> None:
        """The answer, its body one byte every `trickle_ms`, until done or the client hangs up."""
        data = json.dumps(result).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for i in range(len(data)):
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                time.sleep(self.state.trickle_ms / 1000)
        except OSError:
            self.close_connection = True


def serve(
    port: int, latency_ms: float, host: str = "127.0.0.1", models: Iterable[str] | None = None
) -> ThreadingHTTPServer:
    handler = type("BoundHandler", (Handler,), {"state": ExecutorState(latency_ms, models)})
    return ExecutorHTTPServer((host, port), handler)


class ExecutorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a batch opens many connections at once; the default backlog is 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument(
        "--models",
        type=lambda s: [m.strip() for m in s.split(",") if m.strip()],
        help="comma-separated catalog of models served (default: %(default)s)",
        default=",".join(default_models()),
    )
    args = parser.parse_args()
    server = serve(args.port, args.latency_ms, args.host, args.models)
    print(
        f"task executor on {args.host}:{args.port}, latency {args.latency_ms} ms, models {args.models}",
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()

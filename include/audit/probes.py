"""Adversarial probes: hostile and malformed input sent through the platform's real entry points,
inside a sandbox database that is dropped afterwards.

The sandbox is a new database on the app's server, migrated to production's revision (the
app schema, no production rows). Each probe sends one kind of bad input and reports what the
entry point did with it:

- `refused`: the entry point raised, naming what was wrong (nothing stored);
- `quarantined`: the row was kept aside with its reason (`offer_quarantine`);
- `held`: a Stripe charge that is not final yet was neither stored nor quarantined, and the
  sync's cursor stays before it, so a later run takes it once it is final;
- `inert`: free text that is legitimate data (a prompt may quote SQL) was stored verbatim and
  changed nothing else: the probe checks the stored value and that every table still exists;
- `ACCEPTED`: none of the above; the probe fails;
- `UNCHECKED`: the probe could not reach its entry point (no executor connection, the
  executor unreachable, a DAG file that does not import); it fails like ACCEPTED, since nothing
  shows that the bad input would be refused.

The groups, each a function below: `queue_probes` (TaskQueue.enqueue), `handler_probes`
(payload validation, ai_model format), `executor_probes` (a well-formed ai_model the task
executor does not serve), `hostile_executor_probes` (the executor client, with the configured
executor's limits, against a hostile executor on loopback: an oversized answer, with and without
its size announced, and one trickled a byte at a time), `offer_probes` (Stripe charges into the
ROI ledger), `training_probes` (offer-model training rows) and `param_probes` (every param of
every DAG in the dags folder, against its Param schema).

Every value a probe sends carries the run's marker, so the audit can also search production
for it afterwards (`marker_hits`): a probe that leaked out of the sandbox would be found.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from include.execution.executor_client import ExecutorClient

INJECTIONS = (
    "'; DROP TABLE execution_tasks; --",
    "1 OR 1=1",
    '" OR ""="',
    "x'); DELETE FROM users WHERE ('1'='1",
    "$$; TRUNCATE payments; $$",
    "'); COPY users TO PROGRAM 'id'; --",
)
OVERSIZED_CHARS = 5_000_000  # a 5 MB prompt: 250 times the handlers' limit
# what every DAG param is sent: each injection, wrong JSON types, huge numbers either way, and
# what is not a finite number (a trigger's JSON may carry NaN: Python's reader takes it)
HOSTILE_PARAM_VALUES = (
    *INJECTIONS,
    [INJECTIONS[1]],
    {"$gt": ""},
    -(10**12),
    10**12,
    float("nan"),
    float("inf"),
    float("-inf"),
)
PROBE_DEADLINE_SECONDS = 5.0  # the hostile executor probes' longest deadline (the audit waits that long)
# ai_model values that must never reach the executor's URL
PATH_MODELS = ("a/../../admin/stats", "../admin", "gpt-4.1/../../v1/execute", "%2e%2e", ".hidden")


@dataclass(frozen=True)
class ProbeResult:
    probe: str
    entry_point: str
    outcome: str  # refused | quarantined | inert | ACCEPTED | UNCHECKED
    reason: str

    @property
    def held(self) -> bool:
        return self.outcome in ("refused", "quarantined", "held", "inert")

    def __str__(self) -> str:
        return (
            f"{'held' if self.held else 'BROKEN':<6} {self.probe:<40} {self.outcome:<11} {self.reason[:160]}"
        )


# --- the sandbox ------------------------------------------------------------------------------------


@contextmanager
def sandbox(app_dsn: str, revision: str) -> Iterator[str]:
    """A scratch database at `revision`, created through the app's own connection (its role has
    CREATEDB: backup verification restores the same way), dropped on exit whatever happened."""
    from psycopg2.extensions import make_dsn, parse_dsn

    from include.backup.pg_programs import create_database, drop_database
    from include.migrations import upgrade

    name = f"probe_sandbox_{uuid.uuid4().hex[:12]}"
    create_database(app_dsn, name)
    try:
        dsn = make_dsn(**{**parse_dsn(app_dsn), "dbname": name})
        upgrade(dsn, revision)
        yield dsn
    finally:
        drop_database(app_dsn, name)


# --- production's state: the proof that nothing outside the sandbox changed ---------------------------


def production_state(dsn: str) -> dict[str, Any]:
    """The schema dump (pg_dump --schema-only) and a checksum and count of every table's rows."""
    import psycopg2
    from psycopg2 import sql

    from include.migrations.runner import schema_dump

    state: dict[str, Any] = {"schema": schema_dump(dsn), "rows": {}}
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
        for (table,) in cur.fetchall():
            cur.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
                    "FROM {} AS t"
                ).format(sql.Identifier(table))
            )
            state["rows"][table] = list(cur.fetchone())
    conn.close()
    return state


def state_differences(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    problems = [] if before["schema"] == after["schema"] else ["the schema dump changed"]
    for table in sorted(set(before["rows"]) | set(after["rows"])):
        if before["rows"].get(table) != after["rows"].get(table):
            problems.append(f"table {table}: rows {before['rows'].get(table)} -> {after['rows'].get(table)}")
    return problems


MARKED_COLUMNS = {
    "execution_tasks": ("payload::text", "coalesce(idempotency_key, '')", "coalesce(ai_model, '')"),
    "offer_quarantine": ("source_key", "row_data::text"),
    "payments": ("stripe_payment_id",),
}


def marker_hits(cur, marker: str) -> dict[str, int]:
    """Rows of production carrying the probes' marker (there must be none)."""
    from psycopg2 import sql

    from include.migrations import table_exists

    hits = {}
    for table, columns in MARKED_COLUMNS.items():
        if not table_exists(cur, table):
            continue
        where = sql.SQL(" OR ").join(sql.SQL(c + " LIKE %(m)s") for c in columns)
        cur.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE ").format(sql.Identifier(table)) + where,
            {"m": f"%{marker}%"},
        )
        if count := cur.fetchone()[0]:
            hits[table] = count
    return hits


# --- probes -----------------------------------------------------------------------------------------


def _refusal(
    probe: str,
    entry_point: str,
    attempt: Callable[[], Any],
    refused: tuple[type[BaseException], ...],
):
    try:
        outcome = attempt()
    except refused as exc:
        first_line = (str(exc).strip().splitlines() or [""])[0]  # a database error's DETAIL repeats the row
        return ProbeResult(probe, entry_point, "refused", f"{type(exc).__name__}: {first_line}")
    return ProbeResult(probe, entry_point, "ACCEPTED", f"accepted, returned {outcome!r:.120}")


def _payload(marker: str, **inputs: Any) -> dict:
    return {"prompt": f"probe {marker}", "repo": "probe/repo", "inputs": {"count": 1, **inputs}}


def queue_probes(dsn: str, marker: str) -> list[ProbeResult]:
    """include.execution.task_queue.TaskQueue.enqueue: what jsonb or the table's constraints cannot hold."""
    import psycopg2

    from include.execution.task_queue import TaskQueue

    db_errors = (psycopg2.IntegrityError, psycopg2.DataError, ValueError)
    cases = {
        "enqueue_nul_character": dict(task_type="idea", payload={"prompt": f"a\x00b {marker}"}),
        "enqueue_nan_number": dict(task_type="idea", payload=_payload(marker, temperature=float("nan"))),
        "enqueue_non_json_value": dict(
            task_type="idea", payload={"marker": marker, "when": datetime.now(UTC)}
        ),
        "enqueue_injected_task_type": dict(task_type=f"{INJECTIONS[0]} {marker}", payload=_payload(marker)),
        "enqueue_injected_ai_model": dict(
            task_type="idea", payload=_payload(marker), ai_model=f"{INJECTIONS[3]} {marker}"
        ),
        "enqueue_unknown_ai_model_format": dict(
            task_type="idea", payload=_payload(marker), ai_model=f"GPT 4 Turbo!! {marker}"
        ),
        "enqueue_negative_max_attempts": dict(task_type="idea", payload=_payload(marker), max_attempts=-1),
        # the retry backoff raised 2 to the attempt: past 1024 it overflowed the batch's statement
        "enqueue_huge_max_attempts": dict(task_type="idea", payload=_payload(marker), max_attempts=10**6),
        "enqueue_path_in_ai_model": dict(
            task_type="idea", payload=_payload(marker), ai_model=f"a/../../admin/stats-{marker}"
        ),
        "enqueue_priority_out_of_range": dict(task_type="idea", payload=_payload(marker), priority=10**9),
    }
    results = []
    with TaskQueue(dsn, owner=f"probe-{marker}") as queue:
        for probe, task in cases.items():
            results.append(
                _refusal(probe, "task_queue.enqueue", lambda task=task: queue.enqueue(**task), db_errors)
            )

        # duplicate idempotency key: the second enqueue gets the first row back, nothing new
        key = f"probe-{marker}-dup"
        first = queue.enqueue("idea", _payload(marker), idempotency_key=key)
        second = queue.enqueue("idea", _payload(marker, count=2), idempotency_key=key)
        rows = queue._run(
            "SELECT count(*), min(payload->'inputs'->>'count') FROM execution_tasks "
            "WHERE idempotency_key = %s",
            (key,),
        )[0]
        results.append(
            ProbeResult(
                "enqueue_duplicate_idempotency_key",
                "task_queue.enqueue",
                "refused" if (second == first and rows == (1, "1")) else "ACCEPTED",
                f"second enqueue returned task {second} (first {first}); rows with the key: {rows[0]}, "
                f"payload kept: "
                f"the first",
            )
        )

        # SQL in every free-text field: legitimate text, stored verbatim, runs nothing
        for i, text in enumerate(INJECTIONS):
            hostile = {
                "prompt": f"{text} {marker}",
                "repo": text,
                "inputs": {
                    "branch": text,
                    "files": [text],
                    "baseline_run": text,
                    "audience": text,
                    "idea_id": 1,
                    "count": 1,
                },
            }
            key = f"{text} {marker} {i}"
            task_id = queue.enqueue("implementation", hostile, idempotency_key=key)
            stored = queue._run(
                "SELECT payload, idempotency_key FROM execution_tasks WHERE id = %s", (task_id,)
            )
            tables = queue._run("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")[0][0]
            users = queue._run(
                "SELECT to_regclass('public.users') IS NOT NULL AND "
                "to_regclass('public.payments') IS NOT NULL"
            )[0][0]
            intact = stored == [(hostile, key)] and users and tables >= 1
            results.append(
                ProbeResult(
                    f"enqueue_sql_in_free_text_{i}",
                    "task_queue.enqueue",
                    "inert" if intact else "ACCEPTED",
                    f"{text!r} in prompt, repo, branch, files, baseline_run, audience and the idempotency "
                    f"key: "
                    + ("stored verbatim, every table intact" if intact else f"stored as {stored!r:.120}"),
                )
            )
    return results


def handler_probes(marker: str) -> list[ProbeResult]:
    """include.execution.task_handlers: payload validation and ai_model resolution, before any
    executor call."""
    from include.execution.task_handlers import PermanentError, resolve_ai_model, validate_payload
    from include.execution.task_queue import ClaimedTask

    good = _payload(marker)
    cases = {
        "payload_is_a_list": ("idea", [good]),
        "payload_is_a_string": ("idea", json.dumps(good)),
        "prompt_is_a_number": ("idea", {**good, "prompt": 42}),
        "inputs_is_a_list": ("idea", {**good, "inputs": [1]}),
        "count_is_a_string": ("idea", {**good, "inputs": {"count": "3"}}),
        "count_is_a_boolean": ("idea", {**good, "inputs": {"count": True}}),
        "files_is_a_string": (
            "implementation",
            {**good, "inputs": {"branch": "b", "files": "a.py"}},
        ),
        "temperature_is_text": ("idea", {**good, "inputs": {"count": 1, "temperature": "hot"}}),
        "missing_repo": ("idea", {k: v for k, v in good.items() if k != "repo"}),
        "oversized_prompt": ("idea", {**good, "prompt": "x" * OVERSIZED_CHARS}),
        "injected_task_type": (INJECTIONS[0], good),
    }
    results = [
        _refusal(
            f"handler_{probe}",
            "task_handlers.validate_payload",
            lambda t=task_type, p=payload: validate_payload(t, p),
            (PermanentError,),
        )
        for probe, (task_type, payload) in cases.items()
    ]
    for i, model in enumerate((INJECTIONS[0], "GPT 4 Turbo!!", "x" * 200, *PATH_MODELS)):
        task = ClaimedTask(0, "idea", good, model, 1, 5, "", 0.0)
        results.append(
            _refusal(
                f"handler_unknown_ai_model_{i}",
                "task_handlers.resolve_ai_model",
                lambda task=task: resolve_ai_model(task),
                (PermanentError,),
            )
        )
    return results


def offer_probes(dsn: str, marker: str) -> list[ProbeResult]:
    """include.offers.jobs.sync_payments (the ROI input): impossible Stripe charges go to
    offer_quarantine with their reason; a charge that is not final is held (neither stored nor
    quarantined, the cursor before it); the same charge twice is one row."""
    import psycopg2

    from include.offers.jobs import CHARGES_CURSOR, sync_payments

    now = datetime.now(UTC)
    created = int((now - timedelta(hours=1)).timestamp())
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO users (email, segment, signup_channel, country) VALUES (%s, 'new', 'web', 'US') "
            "RETURNING id",
            (f"probe-{marker}@example.invalid",),
        )
        user = str(cur.fetchone()[0])

        def charge(name: str, **fields: Any) -> dict:
            base = {
                "id": f"ch_probe_{marker}_{name}",
                "amount": 1000,
                "created": created,
                "status": "succeeded",
                "currency": "usd",
                "metadata": {"user_id": user},
            }
            return {**base, **fields}

        cases = {
            "charge_negative_amount": charge("negative", amount=-500),
            "charge_amount_is_a_string": charge("string", amount="1000"),
            "charge_user_is_injection": charge("user", metadata={"user_id": INJECTIONS[1]}),
            "charge_coupon_is_injection": charge(
                "coupon", metadata={"user_id": user, "coupon": INJECTIONS[0]}
            ),
            "charge_future_timestamp": charge("future", created=int((now + timedelta(days=2)).timestamp())),
            "charge_refund_over_amount": charge("refund", amount_refunded=1500),
        }
        results = []
        for probe, bad in cases.items():
            counts = sync_payments(cur, [bad, bad], now=now)  # sent twice: a retried sync
            cur.execute(
                "SELECT count(*), min(reason) FROM offer_quarantine WHERE source_key = %s",
                (bad["id"],),
            )
            kept, reason = cur.fetchone()
            cur.execute("SELECT count(*) FROM payments WHERE stripe_payment_id = %s", (bad["id"],))
            paid = cur.fetchone()[0]
            held = kept == 1 and paid == 0 and counts["quarantined"] == 2
            results.append(
                ProbeResult(
                    probe,
                    "offers.jobs.sync_payments",
                    "quarantined" if held else "ACCEPTED",
                    f"{reason} (quarantine rows {kept}, payments rows {paid})",
                )
            )

        pending = charge("pending", status="pending")
        counts = sync_payments(cur, [pending, pending], now=now)
        cur.execute(
            "SELECT (SELECT count(*) FROM offer_quarantine WHERE source_key = %(id)s),"
            " (SELECT count(*) FROM payments WHERE stripe_payment_id = %(id)s),"
            " (SELECT position FROM sync_cursors WHERE name = %(cursor)s)",
            {"id": pending["id"], "cursor": CHARGES_CURSOR},
        )
        kept, paid, position = cur.fetchone()
        held = (kept, paid, counts["pending"]) == (0, 0, 2) and position < created
        results.append(
            ProbeResult(
                "charge_status_not_final",
                "offers.jobs.sync_payments",
                "held" if held else "ACCEPTED",
                f"pending {counts['pending']}, quarantine rows {kept}, payments rows {paid}, cursor"
                f" {position} ({'before' if position < created else 'not before'} the charge)",
            )
        )

        good = charge("duplicate")
        sync_payments(cur, [good, good], now=now)
        sync_payments(cur, [good], now=now)
        cur.execute("SELECT count(*) FROM payments WHERE stripe_payment_id = %s", (good["id"],))
        rows = cur.fetchone()[0]
        results.append(
            ProbeResult(
                "charge_duplicate_id",
                "offers.jobs.sync_payments",
                "refused" if rows == 1 else "ACCEPTED",
                f"the same charge id synced 3 times: {rows} payments row(s)",
            )
        )
    conn.close()
    return results


def training_probes(marker: str) -> list[ProbeResult]:
    """include.offers.model.quarantine_reasons: impossible training rows are named, not trained on."""
    import pandas as pd

    from include.offers.model import quarantine_reasons

    now = datetime.now(UTC)
    rows = pd.DataFrame(
        {
            "occurred_at": pd.to_datetime(
                [now - timedelta(days=1)] * 4 + [now + timedelta(days=1)], utc=True
            ),
            "recency_days": [1.0, -3.0, 1.0, 1.0, 1.0],
            "frequency_30d": [1, 1, 1, 1, 1],
            "spend_cents": [-500, 0, 0, 0, 0],
            "discount_pct": [10.0, 10.0, 150.0, 10.0, 10.0],
            "segment": ["vip"] * 5,
            "channel": ["web"] * 5,
            "product": [
                "pro_monthly",
                "pro_monthly",
                "pro_monthly",
                f"{INJECTIONS[0]} {marker}",
                "pro_monthly",
            ],
        }
    )
    names = [
        "negative_amount",
        "negative_recency",
        "discount_over_100",
        "injected_product",
        "future_timestamp",
    ]
    return [
        ProbeResult(
            f"training_{name}",
            "offers.model.quarantine_reasons",
            "quarantined" if reason else "ACCEPTED",
            reason or "no reason given",
        )
        for name, reason in zip(names, quarantine_reasons(rows, now).tolist(), strict=True)
    ]


def executor_probes(executor: ExecutorClient | None, marker: str) -> list[ProbeResult]:
    """include.execution.task_handlers.execute_on_executor against the configured task executor, which is
    the authority on which models exist: a well-formed ai_model it does not serve must be refused
    naming the model, before anything runs. `executor` None (no `task_executor` connection) or an
    unreachable executor is UNCHECKED: nothing shows the model would be refused."""
    from include.execution.task_handlers import (
        PermanentError,
        RetryableError,
        Services,
        execute_on_executor,
    )
    from include.execution.task_queue import ClaimedTask

    probe, entry_point = "executor_unknown_ai_model", "task_handlers.execute_on_executor"
    if executor is None:
        return [
            ProbeResult(
                probe,
                entry_point,
                "UNCHECKED",
                "no task executor is configured (connection "
                "task_executor): nothing can say whether an unknown ai_model is refused",
            )
        ]
    model = f"gpt-9-nonexistent-{marker}"
    task = ClaimedTask(0, "idea", _payload(marker), model, 1, 5, "", 0.0)
    try:
        outcome = execute_on_executor(task, Services(executor=executor))
    except PermanentError as exc:
        reason = f"PermanentError: {exc}"
        if f"unknown ai_model {model!r}" in str(exc):
            return [ProbeResult(probe, entry_point, "refused", reason)]
        return [
            ProbeResult(probe, entry_point, "UNCHECKED", f"refused, but not as an unknown model: {reason}")
        ]
    except RetryableError as exc:
        return [ProbeResult(probe, entry_point, "UNCHECKED", f"RetryableError: {exc}")]
    return [
        ProbeResult(
            probe,
            entry_point,
            "ACCEPTED",
            f"ai_model {model!r} accepted, returned {outcome!r:.120}",
        )
    ]


@contextmanager
def hostile_executor(trickle_seconds_per_byte: float, oversized_bytes: int) -> Iterator[str]:
    """A hostile AI executor on loopback, for as long as the block runs (its URL yielded). Every
    model exists; `POST /v1/execute` answers according to the task's input `fault`: `oversized`
    (a 200 announcing `oversized_bytes`, then sending them), `oversized_unsized` (the same
    without a Content-Length: the body ends when the connection does), `trickle` (a small
    answer, one byte every `trickle_seconds_per_byte`)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Hostile(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = b'{"version": "1"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            fault = json.loads(self.rfile.read(length) or b"{}").get("input", {}).get("fault")
            self.send_response(200)
            if fault == "trickle":
                body = json.dumps({"output": {"summary": "x" * 200}, "model_version": "1"}).encode()
                self.send_header("Content-Length", str(len(body)))
            elif fault == "oversized":
                body = b" " * oversized_bytes
                self.send_header("Content-Length", str(oversized_bytes))
            else:
                body = b" " * oversized_bytes
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            try:
                if fault == "trickle":
                    for i in range(len(body)):
                        self.wfile.write(body[i : i + 1])
                        time.sleep(trickle_seconds_per_byte)
                else:
                    for start in range(0, len(body), 1 << 20):
                        self.wfile.write(body[start : start + (1 << 20)])
            except OSError:  # the client hung up, as it should
                self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def hostile_executor_probes(executor: ExecutorClient | None, marker: str) -> list[ProbeResult]:
    """The executor client with the configured executor's limits (its largest answer, and its
    deadline, at most PROBE_DEADLINE_SECONDS), against `hostile_executor`: an answer over the
    limit must be refused without being read whole (announced or not), and one trickled a byte at
    a time must be cut at the deadline, each within the deadline and a little. Without a
    configured executor: UNCHECKED."""
    from include.execution.executor_client import ExecutorClient
    from include.execution.task_handlers import PermanentError, RetryableError

    entry_point = "executor_client.ExecutorClient"
    names = ("oversized", "oversized_unsized", "trickle")
    if executor is None:
        return [
            ProbeResult(f"executor_{n}_answer", entry_point, "UNCHECKED", "no task executor is configured")
            for n in names
        ]
    # the connection's deadline, at most PROBE_DEADLINE_SECONDS: the trickle probe lasts that long
    deadline, cap = min(executor.timeout_seconds, PROBE_DEADLINE_SECONDS), executor.max_response_bytes
    trickle = min(0.2, deadline / 20)  # 20 bytes or more before the deadline: each read is quick
    results = []
    with hostile_executor(trickle, cap + 1) as url:
        client = ExecutorClient(url, timeout_seconds=deadline, retries=0, max_response_bytes=cap)
        for name in names:
            started = time.monotonic()
            refused = (PermanentError,) if name.startswith("oversized") else (RetryableError,)
            try:
                result = _refusal(
                    f"executor_{name}_answer",
                    entry_point,
                    lambda n=name: client.execute("idea", "probe", {"fault": n, "marker": marker}),
                    refused,
                )
            except Exception as exc:  # read whole, then refused as something else
                reason = f"not refused for what it is: {type(exc).__name__}: {exc}"
                result = ProbeResult(f"executor_{name}_answer", entry_point, "ACCEPTED", reason[:300])
            took = time.monotonic() - started
            if result.held and took > deadline + 5:
                result = ProbeResult(
                    result.probe, entry_point, "ACCEPTED", f"refused only after {took:.1f} s: {result.reason}"
                )
            results.append(result)
        client.close()
    return results


def dag_params(dags_folder: str | Path) -> tuple[dict[str, Mapping[str, Any]], dict[str, str]]:
    """Every DAG's params (airflow Param objects by name) in `dags_folder`, parsed the way the
    dag-processor parses it (DagBag), and the files that failed to import, with their error.
    Called in the probe step, never at parse time."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dags_folder), load_op_links=False)
    params = {dag_id: dict(dag.params.items()) for dag_id, dag in sorted(bag.dags.items())}
    return params, {str(path): str(error) for path, error in bag.import_errors.items()}


def param_probes(
    dags: Mapping[str, Mapping[str, Any]],
    unparsed: Mapping[str, str] | None = None,
) -> list[ProbeResult]:
    """Every param of every DAG gets each of HOSTILE_PARAM_VALUES, which its Param schema must
    refuse (a trigger with it never starts a run). A param that takes one (a free string without
    `pattern` or `enum`, a number without a `minimum`) is ACCEPTED and fails the gate. A DAG file
    that does not import cannot be probed: UNCHECKED."""
    results = [
        ProbeResult(
            f"param_file_{Path(path).name}",
            "airflow DagBag",
            "UNCHECKED",
            "the DAG file does not import, its params are not probed: " + _last_line(error),
        )
        for path, error in sorted((unparsed or {}).items())
    ]
    for dag_id, params in dags.items():
        for name, param in params.items():
            for i, value in enumerate(HOSTILE_PARAM_VALUES):
                results.append(_param_probe(f"param_{dag_id}.{name}_{i}", param, value))
    return results


def _last_line(error: str) -> str:
    """The exception line of a traceback."""
    return (error.strip().splitlines() or [""])[-1][:200]


def _param_probe(probe: str, param: Any, value: Any) -> ProbeResult:
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    def resolve() -> Any:
        return copy.deepcopy(param).resolve(value)

    return _refusal(probe, "airflow Param schema", resolve, (ParamValidationError,))


def applicable(dsn: str) -> dict[str, bool]:
    """Which entry points the schema has yet: a probe of a capability not migrated in is skipped
    (and said so), as a gate for it is added when it lands."""
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT EXISTS (SELECT FROM information_schema.columns WHERE table_schema = 'public' "
            "AND table_name = 'execution_tasks' AND column_name = 'ai_model'), "
            "to_regclass('public.offer_quarantine') IS NOT NULL"
        )
        queue, offers = cur.fetchone()
    conn.close()
    return {"queue": queue, "offers": offers}


def run_all(sandbox_dsn: str, marker: str, executor: ExecutorClient | None) -> list[ProbeResult]:
    """Every probe group that sends input through an entry point (the params are probed apart:
    `param_probes`). `executor`: a client of the `task_executor` connection, None when there is none."""
    present = applicable(sandbox_dsn)
    results = queue_probes(sandbox_dsn, marker) if present["queue"] else []
    results += handler_probes(marker)
    results += executor_probes(executor, marker)
    results += hostile_executor_probes(executor, marker)
    results += offer_probes(sandbox_dsn, marker) if present["offers"] else []
    return results + training_probes(marker)


def report(results: list[ProbeResult]) -> str:
    return "\n".join(str(r) for r in results)

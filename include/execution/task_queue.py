"""The execution-task queue over `execution_tasks`: leased claims, token-checked completion, retries.

Every state change is one set-based statement:

- ``claim`` takes up to N ready rows (``status='queued' AND available_at <= now()``) ordered by
  priority, then age, with ``FOR UPDATE SKIP LOCKED``, so concurrent workers never wait on or
  take each other's rows; each claim is a lease (owner, a fresh token, an expiry) on its rows,
  and each row's attempt is counted.
- ``heartbeat`` extends the leases a worker still holds.
- ``complete`` and ``fail`` change only rows whose lease token is the caller's: once a lease has
  expired and the reaper has requeued the row, the old worker's late result is refused.
- ``fail`` requeues a retryable failure with exponential backoff until ``max_attempts``, then
  marks it ``dead`` with the last error; a permanent failure goes to ``failed`` at once.
- ``reap`` returns rows whose lease expired to the queue (or to ``dead`` when that attempt was
  their last), so a killed worker loses nothing.
- ``settle_and_claim`` does a worker's whole step in ONE statement (one round trip, one commit):
  it completes and fails the batch just run (token-checked) and claims the next one. ``claim``,
  ``complete`` and ``fail`` are that statement with the other parts empty.

The connection runs in autocommit: each statement is its own transaction, so a step costs no
``BEGIN``/``COMMIT`` round trips (:meth:`TaskQueue.transaction` groups calls when wanted). A
statement rolled back to end a deadlock is sent again (see DEADLOCK_RETRIES). The step is a
prepared statement with a generic plan, parsed and planned once per connection: planning it
each time cost about a fifth of the database's CPU per task. So the connection must be a
session of its own (direct, or a pooler in session mode), like any SQL ``PREPARE``.

The queue reads and writes ``execution_tasks.ai_model`` (revision 0002): against an older schema,
opening a queue (which prepares the step) raises :class:`SchemaBehindError` naming the column.
From revision 0010 on, the step's claim also checks that no open FSAR report blocks execution
(``unless_blocked``; ``check_block=False`` leaves it out).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

DEFAULT_LEASE_SECONDS = 300.0
DEFAULT_BACKOFF_BASE_SECONDS = 5.0
DEFAULT_BACKOFF_CAP_SECONDS = 600.0
# The retry backoff doubles per attempt up to its cap; the exponent stops at 60 (2**1024 overflows
# float8, and one row past attempt 1024 failed the statement that settles a whole batch).
MAX_BACKOFF_SECONDS = 30 * 24 * 3600.0
MAX_ATTEMPTS = 100  # per task; revision 0009's CHECK holds the table to it too
# The channel on which enqueueing announces new queued tasks, the payload being the task type
# (the library's enqueue, and revision 0011's trigger for every other writer).
NOTIFY_CHANNEL = "execution_tasks_queued"
# A claim and another worker's settle can wait on each other. SKIP LOCKED skips the rows locked
# now, but a claim whose snapshot still sees a row as queued after another worker claimed it
# locks the row's newest version to recheck it, and keeps that lock until its statement ends; and
# where it follows a row's update chain it waits, SKIP LOCKED or not. PostgreSQL ends such a cycle
# after deadlock_timeout by rolling one statement back; that statement is sent again.
DEADLOCK_RETRIES = 3

logger = logging.getLogger(__name__)


SCHEMA_BEHIND = (
    "execution_tasks.ai_model does not exist in the app database: the schema is behind the code; "
    "apply revision 0002 (the db_migrate DAG) before running task batches"
)


class SchemaBehindError(RuntimeError):
    """The app database lacks a column the queue needs: a migration is pending."""


@dataclass(frozen=True)
class ClaimedTask:
    """One leased row: what a handler gets, and what completing it needs (id and token)."""

    id: int
    task_type: str
    payload: Any
    ai_model: str | None
    attempts: int
    max_attempts: int
    lease_token: str
    queue_wait_ms: float  # from becoming available to this claim
    payload_text: str | None = None  # the payload as jsonb prints it: equal payloads, equal texts


@dataclass(frozen=True)
class Completion:
    task: ClaimedTask
    result: Any
    duration_ms: int
    result_text: str | None = None  # `result` as JSON text, when the caller has made it already


@dataclass(frozen=True)
class Failure:
    task: ClaimedTask
    error: str
    retryable: bool
    duration_ms: int = 0


@dataclass(frozen=True)
class FailOutcome:
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)  # permanent
    dead: list[int] = field(default_factory=list)  # attempts exhausted
    refused: list[int] = field(default_factory=list)  # lease no longer ours


# One worker step: settle the batch just run (token-checked) and claim the next, one statement.
# Rows out: ('s', id) completed; ('f', id, new status) failed; ('c', id, type, payload, ...) claimed.
# A row is settled by id and lease token alone: a token exists only while its row runs (each claim
# sets a fresh one; settling and reaping clear it). A test of status there would let the planner
# read the whole lease index (every running row) at every step instead of the rows settled.
# One plan serves every step (see PREPARE_STEP), so its shape must not depend on the values: the
# claim takes its rows by `id = ANY(ARRAY(...))`, an index lookup however many rows the generic
# plan expects (it guesses a tenth of the table for LIMIT $n: a join would read the whole table).
SETTLE_AND_CLAIM = """
WITH succeeded AS (
    UPDATE execution_tasks t
       SET status = 'succeeded', result = c.result::jsonb, error = NULL, duration_ms = c.ms,
           finished_at = now(), updated_at = now(), lease_owner = NULL, lease_token = NULL, lease_expires_at
               = NULL
      FROM unnest(%(c_ids)s::bigint[], %(c_tokens)s::uuid[], %(c_results)s::text[], %(c_ms)s::int[])
           AS c(id, token, result, ms)
     WHERE t.id = c.id AND t.lease_token = c.token
    RETURNING t.id
), failed AS (
    UPDATE execution_tasks t
       SET status = CASE WHEN NOT f.retryable THEN 'failed'
                         WHEN t.attempts >= t.max_attempts THEN 'dead' ELSE 'queued' END,
           available_at = CASE WHEN f.retryable AND t.attempts < t.max_attempts
               THEN now() + make_interval(secs => least(%(cap)s::float8, %(base)s::float8 * power(2,
                   least(t.attempts - 1, 60))))
               ELSE t.available_at END,
           error = CASE WHEN f.retryable AND t.attempts >= t.max_attempts
               THEN format('gave up after %%s attempts: %%s', t.attempts, f.error) ELSE f.error END,
           duration_ms = f.ms,
           finished_at = CASE WHEN f.retryable AND t.attempts < t.max_attempts THEN NULL ELSE now() END,
           updated_at = now(), lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
      FROM unnest(%(f_ids)s::bigint[], %(f_tokens)s::uuid[], %(f_errors)s::text[], %(f_retryable)s::bool[],
                  %(f_ms)s::int[]) AS f(id, token, error, retryable, ms)
     WHERE t.id = f.id AND t.lease_token = f.token
    RETURNING t.id, t.status
), ready AS (
    SELECT id FROM execution_tasks
    WHERE status = 'queued' AND available_at <= now()
      AND (%(types)s::text[] IS NULL OR task_type = ANY(%(types)s::text[]))
    ORDER BY priority DESC, available_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE execution_tasks t
       SET status = 'running', lease_owner = %(owner)s, lease_token = %(token)s::uuid,
           lease_expires_at = now() + make_interval(secs => %(lease)s),
           attempts = t.attempts + 1, started_at = now(), updated_at = now()
     WHERE t.id = ANY (ARRAY(SELECT id FROM ready))
    RETURNING t.id, t.task_type, t.payload, t.ai_model, t.attempts, t.max_attempts,
              extract(epoch FROM now() - t.available_at) * 1000 AS wait_ms
)
SELECT 'c', id, task_type, payload::text, ai_model, attempts, max_attempts, wait_ms FROM claimed
UNION ALL SELECT 's', id, NULL, NULL, NULL, NULL, NULL, NULL FROM succeeded
UNION ALL SELECT 'f', id, status, NULL, NULL, NULL, NULL, NULL FROM failed
"""


# Enqueueing, with its notification (NOTIFY_CHANNEL) in the same statement: one per task type,
# sent at commit. Revision 0011's trigger on the table sends the same ones for every writer;
# PostgreSQL delivers identical notifications of one transaction once, so listeners are woken
# once either way, and before that revision by this statement alone.
ENQUEUE = """
WITH inserted AS (
    INSERT INTO execution_tasks
        (task_type, payload, ai_model, priority, max_attempts, idempotency_key, available_at)
    SELECT v.task_type, v.payload::jsonb, v.ai_model, v.priority::smallint, v.max_attempts::int,
           v.idempotency_key, coalesce(v.available_at::timestamptz, now())
    FROM (VALUES %s) AS v(task_type, payload, ai_model, priority, max_attempts, idempotency_key,
                          available_at)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, idempotency_key, task_type
), notified AS (
    SELECT count(pg_notify('execution_tasks_queued', task_type))  -- NOTIFY_CHANNEL
      FROM (SELECT DISTINCT task_type FROM inserted) t
)
SELECT id, idempotency_key FROM inserted, notified ORDER BY id  -- the order of the rows given
"""

# Per task type, the queued tasks ready now and the seconds until the next one not yet ready
# is due (NULL: none): what the event trigger and an idle drain wait for.
QUEUED_BY_TYPE = """
SELECT task_type, count(*) FILTER (WHERE available_at <= now()),
       extract(epoch FROM min(available_at) FILTER (WHERE available_at > now()) - now())::float8
FROM execution_tasks
WHERE status = 'queued' AND (%(types)s::text[] IS NULL OR task_type = ANY(%(types)s::text[]))
GROUP BY task_type ORDER BY task_type
"""


# What a worker session runs as (revision 0009's table, read by the audit's worker-role gate).
RECORD_SESSION = """
INSERT INTO worker_sessions (db_role, login_role, last_owner) VALUES (current_user, session_user, %s)
ON CONFLICT (db_role, login_role) DO UPDATE SET last_owner = EXCLUDED.last_owner, last_seen = now()
RETURNING db_role
"""


def prepared(name: str, statement: str) -> tuple[str, str]:
    """(PREPARE, EXECUTE) for a statement written with %(key)s parameters: the PREPARE numbers
    them in order of first use (each one's type comes from its cast), the EXECUTE passes them."""
    keys: list[str] = []

    def number(match: re.Match) -> str:
        if match[1] not in keys:
            keys.append(match[1])
        return f"${keys.index(match[1]) + 1}"

    body = re.sub(r"%\((\w+)\)s", number, statement).replace("%%", "%")
    return f"PREPARE {name} AS {body}", f"EXECUTE {name}({', '.join(f'%({key})s' for key in keys)})"


# Sent once per connection. The generic plan is forced: left to choose, PostgreSQL plans each
# step anew, as a plan for the values at hand looks cheaper than the generic one's guesses.
PREPARE_STEP, EXECUTE_STEP = prepared("settle_and_claim", SETTLE_AND_CLAIM)
PREPARE_STEP = "SET plan_cache_mode = force_generic_plan; " + PREPARE_STEP


def unless_blocked(step: str) -> str:
    """The step that claims nothing while an open FSAR report blocks execution, and says so: a
    row ('b', NULL, report id, ...). The block check is part of the claim's own statement (a probe
    of the partial index over the open blocking reports, usually empty), so it costs no round
    trip and sees the claim's snapshot."""
    from include.audit.fsar_store import BLOCKING_REPORT

    blocked = f"WITH blocked AS ({BLOCKING_REPORT}), succeeded AS ("  # noqa: S608 (module constants)
    step = step.replace("WITH succeeded AS (", blocked, 1)
    step = step.replace(
        "AND (%(types)s::text[] IS NULL OR task_type = ANY(%(types)s::text[]))",
        "AND (%(types)s::text[] IS NULL OR task_type = ANY(%(types)s::text[]))\n"
        "      AND NOT EXISTS (SELECT FROM blocked)",
        1,
    )
    says_so = "\nUNION ALL SELECT 'b', NULL, id, NULL, NULL, NULL, NULL, NULL FROM blocked\n"
    return step.rstrip() + says_so


SETTLE_AND_CLAIM_UNLESS_BLOCKED = unless_blocked(SETTLE_AND_CLAIM)
PREPARE_STEP_UNLESS_BLOCKED = (
    "SET plan_cache_mode = force_generic_plan; "
    + prepared("settle_and_claim", SETTLE_AND_CLAIM_UNLESS_BLOCKED)[0]
)


_JSONB_ENCODER = json.JSONEncoder(allow_nan=False)  # one encoder for every call: dumps() builds one each time


def to_jsonb_text(value: Any, what: str) -> str:
    """`value` as JSON text that PostgreSQL's jsonb accepts, or ValueError naming `what`."""
    try:
        text = _JSONB_ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON: {exc}") from None
    if "\\u0000" in text:  # jsonb refuses NUL characters anywhere
        raise ValueError(f"{what} contains a NUL character (\\u0000), which jsonb cannot store")
    return text


def array_literal(values: Iterable[int | str]) -> str:
    """A PostgreSQL array literal of ints or UUIDs (no element needs quoting or escaping).
    psycopg2 adapts a list element by element: for a step's ids, tokens and durations that cost
    the worker about 2 us of CPU per task in the queue benchmark (of 17)."""
    return "{" + ",".join(map(str, values)) + "}"


def default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _schema_guard(exc: Exception) -> None:
    import psycopg2.errors

    if isinstance(exc, psycopg2.errors.UndefinedColumn | psycopg2.errors.UndefinedTable) and (
        "ai_model" in str(exc) or "execution_tasks" in str(exc)
    ):
        raise SchemaBehindError(SCHEMA_BEHIND) from exc


class TaskQueue:
    """A worker's handle on the queue: one psycopg2 connection, one owner name.

    :param dsn: libpq DSN of the app database.
    :param owner: the lease owner recorded on claimed rows (host:pid by default).
    :param lease_seconds: how long a claim (or heartbeat) holds a row.
    :param backoff_base_seconds: the first retry's delay; each further attempt doubles it,
        up to ``backoff_cap_seconds``.
    """

    def __init__(
        self,
        dsn: str,
        *,
        owner: str | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        backoff_base_seconds: float = DEFAULT_BACKOFF_BASE_SECONDS,
        backoff_cap_seconds: float = DEFAULT_BACKOFF_CAP_SECONDS,
        check_block: bool = True,
    ) -> None:
        import psycopg2

        from include.bounds import bounded

        self.owner = owner or default_owner()
        self.lease_seconds = bounded("lease_seconds", lease_seconds, low=0, low_open=True, high=86_400)
        self.backoff_cap_seconds = bounded(
            "backoff_cap_seconds", backoff_cap_seconds, low=0, high=MAX_BACKOFF_SECONDS
        )
        self.backoff_base_seconds = bounded(
            "backoff_base_seconds", backoff_base_seconds, low=0, high=self.backoff_cap_seconds
        )
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        self.statements = 0  # statements sent (each one round trip; one commit outside transaction())
        self._in_transaction = False
        self.blocked_by: str | None = None  # the FSAR report the last claim found blocking
        try:
            # with the block check where revision 0010 made its table (before it, nothing blocks)
            self.checks_block = (
                check_block and self._run("SELECT to_regclass('public.fsar_reports') IS NOT NULL")[0][0]
            )
            # against a schema without ai_model: SchemaBehindError
            self._run(PREPARE_STEP_UNLESS_BLOCKED if self.checks_block else PREPARE_STEP)
        except Exception:
            self.close()
            raise

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> TaskQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[TaskQueue]:
        """Make the calls inside one transaction: one commit, so one WAL flush, for all of them
        (a drain settles a batch and claims the next in one)."""
        self._in_transaction = True
        self.conn.autocommit = False
        try:
            with self.conn:
                yield self
        finally:
            self.conn.autocommit = True
            self._in_transaction = False

    def _run(
        self,
        statement: str,
        params: Any = None,
        *,
        many: Sequence[tuple] | None = None,
        template: str | None = None,
    ) -> list[tuple]:
        """One statement in its own transaction (or the caller's); rows returned (if any)."""
        import psycopg2.errors
        from psycopg2.extras import execute_values

        retries = 0
        while True:
            self.statements += 1
            try:
                with (
                    self.conn.cursor() as cur
                ):  # not `with conn`: psycopg2 2.9 sends BEGIN then, autocommit or not
                    if many is not None:
                        return execute_values(
                            cur,
                            statement,
                            many,
                            template=template,
                            page_size=len(many) or 1,
                            fetch=True,
                        )
                    cur.execute(statement, params)
                    return cur.fetchall() if cur.description else []
            except psycopg2.errors.DeadlockDetected:
                # the statement rolled back whole (every queue statement is one), so it can be sent
                # again; inside the caller's transaction the whole transaction is lost: theirs to retry
                if self._in_transaction or retries == DEADLOCK_RETRIES:
                    raise
                retries += 1
                logger.warning(
                    "the queue statement was chosen to end a deadlock and rolled back; sending it again"
                )
            except Exception as exc:
                _schema_guard(exc)
                raise

    def record_session(self) -> str | None:
        """Record in `worker_sessions` the role this session runs as (``current_user``) and its
        login, for the audit's worker-role gate; returns the role. None, with nothing recorded,
        before revision 0009 made the table, or (logged) when the role may not write it."""
        import psycopg2.errors

        try:
            return self._run(RECORD_SESSION, (self.owner[:200],))[0][0]
        except psycopg2.errors.UndefinedTable:
            return None
        except psycopg2.errors.InsufficientPrivilege as exc:
            logger.warning("this worker session could not record its role: %s", str(exc).strip())
            return None

    # -- producing ---------------------------------------------------------------------------

    def enqueue(
        self,
        task_type: str,
        payload: Any,
        *,
        ai_model: str | None = None,
        priority: int = 0,
        max_attempts: int = 5,
        idempotency_key: str | None = None,
        available_at: datetime | None = None,
    ) -> int:
        """The new row's id; with an idempotency key already used, the existing row's id."""
        return self.enqueue_many(
            [
                dict(
                    task_type=task_type,
                    payload=payload,
                    ai_model=ai_model,
                    priority=priority,
                    max_attempts=max_attempts,
                    idempotency_key=idempotency_key,
                    available_at=available_at,
                )
            ]
        )[0]

    def enqueue_many(self, tasks: Sequence[dict]) -> list[int]:
        """Ids in the order of `tasks`; a key seen before (in the table or earlier in the list)
        returns the id of the row that holds it, and nothing is inserted for it. A payload that
        jsonb cannot hold, or a `max_attempts` outside 1 to MAX_ATTEMPTS, raises ValueError
        naming the task's index, before anything is written."""
        for i, t in enumerate(tasks):
            attempts = t.get("max_attempts", 5)
            if (
                isinstance(attempts, bool)
                or not isinstance(attempts, int)
                or not 1 <= attempts <= MAX_ATTEMPTS
            ):
                raise ValueError(
                    f"task {i}'s max_attempts must be an integer from 1 to {MAX_ATTEMPTS}, "
                    f"got {attempts!r:.40}"
                )
        rows = [
            (
                t["task_type"],
                to_jsonb_text(t.get("payload", {}), f"task {i}'s payload"),
                t.get("ai_model"),
                t.get("priority", 0),
                t.get("max_attempts", 5),
                t.get("idempotency_key"),
                t.get("available_at"),
            )
            for i, t in enumerate(tasks)
        ]
        if not rows:
            return []
        inserted = self._run(ENQUEUE, many=rows)
        ids_by_key = {key: i for i, key in inserted if key is not None}
        missing = [
            t.get("idempotency_key")
            for t in tasks
            if t.get("idempotency_key") and t["idempotency_key"] not in ids_by_key
        ]
        if missing:
            found = self._run(
                "SELECT idempotency_key, id FROM execution_tasks WHERE idempotency_key = ANY(%s)",
                (missing,),
            )
            ids_by_key.update(dict(found))
        unkeyed = iter([i for i, key in inserted if key is None])
        return [
            ids_by_key[t["idempotency_key"]] if t.get("idempotency_key") else next(unkeyed) for t in tasks
        ]

    # -- consuming ---------------------------------------------------------------------------

    def claim(self, limit: int, task_types: Sequence[str] | None = None) -> list[ClaimedTask]:
        """Lease up to `limit` ready rows, highest priority first, then oldest."""
        return self.settle_and_claim((), (), limit, task_types)[2]

    def heartbeat(self, tasks: Iterable[ClaimedTask]) -> list[int]:
        """Extend the leases still ours; the ids returned are those (the rest were lost)."""
        pairs = [(t.id, t.lease_token, self.lease_seconds) for t in tasks]
        if not pairs:
            return []
        rows = self._run(
            """
            UPDATE execution_tasks t
               SET lease_expires_at = now() + make_interval(secs => v.lease::float8), updated_at = now()
              FROM (VALUES %s) AS v(id, token, lease)
             WHERE t.id = v.id AND t.lease_token = v.token::uuid
            RETURNING t.id
            """,
            many=pairs,
        )
        return sorted(r[0] for r in rows)

    def complete(self, completions: Sequence[Completion]) -> list[int]:
        """Mark succeeded the rows whose lease is still the caller's; their ids are returned."""
        return self.settle_and_claim(completions, (), 0)[0]

    def fail(self, failures: Sequence[Failure]) -> FailOutcome:
        """Requeue retryable failures with backoff (or mark them dead after their last attempt);
        mark permanent ones failed. Rows whose lease is no longer the caller's are refused."""
        return self.settle_and_claim((), failures, 0)[1]

    def settle_and_claim(
        self,
        completions: Sequence[Completion],
        failures: Sequence[Failure],
        limit: int,
        task_types: Sequence[str] | None = None,
    ) -> tuple[list[int], FailOutcome, list[ClaimedTask]]:
        """Complete `completions`, fail `failures` and lease up to `limit` ready rows, in one
        statement: (ids completed, what became of the failures, the new claims sorted by id).

        All parts see one snapshot: the rows settled here are still `running` to the claim, so a
        failure requeued now is claimed by a later step (after its backoff), never by this one.
        While an open FSAR report blocks execution (`checks_block`), it claims nothing and
        `blocked_by` names the report; settling goes on."""
        results = [
            to_jsonb_text(c.result, f"task {c.task.id}'s result") if c.result_text is None else c.result_text
            for c in completions
        ]
        params = {
            "c_ids": array_literal(c.task.id for c in completions),
            "c_tokens": array_literal(c.task.lease_token for c in completions),
            "c_results": results,
            "c_ms": array_literal(int(c.duration_ms) for c in completions),
            "f_ids": array_literal(f.task.id for f in failures),
            "f_tokens": array_literal(f.task.lease_token for f in failures),
            "f_errors": [f.error[:4000].replace("\x00", "\\x00") for f in failures],
            "f_retryable": [f.retryable for f in failures],
            "f_ms": array_literal(int(f.duration_ms) for f in failures),
            "base": self.backoff_base_seconds,
            "cap": self.backoff_cap_seconds,
            "types": list(task_types) if task_types else None,
            "limit": max(int(limit), 0),
            "owner": self.owner,
            "lease": self.lease_seconds,
        }
        token = params["token"] = str(uuid.uuid4())  # this claim's lease: one token for all its rows
        self.blocked_by = None  # what this step's claim finds
        completed, outcome, claimed = [], FailOutcome(), []
        by_status = {"queued": outcome.requeued, "failed": outcome.failed, "dead": outcome.dead}
        for kind, task_id, *rest in self._run(EXECUTE_STEP, params):
            if kind == "c":
                task_type, payload, ai_model, attempts, max_attempts, wait_ms = rest
                claimed.append(
                    ClaimedTask(
                        task_id,
                        task_type,
                        json.loads(payload),
                        ai_model,
                        attempts,
                        max_attempts,
                        token,
                        max(float(wait_ms), 0.0),
                        payload,
                    )
                )
            elif kind == "s":
                completed.append(task_id)
            elif kind == "b":  # an open FSAR report blocks execution: nothing was claimed
                self.blocked_by = rest[0]
            else:
                by_status[rest[0]].append(task_id)
        failed = {*outcome.requeued, *outcome.failed, *outcome.dead}
        outcome.refused.extend(f.task.id for f in failures if f.task.id not in failed)
        for ids in (completed, outcome.requeued, outcome.failed, outcome.dead):
            ids.sort()
        claimed.sort(key=lambda t: t.id)
        return completed, outcome, claimed

    # -- waiting for work --------------------------------------------------------------------

    def listen(self) -> None:
        """Receive the notifications of NOTIFY_CHANNEL on this session, for :meth:`wait`. Sent
        before the claim that may find the queue empty, so nothing enqueued after it is missed."""
        self._run(f"LISTEN {NOTIFY_CHANNEL}")

    def wait(self, timeout: float, task_types: Sequence[str] | None = None) -> bool:
        """After :meth:`listen`: True as soon as a notification for one of `task_types` (any
        type: None) arrives, or has arrived since the last call (psycopg2 collects them during
        every statement); False after `timeout` seconds without one."""
        import select
        import time

        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            self.conn.poll()
            types = {n.payload for n in self.conn.notifies}
            self.conn.notifies.clear()
            if types and (not task_types or types & set(task_types)):
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            select.select([self.conn], [], [], remaining)

    def seconds_until_due(self, task_types: Sequence[str] | None = None) -> float | None:
        """0 when a queued task is ready now; else the seconds until the next queued one is due
        (a retry's backoff, a task enqueued for later); None when nothing is queued."""
        rows = self._run(QUEUED_BY_TYPE, {"types": list(task_types) if task_types else None})
        if any(ready for _, ready, _ in rows):
            return 0.0
        due = [seconds for _, _, seconds in rows if seconds is not None]
        return max(min(due), 0.0) if due else None

    # -- housekeeping ------------------------------------------------------------------------

    def reap(self) -> dict[str, int]:
        """Return rows whose lease has expired to the queue; a row on its last attempt goes dead."""
        rows = self._run(  # no parameters: the % of format() is sent as it is
            """
            WITH expired AS (
                SELECT id FROM execution_tasks
                WHERE status = 'running' AND lease_expires_at < now()
                FOR UPDATE SKIP LOCKED
            )
            UPDATE execution_tasks t
               SET status = CASE WHEN t.attempts >= t.max_attempts THEN 'dead' ELSE 'queued' END,
                   error = format('lease of %s expired during attempt %s', t.lease_owner, t.attempts),
                   finished_at = CASE WHEN t.attempts >= t.max_attempts THEN now() END,
                   available_at = now(), updated_at = now(),
                   lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
              FROM expired WHERE t.id = expired.id
            RETURNING t.status
            """
        )
        return {
            "requeued": sum(s == "queued" for (s,) in rows),
            "dead": sum(s == "dead" for (s,) in rows),
        }

    def backlog(self, task_types: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
        """Per task type: ready rows, and the age in seconds of the oldest one."""
        rows = self._run(
            """
            SELECT task_type, count(*), extract(epoch FROM now() - min(available_at))
            FROM execution_tasks
            WHERE status = 'queued' AND available_at <= now()
              AND (%(types)s::text[] IS NULL OR task_type = ANY(%(types)s::text[]))
            GROUP BY task_type ORDER BY task_type
            """,
            {"types": list(task_types) if task_types else None},
        )
        return {t: {"ready": int(n), "oldest_seconds": float(age)} for t, n, age in rows}

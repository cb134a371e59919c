"""Handlers against the real reference executor (HTTP): validation, retries, permanent failures."""

from __future__ import annotations

import json
import time

import psycopg2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from include.execution.drain import drain
from include.execution.executor_client import ExecutorClient
from include.execution.task_handlers import (
    PermanentError,
    RetryableError,
    Services,
    validate_payload,
)
from include.execution.task_queue import TaskQueue

VALID = {
    "implementation": {
        "prompt": "Implement x",
        "repo": "r",
        "inputs": {"branch": "main", "files": ["a.py"]},
    },
    "self_improvement": {
        "prompt": "Reduce y",
        "repo": "r",
        "inputs": {"branch": "main", "baseline_run": "run-1"},
    },
    "idea": {"prompt": "Suggest", "repo": "r", "inputs": {"count": 3, "audience": "product"}},
    "idea_implementation": {
        "prompt": "Build",
        "repo": "r",
        "inputs": {"idea_id": 7, "branch": "dev"},
    },
}


MALFORMED = {"prompt": "x", "repo": "r", "inputs": {}}  # inputs.count is missing


def executions(admin) -> int:
    return admin.get("/admin/stats").json()["executions"]


def statuses(dsn: str) -> list[tuple]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT task_type, status, attempts, error FROM execution_tasks ORDER BY id")
        result = cur.fetchall()
    conn.close()
    return result


def test_5xx_and_timeouts_are_retried_with_backoff_and_then_answered(executor):
    url, admin = executor
    client = ExecutorClient(url, timeout_seconds=0.3, retries=3, backoff_seconds=0.01)
    admin.post("/admin/faults", json={"fail_next": [503, "slow", 502]})
    result = client.execute("idea", "gpt-4.1", {"x": 1})
    assert result["output"]["digest"] and result["model_version"] == "1"
    assert admin.get("/admin/stats").json()["requests"] == 4  # 503, timed out, 502, answered
    admin.post("/admin/faults", json={"fail_next": [500, 500, 500, 500]})
    with pytest.raises(RetryableError, match=r"HTTP 500 .*after 4 tries"):
        client.execute("idea", "gpt-4.1", {"x": 1})
    client.close()


def test_a_reset_waits_for_an_execution_a_client_gave_up_on(executor):
    """Otherwise the abandoned execution lands after the reset and is counted in the next test."""
    url, admin = executor
    admin.post("/admin/faults", json={"fail_next": ["slow"], "slow_ms": 1000})
    with pytest.raises(RetryableError, match="timed out"):
        ExecutorClient(url, timeout_seconds=0.05, retries=0).execute("idea", "gpt-4.1", {"x": 1})
    assert admin.get("/admin/stats").json()["in_flight"] == 1  # the server still sleeps on it
    admin.post("/admin/reset")
    stats = admin.get("/admin/stats").json()
    assert (stats["in_flight"], stats["requests"], stats["executions"]) == (0, 0, 0)


def test_a_4xx_is_a_permanent_failure_carrying_the_response_and_is_not_retried(executor):
    url, admin = executor
    client = ExecutorClient(url, retries=3, backoff_seconds=0.01)
    admin.post("/admin/faults", json={"fail_next": [400, 503]})
    with pytest.raises(PermanentError, match=r"HTTP 400 .*injected fault: HTTP 400"):
        client.execute("idea", "gpt-4.1", {"x": 1})
    stats = admin.get("/admin/stats").json()
    # one request, the 503 never asked for
    assert (stats["requests"], stats["pending_faults"]) == (
        1,
        1,
    )
    client.close()


def test_the_answer_is_deterministic_and_follows_the_model_version(executor):
    url, admin = executor
    client = ExecutorClient(url)
    first = client.execute("idea", "gpt-4.1", {"x": 1})
    assert client.execute("idea", "gpt-4.1", {"x": 1}) == first
    admin.post("/admin/faults", json={"model_versions": {"gpt-4.1": "2"}})
    assert ExecutorClient(url).model_version("gpt-4.1") == "2"
    assert client.execute("idea", "gpt-4.1", {"x": 1}) != first


def test_the_executor_refuses_a_well_formed_model_outside_its_catalog_on_both_routes(executor):
    url, admin = executor
    client = ExecutorClient(url, retries=0)
    assert client.model_version("claude-sonnet-4") == "1" and client.model_version("default") == "1"
    for call in (
        lambda: client.model_version("gpt-9-nonexistent"),
        lambda: client.execute("idea", "gpt-9-nonexistent", {"x": 1}),
    ):
        with pytest.raises(PermanentError, match=r"HTTP 404 .*unknown ai_model 'gpt-9-nonexistent'"):
            call()
    stats = admin.get("/admin/stats").json()
    assert stats["refused_models"] == {"gpt-9-nonexistent": 2} and stats["executions"] == 0
    # the catalog is configurable: a model added through the admin endpoint is served, until a reset
    admin.post("/admin/faults", json={"models": ["gpt-9-nonexistent"]})
    assert client.execute("idea", "gpt-9-nonexistent", {"x": 1})["model_version"] == "1"
    admin.post("/admin/reset")
    with pytest.raises(PermanentError, match="unknown ai_model"):
        ExecutorClient(url, retries=0).model_version("gpt-9-nonexistent")
    client.close()


def test_a_task_naming_an_unknown_model_fails_permanently_naming_it_and_nothing_executes(
    app_head_dsn, executor
):
    url, admin = executor
    with TaskQueue(app_head_dsn) as q:
        q.enqueue("idea", VALID["idea"], ai_model="gpt-9-nonexistent", max_attempts=3)
        q.enqueue("idea", VALID["idea"], ai_model="gpt-4o-mini")
    client = ExecutorClient(url, retries=0)
    drain(app_head_dsn, services=Services(executor=client), concurrency=1, backoff_base_seconds=0)
    client.close()
    unknown, known = statuses(app_head_dsn)
    assert unknown[1:3] == ("failed", 1), unknown  # permanent: one attempt of three, no retry
    assert unknown[3].startswith(
        "PermanentError: executor answered HTTP 404 on GET /v1/models/gpt-9-nonexistent"
    )
    assert "unknown ai_model 'gpt-9-nonexistent'" in unknown[3]
    assert known[1] == "succeeded"
    stats = admin.get("/admin/stats").json()
    assert stats["refused_models"] == {"gpt-9-nonexistent": 1}
    assert stats["requests"] == stats["executions"] == 1  # only the known model's task was executed


@pytest.mark.parametrize(
    ("task_type", "mutate", "field"),
    [
        ("implementation", lambda p: p["inputs"].pop("files"), "payload.inputs.files"),
        ("implementation", lambda p: p["inputs"].update(files=[]), "payload.inputs.files"),
        ("idea", lambda p: p["inputs"].update(count="3"), "payload.inputs.count"),
        ("idea", lambda p: p.update(prompt="  "), "payload.prompt"),
        ("self_improvement", lambda p: p.update(inputs=[1]), "payload.inputs"),
        (
            "idea_implementation",
            lambda p: p["inputs"].update(temperature=True),
            "payload.inputs.temperature",
        ),
    ],
)
def test_validation_names_the_field(task_type, mutate, field):
    payload = json.loads(json.dumps(VALID[task_type]))
    mutate(payload)
    with pytest.raises(PermanentError, match=field.replace(".", r"\.")):
        validate_payload(task_type, payload)


def test_a_batch_retries_5xx_fails_4xx_with_the_response_and_rejects_bad_payloads_before_any_call(
    app_head_dsn, executor
):
    url, admin = executor
    with TaskQueue(app_head_dsn) as q:
        for task_type, payload in VALID.items():
            q.enqueue(task_type, payload, ai_model="gpt-4.1")
        q.enqueue("idea", MALFORMED, ai_model="gpt-4.1")
    # the first call made answers 503 (retried inside the client), the next 422 (permanent)
    admin.post("/admin/faults", json={"fail_next": [503, 422]})
    client = ExecutorClient(url, retries=1, backoff_seconds=0.01)
    summary = drain(app_head_dsn, services=Services(executor=client), concurrency=1, backoff_base_seconds=0)
    client.close()
    rows = statuses(app_head_dsn)
    assert [r[1] for r in rows].count("succeeded") == 3
    [rejected] = [r for r in rows if r[1] == "failed" and "HTTP 422" in (r[3] or "")]
    assert "injected fault: HTTP 422" in rejected[3] and rejected[2] == 1
    assert rows[-1][1:] == (
        "failed",
        1,
        "PermanentError: payload.inputs.count must be an integer, got None",
    )
    # the malformed task never reached the executor; the three valid ones that succeeded did.
    # Inputs, not requests, are compared: the executor is the session's, so a request from an
    # earlier test, or one retried after a dropped connection, may add to its counts.
    from devstack.executor_server import answer

    executed = admin.get("/admin/stats").json()["by_digest"]
    digest = lambda task_type, payload: answer(task_type, "gpt-4.1", "1", payload)["output"]["digest"]  # noqa: E731
    assert digest("idea", MALFORMED) not in executed
    assert sum(digest(t, p) in executed for t, p in VALID.items()) == 3
    assert sum(t.failed for t in summary.by_type.values()) == 2


def test_a_poison_task_goes_dead_after_its_attempts_and_the_rest_completes(app_head_dsn):
    def handler(task, services):
        if task.payload.get("poison"):
            raise ValueError(f"poison pill in task {task.id}")
        return {"ok": task.id}

    with TaskQueue(app_head_dsn) as q:
        ids = q.enqueue_many(
            [{"task_type": "idea", "payload": {"poison": i == 7}, "max_attempts": 3} for i in range(30)]
        )
    summary = drain(
        app_head_dsn,
        services=Services(),
        handlers={"idea": handler},
        batch_size=8,
        backoff_base_seconds=0,
    )
    rows = statuses(app_head_dsn)
    poison = rows[ids.index(ids[7])]
    assert poison[1:] == (
        "dead",
        3,
        f"gave up after 3 attempts: ValueError: poison pill in task {ids[7]}",
    )
    assert [r[1] for r in rows].count("succeeded") == 29
    assert summary.by_type["idea"].retried == 2 and summary.by_type["idea"].dead == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
payloads = st.one_of(
    json_values,
    st.fixed_dictionaries({"prompt": json_values, "repo": json_values, "inputs": json_values}),
    st.fixed_dictionaries(
        {
            "prompt": st.text(min_size=1),
            "repo": st.text(min_size=1),
            "inputs": st.dictionaries(
                st.sampled_from(["branch", "files", "count", "idea_id", "baseline_run", "max_tokens"]),
                json_values,
            ),
        }
    ),
)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    batch=st.lists(
        st.tuples(
            st.sampled_from(sorted(VALID)),
            payloads,
            st.sampled_from([None, "gpt-4.1", "BAD MODEL", "gpt-9-nonexistent"]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_fuzzed_payloads_never_crash_a_batch(app_head_dsn, executor, batch):
    url, _ = executor
    with psycopg2.connect(app_head_dsn) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE execution_tasks")
    conn.close()
    with TaskQueue(app_head_dsn) as q:
        for task_type, payload, model in batch:
            try:
                task_id = q.enqueue(task_type, payload)
            except ValueError as exc:  # what jsonb cannot hold is refused at the door, by name
                assert "task 0's payload" in str(exc)
                continue
            # ai_model is written directly: the column's own CHECK refuses malformed names at enqueue
            with psycopg2.connect(app_head_dsn) as conn, conn.cursor() as cur:
                cur.execute(
                    "ALTER TABLE execution_tasks DROP CONSTRAINT IF EXISTS execution_tasks_ai_model_format"
                )
                cur.execute("UPDATE execution_tasks SET ai_model = %s WHERE id = %s", (model, task_id))
            conn.close()
        q.enqueue(*next(iter(VALID.items())))
    client = ExecutorClient(url, retries=0)
    drain(app_head_dsn, services=Services(executor=client), backoff_base_seconds=0)
    client.close()
    rows = statuses(app_head_dsn)
    assert rows[-1][1] == "succeeded"  # the valid task after them went through
    for task_type, status, _, error in rows:
        assert status in ("succeeded", "failed"), (task_type, status, error)
        if status == "failed":
            assert error.startswith("PermanentError: ") and ("payload" in error or "ai_model" in error), error


def test_the_demo_story_seeded_backlog_fails_before_the_migration_and_drains_after(app_dsn, executor):
    from devstack.demo_data import seed
    from include.execution.task_queue import SchemaBehindError
    from include.migrations import upgrade

    url, admin = executor
    seed(app_dsn, scale=0.02)
    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), count(*) FILTER (WHERE payload ? 'ai_model') FROM execution_tasks "
            "WHERE status = 'queued'"
        )
        queued, with_model = cur.fetchone()
    conn.close()
    assert queued > 0 and with_model > 0
    client = ExecutorClient(url, retries=0)
    with pytest.raises(SchemaBehindError):
        drain(app_dsn, services=Services(executor=client))
    upgrade(app_dsn, "head")  # what db_migrate applies: 0002 backfills ai_model from the payload
    summary = drain(app_dsn, services=Services(executor=client), batch_size=50)
    client.close()
    assert sum(t.succeeded for t in summary.by_type.values()) == queued
    assert sum(t.failed + t.dead + t.retried for t in summary.by_type.values()) == 0
    with psycopg2.connect(app_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM execution_tasks WHERE status IN ('queued', 'running')")
        assert cur.fetchone() == (0,)
        # the executor answered in the name of each task's model
        cur.execute(
            "SELECT count(DISTINCT result->'output'->>'summary') FROM execution_tasks "
            "WHERE ai_model IS NOT NULL AND finished_at > now() - interval '5 minutes'"
        )
        assert cur.fetchone()[0] > 1
    conn.close()


def test_a_batch_answers_its_cached_tasks_from_one_read_without_running_their_handlers(local_stack, executor):
    from uuid import uuid4

    import redis

    from include.execution.drain import run_batch
    from include.execution.task_cache import TaskCache
    from include.execution.task_queue import ClaimedTask

    url, admin = executor
    run = uuid4().hex[:8]  # inputs no earlier test has cached
    tasks = [
        ClaimedTask(i, t, {**p, "prompt": f"{p['prompt']} {run} {i}"}, "gpt-4.1", 1, 5, "", 0.0)
        for i, (t, p) in enumerate(list(VALID.items()) * 3)
    ]
    tasks.append(ClaimedTask(len(tasks), "idea", MALFORMED, "gpt-4.1", 1, 5, "", 0.0))
    r = redis.Redis(host="127.0.0.1", port=local_stack.ports["redis"])
    cache, client = TaskCache(r), ExecutorClient(url)

    def batch() -> tuple[list[tuple], set[int], int, int]:
        services = Services(executor=client, cache=cache)
        scripts, ran = script_calls(r), executions(admin)
        outcomes = run_batch(tasks, services, concurrency=4)
        return outcomes, services.cache_hits, script_calls(r) - scripts, executions(admin) - ran

    first, hits, _, ran = batch()
    assert (hits, ran) == (set(), 12)
    second, hits, scripts, ran = batch()
    assert hits == set(range(12)) and ran == 0
    assert scripts == 1  # the batch's one read; no handler ran, so no lookup of its own
    assert [o[1] for o in second[:12]] == [o[1] for o in first[:12]]
    for outcomes in (first, second):  # the malformed task fails, clearly, in both
        assert "payload.inputs.count" in str(outcomes[12][2]) and isinstance(outcomes[12][2], PermanentError)
    cache.bump("executor:gpt-4.1")  # invalidated: the next batch asks the executor again
    _, hits, _, ran = batch()
    assert (hits, ran) == (set(), 12)
    client.close()
    r.close()


def test_tasks_sharing_an_input_make_one_call_and_their_batch_one_read_and_its_writes(local_stack, executor):
    from uuid import uuid4

    import redis

    from include.execution.drain import run_batch
    from include.execution.task_cache import TaskCache
    from include.execution.task_queue import ClaimedTask

    url, admin = executor
    run = uuid4().hex[:8]
    # 3 inputs, each 4 times
    tasks = [
        ClaimedTask(
            i,
            "idea",
            {**VALID["idea"], "prompt": f"Suggest {run} {i % 3}"},
            "gpt-4.1",
            1,
            5,
            "",
            0.0,
        )
        for i in range(12)
    ]
    r = redis.Redis(host="127.0.0.1", port=local_stack.ports["redis"])
    cache, client = TaskCache(r), ExecutorClient(url)
    services = Services(executor=client, cache=cache)
    warm_up = ClaimedTask(
        99, "idea", {**VALID["idea"], "prompt": f"Suggest {run} warm-up"}, "gpt-4.1", 1, 5, "", 0.0
    )
    # Redis loads the scripts at their first call
    run_batch([warm_up], Services(executor=client, cache=cache))
    scripts, ran = script_calls(r), executions(admin)
    outcomes = run_batch(tasks, services, concurrency=2)
    assert executions(admin) - ran == 3 and all(exc is None for _, _, exc, _ in outcomes)
    # one read (which also locks the 3 missing entries) and the 3 writes (in 1 to 3 script calls:
    # writes made at the same time share one): no lookup per task, none per waiter
    assert 1 + 1 <= script_calls(r) - scripts <= 1 + 3
    assert services.cache_hits == set(range(3, 12))  # the 9 tasks that waited took their input's answer
    assert [o[1] for o in outcomes] == [o[1] for o in outcomes[:3]] * 4
    assert len({str(o[1]) for o in outcomes[:3]}) == 3
    report = cache.report()["executor:gpt-4.1"]
    assert (report["hits"], report["misses"]) == (9, 3 + 1)  # (and the warm-up's miss)
    client.close()
    r.close()


def test_tasks_waiting_for_an_answer_invalidated_while_computed_ask_again(local_stack, executor):
    from uuid import uuid4

    import redis

    from include.execution.drain import run_batch
    from include.execution.task_cache import TaskCache
    from include.execution.task_queue import ClaimedTask

    url, admin = executor
    r = redis.Redis(host="127.0.0.1", port=local_stack.ports["redis"])
    cache = TaskCache(r)

    class InvalidatedDuringTheFirstCall(ExecutorClient):
        calls = 0

        def execute(self, *args):
            type(self).calls += 1
            if self.calls == 1:
                cache.bump("executor:gpt-4.1")  # an operator invalidates the model's answers meanwhile
            return super().execute(*args)

    client = InvalidatedDuringTheFirstCall(url)
    payload = {**VALID["idea"], "prompt": f"Suggest {uuid4().hex}"}
    tasks = [ClaimedTask(i, "idea", payload, "gpt-4.1", 1, 5, "", 0.0) for i in range(4)]
    services = Services(executor=client, cache=cache)
    ran = executions(admin)
    outcomes = run_batch(tasks, services, concurrency=2)
    assert all(exc is None for _, _, exc, _ in outcomes)
    # the first answer was not stored (computed across the invalidation): the 3 waiters did not
    # take it; one asked the executor again, and the other two were answered by that new entry
    assert executions(admin) - ran == 2 and len(services.cache_hits) == 2
    client.close()
    r.close()


def script_calls(client) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))


def test_with_the_executor_unreachable_a_batch_asks_for_the_model_version_once_before_its_handlers(
    local_stack,
):
    import redis

    from devstack.stack import free_port
    from include.execution.drain import run_batch
    from include.execution.task_cache import TaskCache
    from include.execution.task_queue import ClaimedTask

    asked = []

    class Counting(ExecutorClient):
        def model_version(self, ai_model: str) -> str:
            asked.append(ai_model)
            return super().model_version(ai_model)

    client = Counting(f"http://127.0.0.1:{free_port()}", retries=0, timeout_seconds=1)
    r = redis.Redis(host="127.0.0.1", port=local_stack.ports["redis"])
    tasks = [ClaimedTask(i, "idea", VALID["idea"], "gpt-4.1", 1, 5, "", 0.0) for i in range(6)]
    outcomes = run_batch(tasks, Services(executor=client, cache=TaskCache(r)), concurrency=2)
    assert all(isinstance(exc, RetryableError) and "unreachable" in str(exc) for _, _, exc, _ in outcomes)
    assert len(asked) == 1 + len(tasks)  # the batch's read gave up at the first; each handler asked once
    client.close()
    r.close()


# -- hostile executors ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["oversized", "oversized_unsized"])
def test_an_oversized_answer_fails_its_task_without_being_read_whole(executor, fault):
    """A multi-GB answer on 16 handler threads would exhaust the worker: the client reads at most
    its cap (refusing from the Content-Length when there is one), fails permanently, and the
    next call gets a fresh connection."""
    url, admin = executor
    admin.post("/admin/faults", json={"fail_next": [fault], "oversized_bytes": 64 * 1024 * 1024})
    client = ExecutorClient(url, retries=2, backoff_seconds=0.01, max_response_bytes=1024 * 1024)
    started = time.monotonic()
    with pytest.raises(PermanentError, match=r"over the 1048576-byte limit; not read"):
        client.execute("idea", "gpt-4.1", {"x": 1})
    assert time.monotonic() - started < 5
    assert admin.get("/admin/stats").json()["requests"] == 1, "refused, not retried"
    assert client.execute("idea", "gpt-4.1", {"x": 1})["model_version"] == "1"
    client.close()


def test_a_trickling_answer_is_cut_at_the_deadline_of_the_whole_exchange(executor):
    """Each byte comes well within any read timeout; the exchange as a whole still ends on time,
    and is retried as a timeout."""
    url, admin = executor
    admin.post("/admin/faults", json={"fail_next": ["trickle", "trickle"], "trickle_ms": 100})
    client = ExecutorClient(url, timeout_seconds=1.0, retries=1, backoff_seconds=0.01)
    started = time.monotonic()
    with pytest.raises(RetryableError, match=r"timed out on POST /v1/execute: no complete answer within 1 s"):
        client.execute("idea", "gpt-4.1", {"x": 1})
    assert 2.0 <= time.monotonic() - started < 4.0  # two tries of one second each
    assert client.execute("idea", "gpt-4.1", {"x": 1})["model_version"] == "1"
    client.close()


def test_a_429_is_retried_after_the_servers_retry_after(executor):
    url, admin = executor
    admin.post("/admin/faults", json={"fail_next": [{"status": 429, "retry_after": "1"}]})
    client = ExecutorClient(url, retries=1, backoff_seconds=0.01)
    started = time.monotonic()
    assert client.execute("idea", "gpt-4.1", {"x": 1})["model_version"] == "1"
    assert time.monotonic() - started >= 1.0
    # a wait longer than the client holds a handler for is left to the queue's retry, at once
    admin.post("/admin/faults", json={"fail_next": [{"status": 429, "retry_after": "3600"}]})
    started = time.monotonic()
    with pytest.raises(RetryableError, match=r"HTTP 429 .*retry after 3600 s, longer than this client waits"):
        client.execute("idea", "gpt-4.1", {"x": 1})
    assert time.monotonic() - started < 1.0
    assert admin.get("/admin/stats").json()["requests"] == 3
    client.close()


def test_a_model_name_stays_one_path_segment_of_the_url(executor):
    """The executor resolves dot segments before routing, as servers and proxies do: unquoted,
    `a/../../admin/stats` would reach /admin/stats with the executor's credentials. Quoted, it
    is a model the executor does not serve; and the handlers refuse it before any call."""
    from include.execution.task_handlers import resolve_ai_model
    from include.execution.task_queue import ClaimedTask

    url, admin = executor
    client = ExecutorClient(url, retries=0)
    with pytest.raises(PermanentError, match=r"HTTP 404 .*unknown ai_model 'a/../../admin/stats'"):
        client.model_version("a/../../admin/stats")
    client.close()
    assert admin.get("/admin/stats").json()["refused_models"] == {"a/../../admin/stats": 1}
    task = ClaimedTask(1, "idea", VALID["idea"], "a/../../admin/stats", 1, 5, "", 0.0)
    with pytest.raises(PermanentError, match="does not match"):
        resolve_ai_model(task)


def test_a_prompt_reaches_the_executor_as_written():
    """Indentation is part of a prompt (code): only the cache key's canonical form of the inputs
    changes, never the text."""
    prompt = "Fix this:\n    def f(x):\n        return  x\n\n\tTabs too."
    task_input = validate_payload("idea", {"prompt": prompt, "repo": " r ", "inputs": {"count": 1}})
    assert task_input["prompt"] == prompt and task_input["repo"] == "r"

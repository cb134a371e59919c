"""The Redis cache against a real Redis: read-through, sliding TTL, invalidation, stampedes, outages."""

from __future__ import annotations

import itertools
import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from devstack.stack import free_port
from include.execution.task_cache import TaskCache, key_digest


@pytest.fixture
def client(local_stack):
    r = redis.Redis(host="127.0.0.1", port=local_stack.ports["redis"])
    yield r
    r.close()


@pytest.fixture
def ns() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


def counting(value):
    calls = []

    def compute():
        calls.append(1)
        return value

    return compute, calls


def script_calls(client) -> int:
    stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))


def test_read_through_counts_hits_and_misses_per_namespace(client, ns):
    cache = TaskCache(client)
    compute, calls = counting({"answer": 42})
    assert cache.get_or_compute(ns, {"input": "a"}, compute) == ({"answer": 42}, False)
    assert cache.get_or_compute(ns, {"input": "a"}, compute) == ({"answer": 42}, True)
    assert cache.get_or_compute(ns, {"input": "b"}, compute) == ({"answer": 42}, False)
    assert len(calls) == 2
    report = cache.report()[ns]
    assert (report["hits"], report["misses"], report["errors"]) == (1, 2, 0)
    assert report["hit_ratio"] == pytest.approx(1 / 3)


def test_ttl_is_per_namespace_and_slides_with_hits_up_to_the_cap(client, ns):
    cache = TaskCache(client, ttl_seconds={ns: 100}, default_ttl_seconds=7, max_age_seconds=150)
    compute, _ = counting(1)
    cache.get_or_compute(ns, {"k": 1}, compute)
    cache.get_or_compute("other-" + ns, {"k": 1}, compute)
    key = f"tc:{ns}:v0:{key_digest({'k': 1})}"
    assert 95 <= client.ttl(key) <= 100
    assert client.ttl(f"tc:other-{ns}:v0:{key_digest({'k': 1})}") <= 7
    client.expire(key, 10)  # time passed...
    cache.get_or_compute(ns, {"k": 1}, compute)
    assert client.ttl(key) >= 95  # ...and a hit extended it again
    now = int(client.time()[0])
    client.hset(key, "created", now - 120)  # created two minutes ago: 30 s left of the cap
    assert cache.get_or_compute(ns, {"k": 1}, compute)[1] is True
    assert 25 <= client.ttl(key) <= 30
    client.hset(key, "created", now - 151)  # past the cap: a miss, never served
    assert cache.get_or_compute(ns, {"k": 1}, compute)[1] is False


def test_bumping_a_namespace_invalidates_all_its_entries_and_only_them(client, ns):
    cache = TaskCache(client)
    for i in range(3):
        cache.get_or_compute(ns, {"i": i}, lambda: "old")
    cache.get_or_compute("keep-" + ns, {"i": 0}, lambda: "kept")
    assert cache.bump(ns) == 1
    assert [cache.get_or_compute(ns, {"i": i}, lambda: "new") for i in range(3)] == [("new", False)] * 3
    assert cache.get_or_compute("keep-" + ns, {"i": 0}, lambda: "other") == ("kept", True)


def test_an_invalidation_during_a_computation_keeps_its_stale_answer_out(client, ns):
    cache = TaskCache(client)
    cache.get_or_compute(ns, {"k": 1}, lambda: "v1")
    cache.invalidate(ns, {"k": 1})

    def compute_then_get_invalidated():
        cache.invalidate(ns, {"k": 1})  # the source changed while we computed
        return "computed-before-the-change"

    assert cache.get_or_compute(ns, {"k": 1}, compute_then_get_invalidated)[1] is False
    assert cache.get_or_compute(ns, {"k": 1}, lambda: "v2") == ("v2", False)

    def compute_then_namespace_bumped():
        cache.bump(ns)
        return "stale"

    cache.invalidate(ns, {"k": 1})
    cache.get_or_compute(ns, {"k": 1}, compute_then_namespace_bumped)
    assert cache.get_or_compute(ns, {"k": 1}, lambda: "v3") == ("v3", False)


def test_under_concurrent_invalidations_no_hit_is_older_than_the_last_invalidation_before_it(client, ns):
    cache = TaskCache(client, wait_seconds=5)
    truth = itertools.count(1)
    generation = [0]  # the source of truth's version: changed, then the cache is invalidated
    invalidated = [0]  # the newest version whose invalidation has completed
    violations, hits = [], []

    def compute(key):
        def run():
            seen = generation[0]
            time.sleep(random.uniform(0, 0.003))
            return {"gen": seen, "key": key}

        return run

    def reader(seed):
        rng = random.Random(seed)
        for _ in range(300):
            key = rng.randrange(4)
            before = invalidated[0]
            value, hit = cache.get_or_compute(ns, {"key": key}, compute(key))
            if hit:
                hits.append(1)
                if value["gen"] < before:
                    violations.append((key, value, before))

    def invalidator():
        rng = random.Random(99)
        for _ in range(150):
            time.sleep(rng.uniform(0, 0.004))
            generation[0] = next(truth)
            if rng.random() < 0.5:
                cache.bump(ns)
            else:
                for key in range(4):
                    cache.invalidate(ns, {"key": key})
            invalidated[0] = generation[0]

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)] + [
        threading.Thread(target=invalidator)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert hits, "no hits at all: the test exercised nothing"
    assert violations == []


def test_a_stampede_on_one_key_computes_it_once(client, ns):
    cache = TaskCache(client)
    calls = []

    def slow():
        calls.append(1)
        time.sleep(0.3)
        return "expensive"

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: cache.get_or_compute(ns, {"hot": True}, slow), range(16)))
    assert len(calls) == 1
    assert {value for value, _ in results} == {"expensive"}
    assert sum(hit for _, hit in results) == 15


def test_lookups_made_meanwhile_share_one_round_trip(client, ns):
    cache = TaskCache(client)
    for i in range(32):
        cache.get_or_compute(ns, {"i": i}, lambda i=i: {"v": i})

    before = script_calls(client)
    client.execute_command("CLIENT", "PAUSE", 500, "ALL")  # Redis holds the first round trip...
    with ThreadPoolExecutor(32) as pool:  # ...while the other 31 lookups arrive
        results = list(pool.map(lambda i: cache.get_or_compute(ns, {"i": i}, lambda: "never"), range(32)))
    assert results == [({"v": i}, True) for i in range(32)]
    # 32 hits: the first alone, the 31 that queued behind it together
    assert script_calls(client) - before == 2


def test_writes_made_meanwhile_share_one_round_trip(client, ns):
    cache = TaskCache(client)
    started, go = threading.Barrier(32), threading.Barrier(32)
    before_writes = []

    def compute(i):
        if started.wait() == 0:  # one thread, once all 32 computations run (their lookups done)
            before_writes.append(script_calls(client))
            client.execute_command("CLIENT", "PAUSE", 500, "ALL")  # Redis holds the first write...
        go.wait()  # ...while the other 31 arrive
        return {"v": i}

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda i: cache.get_or_compute(ns, {"w": i}, lambda: compute(i)), range(32)))
    assert results == [({"v": i}, False) for i in range(32)]
    # the first alone, the 31 that queued behind it together
    assert script_calls(client) - before_writes[0] == 2
    assert cache.get_many([(ns, {"w": i}) for i in range(32)]) == [(True, {"v": i}) for i in range(32)]


def test_a_failed_computation_releases_its_lock_for_the_next_caller(client, ns):
    cache = TaskCache(client)

    def boom():
        raise RuntimeError("executor down")

    with pytest.raises(RuntimeError):
        cache.get_or_compute(ns, {"k": 1}, boom)
    assert cache.get_or_compute(ns, {"k": 1}, lambda: "ok") == ("ok", False)


@pytest.fixture
def unreachable(monkeypatch):
    """The hook's cache on a connection whose Redis does not answer (a free port)."""
    from execplatform.hooks.redis_cache_hook import TaskCacheHook

    monkeypatch.setenv("AIRFLOW_CONN_REDIS_UNREACHABLE", f"redis://127.0.0.1:{free_port()}/0")
    return lambda **options: TaskCacheHook("redis_unreachable").get_cache(**options)


def test_with_redis_unreachable_calls_run_uncached_and_the_outage_is_reported_once(ns, unreachable):
    fired = []
    cache = unreachable(on_unavailable=fired.append)
    compute, calls = counting("fresh")
    assert [cache.get_or_compute(ns, {"i": i}, compute) for i in range(5)] == [("fresh", False)] * 5
    assert len(calls) == 5
    assert len(fired) == 1 and isinstance(fired[0], redis.ConnectionError)
    assert cache.report()[ns]["errors"] == 1


def test_the_stack_runs_redis_with_a_memory_cap_and_lfu_eviction(client):
    config = client.config_get("maxmemory*")
    assert config["maxmemory-policy"] == "allkeys-lfu"
    assert int(config["maxmemory"]) > 0


def test_get_many_reads_a_batch_in_one_round_trip_and_never_across_an_invalidation(client, ns):
    cache = TaskCache(client, ttl_seconds={ns: 100})
    for i in range(5):
        cache.get_or_compute(ns, {"i": i}, lambda i=i: {"v": i})
    key = f"tc:{ns}:v0:{key_digest({'i': 0})}"
    client.expire(key, 10)
    # the script's first call loads it (a NOSCRIPT reply, then EVALSHA again)
    cache.get_many([(ns, {"i": 99})])
    before = script_calls(client)
    found = cache.get_many([(ns, {"i": i}) for i in range(8)])
    assert script_calls(client) - before == 1
    assert found == [(True, {"v": i}) for i in range(5)] + [(False, None)] * 3
    assert client.ttl(key) >= 95  # a hit slides its entry, as get_or_compute's do
    report = cache.report()[ns]
    # the 3 misses are the caller's to compute and count
    assert (report["hits"], report["misses"]) == (
        5,
        5,
    )
    cache.get_or_compute(ns, {"none": 1}, lambda: None)  # a cached None is a hit, not a miss
    assert cache.get_many([(ns, {"none": 1}), ("other-" + ns, {"i": 0}), (ns, {"i": 2})]) == [
        (True, None),
        (False, None),
        (True, {"v": 2}),
    ]
    cache.invalidate(ns, {"i": 1})
    assert [hit for hit, _ in cache.get_many([(ns, {"i": i}) for i in range(5)])] == [
        True,
        False,
        True,
        True,
        True,
    ]
    cache.bump(ns)
    assert cache.get_many([(ns, {"i": i}) for i in range(5)]) == [(False, None)] * 5
    assert cache.get_many([]) == []


def test_get_many_can_reserve_its_misses_for_the_computations_that_follow(client, ns):
    cache = TaskCache(client)
    cache.get_or_compute(ns, {"i": 0}, lambda: "zero")
    lock = {i: f"tc:{ns}:v0:{key_digest({'i': i})}:lock" for i in range(3)}
    assert cache.get_many([(ns, {"i": i}) for i in range(3)], reserve=True) == [
        (True, "zero"),
        (False, None),
        (False, None),
    ]
    assert not client.exists(lock[0]) and client.exists(lock[1]) and client.exists(lock[2])
    other = TaskCache(client)  # another drain's read neither finds nor reserves what is being computed
    assert other.get_many([(ns, {"i": 1})], reserve=True) == [(False, None)] and not other._reserved
    before = script_calls(client)
    assert cache.get_or_compute(ns, {"i": 1}, lambda: "one") == ("one", False)
    assert script_calls(client) - before == 1  # the write alone: the read above took the lock
    assert not client.exists(lock[1]) and other.get_many([(ns, {"i": 1})]) == [(True, "one")]
    assert cache.serve_waiters(ns, {"i": 1}, 2) is True  # stored: two waiters take it, as hits
    assert cache.serve_waiters(ns, {"i": 1}, 2) is False  # once
    assert cache.report()[ns]["hits"] == 1 + 2
    assert cache.release_reservations() == 1 and not client.exists(lock[2])  # {"i": 2} never computed


def test_get_many_reads_a_repeated_key_once_and_answers_every_lookup_of_it(client, ns, monkeypatch):
    import include.execution.task_cache

    cache = TaskCache(client)
    cache.get_or_compute(ns, {"i": 0}, lambda: {"v": 0})
    hot, cold = (ns, {"i": 0}), (ns, {"i": 1})
    digested = []
    monkeypatch.setattr(
        include.execution.task_cache,
        "key_digest",
        lambda parts: digested.append(parts) or key_digest(parts),
    )
    found = cache.get_many([hot, cold, hot, cold, hot], reserve=True)
    assert digested == [{"i": 0}, {"i": 1}]  # lookups sharing their parts object: one digest
    assert found == [(True, {"v": 0}), (False, None)] * 2 + [(True, {"v": 0})]
    assert found[0][1] is found[2][1] is found[4][1]  # one read, one value
    assert cache.report()[ns]["hits"] == 3
    assert list(cache._reserved) == [(ns, key_digest({"i": 1}))]  # one computation to come for the cold key
    assert cache.get_or_compute(ns, {"i": 1}, lambda: {"v": 1}) == ({"v": 1}, False)
    assert cache.release_reservations() == 0


def test_a_reserved_computation_invalidated_before_it_stores_serves_no_waiter(client, ns):
    cache = TaskCache(client)
    cache.get_many([(ns, {"i": 1})], reserve=True)

    def compute_while_someone_invalidates():
        cache.bump(ns)
        return "stale"

    assert cache.get_or_compute(ns, {"i": 1}, compute_while_someone_invalidates) == ("stale", False)
    assert cache.serve_waiters(ns, {"i": 1}, 3) is False  # not stored: the waiters must read or compute
    assert cache.get_many([(ns, {"i": 1})]) == [(False, None)]


def test_get_many_with_redis_unreachable_finds_nothing_and_reports_the_outage_once(ns, unreachable):
    fired = []
    cache = unreachable(on_unavailable=fired.append)
    assert cache.get_many([(ns, {"i": i}) for i in range(3)]) == [(False, None)] * 3
    assert cache.get_or_compute(ns, {"i": 0}, lambda: "fresh") == ("fresh", False)
    assert len(fired) == 1 and cache.report()[ns]["errors"] == 1


# -- values that are not JSON --------------------------------------------------------------------


def entry(ns: str, parts) -> str:
    return f"tc:{ns}:v0:{key_digest(parts)}"


def test_an_answer_holding_nan_is_never_stored(client, ns):
    """json.dumps writes NaN; served from the cache for a day it would fail every task with that
    input. It is answered once and not kept."""
    cache = TaskCache(client)
    compute, calls = counting({"score": float("nan")})
    for _ in range(2):
        value, hit = cache.get_or_compute(ns, {"input": "a"}, compute)
        assert value["score"] != value["score"] and hit is False
    assert len(calls) == 2 and not client.exists(entry(ns, {"input": "a"}))
    assert not client.exists(entry(ns, {"input": "a"}) + ":lock"), "its lock is released"
    assert cache.report()[ns]["discarded"] == 2


@pytest.mark.parametrize("bad", [b'{"output": ', b"NaN", b'{"x": Infinity}', b"\xff\xfe"])
def test_an_entry_that_is_not_json_is_a_miss_and_is_deleted(client, ns, bad):
    cache = TaskCache(client)
    client.hset(entry(ns, {"input": "a"}), mapping={"value": bad, "created": int(time.time())})
    compute, calls = counting({"answer": 1})
    assert cache.get_or_compute(ns, {"input": "a"}, compute) == ({"answer": 1}, False)
    assert client.hget(entry(ns, {"input": "a"}), "value") == b'{"answer": 1}', "replaced by the answer"
    assert cache.get_or_compute(ns, {"input": "a"}, compute) == ({"answer": 1}, True)
    assert len(calls) == 1 and cache.report()[ns]["discarded"] == 1


def test_get_many_reads_around_an_entry_that_is_not_json(client, ns):
    """One bad entry made the whole batch's answer unreadable (JSONDecodeError failed the drain):
    the batch is read again entry by entry, the bad one deleted and counted as a miss, the good
    ones hits, and the misses' reservations kept."""
    cache = TaskCache(client)
    cache.get_or_compute(ns, {"i": 0}, lambda: {"v": 0})
    client.hset(entry(ns, {"i": 1}), mapping={"value": b'{"v": NaN}', "created": int(time.time())})
    lookups = [(ns, {"i": i}) for i in range(3)]
    assert cache.get_many(lookups, reserve=True) == [(True, {"v": 0}), (False, None), (False, None)]
    assert not client.exists(entry(ns, {"i": 1}))
    assert not client.exists(entry(ns, {"i": 1}) + ":lock") and client.exists(entry(ns, {"i": 2}) + ":lock")
    assert set(cache._reserved) == {(ns, key_digest({"i": 2}))}
    report = cache.report()[ns]
    assert (report["hits"], report["discarded"]) == (1, 1)
    assert cache.get_or_compute(ns, {"i": 1}, lambda: {"v": 1}) == ({"v": 1}, False)
    assert cache.get_many(lookups) == [(True, {"v": 0}), (True, {"v": 1}), (False, None)]
    cache.release_reservations()

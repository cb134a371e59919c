"""Draining the queue in batches: many execution tasks per Airflow task, on handler threads.

One drain (one Airflow task instance) claims a batch and runs its handlers concurrently in
threads (they are I/O-bound: HTTP to the executor, Redis). As soon as fewer tasks wait for a
thread than there are threads, it settles what has finished and claims the next tasks in ONE
statement (one round trip, one commit: ``TaskQueue.settle_and_claim``) while the threads are
still busy, so they never run dry and a slow task never holds up the batches after it; and so
on until the queue is empty or its time budget is spent. It holds at most `batch_size` +
`concurrency` tasks at a time. A heartbeat thread extends the leases
of the tasks in flight, so only a worker that is gone loses its rows (to the reaper); it opens
its connection only when a beat is due, so a short drain costs one connection.

With a cache, each claimed batch first reads the cached answers of all its tasks in one round
trip (``TaskCache.get_many``, keys from ``CACHE_KEYS``): hits are settled without running their
handler, and only the misses go to the handler threads, one per distinct input (see
``HandlerRunner``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from include.execution.task_cache import key_digest
from include.execution.task_handlers import (
    CACHE_KEYS,
    HANDLERS,
    CacheKey,
    Handler,
    PermanentError,
    Services,
)
from include.execution.task_queue import ClaimedTask, Completion, Failure, TaskQueue, to_jsonb_text

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 100
DEFAULT_PARALLELISM = 4  # mapped task instances per run
DEFAULT_CONCURRENCY = 16  # handler threads per task instance
DEFAULT_BUDGET_SECONDS = 240.0
SETTLE_WITHIN_SECONDS = 1.0  # at the end of the queue, a finished task's result waits at most this long


def plan_batches(ready: int, batch_size: int, parallelism: int) -> int:
    """How many drains to run in parallel: enough for the backlog, at most `parallelism`, and
    at least one (a drain on an empty queue just reports zero)."""
    if batch_size < 1 or parallelism < 1:
        raise ValueError(f"batch_size ({batch_size}) and parallelism ({parallelism}) must be >= 1")
    return max(1, min(parallelism, math.ceil(ready / batch_size)))


@dataclass
class TypeTally:
    tasks: int = 0
    succeeded: int = 0
    retried: int = 0
    failed: int = 0
    dead: int = 0
    refused: int = 0  # results dropped because the lease had moved on
    cache_hits: int = 0
    exec_ms: float = 0.0
    cache_hit_ms: float = 0.0
    queue_wait_ms: float = 0.0


@dataclass
class DrainSummary:
    batches: int = 0
    seconds: float = 0.0
    # empty | budget | schema_lock (a restore or migration held it) | blocked (an FSAR report)
    stopped_by: str = "empty"
    blocked_by: str | None = None  # the FSAR report that blocked execution
    woken: int = 0  # times an idle drain (idle_seconds) found new work after the queue had emptied
    errors: list[str] = field(default_factory=list)  # a sample of failure messages
    by_type: dict[str, TypeTally] = field(default_factory=lambda: defaultdict(TypeTally))

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "stopped_by": self.stopped_by,
            "blocked_by": self.blocked_by,
            "woken": self.woken,
            "errors": self.errors[:20],
            "by_type": {t: vars(v) for t, v in sorted(self.by_type.items())},
        }


def run_handler(
    handler: Handler | None, task: ClaimedTask, services: Services
) -> tuple[Any, Exception | None, float]:
    started = time.perf_counter()
    try:
        if handler is None:
            raise PermanentError(f"task_type {task.task_type!r} has no handler; known: {sorted(HANDLERS)}")
        return handler(task, services), None, (time.perf_counter() - started) * 1000
    except Exception as exc:  # the contract: any exception is a failure of this task only
        return None, exc, (time.perf_counter() - started) * 1000


class LeaseKeeper:
    """Extends the leases of the tasks in flight every third of the lease, on its own connection
    (opened at the first beat)."""

    def __init__(self, dsn: str, owner: str, lease_seconds: float) -> None:
        self.dsn, self.owner, self.lease_seconds = dsn, owner, lease_seconds
        self.queue: TaskQueue | None = None
        self.interval = lease_seconds / 3
        self.tasks: Sequence[ClaimedTask] = ()
        self.lost: set[int] = set()
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()

    def hold(self, tasks: Sequence[ClaimedTask]) -> None:
        with self._mutex:
            self.tasks = tasks  # the caller never changes a batch it handed over

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._mutex:
                tasks = self.tasks
            if not tasks:
                continue
            try:
                if self.queue is None:
                    self.queue = TaskQueue(self.dsn, owner=self.owner, lease_seconds=self.lease_seconds)
                kept = set(self.queue.heartbeat(tasks))
            except Exception:  # a missed beat is retried at the next; the lease still has 2/3 left
                logger.warning("heartbeat of %d leases failed", len(tasks), exc_info=True)
                continue
            with self._mutex:
                self.lost |= {t.id for t in tasks} - kept

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.queue is not None:
            self.queue.close()


def cache_lookups(
    cache_keys: Mapping[str, CacheKey], tasks: Sequence[ClaimedTask], services: Services
) -> dict[int, tuple[str, Mapping[str, Any]]]:
    """{index in `tasks`: (namespace, key parts)} for the tasks whose answer may be cached. A task
    whose key cannot be made (a bad payload) is left out, for its handler to fail with the clear
    error; so are all the tasks after a key that failed for another reason (the executor
    unreachable: asking again for every task would retry serially here; the handlers fail them,
    concurrently). Tasks of one type, model and payload text share one key (the same object):
    a batch repeats its popular inputs, and making a key is most of a cache hit's cost."""
    if services.cache is None:
        return {}
    keys: dict[int, tuple[str, Mapping[str, Any]]] = {}
    made: dict[tuple | None, tuple[str, Mapping[str, Any]]] = {}  # never holds None
    for i, task in enumerate(tasks):
        key_of = cache_keys.get(task.task_type)
        if key_of is None:
            continue
        same = None if task.payload_text is None else (task.task_type, task.ai_model, task.payload_text)
        if same in made:
            keys[i] = made[same]
            continue
        try:
            keys[i] = key_of(task, services)
        except PermanentError:
            continue
        except Exception:
            break
        if same is not None:
            made[same] = keys[i]
    return keys


def answer_from_cache(
    lookups: Mapping[int, tuple[str, Mapping[str, Any]]],
    tasks: Sequence[ClaimedTask],
    services: Services,
    reserve: bool = False,
) -> dict[int, tuple]:
    """{index in `tasks`: (task, cached result, None, ms)} for the `lookups` whose answer is
    cached, read in one round trip (with `reserve`, which also takes the locks of the misses
    for their handlers: see TaskCache.get_many)."""
    if not lookups:
        return {}
    started = time.perf_counter()
    found = services.cache.get_many(list(lookups.values()), reserve=reserve)
    hits = {i: value for i, (hit, value) in zip(lookups, found, strict=True) if hit}
    ms = (time.perf_counter() - started) * 1000 / len(hits) if hits else 0.0
    for i in hits:
        services.note_cache_hit(tasks[i].id)
    return {i: (tasks[i], value, None, ms) for i, value in hits.items()}


class HandlerRunner:
    """Runs the handlers of claimed tasks on `concurrency` threads, as a stream: tasks are added
    a batch at a time and their outcomes taken as they finish, so the tasks still running never
    hold up the claim of the next batch. Outcomes are (task, result, exception, ms).

    With a cache, a batch's cached answers are read first, in one round trip, and finished at
    once; the same round trip takes the locks of the missing answers for the handlers that will
    compute them (no lookup of their own). A task whose answer is being computed for another
    task held here (the same key, from this batch or an earlier one) waits without a thread.
    When that computation ends, its waiters take its answer if the cache stored it (no
    invalidation came between the reservation and the store, so none crosses one); otherwise
    one thread reads the entry for them, and those it does not answer run their own handler."""

    def __init__(self, concurrency: int, handlers: Mapping[str, Handler], services: Services) -> None:
        self.concurrency, self.handlers, self.services = concurrency, handlers, services
        # the registered key functions, for the types whose handler is the registered one
        self.cache_keys = {t: key for t, key in CACHE_KEYS.items() if handlers.get(t) is HANDLERS.get(t)}
        self.held: dict[int, ClaimedTask] = {}  # added and not yet taken (their leases are ours to keep)
        self._pending: deque[ClaimedTask] = deque()  # waiting for a thread
        # (namespace, key digest) -> (key parts, waiters), while a task computes that answer
        self._computing: dict[tuple[str, str], tuple[Mapping[str, Any], list[ClaimedTask]]] = {}
        self._key_of: dict[int, tuple[str, str]] = {}  # task id -> its key, for the tasks computing one
        self._finished: list[tuple] = []
        self._running = 0  # added and not finished: pending, in a handler, or waiting for a key
        self._closed = False
        lock = threading.Lock()
        self._work_ready, self._progress = threading.Condition(lock), threading.Condition(lock)
        self._threads = [
            threading.Thread(target=self._work, name=f"handler-{i}", daemon=True) for i in range(concurrency)
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> HandlerRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the threads once the handlers running now return; tasks not started are dropped
        (their leases expire and the reaper requeues them)."""
        with self._work_ready:
            self._closed = True
            self._pending.clear()
            self._work_ready.notify_all()
        for thread in self._threads:
            thread.join()
        if self.services.cache is not None:
            self.services.cache.release_reservations()

    def add(self, tasks: Sequence[ClaimedTask]) -> None:
        lookups = cache_lookups(self.cache_keys, tasks, self.services)
        hits = answer_from_cache(lookups, tasks, self.services, reserve=True)
        with self._work_ready:
            for i, task in enumerate(tasks):
                self.held[task.id] = task
                if i in hits:
                    self._finished.append(hits[i])
                    continue
                self._running += 1
                if i in lookups:
                    namespace, parts = lookups[i]
                    key = (namespace, key_digest(parts))
                    if key in self._computing:
                        self._computing[key][1].append(task)
                        continue
                    self._computing[key], self._key_of[task.id] = (parts, []), key
                self._pending.append(task)
            self._work_ready.notify(len(self._pending))

    def _work(self) -> None:
        outcome = None  # of this thread's last task, to record
        while True:
            with self._work_ready:
                waiters = self._record(outcome) if outcome is not None else None
                if waiters is None:
                    self._work_ready.wait_for(lambda: self._pending or self._closed)
                    if not self._pending:
                        return
                    task = self._pending.popleft()
                    if len(self._pending) == self.concurrency - 1:  # take() may be due now
                        self._progress.notify()
            if waiters is not None:
                self._answer_waiters(*waiters)
                outcome = None
            else:
                outcome = (
                    task,
                    *run_handler(self.handlers.get(task.task_type), task, self.services),
                )

    def _record(self, outcome: tuple) -> tuple | None:
        """Record a finished task (call with the lock). If it computed a key others wait for:
        they take its answer when the cache stored it (TaskCache.serve_waiters), run their own
        handler when it failed, and otherwise this returns (namespace, parts, waiters) to read the entry."""
        task, result, error, _ = outcome
        self._finished.append(outcome)
        self._running -= 1
        self._progress.notify()
        key = self._key_of.pop(task.id, None)
        if key is None:
            return None
        namespace = key[0]
        parts, waiters = self._computing.pop(key)
        if error is None and self.services.cache.serve_waiters(namespace, parts, len(waiters)):
            for waiter in waiters:
                self.services.note_cache_hit(waiter.id)
                self._finished.append((waiter, result, None, 0.0))
            self._running -= len(waiters)
            return None
        if not waiters:
            return None
        if error is not None:  # each waiter runs its own handler
            self._pending.extend(waiters)
            self._work_ready.notify(len(waiters))
            return None
        return namespace, parts, waiters

    def _answer_waiters(self, namespace: str, parts: Mapping[str, Any], waiters: list[ClaimedTask]) -> None:
        """Finish the waiters answered by the entry just stored; the others run their handler."""
        hits = answer_from_cache(
            dict.fromkeys(range(len(waiters)), (namespace, parts)), waiters, self.services
        )
        with self._work_ready:
            for i, task in enumerate(waiters):
                if i in hits:
                    self._finished.append(hits[i])
                    self._running -= 1
                else:
                    self._pending.append(task)
            self._work_ready.notify(len(waiters) - len(hits))
            self._progress.notify()

    def take(self, batch_size: int, more: bool) -> tuple[list[tuple], int]:
        """(outcomes to settle, how many tasks to claim with them) once a settle is due.

        With `more` (the queue may hold more): as soon as fewer tasks wait for a thread than
        there are threads (the threads would run dry within a round) and half a batch fits under
        the cap of tasks held (`batch_size` + `concurrency`), so the next batch arrives while
        the threads are still busy. Otherwise once every task added has finished, or
        SETTLE_WITHIN_SECONDS after a task finished while others still run (a long task does not
        keep the results of the short ones unrecorded)."""
        cap = batch_size + self.concurrency
        deadline = None
        with self._progress:
            while True:
                if more:
                    if len(self._pending) < self.concurrency and self._running <= cap - max(
                        1, batch_size // 2
                    ):
                        break
                    self._progress.wait()
                    continue
                if not self._running:
                    break
                if not self._finished:
                    self._progress.wait()
                    continue
                deadline = deadline or time.monotonic() + SETTLE_WITHIN_SECONDS
                if time.monotonic() >= deadline:
                    break
                self._progress.wait(deadline - time.monotonic())
            finished, self._finished = self._finished, []
            room = min(batch_size, cap - self._running)
        for task, *_ in finished:
            del self.held[task.id]
        return finished, room


def run_batch(
    tasks: Sequence[ClaimedTask],
    services: Services,
    handlers: Mapping[str, Handler] = HANDLERS,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> list[tuple]:
    """The outcomes of one batch, in the order of `tasks`."""
    with HandlerRunner(concurrency, handlers, services) as runner:
        runner.add(tasks)
        finished, _ = runner.take(len(tasks), more=False)
    order = {task.id: i for i, task in enumerate(tasks)}
    return sorted(finished, key=lambda outcome: order[outcome[0].id])


def drain(
    dsn: str,
    *,
    services: Services,
    handlers: Mapping[str, Handler] = HANDLERS,
    task_types: Sequence[str] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    budget_seconds: float = DEFAULT_BUDGET_SECONDS,
    owner: str | None = None,
    lease_seconds: float = 300.0,
    backoff_base_seconds: float = 5.0,
    on_batch: Callable[[list[ClaimedTask]], None] | None = None,
    queue: TaskQueue | None = None,
    check_block: bool = True,
    idle_seconds: float = 0.0,
) -> DrainSummary:
    """Claim and run batches until the queue has nothing ready or `budget_seconds` is spent.

    One statement per step: the first claims, each later one settles what has finished and
    claims as many as the batch has room for, while the tasks still running go on. `queue`
    (optional) is an open TaskQueue to use (and leave open).

    With `check_block` (for the queue it opens; a given `queue` has its own), each claim checks
    in its own statement whether an open FSAR report blocks execution: once one does, the drain
    claims nothing more, settles what is running, and stops (`stopped_by` "blocked", `blocked_by`
    the report).

    With `idle_seconds` the drain is hot: once the queue is empty it waits on the queue's
    notifications (``TaskQueue.listen``, ``wait``), and for the next queued task to fall due,
    and claims again at once; it ends when nothing came for `idle_seconds`, or at the budget.
    Work that arrives in a busy period is then claimed within milliseconds, by the drains that
    run already."""
    from include.bounds import bounded

    # NaN or infinity would never run out (`elapsed >= nan` is never true): the drain would not stop
    budget_seconds = bounded("budget_seconds", budget_seconds, low=0, low_open=True, high=86_400)
    batch_size = bounded("batch_size", batch_size, low=1, high=100_000, integer=True)
    concurrency = bounded("concurrency", concurrency, low=1, high=1024, integer=True)
    idle_seconds = bounded("idle_seconds", idle_seconds, low=0, high=86_400)
    summary = DrainSummary()
    started = time.monotonic()
    own_queue = queue is None
    if queue is None:
        queue = TaskQueue(
            dsn,
            owner=owner,
            lease_seconds=lease_seconds,
            backoff_base_seconds=backoff_base_seconds,
            check_block=check_block,
        )
        queue.record_session()  # the role this drain runs as, for the audit
    keeper = LeaseKeeper(dsn, queue.owner, queue.lease_seconds)

    def blocked() -> bool:  # the last claim found an open FSAR report blocking execution
        if queue.blocked_by is not None and summary.blocked_by is None:
            summary.blocked_by, summary.stopped_by = queue.blocked_by, "blocked"
        return summary.blocked_by is not None

    try:
        if idle_seconds:
            queue.listen()  # before the first claim: nothing enqueued after it goes unnoticed
        with HandlerRunner(concurrency, handlers, services) as runner:
            tasks, out_of_budget = queue.claim(batch_size, task_types), False
            while True:
                if not tasks and not runner.held:  # the queue is empty, or execution is blocked
                    if not idle_seconds or out_of_budget or blocked():
                        break
                    until = min(time.monotonic() + idle_seconds, started + budget_seconds)
                    tasks = _wait_for_work(queue, batch_size, task_types, until)
                    if not tasks:
                        out_of_budget = time.monotonic() - started >= budget_seconds
                        break
                    summary.woken += 1
                if tasks:
                    if on_batch is not None:
                        on_batch(tasks)
                    runner.add(tasks)
                    summary.batches += 1
                keeper.hold(list(runner.held.values()))
                outcomes, room = runner.take(batch_size, more=bool(tasks) and not out_of_budget)
                out_of_budget = time.monotonic() - started >= budget_seconds
                claim = 0 if out_of_budget or not room or blocked() else room
                tasks = _settle(queue, outcomes, services, summary, claim, task_types)
            if not blocked() and out_of_budget:
                summary.stopped_by = "budget"
    finally:
        keeper.stop()
        if own_queue:
            queue.close()
        summary.seconds = time.monotonic() - started
    return summary


WAIT_FOR_CLAIMED_SECONDS = 0.05  # ready rows that another drain is claiming: wait this long, not spin


def _wait_for_work(
    queue: TaskQueue, batch_size: int, task_types: Sequence[str] | None, until: float
) -> list[ClaimedTask]:
    """An idle drain's wait (the queue listens): the next batch, claimed as soon as a
    notification comes or a queued task falls due; empty once `until` (monotonic) has passed."""
    while (left := until - time.monotonic()) > 0:
        due = queue.seconds_until_due(task_types)
        if due is None or due > 0:
            queue.wait(left if due is None else min(left, due), task_types)
        tasks = queue.claim(batch_size, task_types)
        if tasks or queue.blocked_by is not None:  # an FSAR report blocks execution: stop waiting
            return tasks
        if due == 0:
            queue.wait(min(left, WAIT_FOR_CLAIMED_SECONDS), task_types)
    return []


def _settle(
    queue: TaskQueue,
    outcomes: list,
    services: Services,
    summary: DrainSummary,
    next_batch: int,
    task_types: Sequence[str] | None,
) -> list[ClaimedTask]:
    """Record the finished outcomes and claim up to `next_batch` more, in one statement."""
    done, failures = [], []
    texts: dict[int, str] = {}  # a result shared by several tasks (one cached answer, say) is encoded once
    for task, result, exc, ms in outcomes:
        if exc is None:
            try:  # a result the table cannot hold fails its task (permanently), not the whole batch
                text = texts.get(id(result))
                if text is None:
                    text = texts[id(result)] = to_jsonb_text(result, "the handler's result")
                done.append(Completion(task, result, round(ms), text))
                continue
            except ValueError as bad:
                exc = PermanentError(str(bad))
        failures.append(
            Failure(
                task,
                f"{type(exc).__name__}: {exc}",
                retryable=not isinstance(exc, PermanentError),
                duration_ms=round(ms),
            )
        )
        if len(summary.errors) < 20:
            summary.errors.append(f"task {task.id} ({task.task_type}): {type(exc).__name__}: {exc}"[:500])
    completed, failed, claimed = queue.settle_and_claim(done, failures, next_batch, task_types)
    if failed.requeued and next_batch and not claimed:  # the claim did not see this step's requeues:
        claimed = queue.claim(next_batch, task_types)  # look once more (a retry may be ready at once)
    completed = set(completed)
    for task, _, _, ms in outcomes:
        tally = summary.by_type[task.task_type]
        tally.tasks += 1
        tally.exec_ms += ms
        tally.queue_wait_ms += task.queue_wait_ms
        if task.id in services.cache_hits:
            tally.cache_hits += 1
            tally.cache_hit_ms += ms
    for c in done:
        tally = summary.by_type[c.task.task_type]
        tally.succeeded += c.task.id in completed
        tally.refused += c.task.id not in completed
    attr_of = {
        i: attr
        for ids, attr in (
            (failed.requeued, "retried"),
            (failed.failed, "failed"),
            (failed.dead, "dead"),
            (failed.refused, "refused"),
        )
        for i in ids
    }
    for f in failures:
        tally = summary.by_type[f.task.task_type]
        setattr(tally, attr_of[f.task.id], getattr(tally, attr_of[f.task.id]) + 1)
    return claimed


def merge_summaries(summaries: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per-type totals across the drains of one run (their `as_dict()` forms)."""
    totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for summary in summaries:
        for task_type, tally in (summary or {}).get("by_type", {}).items():
            for key, value in tally.items():
                totals[task_type][key] += value
    return {t: dict(v) for t, v in sorted(totals.items())}

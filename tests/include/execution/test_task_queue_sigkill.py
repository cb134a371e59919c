"""Twenty trials that SIGKILL a worker process mid-batch, against the real PostgreSQL.

After each kill: what it completed stays completed once, what it held goes back to the queue
through the reaper (none lost), its leases can no longer complete anything, and a second worker
drains the rest so every task ends completed exactly once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from include.execution.drain import drain
from include.execution.task_handlers import REQUIRED_INPUTS, Services
from include.execution.task_queue import ClaimedTask, Completion, TaskQueue
from tests.pg import query
from tests.project import ROOT

WORKER = Path(__file__).with_name("sigkill_worker.py")
TRIALS = 20
TASKS_PER_TRIAL = 200

COMPLETION_LOG = """
CREATE TABLE completion_log (task_id bigint NOT NULL);
CREATE FUNCTION log_completion() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO completion_log VALUES (NEW.id); RETURN NEW; END $$;
CREATE TRIGGER log_completion AFTER UPDATE ON execution_tasks
    FOR EACH ROW WHEN (NEW.status = 'succeeded') EXECUTE FUNCTION log_completion();
"""


def run_trial(dsn: str, trial: int, tmp: Path, rng: random.Random) -> dict[str, int]:
    with TaskQueue(dsn) as q:
        ids = q.enqueue_many(
            [
                {"task_type": "idea", "payload": {"n": i}, "idempotency_key": f"t{trial}-{i}"}
                for i in range(TASKS_PER_TRIAL)
            ]
        )
    claims = tmp / f"claims-{trial}.txt"
    claims.touch()
    name = f"sigkill_trial_{trial}"  # the worker's sessions, by their application_name
    worker = subprocess.Popen(
        [sys.executable, str(WORKER), f"{dsn} application_name={name}", str(claims)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 30
    while len(claims.read_text().splitlines()) < 20 * rng.randint(1, 4):  # after 1-4 batches began
        assert worker.poll() is None, "the worker exited before it was killed"
        assert time.monotonic() < deadline, "the worker claimed nothing"
        time.sleep(0.002)
    sessions = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
    assert query(dsn, sessions, (name,)) != [(0,)], "the worker's sessions are not found by name"
    time.sleep(rng.uniform(0, 0.03))  # somewhere inside the batch
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    # a statement the worker sent just before it died still runs, and commits, on the server (a
    # claim of more tasks, say): the counts below are read once its sessions have ended
    ended_by = time.monotonic() + 30
    while query(dsn, sessions, (name,)) != [(0,)]:
        assert time.monotonic() < ended_by, "the killed worker's sessions did not end"
        time.sleep(0.01)

    def states() -> Counter:
        return Counter(
            dict(
                query(
                    dsn,
                    "SELECT status, count(*) FROM execution_tasks WHERE id = ANY(%s) GROUP BY status",
                    (ids,),
                )
            )
        )

    at_kill = states()
    time.sleep(1.1)  # the worker's 1 s leases expire
    with TaskQueue(dsn, owner="reaper") as q:
        reaped = q.reap()
        held = [line.split() for line in claims.read_text().splitlines()]
        stale = [ClaimedTask(int(i), "idea", {}, None, 1, 5, token, 0.0) for i, token in held]
        late = q.complete([Completion(t, {"late": True}, 1) for t in stale])
    summary = drain(
        dsn,
        services=Services(),
        handlers={t: lambda task, s: {"done": task.id} for t in REQUIRED_INPUTS},
        batch_size=50,
        concurrency=4,
    )
    end = states()
    completions = Counter(
        t for (t,) in query(dsn, "SELECT task_id FROM completion_log WHERE task_id = ANY(%s)", (ids,))
    )
    return {
        "completed_before_kill": at_kill["succeeded"],
        "in_flight_at_kill": at_kill["running"],
        "requeued_by_reaper": reaped["requeued"],
        "late_completions_tried": len(stale),
        "late_completions_accepted": len(late),
        "completed_by_second_worker": sum(t.succeeded for t in summary.by_type.values()),
        "completed_once": sum(1 for i in ids if completions[i] == 1),
        "completed_twice_or_more": sum(1 for i in ids if completions[i] > 1),
        "lost": TASKS_PER_TRIAL - end["succeeded"],
    }


def test_twenty_sigkilled_workers_lose_nothing_and_complete_nothing_twice(
    app_head_dsn, tmp_path, record_property, capsys
):
    query(app_head_dsn, COMPLETION_LOG)
    rng = random.Random(6)
    totals: Counter = Counter()
    for trial in range(TRIALS):
        counts = run_trial(app_head_dsn, trial, tmp_path, rng)
        assert counts["in_flight_at_kill"] == counts["requeued_by_reaper"], (trial, counts)
        assert counts["late_completions_accepted"] == 0, (trial, counts)
        assert counts["completed_once"] == TASKS_PER_TRIAL, (trial, counts)
        assert counts["completed_twice_or_more"] == counts["lost"] == 0, (trial, counts)
        assert counts["completed_before_kill"] + counts["completed_by_second_worker"] == TASKS_PER_TRIAL
        totals.update(counts)
    assert totals["in_flight_at_kill"] > 0, "no kill landed mid-batch: the trials proved nothing"
    line = f"SIGKILL trials={TRIALS} tasks={TRIALS * TASKS_PER_TRIAL} " + " ".join(
        f"{k}={v}" for k, v in totals.items()
    )
    record_property("sigkill_counts", line)
    with capsys.disabled():  # the counts the issue asks to report, shown on every run
        sys.stdout.write(f"\n{line}\n")

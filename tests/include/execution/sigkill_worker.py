"""A queue worker for the SIGKILL trials: drains with 5 ms handlers, logging each claim first.

    python tests/include/execution/sigkill_worker.py DSN CLAIMS_FILE

Every claimed (id, lease token) is written and fsynced before its handlers run, so the test
knows exactly which leases the killed process held.
"""

from __future__ import annotations

import os
import sys
import time

from include.execution.drain import drain
from include.execution.task_handlers import REQUIRED_INPUTS, Services


def sleepy(task, services):
    time.sleep(0.005)
    return {"done": task.id}


def main(dsn: str, claims_path: str) -> None:
    with open(claims_path, "a") as claims:

        def log_claims(tasks):
            claims.write("".join(f"{t.id} {t.lease_token}\n" for t in tasks))
            claims.flush()
            os.fsync(claims.fileno())

        drain(
            dsn,
            services=Services(),
            handlers={t: sleepy for t in REQUIRED_INPUTS},
            batch_size=20,
            concurrency=4,
            lease_seconds=1.0,
            owner=f"doomed:{os.getpid()}",
            on_batch=log_claims,
        )


if __name__ == "__main__":
    main(*sys.argv[1:3])

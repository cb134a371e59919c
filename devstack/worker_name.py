"""The host name Airflow records for a task instance (`[core] hostname_callable`).

Several Celery workers of the local stack share one machine; each gets its own name in
`AIRFLOW_WORKER_NAME`, so the task instances show which worker ran them. Elsewhere (no
variable) it is the machine's name, Airflow's default.
"""

from __future__ import annotations

import os
import socket

WORKER_NAME_VAR = "AIRFLOW_WORKER_NAME"


def hostname() -> str:
    return os.environ.get(WORKER_NAME_VAR) or socket.getfqdn()

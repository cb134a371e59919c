"""Throttling a batched backfill so that it yields to the application's writers.

Plain Python, no database: the revision runs a batch, measures it and the database, hands the
observation to `Throttle.observe`, and sleeps the pause it is told. The rules, after
pt-online-schema-change and gh-ost:

* **chunk time** (pt-osc's ``--chunk-time``): the id span of the next batch is the rate seen so
  far (ids per second, a decaying average) times `target_batch_s`, between `min_batch` and
  `max_batch`, and at most twice the previous span; a busy database makes batches slower, so
  they shrink. A `target_batch_s` of 0 keeps the starting span.
* **nice ratio** (gh-ost's ``--nice-ratio``): while other sessions are running statements
  (``pg_stat_activity``: active client backends, like MySQL's Threads_running), each batch is
  followed by a pause of `nice_ratio` times its own duration; the backfill then takes at most
  1 / (1 + nice_ratio) of the database's time. On a quiet database (a rehearsal clone) there is
  no pause.
* **contention**: sessions waiting on a lock, or the probe (the round trip of the statement that
  reads ``pg_stat_activity``) slower than `probe_factor` times the fastest seen plus `probe_slack_s`,
  double the pause for every batch in a row that sees it, up to `max_pause_s`.
* **budget**: once the pauses add up to `budget_s`, the backfill stops pausing and finishes at
  full speed, so that a migration always ends: a throttled backfill takes at most its unthrottled
  time plus the budget.

`Report` is what a run did; the revision logs it and keeps the last one (`last_report()`), which
is how the bench and the runner's callers can print it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

# The sampling statement: its own round trip is the latency probe. Other client sessions of this
# database only (not autovacuum, walwriter, this session, or another database's clients, such as
# Airflow's own on a shared server); `active` means running a statement right now.
PROBE_SQL = """
SELECT count(*) FILTER (WHERE state = 'active'),
       count(*) FILTER (WHERE wait_event_type = 'Lock')
  FROM pg_stat_activity
 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND datname = current_database()
"""
# pt-osc's weight of the history in its rate average
RATE_WEIGHT = 0.75


@dataclass(frozen=True)
class ThrottleConfig:
    initial_batch: int = 10_000
    target_batch_s: float = 0.1
    min_batch: int = 100
    max_batch: int = 100_000
    nice_ratio: float = 9.0
    max_pause_s: float = 5.0
    budget_s: float = 600.0
    probe_factor: float = 3.0
    probe_slack_s: float = 0.002


def config_from(settings) -> ThrottleConfig:
    """The throttle that `include.migrations.Settings` asks for."""
    return ThrottleConfig(
        initial_batch=int(settings.backfill_batch_size),
        target_batch_s=float(settings.backfill_target_batch_s),
        nice_ratio=float(settings.backfill_nice_ratio),
        max_pause_s=float(settings.backfill_max_pause_s),
        budget_s=float(settings.backfill_throttle_budget_s),
    )


@dataclass(frozen=True)
class Observation:
    """One batch as the revision measured it."""

    seconds: float  # the batch statement's duration
    ids: int  # the id span it covered
    rows: int = 0  # rows it updated
    active: int = 0  # other client sessions running a statement, sampled after it
    waiting: int = 0  # other client sessions waiting on a lock
    probe_s: float | None = None  # the sampling statement's round trip


@dataclass(frozen=True)
class Decision:
    batch: int  # the id span of the next batch
    pause_s: float  # how long to sleep before it
    reason: str  # "quiet", "busy", "contended" or "budget spent"


@dataclass
class Report:
    """What a throttled backfill did; `phases` holds (start, end) `time.perf_counter()` values."""

    name: str
    batches: int = 0
    rows: int = 0
    final_batch: int = 0
    pause_s: float = 0.0
    paused_batches: int = 0
    contended_batches: int = 0
    budget_spent: bool = False
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)

    def seconds(self, phase: str) -> float:
        start, end = self.phases.get(phase, (0.0, 0.0))
        return end - start

    def summary(self) -> str:
        steps = ", ".join(f"{name} {self.seconds(name):.1f} s" for name in self.phases)
        return (
            f"{self.name}: {self.batches} batches, {self.rows} rows, final batch {self.final_batch} ids, "
            f"paused {self.pause_s:.1f} s after {self.paused_batches} batches "
            f"({self.contended_batches} contended)"
            + ("; budget spent, finished at full speed" if self.budget_spent else "")
            + (f"; {steps}" if steps else "")
        )


class Throttle:
    def __init__(self, config: ThrottleConfig, name: str = "backfill"):
        self.config = config
        self.batch = max(1, config.initial_batch)
        self.report = Report(name, final_batch=self.batch)
        self._n = self._t = 0.0  # decayed sums of ids and seconds (pt-osc's weighted rate)
        self._fastest_probe: float | None = None
        self._streak = 0  # batches in a row that saw contention

    @property
    def budget_left(self) -> float:
        left = self.config.budget_s - self.report.pause_s
        return left if left > 1e-6 else 0.0  # not a float sum's leftover

    def observe(self, obs: Observation, more: bool = True) -> Decision:
        """Account for a finished batch; the span of the next one and the pause before it
        (none when `more` is false: that was the last batch)."""
        c, r = self.config, self.report
        r.batches += 1
        r.rows += obs.rows
        self.batch = self._next_batch(obs)
        r.final_batch = self.batch
        contended = self._contended(obs)
        r.contended_batches += contended
        if not more:
            return Decision(self.batch, 0.0, "last")
        if self.budget_left <= 0:
            if not r.budget_spent:
                logger.info("%s: throttle budget of %g s spent; full speed from here", r.name, c.budget_s)
            r.budget_spent = True
            return Decision(self.batch, 0.0, "budget spent")
        if contended:
            self._streak += 1
            base = max(c.nice_ratio * obs.seconds, c.target_batch_s, 0.01)
            pause, reason = base * 2 ** (self._streak - 1), "contended"
        else:
            self._streak = 0
            if obs.active <= 0:
                return Decision(self.batch, 0.0, "quiet")
            pause, reason = c.nice_ratio * obs.seconds, "busy"
        pause = min(pause, c.max_pause_s, self.budget_left)
        if pause > 0:
            r.pause_s += pause
            r.paused_batches += 1
        return Decision(self.batch, pause, reason)

    def _contended(self, obs: Observation) -> bool:
        if obs.waiting > 0:
            return True
        if obs.probe_s is None:
            return False
        fastest = self._fastest_probe = min(obs.probe_s, self._fastest_probe or obs.probe_s)
        return obs.probe_s > self.config.probe_factor * fastest + self.config.probe_slack_s

    def _next_batch(self, obs: Observation) -> int:
        c = self.config
        if c.target_batch_s <= 0 or obs.seconds <= 0 or obs.ids <= 0:
            return self.batch
        self._n = self._n * RATE_WEIGHT + obs.ids
        self._t = self._t * RATE_WEIGHT + obs.seconds
        wanted = int(self._n / self._t * c.target_batch_s)
        low = min(c.min_batch, c.initial_batch)
        return max(low, min(wanted, c.max_batch, 2 * self.batch))


def run(
    throttle: Throttle,
    lo: int,
    hi: int,
    batch: Callable[[int, int], Observation],
    sleep: Callable[[float], None] = time.sleep,
) -> Report:
    """Run `batch(lo, size)` (ids [lo, lo + size), one transaction, measured) over ids [lo, hi]
    in throttled spans, sleeping the pauses; the revision's loop, kept here to be testable."""
    while lo <= hi:
        size = throttle.batch
        obs = batch(lo, size)
        lo += size
        decision = throttle.observe(obs, more=lo <= hi)
        if decision.pause_s > 0:
            sleep(decision.pause_s)
    return throttle.report


_last: Report | None = None


def record(report: Report) -> None:
    """Keep `report` as the last one and log its summary."""
    global _last
    _last = report
    logger.info("%s", report.summary())


def last_report() -> Report | None:
    """The report of the last throttled backfill in this process (None if none ran)."""
    return _last


def perf_phase(report: Report, name: str, start: float) -> None:
    report.phases[name] = (start, time.perf_counter())

"""Where FSAR reports are kept, and the block an open one puts on execution.

A report (include.audit.fsar) is kept twice: a row of `fsar_reports` (revision 0010), which the
block check reads, and its JSON and Markdown in S3 (`FsarArchive`, beside the backups, where a
restore of the database cannot roll it back). A report is open until it is closed: by a later
audit that passed every gate its findings named (`passed_reports`), or by a person with a reason
(`close`).

**The block.** While an open report has `block_execution` true, execution stops: `task_batch`
claims nothing, offers are not published to Stripe, no model is promoted. `BLOCK_QUERY` is the one
check all of them run (the queue's claim embeds it, `BLOCKING_REPORT`): an index scan of
`fsar_reports_blocking_idx`, a partial index holding only the open blocking reports (usually
none). The block lives in the database, so it holds across restarts and across workers. Before
revision 0010 there is no table and nothing blocks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from include.audit import fsar

SOURCES = ("audit", "external")
# the open report that blocks, the most severe first (fsar_reports_blocking_idx's order); the
# queue's claim embeds BLOCKING_REPORT (include.execution.task_queue.unless_blocked)
_BLOCKING = (
    "FROM fsar_reports WHERE status = 'open' AND block_execution ORDER BY severity DESC, issued_at LIMIT 1"
)
BLOCKING_REPORT = f"SELECT id {_BLOCKING}"  # noqa: S608 (module constant)
BLOCK_QUERY = f"SELECT id, severity, task_type, source, issued_at {_BLOCKING}"  # noqa: S608 (module constant)
# gates whose failure is about the schema: a report naming one of them "names the schema"
SCHEMA_GATES = frozenset(
    {"migrations_match_files", "migrations_not_pending_too_long", "queue_ai_model_after_migration"}
)
_SCHEMA_WORDS = re.compile(r"\b(schema|migrations?|revisions?|alembic|db_migrate)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Blocking:
    """The open report that blocks execution."""

    id: str
    severity: int
    task_type: str
    source: str
    issued_at: Any

    def __str__(self) -> str:
        return (
            f"execution is blocked by FSAR report {self.id} (severity {self.severity}, {self.source}, "
            f"{self.task_type}, issued {self.issued_at:%Y-%m-%d %H:%M} UTC): resolve it, or run "
            "adversarial_audit once its gates pass"
        )


class ReportRefused(ValueError):
    """A report that cannot be stored as given (an id already used by another report)."""


def table_ready(cur) -> bool:
    cur.execute("SELECT to_regclass('public.fsar_reports') IS NOT NULL")
    return bool(cur.fetchone()[0])


def blocking_report(cur) -> Blocking | None:
    """The open report that blocks execution, the most severe; None when none does, or before
    revision 0010."""
    if not table_ready(cur):
        return None
    cur.execute(BLOCK_QUERY)
    row = cur.fetchone()
    return Blocking(*row) if row else None


def names_schema(report: fsar.FsarReport, gates: Iterable[str] = ()) -> bool:
    """An audit report names the schema when a schema gate failed; any report, when its proposal
    speaks of the schema, a migration, a revision or db_migrate."""
    return bool(SCHEMA_GATES.intersection(gates)) or bool(_SCHEMA_WORDS.search(report.proposal))


def store(
    cur,
    report: fsar.FsarReport,
    *,
    source: str,
    filed_by: str,
    audit_run_id: int | None = None,
    gates: Sequence[str] = (),
    s3_prefix: str | None = None,
) -> bool:
    """Keep `report` in `fsar_reports`; True when this call stored it (new, or an audit's report
    re-issued by a re-run of the same audit run, which replaces its row and opens it again). The
    same external report filed again changes nothing; another report under a used id is refused."""
    if source not in SOURCES:
        raise ValueError(f"report source {source!r} is not one of {SOURCES}")
    document = fsar.to_json(report)
    cur.execute("SELECT report, source, status FROM fsar_reports WHERE id = %s FOR UPDATE", (report.id,))
    existing = cur.fetchone()
    if existing is not None and not (source == "audit" and existing[1] == "audit"):
        if existing[0] == document:
            return False
        raise ReportRefused(
            f"FSAR report id {report.id} is already used by another report ({existing[1]}, "
            f"{existing[2]}): a new report needs a new id"
        )
    cur.execute(
        """
        INSERT INTO fsar_reports (id, issued_at, severity, block_execution, task_type, source, filed_by,
                                  audit_run_id, gates, names_schema, report, markdown, s3_prefix)
        VALUES (%(id)s, %(issued_at)s, %(severity)s, %(block)s, %(task_type)s, %(source)s, %(filed_by)s,
                %(audit_run_id)s, %(gates)s, %(names_schema)s, %(report)s, %(markdown)s, %(s3_prefix)s)
        ON CONFLICT (id) DO UPDATE SET
            issued_at = EXCLUDED.issued_at, severity = EXCLUDED.severity,
            block_execution = EXCLUDED.block_execution, task_type = EXCLUDED.task_type,
            gates = EXCLUDED.gates, names_schema = EXCLUDED.names_schema, report = EXCLUDED.report,
            markdown = EXCLUDED.markdown, s3_prefix = EXCLUDED.s3_prefix, recorded_at = now(),
            -- an audit re-run re-issues its report from its new findings: open again until closed
            status = 'open', closed_at = NULL, closed_by = NULL, resolution = NULL,
            closed_by_audit_run_id = NULL
        """,
        {
            "id": report.id,
            "issued_at": report.timestamp,
            "severity": report.severity,
            "block": report.block_execution,
            "task_type": report.task_type,
            "source": source,
            "filed_by": filed_by[:200],
            "audit_run_id": audit_run_id,
            "gates": list(gates),
            "names_schema": names_schema(report, gates),
            "report": json.dumps(document),
            "markdown": fsar.render(report),
            "s3_prefix": s3_prefix,
        },
    )
    return True


def mark_block_alerted(cur, report_id: str) -> bool:
    """True once per report: for the first caller that sees its block (who then alerts)."""
    cur.execute(
        "UPDATE fsar_reports SET block_alerted_at = now() WHERE id = %s AND block_alerted_at IS NULL "
        "RETURNING id",
        (report_id,),
    )
    return cur.fetchone() is not None


@dataclass(frozen=True)
class Closed:
    id: str
    blocked: bool  # it blocked execution until now
    source: str
    filed_by: str
    gates: tuple[str, ...]


def report_row(cur, report_id: str) -> dict[str, Any] | None:
    cur.execute(
        "SELECT id, status, block_execution, source, filed_by, gates, severity, names_schema, "
        "closed_by, closed_by_audit_run_id, resolution, markdown, report FROM fsar_reports WHERE id = %s",
        (report_id,),
    )
    row = cur.fetchone()
    return dict(zip([d[0] for d in cur.description], row, strict=True)) if row else None


def close(
    cur, report_id: str, *, closed_by: str, resolution: str, audit_run_id: int | None = None
) -> Closed | None:
    """Close an open report with why; None when it is not open (closed already, or unknown)."""
    if not resolution or not resolution.strip():
        raise ValueError(f"closing FSAR report {report_id} needs a reason")
    cur.execute(
        """
        UPDATE fsar_reports SET status = 'closed', closed_at = now(), closed_by = %s, resolution = %s,
               closed_by_audit_run_id = %s
         WHERE id = %s AND status = 'open'
        RETURNING id, block_execution, source, filed_by, gates
        """,
        (closed_by[:200], resolution.strip()[:2000], audit_run_id, report_id),
    )
    row = cur.fetchone()
    return Closed(row[0], row[1], row[2], row[3], tuple(row[4])) if row else None


def passed_reports(cur, audit_run_id: int, passed_gates: Iterable[str]) -> list[tuple[str, list[str]]]:
    """(id, gates) of the open audit reports, from other audits, all of whose named gates passed
    in audit `audit_run_id`: the reports that audit closes. External reports name no gate: a
    person closes them."""
    cur.execute(
        "SELECT id, gates FROM fsar_reports WHERE status = 'open' AND source = 'audit' AND gates <> '{}' "
        "AND gates <@ %s::text[] AND coalesce(audit_run_id, -1) <> %s ORDER BY issued_at",
        (sorted(set(passed_gates)), audit_run_id),
    )
    return cur.fetchall()


def blocking_schema_reports(cur) -> list[tuple[str, int]]:
    """(id, severity) of the open blocking reports that name the schema (db_migrate's refusal)."""
    if not table_ready(cur):
        return []
    cur.execute(
        "SELECT id, severity FROM fsar_reports WHERE status = 'open' AND block_execution AND names_schema "
        "ORDER BY severity DESC, issued_at"
    )
    return cur.fetchall()


REPORT_COLUMNS = (
    "id, status, severity, block_execution AS blocks, source, filed_by, task_type, "
    "coalesce(array_to_string(gates, ', '), '') AS gates, issued_at, "
    "coalesce(closed_by, '') AS closed_by, left(coalesce(resolution, ''), 160) AS resolution"
)


def recent_reports(cur, limit: int = 20) -> list[tuple]:
    """The open reports (blocking ones first), then the newest closed ones; with column names
    (`cur.description`) as REPORT_COLUMNS says."""
    cur.execute(
        f"SELECT {REPORT_COLUMNS} FROM fsar_reports "  # noqa: S608 (module constant)
        "ORDER BY status = 'open' DESC, block_execution DESC, severity DESC, recorded_at DESC LIMIT %s",
        (limit,),
    )
    return cur.fetchall()


class FsarArchive:
    """Reports in S3: `<prefix>/reports/<id>.json` (the record and its state) and `<id>.md` (the
    report as filed), and the inbox fsar_intake reads, `<prefix>/inbox/*.md`, whose files move
    to `<prefix>/processed/` (accepted) or `<prefix>/refused/` (with `<name>.error.txt` saying why)."""

    def __init__(self, s3, bucket: str, prefix: str = "fsar") -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, prefix.strip("/")

    def report_prefix(self, report_id: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}/reports/{report_id}"

    def put(self, report: fsar.FsarReport, state: dict[str, Any]) -> str:
        key = f"{self.prefix}/reports/{report.id}"
        body = json.dumps({"report": fsar.to_json(report), **state}, default=str, sort_keys=True)
        self.s3.put_object(
            Bucket=self.bucket, Key=f"{key}.json", Body=body.encode(), ContentType="application/json"
        )
        self.s3.put_object(
            Bucket=self.bucket,
            Key=f"{key}.md",
            Body=fsar.render(report).encode(),
            ContentType="text/markdown",
        )
        return self.report_prefix(report.id)

    def update_state(self, report_id: str, state: dict[str, Any]) -> None:
        """Rewrite the JSON's state (status, how it closed) beside its unchanged report."""
        key = f"{self.prefix}/reports/{report_id}.json"
        document = json.loads(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        document.update(state)
        self.s3.put_object(
            Bucket=self.bucket, Key=key, Body=json.dumps(document, default=str, sort_keys=True).encode()
        )

    def read_json(self, report_id: str) -> dict[str, Any]:
        key = f"{self.prefix}/reports/{report_id}.json"
        return json.loads(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def inbox(self) -> list[str]:
        """The keys of the report files waiting in the inbox, oldest name first."""
        keys: list[str] = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/inbox/"):
            keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".md")]
        return sorted(keys)

    def read(self, key: str) -> str:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read().decode("utf-8", "replace")

    def file_away(self, key: str, accepted: bool, error: str | None = None) -> str:
        """Move an inbox file out of the inbox (so it is read once); returns its new key."""
        name = key.rsplit("/", 1)[-1]
        folder = "processed" if accepted else "refused"
        target = f"{self.prefix}/{folder}/{name}"
        self.s3.copy_object(Bucket=self.bucket, Key=target, CopySource={"Bucket": self.bucket, "Key": key})
        if error:
            self.s3.put_object(Bucket=self.bucket, Key=f"{target}.error.txt", Body=error.encode())
        self.s3.delete_object(Bucket=self.bucket, Key=key)
        return target

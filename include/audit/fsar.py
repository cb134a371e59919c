"""FSAR proposal reports: the Markdown format the platform's remediation work starts from, both ways.

A report is a fixed header, a proposal and two lists::

    # FSAR Proposal Report
    - id: fsar_<uuid>
    - timestamp: <ISO 8601 UTC with milliseconds and Z>
    - severity: <integer 0-100>
    - block_execution: <true|false>
    - proposal:

    <task type>: <free Markdown: paragraphs, ### headings, #### sub-headings, lists, `code`>

    ## Risks
    - <Kind>: <text>

    ## Mitigations
    - <text>

`parse` is strict: a malformed report raises `FsarFormatError` naming the field and the line
(1-based), and nothing is made of it. It forgives what people's Markdown does without meaning
anything: blank lines added anywhere, several spaces after a colon, trailing spaces, and the case
of `true`/`false` and of the id's hex digits. `render` writes the canonical form, which `parse`
reads back to the same record (`parse(render(r)) == r`); `to_json`/`from_json` are the same record
as JSON (what S3 keeps beside the Markdown).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from include.ids import FSAR_REPORT_ID, TASK_TYPES

TITLE = "# FSAR Proposal Report"
HEADER_FIELDS = ("id", "timestamp", "severity", "block_execution", "proposal")
RISKS, MITIGATIONS = "## Risks", "## Mitigations"

ID_FORMAT = re.compile(rf"^{FSAR_REPORT_ID}$")
TIMESTAMP_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
_HEADER_LINE = re.compile(r"^-\s+([A-Za-z_]+)\s*:\s*(.*)$")
_RISK_LINE = re.compile(r"^[-*]\s+([A-Za-z][A-Za-z0-9 _/-]{0,63}?)\s*:\s+(\S.*)$")
_BULLET = re.compile(r"^[-*]\s+(\S.*)$")
_SECTION = re.compile(r"^##\s+(\S.*)$")  # a level-2 heading (### and deeper belong to the proposal)
MAX_REPORT_CHARS = 200_000


class FsarFormatError(ValueError):
    """A report that does not follow the format: names the field and the line."""

    def __init__(self, field_name: str, line: int | None, message: str) -> None:
        self.field = field_name
        self.line = line
        where = f"line {line}" if line else "end of report"
        super().__init__(f"FSAR report, {where}, field {field_name}: {message}")


@dataclass(frozen=True)
class Risk:
    kind: str
    text: str


@dataclass(frozen=True)
class FsarReport:
    id: str
    timestamp: datetime  # UTC, to the millisecond
    severity: int  # 0-100
    block_execution: bool
    task_type: str  # one of include.ids.TASK_TYPES: the execution-task type the proposal concerns
    proposal: str  # Markdown, after "<task type>:"
    risks: tuple[Risk, ...] = field(default_factory=tuple)
    mitigations: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if isinstance(self.proposal, str):  # the proposal as parse reads it back: a record round-trips
            object.__setattr__(self, "proposal", _normalise_markdown(self.proposal.strip().split("\n")))
        object.__setattr__(self, "risks", tuple(self.risks))
        object.__setattr__(self, "mitigations", tuple(self.mitigations))
        check(self)


def new_id() -> str:
    return f"fsar_{uuid.uuid4()}"


def now_ms() -> datetime:
    """The current UTC time, to the millisecond (what the format keeps)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def check(report: FsarReport) -> None:
    """Refuse a record the format cannot hold (what `parse` refuses in text)."""
    if not isinstance(report.id, str) or not ID_FORMAT.match(report.id):
        raise FsarFormatError("id", None, f"{report.id!r:.80} is not fsar_<uuid>")
    ts = report.timestamp
    if not isinstance(ts, datetime) or ts.utcoffset() is None or ts.utcoffset().total_seconds() != 0:
        raise FsarFormatError("timestamp", None, f"{ts!r:.80} is not a UTC datetime")
    if ts.microsecond % 1000:
        raise FsarFormatError("timestamp", None, f"{ts.isoformat()} has more precision than milliseconds")
    if (
        isinstance(report.severity, bool)
        or not isinstance(report.severity, int)
        or not 0 <= report.severity <= 100
    ):
        raise FsarFormatError("severity", None, f"{report.severity!r:.40} is not an integer from 0 to 100")
    if not isinstance(report.block_execution, bool):
        raise FsarFormatError("block_execution", None, f"{report.block_execution!r:.40} is not true or false")
    if report.task_type not in TASK_TYPES:
        raise FsarFormatError(
            "proposal", None, f"task type {report.task_type!r:.60} is not one of {TASK_TYPES}"
        )
    if not report.proposal.strip():
        raise FsarFormatError("proposal", None, "the proposal is empty")
    if not report.risks:
        raise FsarFormatError("risks", None, "a report names at least one risk")
    for risk in report.risks:
        if not _RISK_LINE.match(f"- {risk.kind}: {risk.text}") or "\n" in risk.text:
            raise FsarFormatError("risks", None, f"{risk!r:.80} is not one line '<Kind>: <text>'")
    for mitigation in report.mitigations:
        if not isinstance(mitigation, str) or not _BULLET.match(f"- {mitigation}") or "\n" in mitigation:
            raise FsarFormatError("mitigations", None, f"{mitigation!r:.80} is not one line of text")
    if not report.mitigations:
        raise FsarFormatError("mitigations", None, "a report names at least one mitigation")


def format_timestamp(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def _normalise_markdown(lines: list[str]) -> str:
    """Trailing spaces gone, runs of blank lines made one, blank lines at both ends dropped."""
    out: list[str] = []
    for line in lines:
        if not line.strip():
            if out and out[-1] != "":
                out.append("")
            continue
        out.append(line.rstrip())
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out)


def parse(text: str) -> FsarReport:
    """The report in `text`, or FsarFormatError naming the field and the line."""
    if not isinstance(text, str):
        raise FsarFormatError("report", None, f"expected text, got {type(text).__name__}")
    if len(text) > MAX_REPORT_CHARS:
        raise FsarFormatError(
            "report", None, f"{len(text)} characters, over the {MAX_REPORT_CHARS} a report may have"
        )
    if "\x00" in text:
        raise FsarFormatError(
            "report", text[: text.index("\x00")].count("\n") + 1, "contains a NUL character"
        )
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    numbered = [(n, line) for n, line in enumerate(lines, start=1)]
    body = iter([(n, line) for n, line in numbered if line.strip()] + [(None, None)])

    n, line = next(body)
    if line is None or line.strip() != TITLE:
        raise FsarFormatError("title", n, f"the report must start with {TITLE!r}, found {line!r:.80}")

    values: dict[str, tuple[str, int]] = {}
    proposal_line = None
    while proposal_line is None:
        n, line = next(body)
        if line is None:
            missing = [f for f in HEADER_FIELDS if f not in values]
            raise FsarFormatError(missing[0], None, f"the header ends without field {missing[0]!r}")
        match = _HEADER_LINE.match(line.strip())
        if not match:
            missing = [f for f in HEADER_FIELDS if f not in values]
            raise FsarFormatError(
                missing[0], n, f"expected '- {missing[0]}: ...', found {line.strip()!r:.80}"
            )
        name, value = match[1].lower(), match[2].strip()
        if name not in HEADER_FIELDS:
            raise FsarFormatError(name, n, f"unknown header field; the fields are {', '.join(HEADER_FIELDS)}")
        if name in values:
            raise FsarFormatError(name, n, f"given twice (first on line {values[name][1]})")
        values[name] = (value, n)
        if name == "proposal":
            proposal_line = n
            missing = [f for f in HEADER_FIELDS if f not in values]
            if missing:
                raise FsarFormatError(
                    missing[0], n, "missing from the header (it comes before '- proposal:')"
                )
            if value:
                raise FsarFormatError("proposal", n, "'- proposal:' ends the header; the proposal follows it")

    report_id = values["id"][0].lower()
    if not ID_FORMAT.match(report_id):
        raise FsarFormatError("id", values["id"][1], f"{values['id'][0]!r:.80} is not fsar_<uuid>")
    raw_ts, ts_line = values["timestamp"]
    if not TIMESTAMP_FORMAT.match(raw_ts):
        raise FsarFormatError(
            "timestamp",
            ts_line,
            f"{raw_ts!r:.80} is not ISO 8601 UTC with milliseconds (2026-01-31T08:00:00.000Z)",
        )
    try:
        timestamp = datetime.strptime(raw_ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise FsarFormatError("timestamp", ts_line, f"{raw_ts!r} is not a date and time: {exc}") from None
    raw_severity, severity_line = values["severity"]
    if not re.fullmatch(r"\d{1,3}", raw_severity) or not 0 <= int(raw_severity) <= 100:
        raise FsarFormatError(
            "severity", severity_line, f"{raw_severity!r:.40} is not an integer from 0 to 100"
        )
    raw_block, block_line = values["block_execution"]
    if raw_block.lower() not in ("true", "false"):
        raise FsarFormatError("block_execution", block_line, f"{raw_block!r:.40} is neither true nor false")

    # the proposal: every line (blank ones too) up to '## Risks'
    sections: dict[str, int] = {}
    for n, line in numbered[proposal_line:]:
        if heading := _SECTION.match(line.strip()):
            title = f"## {heading[1].strip()}"
            if title not in (RISKS, MITIGATIONS):
                raise FsarFormatError(
                    "proposal",
                    n,
                    f"{line.strip()!r:.80}: a report's level-2 headings are {RISKS!r} and {MITIGATIONS!r}",
                )
            if title in sections:
                raise FsarFormatError(
                    title[3:].lower(), n, f"{title!r} given twice (first on line {sections[title]})"
                )
            sections[title] = n
    if RISKS not in sections:
        raise FsarFormatError("risks", None, f"no {RISKS!r} section")
    if MITIGATIONS not in sections:
        raise FsarFormatError("mitigations", None, f"no {MITIGATIONS!r} section")
    if sections[MITIGATIONS] < sections[RISKS]:
        raise FsarFormatError("mitigations", sections[MITIGATIONS], f"{MITIGATIONS!r} comes after {RISKS!r}")

    proposal_lines = numbered[proposal_line : sections[RISKS] - 1]
    first = next(((n, line) for n, line in proposal_lines if line.strip()), None)
    if first is None:
        raise FsarFormatError("proposal", sections[RISKS], "the proposal is empty")
    first_n, first_line = first
    task_type, colon, rest = first_line.strip().partition(":")
    if not colon or task_type not in TASK_TYPES:
        raise FsarFormatError(
            "proposal",
            first_n,
            f"must start with a task type and a colon ({', '.join(TASK_TYPES)}), "
            f"found {first_line.strip()!r:.80}",
        )
    after = [line for n, line in proposal_lines if n > first_n]
    proposal = _normalise_markdown([rest.strip(), *after])
    if not proposal:
        raise FsarFormatError("proposal", first_n, f"the {task_type} proposal has no text")

    def items(section: str, end: int | None) -> list[tuple[int, str]]:
        start = sections[section]
        return [(n, line.strip()) for n, line in numbered[start : (end - 1) if end else None] if line.strip()]

    risks = []
    for n, line in items(RISKS, sections[MITIGATIONS]):
        match = _RISK_LINE.match(line)
        if not match:
            raise FsarFormatError("risks", n, f"expected '- <Kind>: <text>', found {line!r:.80}")
        risks.append(Risk(match[1].strip(), match[2].strip()))
    if not risks:
        raise FsarFormatError("risks", sections[RISKS], "no risk listed")
    mitigations = []
    for n, line in items(MITIGATIONS, None):
        match = _BULLET.match(line)
        if not match:
            raise FsarFormatError("mitigations", n, f"expected '- <text>', found {line!r:.80}")
        mitigations.append(match[1].strip())
    if not mitigations:
        raise FsarFormatError("mitigations", sections[MITIGATIONS], "no mitigation listed")

    return FsarReport(
        id=report_id,
        timestamp=timestamp,
        severity=int(raw_severity),
        block_execution=raw_block.lower() == "true",
        task_type=task_type,
        proposal=proposal,
        risks=tuple(risks),
        mitigations=tuple(mitigations),
    )


def render(report: FsarReport) -> str:
    """The canonical Markdown of `report` (what `parse` reads back to the same record)."""
    check(report)
    proposal = report.proposal.strip("\n")
    # a proposal that opens with a heading or a list starts on its own line, where Markdown sees it
    opener = "\n\n" if re.match(r"^(#|[-*]\s|\d+\.\s)", proposal) else " "
    lines = [
        TITLE,
        f"- id: {report.id}",
        f"- timestamp: {format_timestamp(report.timestamp)}",
        f"- severity: {report.severity}",
        f"- block_execution: {'true' if report.block_execution else 'false'}",
        "- proposal:",
        "",
        f"{report.task_type}:{opener}{proposal}",
        "",
        RISKS,
        *(f"- {risk.kind}: {risk.text}" for risk in report.risks),
        "",
        MITIGATIONS,
        *(f"- {mitigation}" for mitigation in report.mitigations),
    ]
    return "\n".join(lines) + "\n"


def to_json(report: FsarReport) -> dict[str, Any]:
    return {
        "id": report.id,
        "timestamp": format_timestamp(report.timestamp),
        "severity": report.severity,
        "block_execution": report.block_execution,
        "task_type": report.task_type,
        "proposal": report.proposal,
        "risks": [{"kind": r.kind, "text": r.text} for r in report.risks],
        "mitigations": list(report.mitigations),
    }


def from_json(data: dict[str, Any]) -> FsarReport:
    """The record of `to_json`; a value the format cannot hold raises FsarFormatError."""
    try:
        timestamp = data["timestamp"]
        if not isinstance(timestamp, str) or not TIMESTAMP_FORMAT.match(timestamp):
            raise FsarFormatError(
                "timestamp", None, f"{timestamp!r:.80} is not ISO 8601 UTC with milliseconds"
            )
        return FsarReport(
            id=data["id"],
            timestamp=datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC),
            severity=data["severity"],
            block_execution=data["block_execution"],
            task_type=data["task_type"],
            proposal=data["proposal"],
            risks=tuple(Risk(r["kind"], r["text"]) for r in data["risks"]),
            mitigations=tuple(data["mitigations"]),
        )
    except KeyError as missing:
        raise FsarFormatError(str(missing.args[0]), None, "missing from the JSON") from None

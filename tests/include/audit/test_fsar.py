"""The FSAR report format both ways: every fixture parses, round-trips, and is refused with an error
naming the field and the line once broken (fast tier: text only)."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from include.audit import fsar
from tests.project import FIXTURES

REPORTS = sorted((FIXTURES / "fsar").glob("*.md"))


def test_there_are_several_fixtures_of_each_kind():
    texts = [path.read_text() for path in REPORTS]
    assert len(texts) >= 4
    reports = [fsar.parse(text) for text in texts]
    assert {r.block_execution for r in reports} == {True, False}
    assert len({r.task_type for r in reports}) >= 3
    # one written by a person: blank lines added, two spaces after colons, trailing spaces
    assert any("  \n" in text and ":  " in text and "\n\n\n" in text for text in texts)


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.name)
def test_each_fixture_round_trips(path):
    report = fsar.parse(path.read_text())
    text = fsar.render(report)
    assert fsar.parse(text) == report
    assert fsar.render(fsar.parse(text)) == text  # the canonical form is a fixed point
    assert fsar.from_json(fsar.to_json(report)) == report


def test_the_loose_fixture_reads_as_its_canonical_form():
    report = fsar.parse((FIXTURES / "fsar" / "external_schema_drift.md").read_text())
    assert report.id == "fsar_3f1c9a2e-7b4d-4e21-9a0c-5d8e6f7a1b2c"
    assert report.timestamp == datetime(2026, 11, 30, 8, 15, 42, 117000, tzinfo=UTC)
    assert (report.severity, report.block_execution, report.task_type) == (85, True, "implementation")
    assert report.proposal.startswith("The `execution_tasks` schema on production differs")
    assert "\n\n\n" not in report.proposal and "### 2. Repair" in report.proposal
    assert report.risks[0] == fsar.Risk(
        "Data loss", "rows written under the drifted constraint may be refused later"
    )
    assert report.mitigations == (
        "take and verify a backup before any change (`db_backup`)",
        "rehearse the repair on a restored clone",
    )


def _line_of(text: str, prefix: str) -> int:
    return next(n for n, line in enumerate(text.split("\n"), start=1) if line.lstrip().startswith(prefix))


def _replace_field(text: str, name: str, value: str) -> str:
    return re.sub(rf"(?m)^- {name}:.*$", f"- {name}: {value}", text, count=1)


BREAKS = {
    "missing id": (lambda t: re.sub(r"(?m)^- id:.*\n", "", t), "id", "- proposal:"),
    "severity 101": (lambda t: _replace_field(t, "severity", "101"), "severity", "- severity:"),
    "block_execution maybe": (
        lambda t: _replace_field(t, "block_execution", "maybe"),
        "block_execution",
        "- block_execution:",
    ),
    "timestamp not ISO 8601": (
        lambda t: _replace_field(t, "timestamp", "30/11/2026 08:15"),
        "timestamp",
        "- timestamp:",
    ),
    "timestamp without milliseconds": (
        lambda t: _replace_field(t, "timestamp", "2026-11-30T08:15:42Z"),
        "timestamp",
        "- timestamp:",
    ),
    "timestamp of no day": (
        lambda t: _replace_field(t, "timestamp", "2026-02-30T08:15:42.000Z"),
        "timestamp",
        "- timestamp:",
    ),
}


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.name)
@pytest.mark.parametrize("break_name", BREAKS)
def test_each_fixture_broken_is_refused_naming_the_field_and_line(path, break_name):
    breaking, field, line_prefix = BREAKS[break_name]
    text = breaking(path.read_text())
    with pytest.raises(fsar.FsarFormatError) as refused:
        fsar.parse(text)
    assert refused.value.field == field
    assert refused.value.line == _line_of(text, line_prefix)
    assert f"line {refused.value.line}, field {field}:" in str(refused.value)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda t: t.replace("# FSAR Proposal Report", "# Proposal"), "title"),
        (lambda t: re.sub(r"(?m)^(\w+):", "unknown_type:", t, count=1), "proposal"),
        (lambda t: t.replace("## Mitigations", "## Mitigation"), "proposal"),
        (lambda t: t.split("## Mitigations")[0], "mitigations"),
        (lambda t: re.sub(r"(?m)^(- [A-Z][^:\n]*): ", r"\1 - ", t, count=1), "risks"),
        (lambda t: t.replace("- proposal:", "- proposal: now"), "proposal"),
        (lambda t: t.replace("- severity:", "- severity: 5\n- severity:"), "severity"),
        (lambda t: t.replace("- severity:", "- owner: me\n- severity:"), "owner"),
    ],
)
def test_other_malformed_reports_are_refused(mutate, field):
    text = mutate((FIXTURES / "fsar" / "audit_backup_stale.md").read_text())
    with pytest.raises(fsar.FsarFormatError) as refused:
        fsar.parse(text)
    assert refused.value.field == field, str(refused.value)


def test_a_record_the_format_cannot_hold_is_refused():
    report = fsar.parse((FIXTURES / "fsar" / "idea_passing_audit.md").read_text())
    for change, field in (
        ({"severity": 101}, "severity"),
        ({"severity": True}, "severity"),
        ({"block_execution": "maybe"}, "block_execution"),
        ({"id": "fsar_x"}, "id"),
        ({"timestamp": datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)}, "timestamp"),
        ({"task_type": "payments"}, "proposal"),
        ({"mitigations": ("two\nlines",)}, "mitigations"),
    ):
        with pytest.raises(fsar.FsarFormatError) as refused:
            replace(report, **change)
        assert refused.value.field == field
    assert fsar.parse(fsar.render(replace(report, id=fsar.new_id(), timestamp=fsar.now_ms())))

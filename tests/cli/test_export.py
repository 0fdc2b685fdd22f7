"""`kushim export`: the JSON, CSV and OCSF renderings of one run (pure functions, no services needed)."""

from __future__ import annotations

import csv
import io
import json
import random
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from py_ocsf_models.events.findings.compliance_finding import ComplianceFinding

from services.cli.export import (
    CSV_COLUMNS,
    ExportFormat,
    epoch_millis,
    export_csv,
    export_json,
    export_ocsf,
    render_export,
)
from shared.messages import (
    ControlVerdict,
    Finding,
    PlannedCheck,
    RunState,
    RunSummary,
    Service,
    ServiceResult,
    Severity,
    Soc2Control,
    Status,
    run_id_for,
)
from tests.evidence.factory import ACCOUNT, OTHER_ACCOUNT, REQUESTED_AT, make_finding

REQUEST_ID = "export-test"
RUN_ID = run_id_for(REQUEST_ID)
PRODUCT_VERSION = "9.8.7"
TRICKY_SUMMARY = 'alice has no MFA, "console" access\nand a second line, too'
FORMULA_SUMMARY = '=HYPERLINK("http://evil.example","click")'

T = TypeVar("T")


def make_run() -> RunSummary:
    return RunSummary(
        run_id=RUN_ID,
        request_id=REQUEST_ID,
        requested_by="pytest",
        requested_at=REQUESTED_AT,
        state=RunState.INCOMPLETE,
        completed_at=datetime(2026, 3, 14, 23, 45, tzinfo=UTC),
        controls={
            Soc2Control.CC6_1: ControlVerdict(
                control=Soc2Control.CC6_1, status=Status.FAIL, reason="1 gating finding(s) failed", failed=2, passed=1
            ),
            Soc2Control.CC6_7: ControlVerdict(
                control=Soc2Control.CC6_7, status=Status.ERROR, reason="1 gating finding(s) could not be evaluated"
            ),
        },
        missing=[
            PlannedCheck(account_id=OTHER_ACCOUNT, service=Service.CLOUDTRAIL),
            PlannedCheck(account_id=ACCOUNT, service=Service.CLOUDTRAIL),
        ],
    )


def make_services() -> list[ServiceResult]:
    return [
        ServiceResult(
            account_id=ACCOUNT,
            service=Service.IAM,
            complete=True,
            population={"users": 2},
            metrics={"mfa_percent": 50.0},
            api_calls={"iam:ListUsers": 1},
            evidence_key=f"evidence/{RUN_ID}/{ACCOUNT}/iam.json",
            evidence_sha256="ab" * 32,
            evidence_location=f"s3://bucket/evidence/{RUN_ID}/{ACCOUNT}/iam.json",
        ),
        ServiceResult(account_id=OTHER_ACCOUNT, service=Service.S3, complete=True, population={"buckets": 1}),
        ServiceResult(account_id=ACCOUNT, service=Service.S3, complete=False, evidence_location="database"),
    ]


def make_findings() -> list[Finding]:
    """All three statuses, two accounts, a regional bucket, a resource without ARN and two hostile summaries."""
    alice = make_finding(RUN_ID, ACCOUNT, "iam.user_mfa", "user/alice", Status.FAIL, mfa_devices=0, last_used=None)
    bob = make_finding(RUN_ID, ACCOUNT, "iam.user_mfa", "user/bob", Status.PASS, mfa_devices=1)
    root = make_finding(RUN_ID, ACCOUNT, "iam.root_mfa", "account", Status.FAIL)
    bucket = make_finding(RUN_ID, OTHER_ACCOUNT, "s3.bucket_default_encryption", "logs", Status.ERROR, code="Denied")
    kms = make_finding(RUN_ID, OTHER_ACCOUNT, "s3.bucket_sse_kms", "logs", Status.PASS)
    return [
        alice.model_copy(update={"summary": TRICKY_SUMMARY, "resource_type": "AWS::IAM::User"}),
        bob.model_copy(update={"resource_type": "AWS::IAM::User"}),
        root.model_copy(update={"resource_arn": None, "resource_type": "AWS::IAM::Root", "summary": FORMULA_SUMMARY}),
        bucket.model_copy(
            update={"region": "eu-west-1", "resource_type": "AWS::S3::Bucket", "resource_arn": "arn:aws:s3:::logs"}
        ),
        kms.model_copy(
            update={"region": "eu-west-1", "resource_type": "AWS::S3::Bucket", "resource_arn": "arn:aws:s3:::logs"}
        ),
    ]


def shuffled(items: list[T]) -> list[T]:
    copy = list(items)
    random.Random(7).shuffle(copy)
    copy.reverse()
    return copy


def by_id(findings: list[Finding]) -> dict[str, Finding]:
    return {f.finding_id: f for f in findings}


# ---------------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------------


def test_json_round_trips_to_the_same_models() -> None:
    run, services, findings = make_run(), make_services(), make_findings()
    text = export_json(run, services, findings)
    assert text.endswith("}\n")
    document = json.loads(text)
    assert document["schema_version"] == 1
    assert sorted(document) == ["findings", "run", "schema_version", "services"]
    assert RunSummary.model_validate(document["run"]) == run.model_copy(
        update={"missing": sorted(run.missing, key=lambda m: (m.account_id, m.service))}
    )
    assert [ServiceResult.model_validate(s) for s in document["services"]] == [
        services[0],
        services[2],
        services[1],
    ]
    back = [Finding.model_validate(f) for f in document["findings"]]
    assert by_id(back) == by_id(findings)
    assert [f.account_id for f in back] == [ACCOUNT, ACCOUNT, ACCOUNT, OTHER_ACCOUNT, OTHER_ACCOUNT]
    assert next(f for f in back if f.resource_id == "user/alice").summary == TRICKY_SUMMARY


def test_json_is_byte_identical_whatever_the_input_order() -> None:
    run, services, findings = make_run(), make_services(), make_findings()
    reordered_run = run.model_copy(update={"missing": list(reversed(run.missing))})
    first = export_json(run, services, findings)
    second = export_json(reordered_run, shuffled(services), shuffled(findings))
    assert first.encode() == second.encode()


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------


def guarded(text: str) -> str:
    return "'" + text if text[:1] in {"=", "+", "-", "@", "\t", "\r"} else text


def test_csv_parses_back_to_the_same_values() -> None:
    findings = make_findings()
    text = export_csv(shuffled(findings))
    assert text.startswith(",".join(CSV_COLUMNS) + "\r\n")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    assert len(rows) == len(findings)
    expected = by_id(findings)
    for row in rows:
        f = expected[row["finding_id"]]
        assert row == {
            "run_id": RUN_ID,
            "account_id": f.account_id,
            "region": f.region,
            "service": f.service.value,
            "control": f.control.value,
            "check_id": f.check_id,
            "status": f.status.value,
            "severity": f.severity.value,
            "resource_type": f.resource_type,
            "resource_id": f.resource_id,
            "resource_arn": f.resource_arn or "",
            "title": f.title,
            "summary": guarded(f.summary),
            "remediation": f.remediation,
            "details": json.dumps(f.details, sort_keys=True, separators=(",", ":")),
            "observed_at": "2026-03-14T23:31:01Z",
            "finding_id": f.finding_id,
            "collector_version": "test-1.0",
        }
        assert json.loads(row["details"]) == f.details


def test_csv_keeps_commas_quotes_and_newlines_and_defuses_formulas() -> None:
    rows = {r["resource_id"]: r for r in csv.DictReader(io.StringIO(export_csv(make_findings()), newline=""))}
    assert rows["user/alice"]["summary"] == TRICKY_SUMMARY
    assert rows["account"]["summary"] == "'" + FORMULA_SUMMARY
    assert rows["account"]["resource_arn"] == ""
    assert rows["user/bob"]["summary"] == "user/bob is PASS"
    assert rows["user/bob"]["remediation"] == ""


@pytest.mark.parametrize("text", ["=1+1", "+1", "-2+3", "@SUM(A1)", "\tcmd", "\rcmd"])
def test_csv_prefixes_every_formula_trigger_with_an_apostrophe(text: str) -> None:
    finding = make_findings()[1].model_copy(update={"summary": text, "title": text})
    (row,) = csv.DictReader(io.StringIO(export_csv([finding]), newline=""))
    assert row["summary"] == "'" + text
    assert row["title"] == "'" + text


def test_csv_of_no_findings_is_the_header_alone() -> None:
    assert export_csv([]) == ",".join(CSV_COLUMNS) + "\r\n"


# ---------------------------------------------------------------------------------------------
# OCSF
# ---------------------------------------------------------------------------------------------


def ocsf_events(findings: list[Finding]) -> list[dict[str, Any]]:
    """The raw JSON events, to check fields that `ComplianceFinding` does not model (it drops unknown fields)."""
    events: list[dict[str, Any]] = json.loads(export_ocsf(make_run(), findings, product_version=PRODUCT_VERSION))
    return events


def test_ocsf_events_validate_as_compliance_findings() -> None:
    findings = make_findings()
    raw_events = ocsf_events(findings)
    assert len(raw_events) == len(findings)
    expected = by_id(findings)
    seen = set()
    for raw in raw_events:
        event = ComplianceFinding.model_validate(raw)
        f = expected[event.finding_info.uid]
        seen.add(f.finding_id)
        assert (event.class_uid, event.category_uid, event.activity_id, event.type_uid) == (2003, 2, 1, 200301)
        assert (event.class_name, event.category_name, event.type_name) == (
            "Compliance Finding",
            "Findings",
            "Compliance Finding: Create",
        )
        assert event.finding_info.title == f.title
        assert event.finding_info.desc == f.summary
        assert event.metadata.product.name == "Kushim"
        assert event.metadata.product.uid == "kushim"
        assert event.metadata.product.version == PRODUCT_VERSION
        assert event.metadata.event_code == f.check_id
        assert event.metadata.correlation_uid == RUN_ID
        assert event.metadata.version == "1.5.0"
        assert event.compliance.standards == ["SOC 2"]
        assert event.compliance.control == f.control.value
        assert event.compliance.requirements == [f.control.value]
        assert [c.uid for c in event.compliance.checks] == [f.check_id]
        assert event.time == epoch_millis(f.observed_at) == 1773531061000
        assert event.status_code == f.status.value
        assert event.status_detail == f.summary
        (resource,) = event.resources
        assert resource.uid == (f.resource_arn or f.resource_id)
        assert resource.name == f.resource_id
        assert resource.type == f.resource_type
        assert resource.owner.account.uid == f.account_id
        assert resource.data == {"details": f.details}
        assert raw["unmapped"] == {
            "run_id": RUN_ID,
            "request_id": REQUEST_ID,
            "region": f.region,
            "service": f.service.value,
            "check_id": f.check_id,
            "collector_version": "test-1.0",
        }
    assert seen == set(expected)


def test_ocsf_compliance_status_follows_the_finding_status() -> None:
    findings = make_findings()
    statuses = {}
    for raw in ocsf_events(findings):
        compliance = raw["compliance"]
        event = ComplianceFinding.model_validate(raw)
        statuses[event.finding_info.uid] = (
            int(event.compliance.status_id),
            compliance["status"],
            compliance["status_detail"],
            compliance["checks"][0]["status_id"],
        )
    expected = {
        Status.PASS: (1, "Pass"),
        Status.FAIL: (3, "Fail"),
        Status.ERROR: (99, "Error"),
    }
    assert statuses == {f.finding_id: (*expected[f.status], f.summary, expected[f.status][0]) for f in findings}


def test_ocsf_cloud_account_and_region() -> None:
    events = {ComplianceFinding.model_validate(raw).finding_info.uid: raw for raw in ocsf_events(make_findings())}
    findings = by_id(make_findings())
    for uid, raw in events.items():
        f = findings[uid]
        cloud = raw["cloud"]
        assert cloud["provider"] == "AWS"
        assert cloud["account"] == {"uid": f.account_id, "name": f.account_id, "type_id": 10, "type": "AWS Account"}
        resources = raw["resources"]
        if f.region == "global":
            assert "region" not in cloud
            assert "region" not in resources[0]
        else:
            assert cloud["region"] == resources[0]["region"] == "eu-west-1"
    bucket = next(f for f in findings.values() if f.check_id == "s3.bucket_default_encryption")
    root = next(f for f in findings.values() if f.check_id == "iam.root_mfa")
    assert events[bucket.finding_id]["resources"] == [
        {
            "uid": "arn:aws:s3:::logs",
            "name": "logs",
            "type": "AWS::S3::Bucket",
            "region": "eu-west-1",
            "cloud_partition": "aws",
            "group": {"name": "s3"},
            "owner": {
                "account": {"uid": OTHER_ACCOUNT, "name": OTHER_ACCOUNT, "type_id": 10, "type": "AWS Account"},
                "uid": OTHER_ACCOUNT,
                "name": OTHER_ACCOUNT,
                "type_id": 0,
            },
            "data": {"details": {"code": "Denied"}},
        }
    ]
    (root_resource,) = events[root.finding_id]["resources"]
    assert root_resource["uid"] == "account"
    assert "cloud_partition" not in root_resource


@pytest.mark.parametrize(
    ("severity", "severity_id", "caption"),
    [
        (Severity.CRITICAL, 5, "Critical"),
        (Severity.HIGH, 4, "High"),
        (Severity.MEDIUM, 3, "Medium"),
        (Severity.LOW, 2, "Low"),
        (Severity.INFO, 1, "Informational"),
    ],
)
def test_ocsf_severity_mapping(severity: Severity, severity_id: int, caption: str) -> None:
    finding = make_findings()[0].model_copy(update={"severity": severity})
    (raw,) = ocsf_events([finding])
    event = ComplianceFinding.model_validate(raw)
    assert (int(event.severity_id), event.severity) == (severity_id, caption)
    (check,) = raw["compliance"]["checks"]
    assert (check["severity_id"], check["severity"]) == (severity_id, caption)


def test_ocsf_remediation_only_when_there_is_advice() -> None:
    events = {ComplianceFinding.model_validate(raw).finding_info.uid: raw for raw in ocsf_events(make_findings())}
    for f in make_findings():
        if f.status is Status.PASS:
            assert "remediation" not in events[f.finding_id]
        else:
            assert events[f.finding_id]["remediation"] == {"desc": f.remediation}


def test_ocsf_is_byte_identical_whatever_the_input_order() -> None:
    findings = make_findings()
    run = make_run()
    assert export_ocsf(run, findings, product_version="1") == export_ocsf(run, shuffled(findings), product_version="1")


# ---------------------------------------------------------------------------------------------
# Dispatch and guards
# ---------------------------------------------------------------------------------------------


def test_render_export_dispatches_on_the_format() -> None:
    run, services, findings = make_run(), make_services(), make_findings()
    rendered = {
        fmt: render_export(fmt, run, services, findings, product_version=PRODUCT_VERSION) for fmt in ExportFormat
    }
    assert rendered == {
        ExportFormat.JSON: export_json(run, services, findings),
        ExportFormat.CSV: export_csv(findings),
        ExportFormat.OCSF: export_ocsf(run, findings, product_version=PRODUCT_VERSION),
    }
    assert [fmt.value for fmt in ExportFormat] == ["json", "csv", "ocsf"]


def test_findings_of_another_run_are_refused() -> None:
    stray = make_finding(run_id_for("other-request"), ACCOUNT, "iam.user_mfa", "user/carol", Status.FAIL)
    with pytest.raises(ValueError, match=run_id_for("other-request")):
        export_json(make_run(), [], [*make_findings(), stray])
    with pytest.raises(ValueError, match=run_id_for("other-request")):
        export_ocsf(make_run(), [stray], product_version="1")

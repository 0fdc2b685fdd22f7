"""One run's results as a file: `kushim export --run ID --format json|csv|ocsf`.

Pure functions from the report's models (`RunSummary`, `ServiceResult`, `Finding`) to text; the caller writes it.
Every format is deterministic: services and findings are sorted, so equal input gives byte-identical output.

- json: one document `{"schema_version": 1, "run": ..., "services": [...], "findings": [...]}`, the same field
  names and values as the message contracts in `shared/messages.py`, keys sorted, ending with a newline.
- csv: one row per finding under a fixed header (`CSV_COLUMNS`), `details` as compact JSON. RFC 4180 quoting and
  CRLF row ends (write the text with `newline=""`). Cells that a spreadsheet would read as a formula are prefixed
  with an apostrophe, so the file is safe to open in Excel or Sheets but is not a byte-exact copy of the data.
- ocsf: a JSON array of OCSF 1.5 Compliance Finding events (class_uid 2003, activity Create, type_uid 200301), one
  per finding, built with py-ocsf-models and laid out the way Prowler lays out its OCSF findings, for Security Hub,
  Prowler and SIEM users. The `cloud` profile is applied (see `_CloudComplianceFinding`).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final, assert_never

from py_ocsf_models.events.findings.activity_id import ActivityID
from py_ocsf_models.events.findings.compliance_finding import ComplianceFinding
from py_ocsf_models.events.findings.compliance_finding_type_id import ComplianceFindingTypeID
from py_ocsf_models.events.findings.severity_id import SeverityID
from py_ocsf_models.events.findings.status_id import StatusID
from py_ocsf_models.objects.account import Account, TypeID
from py_ocsf_models.objects.check import Check
from py_ocsf_models.objects.cloud import Cloud
from py_ocsf_models.objects.compliance import Compliance
from py_ocsf_models.objects.compliance_status import StatusID as ComplianceStatusID
from py_ocsf_models.objects.finding_info import FindingInformation
from py_ocsf_models.objects.group import Group
from py_ocsf_models.objects.metadata import Metadata
from py_ocsf_models.objects.product import Product
from py_ocsf_models.objects.remediation import Remediation
from py_ocsf_models.objects.resource_details import ResourceDetails
from py_ocsf_models.objects.user import User

from shared.controls import CONTROL_TITLES
from shared.messages import Finding, RunSummary, ServiceResult, Severity, Status


class ExportFormat(StrEnum):
    JSON = "json"
    CSV = "csv"
    OCSF = "ocsf"


JSON_SCHEMA_VERSION: Final = 1

CSV_COLUMNS: Final = (
    "run_id",
    "account_id",
    "region",
    "service",
    "control",
    "check_id",
    "status",
    "severity",
    "resource_type",
    "resource_id",
    "resource_arn",
    "title",
    "summary",
    "remediation",
    "details",
    "observed_at",
    "finding_id",
    "collector_version",
)

# OWASP "CSV injection": a leading =, +, - or @ (or a tab / carriage return) starts a formula in spreadsheets.
_FORMULA_PREFIXES: Final = ("=", "+", "-", "@", "\t", "\r")

SOC2_STANDARD: Final = "SOC 2"
PRODUCT_NAME: Final = "Kushim"
PRODUCT_UID: Final = "kushim"
CLOUD_PROVIDER: Final = "AWS"
_GLOBAL_REGION: Final = "global"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

_SEVERITY_ID: Final[Mapping[Severity, SeverityID]] = {
    Severity.CRITICAL: SeverityID.Critical,
    Severity.HIGH: SeverityID.High,
    Severity.MEDIUM: SeverityID.Medium,
    Severity.LOW: SeverityID.Low,
    Severity.INFO: SeverityID.Informational,
}

# ERROR means the check could not be evaluated: OCSF "Other", with the caption and reason in status/status_detail.
_COMPLIANCE_STATUS: Final[Mapping[Status, tuple[ComplianceStatusID, str]]] = {
    Status.PASS: (ComplianceStatusID.Pass, "Pass"),
    Status.FAIL: (ComplianceStatusID.Fail, "Fail"),
    Status.ERROR: (ComplianceStatusID.Other, "Error"),
}


# py-ocsf-models 0.10 leaves out two parts of the OCSF 1.5 schema, and its models silently drop unknown fields:
# Compliance has no status / status_detail, and ComplianceFinding has no `cloud` (the cloud profile; Security Hub
# identifies an OCSF finding by cloud.account.uid, finding_info.uid and metadata.product.uid).
class _Compliance(Compliance):  # type: ignore[misc]  # py-ocsf-models is untyped (Any)
    status: str | None = None
    status_detail: str | None = None


class _CloudComplianceFinding(ComplianceFinding):  # type: ignore[misc]  # py-ocsf-models is untyped (Any)
    compliance: _Compliance
    cloud: Cloud | None = None


def export_json(run: RunSummary, services: Iterable[ServiceResult], findings: Iterable[Finding]) -> str:
    """The run summary, its per-(account, service) results and its findings as one sorted JSON document."""
    ordered = _sorted_findings(findings)
    _check_same_run(run, ordered)
    run_data = run.model_dump(mode="json")
    run_data["missing"] = sorted(run_data["missing"], key=lambda m: (m["account_id"], m["service"]))
    document = {
        "schema_version": JSON_SCHEMA_VERSION,
        "run": run_data,
        "services": [s.model_dump(mode="json") for s in sorted(services, key=lambda s: (s.account_id, s.service))],
        "findings": [f.model_dump(mode="json") for f in ordered],
    }
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def export_csv(findings: Iterable[Finding]) -> str:
    """The findings as CSV: the header `CSV_COLUMNS`, then one row per finding in a stable order.

    Quoting is the csv module's (RFC 4180): commas, quotes and newlines inside a cell survive a round trip.
    `details` is compact JSON with sorted keys; a missing ARN is an empty cell.

    Formula-injection guard: any cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return gets a leading
    apostrophe (`'`), so a spreadsheet shows the text instead of evaluating it. A reader that needs the exact
    values must strip that apostrophe, or use the JSON export.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for finding in _sorted_findings(findings):
        data = finding.model_dump(mode="json")
        data["details"] = json.dumps(data["details"], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        writer.writerow([_csv_cell(data[column]) for column in CSV_COLUMNS])
    return buffer.getvalue()


def export_ocsf(run: RunSummary, findings: Iterable[Finding], *, product_version: str) -> str:
    """The findings as a JSON array of OCSF Compliance Finding events (class_uid 2003), one per finding."""
    ordered = _sorted_findings(findings)
    _check_same_run(run, ordered)
    events = [_ocsf_event(run, finding, product_version) for finding in ordered]
    return json.dumps(events, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_export(
    fmt: ExportFormat,
    run: RunSummary,
    services: Sequence[ServiceResult],
    findings: Sequence[Finding],
    *,
    product_version: str,
) -> str:
    """The export of one run in the chosen format."""
    if fmt is ExportFormat.JSON:
        return export_json(run, services, findings)
    if fmt is ExportFormat.CSV:
        return export_csv(findings)
    if fmt is ExportFormat.OCSF:
        return export_ocsf(run, findings, product_version=product_version)
    assert_never(fmt)


def epoch_millis(moment: datetime) -> int:
    """OCSF timestamps: whole milliseconds since the Unix epoch (exact, no float rounding)."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _sorted_findings(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (f.account_id, f.service, f.check_id, f.resource_id, f.finding_id))


def _check_same_run(run: RunSummary, findings: Iterable[Finding]) -> None:
    strays = sorted({f.run_id for f in findings if f.run_id != run.run_id})
    if strays:
        raise ValueError(f"findings of run(s) {', '.join(strays)} in the export of {run.run_id}")


def _csv_cell(value: object) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


def _ocsf_event(run: RunSummary, finding: Finding, product_version: str) -> dict[str, object]:
    observed_ms = epoch_millis(finding.observed_at)
    region = None if finding.region == _GLOBAL_REGION else finding.region
    severity_id = _SEVERITY_ID[finding.severity]
    compliance_status_id, compliance_status = _COMPLIANCE_STATUS[finding.status]
    account = Account(uid=finding.account_id, name=finding.account_id, type_id=TypeID.AWS_Account, type="AWS Account")
    event = _CloudComplianceFinding(
        activity_id=ActivityID.Create,
        activity_name=ActivityID.Create.name,
        class_name="Compliance Finding",
        category_name="Findings",
        type_uid=ComplianceFindingTypeID.Create,
        type_name="Compliance Finding: Create",
        time=observed_ms,
        time_dt=finding.observed_at,
        severity_id=severity_id,
        severity=severity_id.name,
        # The event status is the finding's triage state (always New here); the check result is in `compliance`.
        status_id=StatusID.New,
        status=StatusID.New.name,
        status_code=finding.status.value,
        status_detail=finding.summary,
        message=finding.summary,
        metadata=Metadata(
            product=Product(name=PRODUCT_NAME, uid=PRODUCT_UID, vendor_name=PRODUCT_NAME, version=product_version),
            event_code=finding.check_id,
            correlation_uid=run.run_id,
            profiles=["cloud", "datetime"],
        ),
        finding_info=FindingInformation(
            uid=finding.finding_id,
            title=finding.title,
            desc=finding.summary,
            created_time=observed_ms,
            created_time_dt=finding.observed_at,
        ),
        compliance=_Compliance(
            standards=[SOC2_STANDARD],
            control=finding.control.value,
            requirements=[finding.control.value],
            desc=CONTROL_TITLES.get(finding.control),
            status_id=compliance_status_id,
            status=compliance_status,
            status_detail=finding.summary,
            checks=[
                Check(
                    uid=finding.check_id,
                    name=finding.title,
                    severity=severity_id.name,
                    severity_id=severity_id,
                    standards=[SOC2_STANDARD],
                    status=compliance_status,
                    status_id=compliance_status_id,
                )
            ],
        ),
        remediation=Remediation(desc=finding.remediation) if finding.remediation else None,
        resources=[
            ResourceDetails(
                uid=finding.resource_arn or finding.resource_id,
                name=finding.resource_id,
                type=finding.resource_type,
                region=region,
                cloud_partition=_partition(finding.resource_arn),
                group=Group(name=finding.service.value),
                # OCSF's user object is the resource owner; for AWS that is the account (Security Hub reads
                # resources[].owner.account.uid). py-ocsf-models requires a user name, uid and type: use the account.
                owner=User(account=account, uid=finding.account_id, name=finding.account_id, type_id=0),
                data={"details": finding.details},
            )
        ],
        cloud=Cloud(provider=CLOUD_PROVIDER, account=account, region=region),
        unmapped={
            "run_id": finding.run_id,
            "request_id": run.request_id,
            "region": finding.region,
            "service": finding.service.value,
            "check_id": finding.check_id,
            "collector_version": finding.collector_version,
        },
    )
    data: dict[str, object] = event.model_dump(mode="json", exclude_none=True)
    return data


def _partition(arn: str | None) -> str | None:
    """`aws`, `aws-cn` or `aws-us-gov` from an ARN; None without one (no guess)."""
    if arn is None or not arn.startswith("arn:"):
        return None
    partition = arn.split(":", 2)[1]
    return partition or None

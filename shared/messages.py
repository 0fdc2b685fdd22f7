"""Message contracts, version 1. Every message on the wire is one of these frozen pydantic models.

Inputs from outside (RunRequested, ReportRequest) forbid unknown fields; internal messages ignore additive
fields so that a rolling deploy does not dead-letter messages written by a newer replica.
`hide_input_in_errors=True` keeps payloads (and any secret in them) out of validation errors.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

# `[0-9]`, never `\d`: `\d` accepts non-ASCII digits.
AccountId = Annotated[str, StringConstraints(pattern=r"^[0-9]{12}$")]
RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")]
RegionName = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]$")]
RunId = Annotated[str, StringConstraints(pattern=r"^run-[0-9a-f]{32}$")]
TenantName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]

_RUN_NAMESPACE = uuid.UUID("5d0f7d0e-3c56-4c0b-9a57-6b7573686d00")


class Service(StrEnum):
    """A collector service; also the last token of its checks and findings subjects."""

    IAM = "iam"
    S3 = "s3"
    CLOUDTRAIL = "cloudtrail"


class Soc2Control(StrEnum):
    CC6_1 = "CC6.1"
    CC6_7 = "CC6.7"
    CC7_2 = "CC7.2"


class Status(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    ERROR = "ERROR"


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"


class RunState(StrEnum):
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    INCOMPLETE = "INCOMPLETE"


class _Internal(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True)


class _External(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


def run_id_for(request_id: str) -> str:
    """The run id a request leads to: derived, so a redelivered request plans the same run."""
    return "run-" + uuid.uuid5(_RUN_NAMESPACE, request_id).hex


def finding_id_for(account_id: str, run_id: str, check_id: str, resource_id: str) -> str:
    """Stable identity of one judgement: hashing the resource id (not the ARN) keeps a user's two keys apart."""
    digest = hashlib.sha256("\x1f".join((account_id, run_id, check_id, resource_id)).encode())
    return digest.hexdigest()[:40]


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------


class RunRequested(_External):
    """Ask for a compliance run. Published on `kushim.runs.requested` by the CLI, the cron loop or a trusted system,
    or on `kushim.runs.requested.<tenant>` by a tenant (only accounts on its allow-list; the NATS server lets a
    tenant's user publish on its own subject only, so the subject is the tenant's identity).

    The requester also sets the `Nats-Msg-Id` header to `request_id` so a retried publish is deduplicated.
    """

    schema_version: Literal[1] = Field(1, description="Contract version; only 1 exists.")
    request_id: RequestId = Field(
        description="Requester-chosen id, echoed in RunPlanned, RunCompleted and RunRejected."
    )
    accounts: list[AccountId] | None = Field(
        None, min_length=1, max_length=1000, description="Accounts to check; omitted means every registered account."
    )
    services: list[Service] | None = Field(
        None, min_length=1, description="Services to check (iam, s3, cloudtrail); omitted means all."
    )
    requested_by: Annotated[str, StringConstraints(max_length=128)] = Field(
        "unknown", description="Free text naming the requester, kept with the run."
    )
    requested_at: AwareDatetime = Field(description="When the run was asked for (timezone-aware).")


class PlannedCheck(_Internal):
    account_id: AccountId
    service: Service


class RunPlanned(_Internal):
    """The scheduler's plan, on `kushim.runs.planned`: what the evidence service must receive for the run."""

    schema_version: Literal[1] = 1
    run_id: RunId
    request_id: RequestId
    requested_by: str
    requested_at: AwareDatetime
    planned_at: AwareDatetime
    deadline_at: AwareDatetime = Field(description="After this, a run still missing pairs becomes INCOMPLETE.")
    expected: list[PlannedCheck] = Field(min_length=1)
    tenant: TenantName | None = Field(
        None, description="The tenant that requested the run (its RunCompleted goes to kushim.runs.completed.<tenant>)."
    )


class CheckRequested(_Internal):
    """One (account, service) scan, on `kushim.checks.<service>`. Only the scheduler publishes these."""

    schema_version: Literal[1] = 1
    run_id: RunId
    request_id: RequestId
    account_id: AccountId
    service: Service
    regions: list[RegionName] = Field(min_length=1, description="Regions the collector inspects.")
    requested_at: AwareDatetime


class RunJoined(_Internal):
    """A RunRequested coalesced into an identical run already in flight (same tenant, accounts, services and
    regions), on `kushim.runs.joined`: nothing is scanned again; the evidence service answers the joining request
    with that run's RunCompleted under the request's own request_id (on the subject it would otherwise get)."""

    schema_version: Literal[1] = 1
    run_id: RunId = Field(description="The run in flight that the request joined.")
    request_id: RequestId = Field(description="The joining request's id, echoed in the RunCompleted it gets.")
    tenant: TenantName | None = Field(
        None, description="The tenant that sent the request (its RunCompleted goes to kushim.runs.completed.<tenant>)."
    )
    requested_by: str
    joined_at: AwareDatetime


class RunRejected(_Internal):
    """A refused RunRequested, on `kushim.runs.rejected` (a tenant's on `kushim.runs.rejected.<tenant>`)."""

    schema_version: Literal[1] = 1
    request_id: str | None = Field(description="The requester's id when it could be read, else null.")
    reason: str
    rejected_at: AwareDatetime


class ControlVerdict(_Internal):
    control: Soc2Control
    status: Status
    reason: str
    failed: int = 0
    errors: int = 0
    passed: int = 0


class RunCompleted(_Internal):
    """The end of a run, on `kushim.runs.completed` (a tenant's run on `kushim.runs.completed.<tenant>`). Findings
    never travel here: read them with a report request."""

    schema_version: Literal[1] = 1
    run_id: RunId
    request_id: RequestId
    state: Literal[RunState.COMPLETE, RunState.INCOMPLETE]
    controls: dict[Soc2Control, ControlVerdict]
    missing: list[PlannedCheck] = Field(default_factory=list, description="Pairs with no complete findings.")
    findings_total: int
    findings_by_status: dict[Status, int]
    completed_at: AwareDatetime
    tenant: TenantName | None = Field(None, description="The tenant that requested the run, if any.")


# ---------------------------------------------------------------------------------------------
# Findings
# ---------------------------------------------------------------------------------------------

JsonValue = Any


class Finding(_Internal):
    finding_id: str
    run_id: RunId
    account_id: AccountId
    region: str = Field(description="AWS region of the resource, or 'global'.")
    service: Service
    control: Soc2Control
    check_id: str
    resource_type: str
    resource_arn: str | None = None
    resource_id: str = Field(description="Unique per resource even where no ARN exists: 'user/alice', 'account'.")
    status: Status
    severity: Severity
    title: str
    summary: str
    details: dict[str, JsonValue] = Field(default_factory=dict)
    remediation: str
    observed_at: AwareDatetime
    collector_version: str


class FindingsReported(_Internal):
    """One chunk (<= 256 KiB) of a collector's findings, on `kushim.findings.<service>`.

    Every chunk carries the same summary. A scan that finds nothing still sends one chunk (chunk_count 1).
    """

    schema_version: Literal[1] = 1
    run_id: RunId
    request_id: RequestId
    account_id: AccountId
    service: Service
    attempt: int = Field(
        1, ge=1, description="Delivery attempt of the scan that produced the chunk; one attempt's chunks form a set."
    )
    chunk_index: int = Field(ge=0)
    chunk_count: int = Field(ge=1)
    findings: list[Finding]
    population: dict[str, int] = Field(default_factory=dict, description="Resources seen: users, buckets, trails, ...")
    metrics: dict[str, float] = Field(default_factory=dict, description="Summary metrics such as MFA percentages.")
    api_calls: dict[str, int] = Field(default_factory=dict, description="AWS API calls made, by operation.")
    regions: list[str] = Field(default_factory=list)
    collector_version: str
    started_at: AwareDatetime
    finished_at: AwareDatetime


# ---------------------------------------------------------------------------------------------
# Dead letters
# ---------------------------------------------------------------------------------------------


class DeadLetter(_Internal):
    """A message no consumer could process, on `kushim.dlq.<consumer>`. The payload excerpt is redacted."""

    schema_version: Literal[1] = 1
    consumer: str
    subject: str
    reason: str
    stream_sequence: int | None = None
    num_delivered: int | None = None
    payload_excerpt: str
    dead_lettered_at: AwareDatetime


# ---------------------------------------------------------------------------------------------
# Connection test (request/reply on kushim.api.connection-test)
# ---------------------------------------------------------------------------------------------


class ConnectionTestRequest(_External):
    """Ask Kushim whether its AWS credentials reach every service it reads (and the evidence bucket)."""

    schema_version: Literal[1] = 1
    request_id: RequestId | None = Field(None, description="Echoed in the answer.")
    account_id: AccountId | None = Field(
        None,
        description="A registered account to test with its own access (assumed role, secret); unset: Kushim's own.",
    )


class ServiceConnection(_Internal):
    service: str = Field(description="sts, iam, s3, cloudtrail or evidence-bucket.")
    connected: bool
    api_call: str = Field(description="The probe call, e.g. iam:ListUsers.")
    code: str | None = Field(None, description="AWS error code when not connected.")
    message: str | None = None
    fix: str | None = Field(None, description="What to change, in plain words.")


class ConnectionTestResult(_Internal):
    schema_version: Literal[1] = 1
    request_id: str | None = None
    ok: bool = Field(description="True when every probe connected.")
    account_id: str | None = Field(None, description="The account the credentials belong to, when known.")
    region: str
    services: list[ServiceConnection]
    error: str | None = Field(None, description="Set when the request itself was invalid.")


# ---------------------------------------------------------------------------------------------
# Reports (request/reply on kushim.api.report)
# ---------------------------------------------------------------------------------------------


class ReportRequest(_External):
    """Ask the evidence service for a run's report. Give run_id or request_id; neither means the latest run."""

    schema_version: Literal[1] = 1
    run_id: RunId | None = None
    request_id: RequestId | None = None
    account_id: AccountId | None = Field(None, description="Only this account's data.")
    page: int = Field(0, ge=0, description="Findings page, from 0.")
    page_size: int = Field(500, ge=1, le=1000, description="Findings per page.")


class ServiceResult(_Internal):
    account_id: AccountId
    service: Service
    complete: bool
    population: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    api_calls: dict[str, int] = Field(default_factory=dict)
    evidence_key: str | None = None
    evidence_sha256: str | None = None
    evidence_location: str | None = Field(None, description="s3://bucket/key, or 'database' when no bucket is set.")


class RunSummary(_Internal):
    run_id: RunId
    request_id: RequestId
    requested_by: str
    requested_at: AwareDatetime
    state: RunState
    completed_at: datetime | None = None
    controls: dict[Soc2Control, ControlVerdict] = Field(default_factory=dict)
    missing: list[PlannedCheck] = Field(default_factory=list)


class ReportPage(_Internal):
    schema_version: Literal[1] = 1
    ok: bool
    error: str | None = None
    run: RunSummary | None = None
    services: list[ServiceResult] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    findings_total: int = 0
    page: int = 0
    page_size: int = 0
    next_page: int | None = None
    account_names: dict[AccountId, str] = Field(
        default_factory=dict, description="Names of the run's accounts, from the account registry (when registered)."
    )


# ---------------------------------------------------------------------------------------------
# Runs over time and history (request/reply on kushim.api.runs and kushim.api.history)
# ---------------------------------------------------------------------------------------------


class RunsRequest(_External):
    """List runs, newest first (optionally only those that checked one account)."""

    schema_version: Literal[1] = 1
    account_id: AccountId | None = Field(None, description="Only runs that planned checks for this account.")
    limit: int = Field(20, ge=1, le=200, description="Runs per page.")
    before: AwareDatetime | None = Field(None, description="Next page: the previous page's `next_before`.")
    before_run_id: RunId | None = Field(
        None, description="Next page: the previous page's `next_before_run_id` (runs requested at the same time)."
    )


class RunListEntry(_Internal):
    run: RunSummary
    accounts: list[AccountId] = Field(default_factory=list)
    findings_total: int = 0
    findings_by_status: dict[Status, int] = Field(default_factory=dict)


class RunsPage(_Internal):
    schema_version: Literal[1] = 1
    ok: bool
    error: str | None = None
    runs: list[RunListEntry] = Field(default_factory=list)
    next_before: AwareDatetime | None = Field(None, description="Pass as `before` for the next page; null at the end.")
    next_before_run_id: RunId | None = Field(None, description="Pass as `before_run_id` for the next page.")


class HistoryRequest(_External):
    """What changed between consecutive runs of one account, newest first."""

    schema_version: Literal[1] = 1
    account_id: AccountId
    limit: int = Field(10, ge=1, le=50, description="Runs to show (each compared with the run before it).")
    changes_limit: int = Field(100, ge=1, le=1000, description="Changes listed per run and direction (totals exact).")


class ResourceChange(_Internal):
    check_id: str
    control: Soc2Control
    resource_id: str
    region: str
    before: Status | None = Field(None, description="Status in the previous run; null: not seen there.")
    after: Status | None = Field(None, description="Status in this run; null: not seen (e.g. the resource is gone).")


class HistoryEntry(_Internal):
    run: RunSummary
    findings_by_status: dict[Status, int] = Field(default_factory=dict)
    compared_with: RunId | None = Field(None, description="The previous run of the account; null for the first.")
    services_compared: list[Service] = Field(
        default_factory=list, description="Services with evidence in both runs; others are not compared."
    )
    started_failing: list[ResourceChange] = Field(default_factory=list, description="FAIL now, not FAIL before.")
    stopped_failing: list[ResourceChange] = Field(default_factory=list, description="FAIL before, not FAIL now.")
    started_failing_total: int = 0
    stopped_failing_total: int = 0


class HistoryPage(_Internal):
    schema_version: Literal[1] = 1
    ok: bool
    error: str | None = None
    account_id: AccountId | None = None
    entries: list[HistoryEntry] = Field(default_factory=list)

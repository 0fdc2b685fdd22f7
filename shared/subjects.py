"""Every NATS subject, stream and durable consumer Kushim uses, in one place.

Stream subjects are wildcards (FastStream#892: path-parameter subjects on streams break publishing).
"""

from __future__ import annotations

from typing import Final

from shared.messages import Service

# --- runs (stream KUSHIM_RUNS) -------------------------------------------------------------
RUNS_REQUESTED: Final = "kushim.runs.requested"
"""Public entry point: another system, the CLI or the cron loop asks for a run (RunRequested)."""
TENANT_RUNS_REQUESTED: Final = "kushim.runs.requested.*"
"""A tenant's run requests, `kushim.runs.requested.<tenant>`: only accounts on the tenant's allow-list."""
RUNS_PLANNED: Final = "kushim.runs.planned"
"""The scheduler's plan for a run: which (account, service) pairs the evidence service must receive."""
RUNS_COMPLETED: Final = "kushim.runs.completed"
"""The evidence service's verdict for a run: COMPLETE or INCOMPLETE, with per-control verdicts."""
RUNS_REJECTED: Final = "kushim.runs.rejected"
"""A RunRequested that was refused (invalid, unknown account, ...), echoing the requester's request_id."""
TENANT_RUNS_COMPLETED: Final = "kushim.runs.completed.*"
"""A tenant's run outcomes, `kushim.runs.completed.<tenant>`."""
RUNS_JOINED: Final = "kushim.runs.joined"
"""A request coalesced into an identical run already in flight (RunJoined): it is answered with that run's
RunCompleted, under its own request_id."""

# --- checks (stream KUSHIM_CHECKS): only the scheduler publishes here ----------------------
CHECKS_PREFIX: Final = "kushim.checks"

# --- findings (stream KUSHIM_FINDINGS) -------------------------------------------------------
FINDINGS_PREFIX: Final = "kushim.findings"

# --- dead letters (stream KUSHIM_DLQ) -------------------------------------------------------
DLQ_PREFIX: Final = "kushim.dlq"

# --- request/reply (core NATS, no stream) ---------------------------------------------------
REPORT_REQUEST: Final = "kushim.api.report"
"""Paged report of a run, answered by the evidence service (ReportRequest -> ReportPage)."""
RUNS_REQUEST: Final = "kushim.api.runs"
"""Runs over time, newest first, answered by the evidence service (RunsRequest -> RunsPage)."""
HISTORY_REQUEST: Final = "kushim.api.history"
"""What changed between an account's consecutive runs, answered by the evidence service (HistoryRequest ->
HistoryPage)."""
CONNECTION_TEST: Final = "kushim.api.connection-test"
"""Connection test of the AWS credentials, answered by the scheduler (ConnectionTestRequest -> ConnectionTestResult)."""

# --- streams --------------------------------------------------------------------------------
STREAM_RUNS: Final = "KUSHIM_RUNS"
STREAM_TENANT_REQUESTS: Final = "KUSHIM_TENANT_REQUESTS"
"""Tenants' run requests, in a stream of their own: JetStream de-duplicates message ids per stream, so a tenant
choosing the id of one of Kushim's own messages (a scheduled slot's, a plan's) must not be able to suppress it."""
RUNS_SUBJECTS: Final = (
    "kushim.runs.requested",
    "kushim.runs.planned",
    "kushim.runs.joined",
    "kushim.runs.completed",
    "kushim.runs.completed.*",
    "kushim.runs.rejected",
    "kushim.runs.rejected.*",
)
"""The subjects of KUSHIM_RUNS: everything under kushim.runs but tenants' requests."""
STREAM_CHECKS: Final = "KUSHIM_CHECKS"
STREAM_FINDINGS: Final = "KUSHIM_FINDINGS"
STREAM_DLQ: Final = "KUSHIM_DLQ"
STREAM_ADVISORIES: Final = "KUSHIM_ADVISORIES"
"""Captures the server's MAX_DELIVERIES advisories for Kushim's streams (a consumer gave up on a message)."""
KV_SCHEDULE: Final = "KUSHIM_SCHEDULE"
"""The scheduler's key-value bucket of claimed schedule slots (its stream: KV_KUSHIM_SCHEDULE)."""
KV_COALESCE: Final = "KUSHIM_COALESCE"
"""The scheduler's key-value bucket of coalescing decisions and scope claims (its stream: KV_KUSHIM_COALESCE)."""
KV_BUCKETS: Final = (KV_SCHEDULE, KV_COALESCE)


def checks_subject(service: Service) -> str:
    """Subject of the CheckRequested messages for one collector service."""
    return f"{CHECKS_PREFIX}.{service.value}"


def findings_subject(service: Service) -> str:
    """Subject of the FindingsReported chunks of one collector service."""
    return f"{FINDINGS_PREFIX}.{service.value}"


def tenant_of(subject: str) -> str | None:
    """The tenant a run request came from: the last token of `kushim.runs.requested.<tenant>`, else None."""
    prefix = RUNS_REQUESTED + "."
    return subject[len(prefix) :] if subject.startswith(prefix) else None


def tenant_requests_subject(tenant: str) -> str:
    return f"{RUNS_REQUESTED}.{tenant}"


def completed_subject(tenant: str | None) -> str:
    """Where a run's RunCompleted goes: the tenant's own subject for a tenant's run."""
    return f"{RUNS_COMPLETED}.{tenant}" if tenant else RUNS_COMPLETED


def rejected_subject(tenant: str | None) -> str:
    return f"{RUNS_REJECTED}.{tenant}" if tenant else RUNS_REJECTED


def dlq_subject(consumer: str) -> str:
    """Subject of the dead letters written by one durable consumer."""
    return f"{DLQ_PREFIX}.{consumer}"


# --- durable pull consumers -----------------------------------------------------------------
DURABLE_SCHEDULER: Final = "scheduler-run-requests"
DURABLE_SCHEDULER_TENANTS: Final = "scheduler-tenant-run-requests"
DURABLE_SCHEDULER_COMPLETIONS: Final = "scheduler-run-completions"
"""Releases the coalescing claim of a completed run (kushim.runs.completed)."""
DURABLE_SCHEDULER_TENANT_COMPLETIONS: Final = "scheduler-tenant-run-completions"
"""Releases the coalescing claim of a tenant's completed run (kushim.runs.completed.<tenant>)."""
DURABLE_EVIDENCE_PLANS: Final = "evidence-run-plans"
DURABLE_EVIDENCE_JOINS: Final = "evidence-run-joins"
DURABLE_EVIDENCE_FINDINGS: Final = "evidence-findings"
DURABLE_EVIDENCE_DEAD_LETTERS: Final = "evidence-dead-letters"


def collector_durable(service: Service) -> str:
    """The durable consumer shared by every replica of one collector service."""
    return f"collector-{service.value}"

"""Messages for the evidence tests, written down independently of the collectors' code."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from shared.controls import check_info
from shared.messages import (
    Finding,
    FindingsReported,
    PlannedCheck,
    RunPlanned,
    Service,
    Status,
    finding_id_for,
    run_id_for,
)

ACCOUNT = "123456789012"
OTHER_ACCOUNT = "210987654321"
# 23:30 UTC on 14 March: the evidence key's date is 2026/03/14 whatever the local clock says.
REQUESTED_AT = datetime(2026, 3, 14, 23, 30, tzinfo=UTC)
STARTED_AT = datetime(2026, 3, 14, 23, 31, tzinfo=UTC)
FINISHED_AT = datetime(2026, 3, 14, 23, 32, 5, 123456, tzinfo=UTC)


def new_request_id() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def make_finding(
    run_id: str, account_id: str, check_id: str, resource_id: str, status: Status, **details: object
) -> Finding:
    info = check_info(check_id)
    return Finding(
        finding_id=finding_id_for(account_id, run_id, check_id, resource_id),
        run_id=run_id,
        account_id=account_id,
        region="global",
        service=info.service,
        control=info.control,
        check_id=check_id,
        resource_type="test-resource",
        resource_arn=f"arn:aws:test::{account_id}:{resource_id}",
        resource_id=resource_id,
        status=status,
        severity=info.severity,
        title=info.title,
        summary=f"{resource_id} is {status.value}",
        details=dict(details),
        remediation="" if status is Status.PASS else info.remediation,
        observed_at=STARTED_AT + timedelta(seconds=1),
        collector_version="test-1.0",
    )


def make_plan(
    request_id: str,
    pairs: Sequence[tuple[str, Service]],
    *,
    deadline_at: datetime | None = None,
    requested_at: datetime = REQUESTED_AT,
) -> RunPlanned:
    planned_at = datetime.now(UTC)
    return RunPlanned(
        run_id=run_id_for(request_id),
        request_id=request_id,
        requested_by="pytest",
        requested_at=requested_at,
        planned_at=planned_at,
        deadline_at=deadline_at or planned_at + timedelta(minutes=15),
        expected=[PlannedCheck(account_id=a, service=s) for a, s in pairs],
    )


def make_chunks(
    request_id: str,
    account_id: str,
    service: Service,
    findings: Sequence[Finding],
    *,
    per_chunk: int = 100,
    population: dict[str, int] | None = None,
) -> list[FindingsReported]:
    parts = [list(findings[i : i + per_chunk]) for i in range(0, len(findings), per_chunk)] or [[]]
    return [
        FindingsReported(
            run_id=run_id_for(request_id),
            request_id=request_id,
            account_id=account_id,
            service=service,
            chunk_index=i,
            chunk_count=len(parts),
            findings=part,
            population=population if population is not None else {"resources": len(findings)},
            metrics={"mfa_percent": 66.66666666666667},
            api_calls={f"{service.value}:List": 2},
            regions=["us-east-1"],
            collector_version="test-1.0",
            started_at=STARTED_AT,
            finished_at=FINISHED_AT,
        )
        for i, part in enumerate(parts)
    ]

"""Checks: pure functions over a typed snapshot that yield Outcomes; turned into Findings here.

A check is declared with `@check("<id>")`, which attaches the catalogue entry of `shared.controls` (control,
severity, title, remediation). Decorators describe, never register: each collector lists its checks in an explicit
`CHECKS` tuple.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from shared.aws import AwsCallError
from shared.controls import CheckInfo, check_info
from shared.messages import Finding, FindingsReported, Status, finding_id_for

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Outcome:
    """One judgement of one resource by one check."""

    resource_id: str
    resource_type: str
    status: Status
    summary: str
    resource_arn: str | None = None
    region: str = "global"
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def ok(cls, resource_id: str, resource_type: str, summary: str, **kw: Any) -> Outcome:
        return cls(resource_id, resource_type, Status.PASS, summary, **kw)

    @classmethod
    def fail(cls, resource_id: str, resource_type: str, summary: str, **kw: Any) -> Outcome:
        return cls(resource_id, resource_type, Status.FAIL, summary, **kw)

    @classmethod
    def error(cls, resource_id: str, resource_type: str, err: AwsCallError, **kw: Any) -> Outcome:
        details = dict(kw.pop("details", {}))
        details.update(
            {
                "api_call": f"{err.service}:{err.operation}",
                "error_code": err.code,
                "error_message": err.message,
                "required_permission": err.permission,
            }
        )
        return cls(resource_id, resource_type, Status.ERROR, err.describe(), details=details, **kw)


@dataclass(frozen=True, slots=True)
class Check(Generic[S]):
    info: CheckInfo
    fn: Callable[[S], Iterable[Outcome]]

    @property
    def id(self) -> str:
        return self.info.id

    def __call__(self, snapshot: S) -> Iterator[Outcome]:
        yield from self.fn(snapshot)


def check(check_id: str) -> Callable[[Callable[[S], Iterable[Outcome]]], Check[S]]:
    """Describe a pure check function with its catalogue entry."""
    info = check_info(check_id)

    def wrap(fn: Callable[[S], Iterable[Outcome]]) -> Check[S]:
        return Check(info=info, fn=fn)

    return wrap


@dataclass(frozen=True, slots=True)
class RunContext:
    run_id: str
    account_id: str
    observed_at: datetime
    collector_version: str


def evaluate(checks: Sequence[Check[S]], snapshot: S, ctx: RunContext) -> list[Finding]:
    """Run every check over the snapshot; findings are sorted so that a replay produces the same order."""
    findings: list[Finding] = []
    for chk in checks:
        for outcome in chk(snapshot):
            findings.append(to_finding(chk.info, outcome, ctx))
    findings.sort(key=lambda f: (f.check_id, f.resource_id))
    return findings


def to_finding(info: CheckInfo, outcome: Outcome, ctx: RunContext) -> Finding:
    return Finding(
        finding_id=finding_id_for(ctx.account_id, ctx.run_id, info.id, outcome.resource_id),
        run_id=ctx.run_id,
        account_id=ctx.account_id,
        region=outcome.region,
        service=info.service,
        control=info.control,
        check_id=info.id,
        resource_type=outcome.resource_type,
        resource_arn=outcome.resource_arn,
        resource_id=outcome.resource_id,
        status=outcome.status,
        severity=info.severity,
        title=info.title,
        summary=outcome.summary,
        details=outcome.details,
        remediation=info.remediation if outcome.status is not Status.PASS else "",
        observed_at=ctx.observed_at,
        collector_version=ctx.collector_version,
    )


def chunk_findings(findings: Sequence[Finding], max_bytes: int, envelope_bytes: int = 4096) -> list[list[Finding]]:
    """Split findings so that each chunk's JSON stays under `max_bytes` (always at least one, possibly empty)."""
    budget = max_bytes - envelope_bytes
    chunks: list[list[Finding]] = [[]]
    size = 0
    for finding in findings:
        n = len(finding.model_dump_json()) + 1
        if n > budget:
            raise ValueError(f"finding {finding.finding_id} alone is {n} bytes, over the chunk budget {budget}")
        if chunks[-1] and size + n > budget:
            chunks.append([])
            size = 0
        chunks[-1].append(finding)
        size += n
    return chunks


def build_chunks(findings: Sequence[Finding], max_bytes: int, **envelope: Any) -> list[FindingsReported]:
    """FindingsReported messages for one (run, account, service), numbered 0..n-1 with the same envelope."""
    parts = chunk_findings(findings, max_bytes)
    return [
        FindingsReported(chunk_index=i, chunk_count=len(parts), findings=part, **envelope)
        for i, part in enumerate(parts)
    ]

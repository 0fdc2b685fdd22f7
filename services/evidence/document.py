"""The evidence document of one (run, account, service): deterministic JSON bytes and a stable key.

Determinism rule: the document holds only what the database stores for the pair once all of its chunks are in
(the run's identity and `requested_at` from the plan, the pair's summary from its first stored chunk, and its
findings sorted by check_id, resource_id, finding_id), serialised with sorted keys and no wall-clock value. The key's
date is the run's `requested_at` in UTC. Rebuilding the document of a pair therefore yields the same bytes and the
same key, so a replay is recognised (same SHA-256) rather than written twice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict

from services.evidence.store import PairMaterial
from shared.messages import Finding, Service, Status

DOCUMENT_KIND: Final = "kushim.evidence"


class EvidenceBody(BaseModel):
    """The JSON schema of an evidence document (version 1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["kushim.evidence"] = DOCUMENT_KIND
    schema_version: Literal[1] = 1
    run_id: str
    request_id: str
    account_id: str
    service: Service
    requested_at: AwareDatetime
    collector_version: str
    started_at: AwareDatetime
    finished_at: AwareDatetime
    population: dict[str, int]
    metrics: dict[str, float]
    api_calls: dict[str, int]
    regions: list[str]
    findings_total: int
    counts_by_status: dict[Status, int]
    findings: list[Finding]
    """Filled in as JSON by `build_document` (the store's rows, already in Finding's JSON shape)."""


@dataclass(frozen=True, slots=True)
class EvidenceDocument:
    """An object to store: an evidence document or a manifest. `dated` (the run's requested_at) anchors its Object
    Lock retention, so a replay asks for the same retain-until date."""

    key: str
    body: bytes
    sha256: str
    dated: datetime | None = None

    @property
    def size(self) -> int:
        return len(self.body)


def evidence_key(account_id: str, run_id: str, service: Service, requested_at: datetime) -> str:
    """`evidence/<account_id>/<yyyy>/<mm>/<dd>/<run_id>/<service>.json`, dated by the run's requested_at (UTC)."""
    day = requested_at.astimezone(UTC)
    return f"evidence/{account_id}/{day:%Y/%m/%d}/{run_id}/{service.value}.json"


def finding_json(finding: Finding) -> dict[str, Any]:
    """A finding in the document's JSON shape (what the store's `PairMaterial.findings` hold)."""
    return finding.model_dump(mode="json")


def build_document(material: PairMaterial) -> EvidenceDocument:
    ordered = sorted(material.findings, key=lambda f: (f["check_id"], f["resource_id"], f["finding_id"]))
    counts = {status: 0 for status in Status}
    for finding in ordered:
        counts[Status(finding["status"])] += 1
    body = EvidenceBody(
        run_id=material.run_id,
        request_id=material.request_id,
        account_id=material.account_id,
        service=material.service,
        requested_at=material.requested_at.astimezone(UTC),
        collector_version=material.collector_version,
        started_at=material.started_at.astimezone(UTC),
        finished_at=material.finished_at.astimezone(UTC),
        population=material.population,
        metrics=material.metrics,
        api_calls=material.api_calls,
        regions=material.regions,
        findings_total=len(ordered),
        counts_by_status=counts,
        findings=[],
    )
    tree = body.model_dump(mode="json")
    tree["findings"] = ordered
    data = json.dumps(tree, sort_keys=True, separators=(",", ":")).encode()
    key = evidence_key(material.account_id, material.run_id, material.service, material.requested_at)
    return EvidenceDocument(key=key, body=data, sha256=hashlib.sha256(data).hexdigest(), dated=material.requested_at)

"""Manifests: one per (run, account), listing that account's evidence objects of the run (key, SHA-256, size,
version) with the SHA-256 of the account's previous manifest. The manifests of an account form a hash chain: changing,
removing or reordering any manifest breaks the link of the next one, and the chain's head (kept in the database)
catches a removed last manifest.

A run that ends INCOMPLETE gets a manifest of what it has (`missing_services` names the rest); evidence that arrives
after that is listed by a further manifest of the same run (`supplements` = True). Every evidence object is therefore
in exactly one manifest, and an object in the bucket that no manifest lists was added by someone else.

Manifests are built once, inside the transaction that advances the chain, and kept as bytes: a retry uploads the
same bytes under the same key (a replay, not a new version).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.evidence.document import EvidenceDocument
from services.evidence.store import ManifestDraft
from shared.messages import Service

MANIFEST_KIND: Final = "kushim.manifest"
GENESIS_SHA256: Final = "0" * 64
"""The `previous_sha256` of an account's first manifest."""


class ManifestObject(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    service: Service
    key: str
    sha256: str
    size: int
    version_id: str | None = Field(None, description="S3 version id; null when the bucket is unversioned or absent.")


class ManifestBody(BaseModel):
    """The JSON schema of a manifest (version 1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["kushim.manifest"] = MANIFEST_KIND
    schema_version: Literal[1] = 1
    account_id: str
    sequence: int = Field(ge=1, description="Position in the account's chain, from 1.")
    run_id: str
    request_id: str
    requested_at: AwareDatetime
    supplements: bool = Field(False, description="True when an earlier manifest of the same run exists.")
    objects: list[ManifestObject]
    missing_services: list[Service] = Field(default_factory=list)
    population: dict[str, dict[str, int]] = Field(default_factory=dict, description="Per service.")
    previous_sha256: str
    previous_key: str | None = None


def manifest_prefix(account_id: str) -> str:
    return f"manifests/{account_id}/"


def manifest_key(account_id: str, sequence: int, run_id: str) -> str:
    """`manifests/<account_id>/<sequence, 10 digits>-<run_id>.json`: keys sort in chain order."""
    return f"{manifest_prefix(account_id)}{sequence:010d}-{run_id}.json"


def evidence_prefix(account_id: str) -> str:
    return f"evidence/{account_id}/"


def build_manifest(body: ManifestBody) -> EvidenceDocument:
    data = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()
    return EvidenceDocument(
        key=manifest_key(body.account_id, body.sequence, body.run_id),
        body=data,
        sha256=hashlib.sha256(data).hexdigest(),
        dated=body.requested_at.astimezone(UTC),
    )


def parse_manifest(data: bytes) -> ManifestBody:
    return ManifestBody.model_validate_json(data)


def dated_retention(dated: datetime, days: int, now: datetime) -> datetime:
    """Object Lock retain-until date: `days` after the run's requested_at, so that a replay asks for the same date;
    at least a day ahead of `now` (S3 refuses a date in the past: late evidence of an old run, an adopted history)."""
    return max(dated.astimezone(UTC) + timedelta(days=days), now + timedelta(days=1))


def manifest_parts(draft: ManifestDraft) -> tuple[str, bytes, str]:
    """The store's `ManifestBuilder`: a draft decided under the chain lock → (key, bytes, sha256)."""
    document = build_manifest(
        ManifestBody(
            account_id=draft.account_id,
            sequence=draft.sequence,
            run_id=draft.run_id,
            request_id=draft.request_id,
            requested_at=draft.requested_at.astimezone(UTC),
            supplements=draft.supplements,
            objects=[
                ManifestObject(service=o.service, key=o.key, sha256=o.sha256, size=o.size, version_id=o.version_id)
                for o in draft.objects
            ],
            missing_services=draft.missing_services,
            population=draft.population,
            previous_sha256=draft.previous_sha256,
            previous_key=draft.previous_key,
        )
    )
    return document.key, document.body, document.sha256

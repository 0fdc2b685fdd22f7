"""Evidence documents: deterministic bytes and a key dated by the run's requested_at."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

from services.evidence.document import build_document, evidence_key, finding_json
from services.evidence.store import PairMaterial
from shared.messages import Service, Status, run_id_for
from tests.evidence.factory import ACCOUNT, FINISHED_AT, REQUESTED_AT, STARTED_AT, make_finding

RUN_ID = run_id_for("doc-test")


def material(**overrides: object) -> PairMaterial:
    found = [
        make_finding(RUN_ID, ACCOUNT, "iam.user_mfa", "user/bob", Status.PASS),
        make_finding(RUN_ID, ACCOUNT, "iam.console_user_mfa", "user/alice", Status.FAIL, reason="no device"),
        make_finding(RUN_ID, ACCOUNT, "iam.user_mfa", "user/alice", Status.FAIL),
    ]
    base = PairMaterial(
        run_id=RUN_ID,
        request_id="doc-test",
        requested_at=REQUESTED_AT,
        account_id=ACCOUNT,
        service=Service.IAM,
        collector_version="test-1.0",
        population={"users": 2},
        metrics={"mfa_percent": 50.0},
        api_calls={"iam:ListUsers": 1},
        regions=["us-east-1"],
        started_at=STARTED_AT,
        finished_at=FINISHED_AT,
        findings=[finding_json(f) for f in found],
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


def test_document_bytes_are_deterministic_and_sorted() -> None:
    first = build_document(material())
    shuffled = material()
    again = build_document(dataclasses.replace(shuffled, findings=list(reversed(shuffled.findings))))
    assert again.body == first.body
    assert first.sha256 == hashlib.sha256(first.body).hexdigest()

    doc = json.loads(first.body)
    assert [(f["check_id"], f["resource_id"]) for f in doc["findings"]] == [
        ("iam.console_user_mfa", "user/alice"),
        ("iam.user_mfa", "user/alice"),
        ("iam.user_mfa", "user/bob"),
    ]
    assert doc["counts_by_status"] == {"PASS": 1, "FAIL": 2, "ERROR": 0}
    assert doc["findings_total"] == 3
    assert doc["requested_at"] == "2026-03-14T23:30:00Z"
    assert doc["run_id"] == RUN_ID
    assert doc["population"] == {"users": 2}
    assert first.body == json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def test_key_date_is_the_runs_requested_at_in_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    requested = datetime(2026, 3, 15, 1, 30, tzinfo=plus_two)  # 2026-03-14 23:30 UTC
    assert evidence_key(ACCOUNT, RUN_ID, Service.S3, requested) == f"evidence/{ACCOUNT}/2026/03/14/{RUN_ID}/s3.json"
    doc = build_document(material(requested_at=requested))
    assert doc.key == f"evidence/{ACCOUNT}/2026/03/14/{RUN_ID}/iam.json"
    assert doc.body == build_document(material(requested_at=requested.astimezone(UTC))).body

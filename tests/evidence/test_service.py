"""The evidence service end to end on a real nats-server, with moto's S3 and SQLite (or PostgreSQL)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from services.evidence.app import create_service
from services.evidence.document import EvidenceDocument
from services.evidence.store import EvidenceStore, PairKey, PairProgress
from services.evidence.upload import WRITE_CHECK_KEY, EvidenceBucketError, S3Uploader, StoredObject
from shared import subjects
from shared.aws import AwsClients, TransientAwsError
from shared.messages import (
    DeadLetter,
    FindingsReported,
    PlannedCheck,
    RunPlanned,
    RunState,
    Service,
    Soc2Control,
    Status,
    run_id_for,
)
from shared.settings import Settings
from tests.conftest import boto3_client
from tests.evidence.factory import ACCOUNT, make_chunks, make_finding, make_plan, new_request_id
from tests.evidence.harness import running_evidence
from tests.helpers import eventually

BUCKET = "kushim-evidence-storage-e2e"


def create_bucket(endpoint: str) -> Any:
    s3 = boto3_client(endpoint, "s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return s3


def all_versions(s3: Any) -> list[tuple[str, str]]:
    """Every version of every evidence object and manifest (not the start-up write check's marker)."""
    listing = s3.list_object_versions(Bucket=BUCKET)
    return sorted((v["Key"], v["VersionId"]) for v in listing.get("Versions", []) if v["Key"] != WRITE_CHECK_KEY)


async def test_run_completes_with_evidence_in_s3_and_replay_changes_nothing(
    e2e_settings: Callable[..., Settings], moto_endpoint: str, database_url: str
) -> None:
    s3 = create_bucket(moto_endpoint)
    settings = e2e_settings(evidence_bucket=BUCKET, database_url=database_url)
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    plan = make_plan(request_id, [(ACCOUNT, Service.IAM), (ACCOUNT, Service.S3)])
    iam = make_chunks(
        request_id,
        ACCOUNT,
        Service.IAM,
        [
            make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/alice", Status.FAIL),
            make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/bob", Status.PASS),
            make_finding(run_id, ACCOUNT, "iam.console_user_mfa", "user/bob", Status.PASS),
        ],
        per_chunk=2,
    )
    s3_chunks = make_chunks(
        request_id,
        ACCOUNT,
        Service.S3,
        [make_finding(run_id, ACCOUNT, "s3.bucket_default_encryption", f"bucket/b{i}", Status.PASS) for i in (1, 2)],
    )
    assert len(iam) == 2
    store = EvidenceStore(database_url)

    async with running_evidence(settings, store=store) as h:
        await h.chunks(iam)  # stored and acked before the plan exists: the plan's handler builds this evidence
        await h.drained()
        assert (await store.count_rows(run_id))["evidence_chunks"] == 2
        assert await store.evidence_body(PairKey(run_id, ACCOUNT, Service.IAM)) is None
        await h.plan(plan)
        await h.chunks(s3_chunks)
        completed = await h.next_completion()

        assert completed.run_id == run_id
        assert completed.request_id == request_id
        assert completed.state is RunState.COMPLETE
        assert completed.missing == []
        assert {c: v.status for c, v in completed.controls.items()} == {
            Soc2Control.CC6_1: Status.FAIL,
            Soc2Control.CC6_7: Status.PASS,
        }
        assert completed.findings_total == 5
        assert completed.findings_by_status == {Status.PASS: 4, Status.FAIL: 1, Status.ERROR: 0}

        day = f"evidence/{ACCOUNT}/2026/03/14/{run_id}"
        objects = all_versions(s3)
        manifest_key = f"manifests/{ACCOUNT}/0000000001-{run_id}.json"
        assert [key for key, _ in objects] == [f"{day}/iam.json", f"{day}/s3.json", manifest_key]
        versions = dict(objects)
        manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=manifest_key)["Body"].read())
        assert manifest["previous_sha256"] == "0" * 64
        assert manifest["sequence"] == 1
        assert manifest["missing_services"] == []
        assert [(o["key"], o["version_id"]) for o in manifest["objects"]] == [
            (f"{day}/iam.json", versions[f"{day}/iam.json"]),
            (f"{day}/s3.json", versions[f"{day}/s3.json"]),
        ]
        for entry in manifest["objects"]:
            body = s3.get_object(Bucket=BUCKET, Key=entry["key"])["Body"].read()
            assert entry["sha256"] == hashlib.sha256(body).hexdigest()
            assert entry["size"] == len(body)
        for key, _ in objects:
            head = s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
            body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            assert head["ServerSideEncryption"] == "AES256"
            assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()
        iam_body = s3.get_object(Bucket=BUCKET, Key=f"{day}/iam.json")["Body"].read()
        iam_doc = json.loads(iam_body)
        assert iam_doc["findings_total"] == 3
        assert [f["resource_id"] for f in iam_doc["findings"]] == ["user/bob", "user/alice", "user/bob"]
        assert await store.evidence_body(PairKey(run_id, ACCOUNT, Service.IAM)) == iam_body
        rows = await store.count_rows(run_id)
        assert rows == {
            "evidence_runs": 1,
            "evidence_pairs": 2,
            "evidence_chunks": 3,
            "evidence_findings": 5,
            "evidence_documents": 2,
            "evidence_manifests": 1,
        }

        # Replay everything under new message ids: same rows, same objects, no new version, one RunCompleted.
        await h.chunks([*iam, *s3_chunks], replay=True)
        await h.plan(plan, replay=True)
        await h.drained()
        assert await store.count_rows(run_id) == rows
        assert all_versions(s3) == objects
        assert await h.completions_in_stream() == 1

        page = await h.report(f'{{"run_id": "{run_id}"}}'.encode())
        assert page.ok
        assert [(s.service, s.complete, s.evidence_location) for s in page.services] == [
            (Service.IAM, True, f"s3://{BUCKET}/{day}/iam.json"),
            (Service.S3, True, f"s3://{BUCKET}/{day}/s3.json"),
        ]
        assert page.services[0].evidence_sha256 == hashlib.sha256(iam_body).hexdigest()


class FlakyUploader:
    """The real uploader, except that its first put fails as if S3 were unreachable."""

    def __init__(self, inner: S3Uploader) -> None:
        self.inner = inner
        self.calls = 0

    @property
    def bucket(self) -> str:
        return self.inner.bucket

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def put(self, document: EvidenceDocument) -> StoredObject:
        self.calls += 1
        if self.calls == 1:
            raise TransientAwsError("S3 unreachable (injected)")
        return await self.inner.put(document)


class FlakyStore(EvidenceStore):
    """The real store, except that the first chunk write fails as if the database were locked."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.chunk_calls = 0

    async def save_chunk(self, chunk: FindingsReported, now: datetime) -> PairProgress:
        self.chunk_calls += 1
        if self.chunk_calls == 1:
            raise OperationalError("INSERT INTO evidence_chunks", {}, Exception("database is locked (injected)"))
        return await super().save_chunk(chunk, now)


async def test_upload_failure_is_retried_and_the_run_completes(
    e2e_settings: Callable[..., Settings], moto_endpoint: str
) -> None:
    s3 = create_bucket(moto_endpoint)
    settings = e2e_settings(evidence_bucket=BUCKET)
    flaky = FlakyUploader(S3Uploader(AwsClients(settings), settings, BUCKET))
    store = EvidenceStore(settings.effective_database_url)
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    found = [make_finding(run_id, ACCOUNT, "s3.bucket_default_encryption", "bucket/b1", Status.FAIL)]

    async with running_evidence(settings, store=store, uploader=flaky) as h:
        await h.plan(make_plan(request_id, [(ACCOUNT, Service.S3)]))
        await h.chunks(make_chunks(request_id, ACCOUNT, Service.S3, found))
        completed = await h.next_completion()

        assert completed.state is RunState.COMPLETE
        assert completed.controls[Soc2Control.CC6_7].status is Status.FAIL
        assert flaky.calls == 3  # failed evidence put, its retry on redelivery, then the manifest
        rows = await store.count_rows(run_id)
        assert (rows["evidence_chunks"], rows["evidence_findings"], rows["evidence_documents"]) == (1, 1, 1)
        assert rows["evidence_manifests"] == 1
        assert len(all_versions(s3)) == 2  # the evidence document and the run's manifest, one version each


async def test_database_failure_is_retried_and_evidence_stays_in_the_database(
    e2e_settings: Callable[..., Settings],
) -> None:
    settings = e2e_settings()  # no bucket
    store = FlakyStore(settings.effective_database_url)
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    found = [make_finding(run_id, ACCOUNT, "iam.console_user_mfa", "user/alice", Status.PASS)]

    async with running_evidence(settings, store=store) as h:
        await h.plan(make_plan(request_id, [(ACCOUNT, Service.IAM)]))
        await h.chunks(make_chunks(request_id, ACCOUNT, Service.IAM, found))
        completed = await h.next_completion()

        assert completed.state is RunState.COMPLETE
        assert completed.controls[Soc2Control.CC6_1].status is Status.PASS
        assert store.chunk_calls == 2
        rows = await store.count_rows(run_id)
        assert (rows["evidence_chunks"], rows["evidence_findings"], rows["evidence_documents"]) == (1, 1, 1)
        page = await h.report(f'{{"run_id": "{run_id}"}}'.encode())
        assert page.services[0].evidence_location == "database"
        assert page.services[0].evidence_key == f"evidence/{ACCOUNT}/2026/03/14/{run_id}/iam.json"


async def test_run_missing_a_pair_ends_incomplete_after_its_deadline(e2e_settings: Callable[..., Settings]) -> None:
    settings = e2e_settings()
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    found = [make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/alice", Status.PASS)]

    async with running_evidence(settings) as h:
        deadline = datetime.now(UTC) + timedelta(seconds=1.5)
        await h.plan(
            make_plan(request_id, [(ACCOUNT, Service.IAM), (ACCOUNT, Service.CLOUDTRAIL)], deadline_at=deadline)
        )
        await h.chunks(make_chunks(request_id, ACCOUNT, Service.IAM, found))
        completed = await h.next_completion(timeout=10)

        assert datetime.now(UTC) >= deadline
        assert completed.state is RunState.INCOMPLETE
        assert completed.missing == [PlannedCheck(account_id=ACCOUNT, service=Service.CLOUDTRAIL)]
        assert completed.controls[Soc2Control.CC6_1].status is Status.PASS
        cc72 = completed.controls[Soc2Control.CC7_2]
        assert cc72.status is Status.ERROR
        assert f"no cloudtrail results from account(s) {ACCOUNT}" in cc72.reason
        page = await h.report(b"{}")
        assert page.run is not None
        assert page.run.state is RunState.INCOMPLETE
        assert page.run.missing == completed.missing


async def test_missing_evidence_bucket_refuses_to_start(e2e_settings: Callable[..., Settings]) -> None:
    settings = e2e_settings(evidence_bucket="kushim-evidence-storage-missing")
    assert settings.nats_url is not None
    app = create_service(settings, url=settings.nats_url)
    with pytest.raises(EvidenceBucketError, match=r"'kushim-evidence-storage-missing' \(AWS_S3_BUCKET_NAME\)"):
        await app.start()
    await app.stop()


async def test_conflicting_evidence_object_is_never_overwritten(
    e2e_settings: Callable[..., Settings], moto_endpoint: str
) -> None:
    s3 = create_bucket(moto_endpoint)
    settings = e2e_settings(evidence_bucket=BUCKET)
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    key = f"evidence/{ACCOUNT}/2026/03/14/{run_id}/s3.json"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b'{"planted": true}')
    found = [make_finding(run_id, ACCOUNT, "s3.bucket_default_encryption", "bucket/b1", Status.PASS)]

    async with running_evidence(settings) as h:
        dead_letters = await h.nc.subscribe(subjects.dlq_subject(subjects.DURABLE_EVIDENCE_FINDINGS))
        deadline = datetime.now(UTC) + timedelta(seconds=1)
        await h.plan(make_plan(request_id, [(ACCOUNT, Service.S3)], deadline_at=deadline))
        await h.drained()  # the plan is stored: the last chunk's handler meets the conflict and dead-letters it
        await h.chunks(make_chunks(request_id, ACCOUNT, Service.S3, found))

        dead = DeadLetter.model_validate_json((await dead_letters.next_msg(timeout=10)).data)
        assert "not overwritten" in dead.reason
        assert key in dead.reason
        completed = await h.next_completion(timeout=10)
        assert completed.state is RunState.INCOMPLETE
        assert completed.missing == [PlannedCheck(account_id=ACCOUNT, service=Service.S3)]
        assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == b'{"planted": true}'
        assert len(all_versions(s3)) == 1


class PlanOutage(EvidenceStore):
    """The database refuses the run's plan more times than max_deliver allows."""

    failures = 0

    async def save_plan(self, plan: RunPlanned) -> None:
        if self.failures < 4:
            self.failures += 1
            raise OperationalError("INSERT INTO evidence_runs", {}, Exception("connection refused (injected)"))
        await super().save_plan(plan)


async def test_a_plan_is_retried_past_max_deliver_and_the_run_still_completes(
    e2e_settings: Callable[..., Settings],
) -> None:
    settings = e2e_settings(max_deliver=3, retry_delay_seconds=0.05)
    store = PlanOutage(settings.effective_database_url)
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    found = [make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/alice", Status.PASS)]

    async with running_evidence(settings, store=store) as h:
        await h.plan(make_plan(request_id, [(ACCOUNT, Service.IAM)]))
        await h.chunks(make_chunks(request_id, ACCOUNT, Service.IAM, found))
        completed = await h.next_completion()

    assert store.failures == 4
    assert completed.state is RunState.COMPLETE
    assert completed.run_id == run_id


class PoisonChunk(EvidenceStore):
    """One chunk can never be stored (a bug, not an outage); every other chunk can."""

    def __init__(self, url: str, poison_index: int) -> None:
        super().__init__(url)
        self.poison_index = poison_index
        self.poison_calls = 0

    async def save_chunk(self, chunk: FindingsReported, now: datetime) -> PairProgress:
        if chunk.service is Service.S3 and chunk.chunk_index == self.poison_index:
            self.poison_calls += 1
            raise ValueError("cannot store this chunk (injected)")
        return await super().save_chunk(chunk, now)


async def test_a_message_that_always_fails_is_dead_lettered_after_max_deliver(
    e2e_settings: Callable[..., Settings],
) -> None:
    """Delivered exactly max_deliver times, then one dead-letter row (via KUSHIM_DLQ); the other chunks are stored
    and the run, missing that pair, ends INCOMPLETE instead of waiting for ever."""
    settings = e2e_settings(max_deliver=4, retry_delay_seconds=0.05, run_deadline_seconds=2)
    store = PoisonChunk(settings.effective_database_url, poison_index=1)
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    s3_findings = [make_finding(run_id, ACCOUNT, "s3.bucket_versioning", f"bucket/b{i}", Status.PASS) for i in range(6)]
    iam_findings = [make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/alice", Status.PASS)]

    async with running_evidence(settings, store=store) as h:
        await h.plan(
            make_plan(
                request_id,
                [(ACCOUNT, Service.IAM), (ACCOUNT, Service.S3)],
                deadline_at=datetime.now(UTC) + timedelta(seconds=3),
            )
        )
        await h.chunks(make_chunks(request_id, ACCOUNT, Service.S3, s3_findings, per_chunk=2))
        await h.chunks(make_chunks(request_id, ACCOUNT, Service.IAM, iam_findings))
        completed = await h.next_completion(timeout=20)
        await eventually(lambda: _has_dead_letter(store), timeout=10, what="the dead-letter row")
        await h.drained()
        rows = await store.dead_letter_rows()

    assert store.poison_calls == 4
    assert len(rows) == 1
    letter = rows[0]
    assert letter.consumer == "evidence-findings"
    assert letter.subject == "kushim.findings.s3"
    assert letter.num_delivered == 4
    assert "failed after 4 deliveries" in letter.reason
    assert "cannot store this chunk" in letter.reason
    assert '"chunk_index": 1' in letter.payload_excerpt
    assert "bucket/b2" not in letter.payload_excerpt  # findings are not copied into dead letters
    counts = await store.count_rows(run_id)
    assert (counts["evidence_chunks"], counts["evidence_findings"]) == (3, 5)  # 2 of 3 S3 chunks + IAM's
    assert completed.state is RunState.INCOMPLETE
    assert completed.missing == [PlannedCheck(account_id=ACCOUNT, service=Service.S3)]


async def _has_dead_letter(store: EvidenceStore) -> bool:
    return len(await store.dead_letter_rows()) >= 1

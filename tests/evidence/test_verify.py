"""Manifests, their hash chain and `kushim evidence verify`, on a real evidence service, nats-server and moto bucket:
three runs build a chain of three manifests; then the bucket is tampered with (overwrite, delete, add, reorder, a
removed last manifest) and verification must name each key. Without a bucket the database's copies are verified.
The chain cannot fork when several writers append at once (both databases)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from services.cli.main import app as cli
from services.evidence.manifest import GENESIS_SHA256, manifest_parts
from services.evidence.store import EvidenceStore, PairKey, documents, manifests, runs
from services.evidence.verify import ProblemKind, Verification, verify_evidence
from shared.messages import RunState, Service, Status, run_id_for
from shared.settings import Settings
from tests.evidence.factory import ACCOUNT, REQUESTED_AT, make_chunks, make_finding, make_plan, new_request_id
from tests.evidence.harness import running_evidence
from tests.evidence.test_service import BUCKET, create_bucket


async def _three_runs(settings: Settings) -> list[str]:
    run_ids = []
    async with running_evidence(settings) as h:
        for day in range(3):
            request_id = new_request_id()
            run_id = run_id_for(request_id)
            requested_at = REQUESTED_AT + timedelta(days=day)
            await h.plan(
                make_plan(request_id, [(ACCOUNT, Service.IAM), (ACCOUNT, Service.S3)], requested_at=requested_at)
            )
            await h.chunks(
                make_chunks(
                    request_id,
                    ACCOUNT,
                    Service.IAM,
                    [make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/a", Status.PASS)],
                )
            )
            await h.chunks(
                make_chunks(
                    request_id,
                    ACCOUNT,
                    Service.S3,
                    [make_finding(run_id, ACCOUNT, "s3.bucket_versioning", f"bucket/b{day}", Status.FAIL)],
                )
            )
            assert (await h.next_completion()).state is RunState.COMPLETE
            run_ids.append(run_id)
    return run_ids


def _problems(result: Verification) -> set[tuple[ProblemKind, str]]:
    return {(p.kind, p.key) for p in result.problems}


def _manifests(s3: Any) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"manifests/{ACCOUNT}/")["Contents"])


async def test_chain_links_and_verify_names_every_tampered_key(
    e2e_settings: Callable[..., Settings], moto_endpoint: str
) -> None:
    s3 = create_bucket(moto_endpoint)
    settings = e2e_settings(evidence_bucket=BUCKET)
    run_ids = await _three_runs(settings)

    keys = _manifests(s3)
    assert keys == [f"manifests/{ACCOUNT}/{i:010d}-{run_ids[i - 1]}.json" for i in (1, 2, 3)]
    bodies = [s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys]
    chain = [json.loads(b) for b in bodies]
    assert [m["previous_sha256"] for m in chain] == [GENESIS_SHA256] + [
        hashlib.sha256(b).hexdigest() for b in bodies[:2]
    ]
    assert [m["previous_key"] for m in chain] == [None, keys[0], keys[1]]

    clean = await verify_evidence(settings)
    assert clean.ok, clean.problems
    assert (clean.accounts, clean.manifests, clean.objects) == ([ACCOUNT], 3, 6)

    day0 = f"evidence/{ACCOUNT}/2026/03/14/{run_ids[0]}"
    day1 = f"evidence/{ACCOUNT}/2026/03/15/{run_ids[1]}"
    # Overwrite (a new latest version with other bytes), delete, add.
    s3.put_object(Bucket=BUCKET, Key=f"{day0}/iam.json", Body=b'{"findings": []}')
    s3.delete_object(Bucket=BUCKET, Key=f"{day1}/s3.json")
    s3.put_object(Bucket=BUCKET, Key=f"evidence/{ACCOUNT}/2026/03/15/forged/iam.json", Body=b"{}")
    result = await verify_evidence(settings)
    assert _problems(result) == {
        (ProblemKind.changed, f"{day0}/iam.json"),
        (ProblemKind.missing, f"{day1}/s3.json"),
        (ProblemKind.added, f"evidence/{ACCOUNT}/2026/03/15/forged/iam.json"),
    }
    # --since skips the older runs' objects (the chain is still read whole).
    later = await verify_evidence(settings, since=REQUESTED_AT + timedelta(days=2))
    assert later.ok
    assert later.objects == 2

    # Reorder: the first two manifests swap contents.
    s3.put_object(Bucket=BUCKET, Key=keys[0], Body=bodies[1])
    s3.put_object(Bucket=BUCKET, Key=keys[1], Body=bodies[0])
    reordered = _problems(await verify_evidence(settings))
    assert {
        (ProblemKind.chain_break, keys[0]),
        (ProblemKind.chain_break, keys[1]),
        (ProblemKind.chain_break, keys[2]),
    } <= reordered
    assert {(ProblemKind.changed, keys[0]), (ProblemKind.changed, keys[1])} <= reordered
    s3.put_object(Bucket=BUCKET, Key=keys[0], Body=bodies[0])
    s3.put_object(Bucket=BUCKET, Key=keys[1], Body=bodies[1])

    # The last manifest removed: only the database's record and chain head reveal it.
    s3.delete_object(Bucket=BUCKET, Key=keys[2])
    truncated = await verify_evidence(settings)
    assert (ProblemKind.missing, keys[2]) in _problems(truncated)
    assert (ProblemKind.chain_break, keys[2]) in _problems(truncated)
    day2 = f"evidence/{ACCOUNT}/2026/03/16/{run_ids[2]}"
    assert (ProblemKind.added, f"{day2}/iam.json") in _problems(truncated)  # no manifest lists them any more

    # The command: exit 1 and the keys in its output.
    env = {
        "KUSHIM_DATABASE_URL": settings.effective_database_url,
        "AWS_S3_BUCKET_NAME": BUCKET,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "KUSHIM_HOME": str(settings.home),
    }
    outcome = await asyncio.to_thread(CliRunner().invoke, cli, ["evidence", "verify", "-o", "json"], env=env)
    assert outcome.exit_code == 1, outcome.output
    reported = json.loads(outcome.stdout)
    assert not reported["ok"]
    assert {(p["kind"], p["key"]) for p in reported["problems"]} == {(k.value, key) for k, key in _problems(truncated)}


async def test_without_a_bucket_the_database_copies_are_verified(e2e_settings: Callable[..., Settings]) -> None:
    settings = e2e_settings()
    run_ids = await _three_runs(settings)
    assert (await verify_evidence(settings)).ok
    store = EvidenceStore(settings.effective_database_url)
    try:
        key = f"evidence/{ACCOUNT}/2026/03/15/{run_ids[1]}/iam.json"
        async with store.engine.begin() as conn:
            await conn.execute(update(documents).where(documents.c.key == key).values(body=b"{}"))
    finally:
        await store.close()
    result = await verify_evidence(settings, account_id=ACCOUNT)
    assert result.source.startswith("database ")
    assert _problems(result) == {(ProblemKind.changed, key)}


async def _final_run(store: EvidenceStore, index: int) -> str:
    """A COMPLETE run with one evidence object, stored directly (no bucket)."""
    request_id = f"chain-{index}"
    run_id = run_id_for(request_id)
    now = datetime.now(UTC)
    await store.save_plan(make_plan(request_id, [(ACCOUNT, Service.IAM)]))
    finding = make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/a", Status.PASS)
    for chunk in make_chunks(request_id, ACCOUNT, Service.IAM, [finding]):
        await store.save_chunk(chunk, now)
    body = f"evidence {index}".encode()
    await store.save_evidence(
        PairKey(run_id, ACCOUNT, Service.IAM),
        key=f"evidence/{ACCOUNT}/x/{run_id}/iam.json",
        body=body,
        sha256=hashlib.sha256(body).hexdigest(),
        location="database",
        version_id=None,
        now=now,
    )
    assert await store.finalize_run(run_id, now, deadline_passed=False, gating={}) is RunState.COMPLETE
    return run_id


@pytest.mark.timeout(60)
async def test_concurrent_writers_cannot_fork_the_chain(database_url: str, store: EvidenceStore) -> None:
    """Two stores (as two evidence replicas) seal 12 runs of one account at once: one linear chain of 12."""
    other = EvidenceStore(database_url)
    try:
        run_ids = [await _final_run(store, i) for i in range(12)]

        async def seal(writer: EvidenceStore, run_id: str) -> None:
            for attempt in range(50):
                try:
                    await writer.append_manifests(
                        run_id, datetime.now(UTC), manifest_parts, genesis=GENESIS_SHA256, in_database_only=True
                    )
                    return
                except Exception:  # ChainConflict or a lock timeout: a transient failure, retried as the service does
                    await asyncio.sleep(0.01 * (attempt + 1))
            raise AssertionError(f"could not seal {run_id}")

        await asyncio.gather(*(seal(w, r) for r in run_ids for w in (store, other)))
        records = await store.manifest_records(ACCOUNT)
        assert [r.sequence for r in records] == list(range(1, 13))
        assert sorted(r.run_id for r in records) == sorted(run_ids)  # each run once, though both writers tried
        previous = GENESIS_SHA256
        for record in records:
            assert json.loads(record.body)["previous_sha256"] == previous
            assert hashlib.sha256(record.body).hexdigest() == record.sha256
            previous = record.sha256
        head = (await store.chain_heads())[ACCOUNT]
        assert (head.sequence, head.sha256) == (12, previous)
    finally:
        await other.close()


async def test_late_evidence_after_an_incomplete_run_gets_a_supplementary_manifest(
    e2e_settings: Callable[..., Settings], moto_endpoint: str
) -> None:
    s3 = create_bucket(moto_endpoint)
    settings = e2e_settings(evidence_bucket=BUCKET)
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    plan = make_plan(
        request_id,
        [(ACCOUNT, Service.IAM), (ACCOUNT, Service.S3)],
        deadline_at=datetime.now(UTC) + timedelta(seconds=1),
    )
    async with running_evidence(settings) as h:
        await h.plan(plan)
        found = [make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/a", Status.PASS)]
        await h.chunks(make_chunks(request_id, ACCOUNT, Service.IAM, found))
        assert (await h.next_completion()).state is RunState.INCOMPLETE
        first = json.loads(s3.get_object(Bucket=BUCKET, Key=_manifests(s3)[0])["Body"].read())
        assert [o["service"] for o in first["objects"]] == ["iam"]
        assert first["missing_services"] == ["s3"]
        assert first["supplements"] is False

        found = [make_finding(run_id, ACCOUNT, "s3.bucket_versioning", "bucket/b", Status.PASS)]
        await h.chunks(make_chunks(request_id, ACCOUNT, Service.S3, found))
        completed = await h.next_completion()
        while completed.state is not RunState.COMPLETE:
            completed = await h.next_completion()

    keys = _manifests(s3)
    assert keys == [f"manifests/{ACCOUNT}/{i:010d}-{run_id}.json" for i in (1, 2)]
    second = json.loads(s3.get_object(Bucket=BUCKET, Key=keys[1])["Body"].read())
    assert [o["service"] for o in second["objects"]] == ["s3"]
    assert second["missing_services"] == []
    assert second["supplements"] is True
    result = await verify_evidence(settings)
    assert result.ok, result.problems
    assert (result.manifests, result.objects) == (2, 2)


async def test_verify_sees_foreign_prefixes_and_tolerates_open_runs_and_pending_manifests(
    e2e_settings: Callable[..., Settings], moto_endpoint: str
) -> None:
    s3 = create_bucket(moto_endpoint)
    settings = e2e_settings(evidence_bucket=BUCKET)
    run_ids = await _three_runs(settings)
    for key in ("evidence/forged.json", "manifests/forged.json", "evidence//x/y.json"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"{}")
    result = await verify_evidence(settings)
    assert _problems(result) == {
        (ProblemKind.added, "evidence/forged.json"),
        (ProblemKind.added, "manifests/forged.json"),
        (ProblemKind.added, "evidence//x/y.json"),
    }
    for key in ("evidence/forged.json", "manifests/forged.json", "evidence//x/y.json"):
        s3.delete_object(Bucket=BUCKET, Key=key)

    # A manifest committed in the database but not uploaded yet (an S3 outage): pending, not tampering.
    last = _manifests(s3)[-1]
    body = s3.get_object(Bucket=BUCKET, Key=last)["Body"].read()
    s3.delete_object(Bucket=BUCKET, Key=last)
    store = EvidenceStore(settings.effective_database_url)
    try:
        async with store.engine.begin() as conn:
            await conn.execute(
                update(manifests)
                .where(manifests.c.key == last)
                .values(location=None, version_id=None, uploaded_at=None)
            )
        assert (await verify_evidence(settings)).ok
        s3.put_object(Bucket=BUCKET, Key=last, Body=body)
        # An object of a run that is still open (its evidence uploaded, its manifest to come): not "added".
        async with store.engine.begin() as conn:
            await conn.execute(update(runs).where(runs.c.run_id == run_ids[2]).values(state=RunState.RUNNING.value))
        s3.put_object(Bucket=BUCKET, Key=f"evidence/{ACCOUNT}/2026/03/16/{run_ids[2]}/cloudtrail.json", Body=b"{}")
        assert (await verify_evidence(settings)).ok
    finally:
        await store.close()


async def test_evidence_kept_in_the_database_before_a_bucket_was_configured_still_verifies(
    e2e_settings: Callable[..., Settings], moto_endpoint: str
) -> None:
    create_bucket(moto_endpoint)
    database_only = e2e_settings()
    await _three_runs(database_only)
    with_bucket = e2e_settings(evidence_bucket=BUCKET, database_url=database_only.effective_database_url)
    await _three_runs(with_bucket)
    result = await verify_evidence(with_bucket)
    assert result.ok, result.problems
    assert (result.manifests, result.objects) == (6, 12)

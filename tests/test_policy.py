"""`kushim policy` lists exactly the IAM actions the collectors' operations need: every collector runs against a
moto account (the IAM collector on both of its data paths) while its calls are recorded."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from services.cli.demo_account import seed_demo_account
from services.collector_cloudtrail.app import SPEC as CLOUDTRAIL_SPEC
from services.collector_iam.app import SPEC as IAM_SPEC
from services.collector_iam.collect import scan as iam_scan
from services.collector_s3.app import SPEC as S3_SPEC
from shared.aws import ApiCallCounter, AwsClients
from shared.messages import CheckRequested, Service
from shared.permissions import (
    COLLECTOR_OPERATIONS,
    IAM_ACTIONS,
    SCHEDULER_OPERATIONS,
    iam_action,
    read_only_policy,
)
from shared.settings import Settings
from tests.collector_iam.test_collect import deny
from tests.conftest import MOTO_ACCOUNT, boto3_client


def request(service: Service) -> CheckRequested:
    return CheckRequested(
        run_id="run-" + "0" * 32,
        request_id="policy",
        account_id=MOTO_ACCOUNT,
        service=service,
        regions=["us-east-1"],
        requested_at=datetime.now(UTC),
    )


def operations(counter: ApiCallCounter) -> set[tuple[str, str]]:
    return {(key.split(":", 1)[0], key.split(":", 1)[1]) for key in counter.counts}


async def test_policy_covers_exactly_the_operations_the_collectors_call(
    make_settings: Callable[..., Settings], moto_endpoint: str
) -> None:
    seed_demo_account(moto_endpoint)
    iam = boto3_client(moto_endpoint, "iam")
    iam.create_access_key(UserName="ci-deployer")
    settings = make_settings(aws_endpoint_url=moto_endpoint)
    aws = AwsClients(settings)
    recorded: dict[str, set[tuple[str, str]]] = {}
    specs: list[Any] = [IAM_SPEC, S3_SPEC, CLOUDTRAIL_SPEC]
    for spec in specs:
        counter = ApiCallCounter()
        await spec.collect(aws, request(spec.service), counter, settings)
        recorded[spec.service.value] = operations(counter)

    # the IAM collector's other path: the credential report is denied, users are read one by one
    counter = ApiCallCounter()
    async with aws.client("iam", None, counter) as client:
        deny(client, "GenerateCredentialReport")
        snapshot = await iam_scan(client, account_id=MOTO_ACCOUNT, concurrency=4)
    assert snapshot.source == "per_user"
    recorded["iam"] |= operations(counter) | {("iam", "GenerateCredentialReport")}  # denied before it was sent

    for service, ops in recorded.items():
        missing_from_table = sorted(op for op in ops if op not in IAM_ACTIONS)
        assert missing_from_table == [], f"{service}: add these to IAM_ACTIONS"
        undeclared = sorted(op for op in ops if op not in COLLECTOR_OPERATIONS[service])
        assert undeclared == [], f"{service}: add these to COLLECTOR_OPERATIONS"
        unused = sorted(op for op in COLLECTOR_OPERATIONS[service] if op not in ops)
        assert unused == [], f"{service}: the policy would grant actions no call needs"

    # the scheduler's region discovery (KUSHIM_REGIONS=all)
    counter = ApiCallCounter()
    await aws.enabled_regions(counter)
    assert operations(counter) == set(SCHEDULER_OPERATIONS)
    recorded["scheduler"] = operations(counter)
    assert all(op in IAM_ACTIONS for op in SCHEDULER_OPERATIONS)

    policy = read_only_policy([s.value for s in Service], "kushim-evidence-storage-*")
    statements: list[dict[str, Any]] = policy["Statement"]  # type: ignore[assignment]
    granted = set(statements[0]["Action"])
    assert granted == {iam_action(svc, op) for ops in recorded.values() for svc, op in ops}
    assert "s3:GetBucketEncryption" not in granted  # not an IAM action
    assert "s3:GetEncryptionConfiguration" in granted
    assert set(statements[1]["Action"]) == {
        "s3:PutObject",
        "s3:GetObject",
        "s3:ListBucket",
        "s3:GetBucketObjectLockConfiguration",  # the start-up check when Object Lock is configured
        "s3:PutObjectRetention",  # PutObject with a retention date
    }

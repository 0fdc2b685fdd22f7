"""The demo account: seeded into an embedded moto server, never into a real AWS account.

6 IAM users (3 with console passwords, one of them without MFA; 3 API-only, two of them without MFA) and a
virtual MFA device that was created but never assigned (it must count for nobody); 4 buckets (no default
encryption, SSE-S3 — the evidence bucket, versioned —, SSE-KMS, and the CloudTrail bucket with SSE-S3; the evidence
and CloudTrail buckets block public access); 2 trails (one
single-region and logging; one multi-region, logging, with log-file validation and a KMS key; both recording
all management events).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DEMO_REGION = "us-east-1"
DEMO_EVIDENCE_BUCKET = "kushim-evidence-storage-demo"
DEMO_TRAIL_BUCKET = "demo-cloudtrail-logs"


@dataclass(frozen=True)
class DemoUser:
    name: str
    console: bool
    mfa: bool


DEMO_USERS = (
    DemoUser("alice", console=True, mfa=True),
    DemoUser("bob", console=True, mfa=True),
    DemoUser("carol", console=True, mfa=False),
    DemoUser("svc-backup", console=False, mfa=True),
    DemoUser("ci-deployer", console=False, mfa=False),
    DemoUser("reporting-bot", console=False, mfa=False),
)


def _client(endpoint: str, service: str) -> Any:
    import boto3  # the `demo` extra (moto) brings boto3

    return boto3.client(
        service,
        region_name=DEMO_REGION,
        endpoint_url=endpoint,
        aws_access_key_id="demo",
        aws_secret_access_key="demo",  # noqa: S106 - the embedded moto server's dummy credentials
    )


def seed_demo_account(endpoint: str) -> None:
    """Create the demo account's resources in the moto server at `endpoint`."""
    iam = _client(endpoint, "iam")
    for user in DEMO_USERS:
        iam.create_user(UserName=user.name)
        if user.console:
            iam.create_login_profile(UserName=user.name, Password="Demo-Passw0rd-Not-Real!")  # noqa: S106 - moto only
        if user.mfa:
            device = iam.create_virtual_mfa_device(VirtualMFADeviceName=f"{user.name}-mfa")
            iam.enable_mfa_device(
                UserName=user.name,
                SerialNumber=device["VirtualMFADevice"]["SerialNumber"],
                AuthenticationCode1="123456",
                AuthenticationCode2="654321",
            )
    iam.create_virtual_mfa_device(VirtualMFADeviceName="unassigned-token")

    s3 = _client(endpoint, "s3")
    kms = _client(endpoint, "kms")
    key_id = kms.create_key(Description="demo customer data key")["KeyMetadata"]["KeyId"]
    s3.create_bucket(Bucket="demo-app-uploads")
    for bucket in (DEMO_EVIDENCE_BUCKET, DEMO_TRAIL_BUCKET):
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_encryption(
            Bucket=bucket,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )
    s3.put_bucket_versioning(Bucket=DEMO_EVIDENCE_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for bucket in (DEMO_EVIDENCE_BUCKET, DEMO_TRAIL_BUCKET):  # as the integration guide advises
        s3.put_public_access_block(
            Bucket=bucket,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": True,
                "IgnorePublicAcls": True,
                "BlockPublicPolicy": True,
                "RestrictPublicBuckets": True,
            },
        )
    s3.create_bucket(Bucket="demo-customer-data")
    s3.put_bucket_encryption(
        Bucket="demo-customer-data",
        ServerSideEncryptionConfiguration={
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_id},
                    "BucketKeyEnabled": True,
                }
            ]
        },
    )

    cloudtrail = _client(endpoint, "cloudtrail")
    trail_key = kms.create_key(Description="demo CloudTrail key")["KeyMetadata"]["Arn"]
    cloudtrail.create_trail(Name="demo-single-region", S3BucketName=DEMO_TRAIL_BUCKET)
    cloudtrail.create_trail(
        Name="demo-org-trail",
        S3BucketName=DEMO_TRAIL_BUCKET,
        IsMultiRegionTrail=True,
        EnableLogFileValidation=True,
        KmsKeyId=trail_key,
    )
    for trail in ("demo-single-region", "demo-org-trail"):
        # AWS records all management events by default; moto needs to be told.
        cloudtrail.put_event_selectors(
            TrailName=trail,
            EventSelectors=[{"ReadWriteType": "All", "IncludeManagementEvents": True}],
        )
        cloudtrail.start_logging(Name=trail)

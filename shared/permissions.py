"""AWS operation -> IAM action, from AWS's Service Authorization Reference.

The API name and the IAM action differ in places (GetBucketEncryption is authorised by
`s3:GetEncryptionConfiguration`, ListBuckets by `s3:ListAllMyBuckets`), so ERROR findings and the generated
policy read this table instead of guessing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

IAM_ACTIONS: Mapping[tuple[str, str], str] = {
    ("sts", "GetCallerIdentity"): "sts:GetCallerIdentity",
    ("iam", "ListUsers"): "iam:ListUsers",
    ("iam", "ListMFADevices"): "iam:ListMFADevices",
    ("iam", "GetLoginProfile"): "iam:GetLoginProfile",
    ("iam", "GenerateCredentialReport"): "iam:GenerateCredentialReport",
    ("iam", "GetCredentialReport"): "iam:GetCredentialReport",
    ("iam", "GetAccountSummary"): "iam:GetAccountSummary",
    ("iam", "ListAccessKeys"): "iam:ListAccessKeys",
    ("iam", "GetAccessKeyLastUsed"): "iam:GetAccessKeyLastUsed",
    ("s3", "ListBuckets"): "s3:ListAllMyBuckets",
    ("s3", "GetBucketLocation"): "s3:GetBucketLocation",
    ("s3", "GetBucketEncryption"): "s3:GetEncryptionConfiguration",
    ("s3", "GetBucketVersioning"): "s3:GetBucketVersioning",
    ("s3", "GetBucketLogging"): "s3:GetBucketLogging",
    ("s3", "GetPublicAccessBlock"): "s3:GetBucketPublicAccessBlock",
    ("s3", "PutObject"): "s3:PutObject",
    ("s3", "GetObject"): "s3:GetObject",
    ("s3", "HeadBucket"): "s3:ListBucket",
    ("s3", "ListObjectsV2"): "s3:ListBucket",
    ("s3", "GetObjectLockConfiguration"): "s3:GetBucketObjectLockConfiguration",
    ("s3", "PutObjectRetention"): "s3:PutObjectRetention",
    ("cloudtrail", "DescribeTrails"): "cloudtrail:DescribeTrails",
    ("cloudtrail", "GetTrailStatus"): "cloudtrail:GetTrailStatus",
    ("cloudtrail", "GetEventSelectors"): "cloudtrail:GetEventSelectors",
    ("cloudtrail", "LookupEvents"): "cloudtrail:LookupEvents",
    ("ec2", "DescribeRegions"): "ec2:DescribeRegions",
}


COLLECTOR_OPERATIONS: Mapping[str, tuple[tuple[str, str], ...]] = {
    "iam": (
        ("iam", "GenerateCredentialReport"),
        ("iam", "GetCredentialReport"),
        # the per-user path, used when the credential report is denied
        ("iam", "ListUsers"),
        ("iam", "ListMFADevices"),
        ("iam", "GetLoginProfile"),
        ("iam", "ListAccessKeys"),
        ("iam", "GetAccessKeyLastUsed"),
        ("iam", "GetAccountSummary"),
    ),
    "s3": (
        ("s3", "ListBuckets"),
        ("s3", "GetBucketLocation"),
        ("s3", "GetBucketEncryption"),
        ("s3", "GetBucketVersioning"),
        ("s3", "GetBucketLogging"),
        ("s3", "GetPublicAccessBlock"),
    ),
    "cloudtrail": (
        ("cloudtrail", "DescribeTrails"),
        ("cloudtrail", "GetTrailStatus"),
        ("cloudtrail", "GetEventSelectors"),
        ("cloudtrail", "LookupEvents"),
    ),
}
"""Every AWS operation each collector may call (all data paths); `kushim policy` is generated from this.
sts:GetCallerIdentity (the account guard) needs no permission: AWS allows it to every principal."""

SCHEDULER_OPERATIONS: tuple[tuple[str, str], ...] = (("ec2", "DescribeRegions"),)
"""What the scheduler calls: the enabled regions, when KUSHIM_REGIONS=all."""

EVIDENCE_BUCKET_OPERATIONS: tuple[tuple[str, str], ...] = (
    ("s3", "HeadBucket"),
    ("s3", "PutObject"),
    ("s3", "GetObject"),
    ("s3", "ListObjectsV2"),
    ("s3", "GetObjectLockConfiguration"),
    ("s3", "PutObjectRetention"),
)
"""What the evidence service does to the evidence bucket: check it (and its Object Lock configuration) at start,
write documents and manifests (with retention when Object Lock is configured: PutObject with a retention needs
s3:PutObjectRetention), read one back when a create-only put finds it already there; `kushim evidence verify` lists
and reads."""


def iam_action(service: str, operation: str) -> str:
    """The IAM action that authorises an operation; falls back to `service:Operation` for unlisted ones."""
    return IAM_ACTIONS.get((service, operation), f"{service}:{operation}")


def read_only_policy(services: Iterable[str], evidence_bucket_pattern: str) -> dict[str, object]:
    """The least-privilege policy for the given collectors and the scheduler, plus evidence uploads."""
    operations = {op for service in services for op in COLLECTOR_OPERATIONS[service]} | set(SCHEDULER_OPERATIONS)
    actions = sorted({iam_action(svc, op) for svc, op in operations})
    evidence = sorted({iam_action(svc, op) for svc, op in EVIDENCE_BUCKET_OPERATIONS})
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "KushimReadOnlyChecks", "Effect": "Allow", "Action": actions, "Resource": "*"},
            {
                "Sid": "KushimEvidenceStorage",
                "Effect": "Allow",
                "Action": evidence,
                "Resource": [f"arn:aws:s3:::{evidence_bucket_pattern}", f"arn:aws:s3:::{evidence_bucket_pattern}/*"],
            },
        ],
    }

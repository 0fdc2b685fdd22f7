"""The connection test: one cheap read per service the checks use, plus the evidence bucket, each answered with
Connected or the exact failure and what to change."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from shared.aws import AwsClients, classify_error, error_code
from shared.messages import ConnectionTestResult, ServiceConnection
from shared.permissions import iam_action
from shared.settings import Settings

FIXES: dict[str, str] = {
    "NoCredentials": "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
    "or run with an IAM role (IRSA, Pod Identity, instance profile)",
    "InvalidClientTokenId": "the access key id is not valid: check AWS_ACCESS_KEY_ID (no extra spaces) and that the "
    "key is active in IAM",
    "SignatureDoesNotMatch": "the secret does not match the access key: check AWS_SECRET_ACCESS_KEY (no extra spaces)",
    "InvalidAccessKeyId": "the access key id is not valid: check AWS_ACCESS_KEY_ID and that the key is active",
    "ExpiredToken": "the temporary credentials expired: refresh them (AWS_SESSION_TOKEN)",
    "ExpiredTokenException": "the temporary credentials expired: refresh them (AWS_SESSION_TOKEN)",
    "NoSuchBucket": "the evidence bucket does not exist: create it or correct AWS_S3_BUCKET_NAME",
    "404": "the evidence bucket does not exist: create it or correct AWS_S3_BUCKET_NAME",
    "301": "the evidence bucket is in another region: set AWS_REGION to the bucket's region",
    "PermanentRedirect": "the evidence bucket is in another region: set AWS_REGION to the bucket's region",
    "AuthorizationHeaderMalformed": "the region is wrong for this bucket: set AWS_REGION to the bucket's region",
    "EndpointConnectionError": "AWS could not be reached: check the network, AWS_REGION and AWS_ENDPOINT_URL",
    "ConnectTimeoutError": "AWS could not be reached in time: check the network and AWS_ENDPOINT_URL",
}

Call = Callable[[AwsClients], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Probe:
    service: str
    aws_service: str
    operation: str
    call: Call


async def _sts(aws: AwsClients) -> Any:
    async with aws.client("sts") as sts:
        return await sts.get_caller_identity()


async def _iam(aws: AwsClients) -> Any:
    async with aws.client("iam") as iam:
        return await iam.list_users(MaxItems=1)


async def _s3(aws: AwsClients) -> Any:
    async with aws.client("s3") as s3:
        return await s3.list_buckets(MaxBuckets=1)


async def _cloudtrail(aws: AwsClients) -> Any:
    async with aws.client("cloudtrail") as cloudtrail:
        return await cloudtrail.describe_trails(includeShadowTrails=False)


def _bucket_probe(bucket: str) -> Call:
    async def head(aws: AwsClients) -> Any:
        async with aws.client("s3") as s3:
            return await s3.head_bucket(Bucket=bucket)

    return head


def probes(settings: Settings, *, evidence_bucket: bool = True) -> list[Probe]:
    found = [
        Probe("sts", "sts", "GetCallerIdentity", _sts),
        Probe("iam", "iam", "ListUsers", _iam),
        Probe("s3", "s3", "ListBuckets", _s3),
        Probe("cloudtrail", "cloudtrail", "DescribeTrails", _cloudtrail),
    ]
    if settings.evidence_bucket and evidence_bucket:
        found.append(Probe("evidence-bucket", "s3", "HeadBucket", _bucket_probe(settings.evidence_bucket)))
    return found


def _access_fix(access: str, account_id: str | None) -> str:
    if "role" in access:
        return (
            f"the role's trust policy must allow Kushim's principal with its ExternalId (`kushim accounts external-id "
            f"{account_id}` prints it), and Kushim's own credentials need sts:AssumeRole on the role"
        )
    return "Kushim's own credentials need secretsmanager:GetSecretValue on the secret, which must hold the keys as JSON"


def fix_for(code: str, permission: str) -> str:
    if code in FIXES:
        return FIXES[code]
    if code in ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403"):
        return f"the policy does not allow {permission}: attach the policy from `kushim policy`"
    return "see the AWS error message"


async def check_connection(
    settings: Settings,
    aws: AwsClients,
    request_id: str | None = None,
    *,
    access: str | None = None,
    account_id: str | None = None,
) -> ConnectionTestResult:
    """Probe every service with `aws`. `access` describes a registered account's own access (an assumed role, a
    secret): its credentials are obtained first, and a failure there is reported as such; the evidence bucket is
    probed with Kushim's own credentials only (`account_id` unset)."""
    results: list[ServiceConnection] = []
    account: str | None = None
    if access is not None:
        try:
            await aws.resolve_credentials()
        except Exception as exc:
            err = classify_error("sts", "AssumeRole", exc)
            results.append(
                ServiceConnection(
                    service="credentials",
                    connected=False,
                    api_call="sts:AssumeRole" if "role" in access else "secretsmanager:GetSecretValue",
                    code=error_code(exc) or err.code,
                    message=f"cannot obtain credentials through {access}: {err.message}"[:500],
                    fix=_access_fix(access, account_id),
                )
            )
            return ConnectionTestResult(
                request_id=request_id, ok=False, account_id=account_id, region=settings.aws_region, services=results
            )
    for probe in probes(settings, evidence_bucket=account_id is None):
        api_call = iam_action(probe.aws_service, probe.operation)
        try:
            answer = await probe.call(aws)
        except Exception as exc:
            err = classify_error(probe.aws_service, probe.operation, exc)
            code = error_code(exc) or err.code
            results.append(
                ServiceConnection(
                    service=probe.service,
                    connected=False,
                    api_call=api_call,
                    code=code,
                    message=err.message,
                    fix=fix_for(code, err.permission),
                )
            )
            continue
        if probe.service == "sts" and isinstance(answer, dict):
            account = str(answer.get("Account")) or None
            if account_id is not None and account != account_id:
                results.append(
                    ServiceConnection(
                        service=probe.service,
                        connected=False,
                        api_call=api_call,
                        code="WrongAccount",
                        message=f"the credentials for account {account_id} belong to account {account}",
                        fix=f"register account {account} instead, or give {account_id} an access that reaches it "
                        "(`kushim accounts add ... --role-name`)",
                    )
                )
                continue
        results.append(ServiceConnection(service=probe.service, connected=True, api_call=api_call))
    return ConnectionTestResult(
        request_id=request_id,
        ok=all(r.connected for r in results),
        account_id=account,
        region=settings.aws_region,
        services=results,
    )

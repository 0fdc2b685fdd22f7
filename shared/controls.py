"""The check catalogue and the control-verdict rules.

Every check any collector runs is declared here once: its literal id (the database stores it), control,
service, severity, title, remediation advice and whether it gates its control by default. Collectors attach
their pure check functions to these entries; the evidence service and `kushim controls` read the same table.

Verdict of a control: FAIL if any gating check has a FAIL; else ERROR if any gating check has an ERROR or a
planned (account, service) feeding the control never reported; else PASS. Advisory checks never change it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from shared.messages import ControlVerdict, PlannedCheck, Service, Severity, Soc2Control, Status

MfaScope = Literal["all", "console"]


@dataclass(frozen=True, slots=True)
class CheckInfo:
    id: str
    control: Soc2Control
    service: Service
    severity: Severity
    title: str
    remediation: str
    gating: bool


CATALOG: tuple[CheckInfo, ...] = (
    CheckInfo(
        id="iam.user_mfa",
        control=Soc2Control.CC6_1,
        service=Service.IAM,
        severity=Severity.HIGH,
        title="IAM users have an MFA device assigned",
        remediation=(
            "In the IAM console open Users -> <user> -> Security credentials -> Assign MFA device, and register a "
            "virtual, FIDO or hardware device. Enforce it with a policy that denies actions when "
            "aws:MultiFactorAuthPresent is false."
        ),
        gating=True,
    ),
    CheckInfo(
        id="iam.console_user_mfa",
        control=Soc2Control.CC6_1,
        service=Service.IAM,
        severity=Severity.CRITICAL,
        title="IAM users with a console password have MFA",
        remediation=(
            "Assign an MFA device to every user who can sign in to the console (IAM -> Users -> <user> -> Security "
            "credentials -> Assign MFA device), or remove the console password if the user does not need it."
        ),
        gating=True,
    ),
    CheckInfo(
        id="iam.root_mfa",
        control=Soc2Control.CC6_1,
        service=Service.IAM,
        severity=Severity.CRITICAL,
        title="The root user has MFA",
        remediation=(
            "Sign in as the root user, open Security credentials -> Multi-factor authentication -> Assign MFA "
            "device, and register a hardware or FIDO key (keep it in a safe). Use the root user only for the few "
            "tasks that need it."
        ),
        gating=True,
    ),
    CheckInfo(
        id="iam.root_access_keys",
        control=Soc2Control.CC6_1,
        service=Service.IAM,
        severity=Severity.CRITICAL,
        title="The root user has no active access keys",
        remediation=(
            "Sign in as the root user, open Security credentials -> Access keys, and deactivate then delete every "
            "root access key; give automation an IAM role or user with least privilege instead."
        ),
        gating=True,
    ),
    CheckInfo(
        id="iam.access_key_rotated",
        control=Soc2Control.CC6_1,
        service=Service.IAM,
        severity=Severity.MEDIUM,
        title="Active access keys are rotated within the key age limit",
        remediation=(
            "Create a second key for the user, move every consumer to it, then deactivate and delete the old key "
            "(IAM -> Users -> <user> -> Security credentials). Prefer roles with temporary credentials."
        ),
        gating=False,
    ),
    CheckInfo(
        id="iam.access_key_unused",
        control=Soc2Control.CC6_1,
        service=Service.IAM,
        severity=Severity.MEDIUM,
        title="Active access keys are in use",
        remediation=(
            "Deactivate the unused key (IAM -> Users -> <user> -> Security credentials -> Make inactive), wait to "
            "see that nothing breaks, then delete it."
        ),
        gating=False,
    ),
    CheckInfo(
        id="iam.user_two_active_keys",
        control=Soc2Control.CC6_1,
        service=Service.IAM,
        severity=Severity.LOW,
        title="Users have at most one active access key",
        remediation=("Keep two active keys only while rotating: finish the rotation and deactivate the older key."),
        gating=False,
    ),
    CheckInfo(
        id="s3.bucket_default_encryption",
        control=Soc2Control.CC6_7,
        service=Service.S3,
        severity=Severity.HIGH,
        title="S3 buckets encrypt new objects by default",
        remediation=(
            "S3 -> <bucket> -> Properties -> Default encryption -> Edit: choose SSE-S3 or SSE-KMS and save, or run "
            "`aws s3api put-bucket-encryption` with an ApplyServerSideEncryptionByDefault rule."
        ),
        gating=True,
    ),
    CheckInfo(
        id="s3.bucket_sse_kms",
        control=Soc2Control.CC6_7,
        service=Service.S3,
        severity=Severity.LOW,
        title="S3 buckets encrypt with KMS keys (SSE-KMS or DSSE-KMS)",
        remediation=(
            "For data that needs key-level access control and audit, set the bucket's default encryption to "
            "SSE-KMS with a customer managed key and enable the S3 Bucket Key to reduce KMS costs."
        ),
        gating=False,
    ),
    CheckInfo(
        id="s3.bucket_versioning",
        control=Soc2Control.CC6_7,
        service=Service.S3,
        severity=Severity.MEDIUM,
        title="S3 buckets keep object versions",
        remediation=(
            "S3 -> <bucket> -> Properties -> Bucket Versioning -> Edit -> Enable, or `aws s3api "
            "put-bucket-versioning --versioning-configuration Status=Enabled`; add a lifecycle rule for old versions."
        ),
        gating=False,
    ),
    CheckInfo(
        id="s3.bucket_access_logging",
        control=Soc2Control.CC6_7,
        service=Service.S3,
        severity=Severity.LOW,
        title="S3 buckets log server access",
        remediation=(
            "S3 -> <bucket> -> Properties -> Server access logging -> Edit: enable and choose a separate log bucket "
            "(or record S3 data events with CloudTrail)."
        ),
        gating=False,
    ),
    CheckInfo(
        id="s3.bucket_public_access_block",
        control=Soc2Control.CC6_7,
        service=Service.S3,
        severity=Severity.HIGH,
        title="S3 buckets block all public access",
        remediation=(
            "S3 -> <bucket> -> Permissions -> Block public access -> Edit: turn on all four settings (or `aws "
            "s3api put-public-access-block` with BlockPublicAcls, IgnorePublicAcls, BlockPublicPolicy and "
            "RestrictPublicBuckets set to true)."
        ),
        gating=False,
    ),
    CheckInfo(
        id="cloudtrail.multi_region_logging",
        control=Soc2Control.CC7_2,
        service=Service.CLOUDTRAIL,
        severity=Severity.HIGH,
        title="A multi-region CloudTrail trail is logging with log-file validation",
        remediation=(
            "CloudTrail -> Trails -> Create trail: apply it to all regions, enable log file validation and deliver "
            "to an S3 bucket; or `aws cloudtrail update-trail --is-multi-region-trail` on an existing trail and "
            "`aws cloudtrail start-logging`."
        ),
        gating=True,
    ),
    CheckInfo(
        id="cloudtrail.trail_logging",
        control=Soc2Control.CC7_2,
        service=Service.CLOUDTRAIL,
        severity=Severity.MEDIUM,
        title="Every CloudTrail trail is logging",
        remediation="Start the trail (`aws cloudtrail start-logging --name <trail>`) or delete it if it is unused.",
        gating=False,
    ),
    CheckInfo(
        id="cloudtrail.trail_log_file_validation",
        control=Soc2Control.CC7_2,
        service=Service.CLOUDTRAIL,
        severity=Severity.MEDIUM,
        title="CloudTrail trails validate their log files",
        remediation="`aws cloudtrail update-trail --name <trail> --enable-log-file-validation`.",
        gating=False,
    ),
    CheckInfo(
        id="cloudtrail.trail_delivery",
        control=Soc2Control.CC7_2,
        service=Service.CLOUDTRAIL,
        severity=Severity.MEDIUM,
        title="CloudTrail trails delivered logs in the last 24 hours without error",
        remediation=(
            "Check the trail's S3 bucket policy and KMS key policy allow CloudTrail to write (the delivery error "
            "says which), and that the bucket still exists."
        ),
        gating=False,
    ),
    CheckInfo(
        id="cloudtrail.trail_kms",
        control=Soc2Control.CC7_2,
        service=Service.CLOUDTRAIL,
        severity=Severity.LOW,
        title="CloudTrail logs are encrypted with a KMS key",
        remediation=(
            "`aws cloudtrail update-trail --name <trail> --kms-key-id <key>` (the key policy must allow CloudTrail)."
        ),
        gating=False,
    ),
    CheckInfo(
        id="cloudtrail.management_events",
        control=Soc2Control.CC7_2,
        service=Service.CLOUDTRAIL,
        severity=Severity.MEDIUM,
        title="CloudTrail trails record read and write management events",
        remediation=(
            "Edit the trail's event selectors to include management events with ReadWriteType All "
            "(`aws cloudtrail put-event-selectors`)."
        ),
        gating=False,
    ),
    CheckInfo(
        id="cloudtrail.region_coverage",
        control=Soc2Control.CC7_2,
        service=Service.CLOUDTRAIL,
        severity=Severity.MEDIUM,
        title="Every enabled region is covered by a logging trail",
        remediation=(
            "Make an existing logging trail multi-region (`aws cloudtrail update-trail --is-multi-region-trail`)."
        ),
        gating=False,
    ),
    CheckInfo(
        id="cloudtrail.recent_activity",
        control=Soc2Control.CC7_2,
        service=Service.CLOUDTRAIL,
        severity=Severity.LOW,
        title="CloudTrail shows API activity in the last 24 hours",
        remediation=(
            "No recent event usually means logging stopped or the region is unused; check the trail's status and "
            "`aws cloudtrail lookup-events --max-results 1`."
        ),
        gating=False,
    ),
)

CONTROL_TITLES: Mapping[Soc2Control, str] = {
    Soc2Control.CC6_1: "Logical access: MFA for IAM users and root, no root keys, access keys rotated and in use",
    Soc2Control.CC6_7: "Data security: S3 data encrypted at rest, versioned, logged and not public",
    Soc2Control.CC7_2: "Monitoring: validated CloudTrail logging in every region, delivered and active",
}

CONTROL_SERVICES: Mapping[Soc2Control, Service] = {
    Soc2Control.CC6_1: Service.IAM,
    Soc2Control.CC6_7: Service.S3,
    Soc2Control.CC7_2: Service.CLOUDTRAIL,
}


def catalog_by_id() -> dict[str, CheckInfo]:
    return {info.id: info for info in CATALOG}


def check_info(check_id: str) -> CheckInfo:
    for info in CATALOG:
        if info.id == check_id:
            return info
    raise KeyError(f"check {check_id!r} is not in the catalogue (shared/controls.py)")


def gating_table(mfa_scope: MfaScope = "all") -> dict[str, bool]:
    """Which checks gate their control. With MFA scope `console`, only console users' MFA gates CC6.1."""
    table = {info.id: info.gating for info in CATALOG}
    if mfa_scope == "console":
        table["iam.user_mfa"] = False
    return table


@dataclass(frozen=True, slots=True)
class StatusCount:
    check_id: str
    status: Status
    count: int


def control_verdicts(
    counts: Iterable[StatusCount],
    planned_services: Iterable[Service],
    missing: Iterable[PlannedCheck],
    gating: Mapping[str, bool],
) -> dict[Soc2Control, ControlVerdict]:
    """Per-control verdicts for the controls whose service was planned in a run."""
    planned = set(planned_services)
    missing_by_service: dict[Service, list[str]] = {}
    for pair in missing:
        missing_by_service.setdefault(pair.service, []).append(pair.account_id)
    catalog = catalog_by_id()
    tallies: dict[Soc2Control, dict[Status, int]] = {}
    by_check: dict[tuple[Soc2Control, Status], dict[str, int]] = {}
    for row in counts:
        info = catalog.get(row.check_id)
        if info is None or not gating.get(row.check_id, info.gating):
            continue
        per = tallies.setdefault(info.control, {})
        per[row.status] = per.get(row.status, 0) + row.count
        checks = by_check.setdefault((info.control, row.status), {})
        checks[row.check_id] = checks.get(row.check_id, 0) + row.count

    def breakdown(control: Soc2Control, status: Status) -> str:
        checks = by_check.get((control, status), {})
        return ", ".join(f"{check_id} {n}" for check_id, n in sorted(checks.items()))

    verdicts: dict[Soc2Control, ControlVerdict] = {}
    for control, service in CONTROL_SERVICES.items():
        if service not in planned:
            continue
        per = tallies.get(control, {})
        failed, errors, passed = per.get(Status.FAIL, 0), per.get(Status.ERROR, 0), per.get(Status.PASS, 0)
        missing_accounts = sorted(missing_by_service.get(service, []))
        if failed:
            status, reason = Status.FAIL, f"{failed} gating finding(s) failed ({breakdown(control, Status.FAIL)})"
        elif errors or missing_accounts:
            parts = []
            if errors:
                parts.append(f"{errors} gating finding(s) could not be evaluated ({breakdown(control, Status.ERROR)})")
            if missing_accounts:
                parts.append(f"no {service.value} results from account(s) {', '.join(missing_accounts)}")
            status, reason = Status.ERROR, "; ".join(parts)
        elif passed:
            status, reason = Status.PASS, f"all {passed} gating finding(s) passed"
        else:
            status, reason = Status.PASS, "no resources in scope"
        verdicts[control] = ControlVerdict(
            control=control, status=status, reason=reason, failed=failed, errors=errors, passed=passed
        )
    return verdicts

"""The check catalogue and the collectors' explicit CHECKS tuples describe the same checks."""

from __future__ import annotations

from collections import Counter

from services.collector_cloudtrail.checks import CHECKS as CLOUDTRAIL_CHECKS
from services.collector_iam.checks import CHECKS as IAM_CHECKS
from services.collector_s3.checks import CHECKS as S3_CHECKS
from shared.controls import CATALOG
from shared.messages import Service


def test_every_catalogue_entry_is_implemented_exactly_once_by_its_service() -> None:
    implemented = Counter(
        (check.info.service, check.id) for checks in (IAM_CHECKS, S3_CHECKS, CLOUDTRAIL_CHECKS) for check in checks
    )
    assert set(implemented.values()) == {1}
    assert set(implemented) == {(info.service, info.id) for info in CATALOG}
    assert {check.info.service for check in IAM_CHECKS} == {Service.IAM}
    assert {check.info.service for check in S3_CHECKS} == {Service.S3}
    assert {check.info.service for check in CLOUDTRAIL_CHECKS} == {Service.CLOUDTRAIL}

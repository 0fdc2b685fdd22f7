"""The IAM collector's checks, listed explicitly (decorators describe, never register)."""

from __future__ import annotations

from services.collector_iam.checks.access_key_rotated import access_key_rotated
from services.collector_iam.checks.access_key_unused import access_key_unused
from services.collector_iam.checks.console_user_mfa import console_user_mfa
from services.collector_iam.checks.root_access_keys import root_access_keys
from services.collector_iam.checks.root_mfa import root_mfa
from services.collector_iam.checks.user_mfa import user_mfa
from services.collector_iam.checks.user_two_active_keys import user_two_active_keys
from services.collector_iam.snapshot import IamSnapshot
from shared.checks import Check

CHECKS: tuple[Check[IamSnapshot], ...] = (
    user_mfa,
    console_user_mfa,
    root_mfa,
    root_access_keys,
    access_key_rotated,
    access_key_unused,
    user_two_active_keys,
)

__all__ = [
    "CHECKS",
    "access_key_rotated",
    "access_key_unused",
    "console_user_mfa",
    "root_access_keys",
    "root_mfa",
    "user_mfa",
    "user_two_active_keys",
]

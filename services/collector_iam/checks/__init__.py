"""The IAM collector's checks, listed explicitly (decorators describe, never register)."""

from __future__ import annotations

from services.collector_iam.checks.console_user_mfa import console_user_mfa
from services.collector_iam.checks.user_mfa import user_mfa
from services.collector_iam.snapshot import IamSnapshot
from shared.checks import Check

CHECKS: tuple[Check[IamSnapshot], ...] = (user_mfa, console_user_mfa)

__all__ = ["CHECKS", "console_user_mfa", "user_mfa"]

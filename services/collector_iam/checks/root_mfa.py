"""iam.root_mfa: the root user has MFA."""

from __future__ import annotations

from collections.abc import Iterator

from services.collector_iam.checks._common import root_error, root_fields
from services.collector_iam.snapshot import ROOT_RESOURCE, ROOT_TYPE, IamSnapshot
from shared.checks import Outcome, check


@check("iam.root_mfa")
def root_mfa(snapshot: IamSnapshot) -> Iterator[Outcome]:
    root = snapshot.root
    if root is None:
        return
    if root.error is not None:
        yield root_error(snapshot, root, root.error)
        return
    fields = {**root_fields(root), "details": {"mfa_active": root.mfa_active, "source": root.source}}
    if root.mfa_active:
        yield Outcome.ok(ROOT_RESOURCE, ROOT_TYPE, "the root user has MFA", **fields)
    else:
        yield Outcome.fail(ROOT_RESOURCE, ROOT_TYPE, "the root user has no MFA device", **fields)

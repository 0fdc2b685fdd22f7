"""iam.root_access_keys: the root user has no active access key."""

from __future__ import annotations

from collections.abc import Iterator

from services.collector_iam.checks._common import root_error, root_fields
from services.collector_iam.snapshot import ROOT_RESOURCE, ROOT_TYPE, IamSnapshot
from shared.checks import Outcome, check


@check("iam.root_access_keys")
def root_access_keys(snapshot: IamSnapshot) -> Iterator[Outcome]:
    root = snapshot.root
    if root is None:
        return
    if root.error is not None:
        yield root_error(snapshot, root, root.error)
        return
    details = {
        "access_keys_present": root.access_keys_present,
        "active_access_keys": root.active_access_keys,
        "source": root.source,
    }
    fields = {**root_fields(root), "details": details}
    active = root.active_access_keys
    if active is None:
        # GetAccountSummary only says whether root has keys, not whether they are active: keys that exist at all
        # fail (root should have none), and the summary says what is unknown.
        if root.access_keys_present:
            summary = "the root user has access keys (GetAccountSummary does not say whether they are active)"
            yield Outcome.fail(ROOT_RESOURCE, ROOT_TYPE, summary, **fields)
        else:
            yield Outcome.ok(ROOT_RESOURCE, ROOT_TYPE, "the root user has no access keys", **fields)
    elif active:
        summary = f"the root user has {active} active access key{'s' if active > 1 else ''}"
        yield Outcome.fail(ROOT_RESOURCE, ROOT_TYPE, summary, **fields)
    elif root.access_keys_present:
        summary = "the root user has no active access key (an inactive one remains)"
        yield Outcome.ok(ROOT_RESOURCE, ROOT_TYPE, summary, **fields)
    else:
        yield Outcome.ok(ROOT_RESOURCE, ROOT_TYPE, "the root user has no access keys", **fields)

"""What changed between two runs of one account: resources that started or stopped failing.

Only services with evidence in both runs are compared (a service missing from an INCOMPLETE run says nothing about
its resources). "Failing" means FAIL: a resource going from FAIL to ERROR stopped failing as far as the evidence
shows, and is listed with its new status so a reader sees it could not be checked.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from services.evidence.store import ResourceStatus
from shared.controls import CATALOG
from shared.messages import ResourceChange, Service, Status

_SERVICE_OF = {info.id: info.service for info in CATALOG}

Statuses = Mapping[tuple[str, str], ResourceStatus]


@dataclass(frozen=True, slots=True)
class Changes:
    started_failing: list[ResourceChange]
    stopped_failing: list[ResourceChange]


def changes(before: Statuses, after: Statuses, services: Set[Service]) -> Changes:
    """Resources that are FAIL in `after` but not in `before`, and the reverse, ordered by check and resource."""
    started: list[ResourceChange] = []
    stopped: list[ResourceChange] = []
    for key in sorted(set(before) | set(after)):
        check_id, resource_id = key
        if _SERVICE_OF.get(check_id) not in services:
            continue
        old, new = before.get(key), after.get(key)
        was = old is not None and old.status is Status.FAIL
        now = new is not None and new.status is Status.FAIL
        if was == now:
            continue
        seen = new if new is not None else old
        assert seen is not None
        change = ResourceChange(
            check_id=check_id,
            control=seen.control,
            resource_id=resource_id,
            region=seen.region,
            before=old.status if old is not None else None,
            after=new.status if new is not None else None,
        )
        (started if now else stopped).append(change)
    return Changes(started, stopped)

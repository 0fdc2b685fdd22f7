"""cloudtrail.management_events: every trail records both read and write management events (GetEventSelectors).

Classic selectors count when IncludeManagementEvents is true: ReadWriteType All gives read and write, ReadOnly or
WriteOnly one of them. Advanced selectors count when they select eventCategory = Management: without a readOnly
condition they give read and write, `readOnly = true` read only, `readOnly = false` write only; a condition on any
other field than eventCategory, readOnly or an excluded eventSource narrows the selector to some management events,
which is not enough. The selectors of a trail add up: a ReadOnly and a WriteOnly selector together record both.
Excluded event sources (ExcludeManagementEventSources, `eventSource !=`) are named but do not fail the trail.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from services.collector_cloudtrail.checks.common import trail_fields, unseen_regions
from services.collector_cloudtrail.snapshot import TRAIL_TYPE, AdvancedSelector, CloudTrailSnapshot, EventSelectors
from shared.checks import Outcome, check

READ, WRITE = "read", "write"
BOTH = frozenset({READ, WRITE})
READ_WRITE_TYPES = {"All": BOTH, "ReadOnly": frozenset({READ}), "WriteOnly": frozenset({WRITE})}
READ_ONLY_VALUES = {"true": READ, "false": WRITE}


@dataclass(slots=True)
class Coverage:
    """What a trail's selectors record of the management events."""

    kinds: set[str] = field(default_factory=set)
    excluded_sources: list[str] = field(default_factory=list)
    narrowed_by: list[str] = field(default_factory=list)


def _advanced(selector: AdvancedSelector, coverage: Coverage) -> None:
    if not any("Management" in f.equals for f in selector.fields("eventCategory")):
        return  # data, network activity or other events: not management events
    kinds = set(BOTH)
    for condition in selector.field_selectors:
        if condition.field == "eventCategory":
            continue
        if condition.field == "readOnly" and not condition.other_operators:
            values = set(condition.equals) if condition.equals else set(READ_ONLY_VALUES)
            values -= set(condition.not_equals)
            kinds &= {READ_ONLY_VALUES[v] for v in values if v in READ_ONLY_VALUES}
        elif (
            condition.field == "eventSource"
            and condition.not_equals
            and not (condition.equals or condition.other_operators)
        ):
            coverage.excluded_sources.extend(condition.not_equals)
        else:
            coverage.narrowed_by.append(condition.describe())
            kinds = set()
    coverage.kinds |= kinds


def coverage_of(selectors: EventSelectors) -> Coverage:
    coverage = Coverage()
    for classic in selectors.classic:
        if classic.include_management_events:
            coverage.kinds |= READ_WRITE_TYPES.get(classic.read_write_type, frozenset())
            coverage.excluded_sources.extend(classic.exclude_management_event_sources)
    for advanced in selectors.advanced:
        _advanced(advanced, coverage)
    coverage.excluded_sources = sorted(set(coverage.excluded_sources))
    return coverage


def _shortfall(name: str, selectors: EventSelectors, coverage: Coverage) -> str:
    if coverage.kinds == {WRITE}:
        return f"{name} records write-only management events (read events are not recorded)"
    if coverage.kinds == {READ}:
        return f"{name} records read-only management events (write events are not recorded)"
    if coverage.narrowed_by:
        return f"{name} records only some management events ({'; '.join(coverage.narrowed_by)})"
    if selectors.classic or selectors.advanced:
        return f"{name} records no management events (its selectors select other events only)"
    return f"{name} records no management events (no event selectors)"


@check("cloudtrail.management_events")
def management_events(snapshot: CloudTrailSnapshot) -> Iterator[Outcome]:
    yield from unseen_regions(snapshot)
    for trail in snapshot.trails:
        if trail.event_selectors_error is not None:
            yield Outcome.error(trail.resource_id, TRAIL_TYPE, trail.event_selectors_error, **trail_fields(trail))
            continue
        selectors = trail.event_selectors
        if selectors is None:
            raise ValueError(f"trail {trail.arn} has neither event selectors nor an event selectors error")
        coverage = coverage_of(selectors)
        fields = trail_fields(
            trail,
            **selectors.details(),
            management_events=sorted(coverage.kinds),
            excluded_event_sources=coverage.excluded_sources,
        )
        if coverage.kinds == BOTH:
            summary = f"{trail.name} records read and write management events"
            if coverage.excluded_sources:
                summary += f" (except events from {', '.join(coverage.excluded_sources)})"
            yield Outcome.ok(trail.resource_id, TRAIL_TYPE, summary, **fields)
        else:
            yield Outcome.fail(trail.resource_id, TRAIL_TYPE, _shortfall(trail.name, selectors, coverage), **fields)

"""Usage totals of one customer and meter over [from, to), with buckets by hour or day and groups.

The caller reads the events (the usage read model plus the log's unapplied tail, so every
acknowledged event counts at once: DESIGN.md "Freshness"); the aggregation is `domain.metering`'s,
a pure function of them.
"""

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Literal

import msgspec

from domain.errors import Invalid
from domain.meter import MeterSpec
from domain.metering import Reading, Running, aggregate, group_of, level_before, matches
from domain.money import Amount
from projections.usage_log import microseconds, moment_of

Window = Literal["hour", "day"]
WINDOW_US = {"hour": 3_600_000_000, "day": 86_400_000_000}
MAX_BUCKETS = 10_000


class Bucket(msgspec.Struct, frozen=True, omit_defaults=True):
    start: datetime
    end: datetime
    value: Amount
    group: dict[str, str | None] | None = None


class UsageReport(msgspec.Struct, frozen=True):
    meter_code: str
    customer: str
    from_: datetime = msgspec.field(name="from")
    to: datetime
    total: Amount
    buckets: list[Bucket]


def edges(start_us: int, end_us: int, window: Window | None) -> list[int]:
    """Bucket boundaries: [start, end] with the UTC hour or day grid between them."""
    if window is None:
        return [start_us, end_us]
    size = WINDOW_US[window]
    first = (start_us // size + 1) * size
    inner = list(range(first, end_us, size))
    assert len(inner) < MAX_BUCKETS, "checked by the caller"
    return [start_us, *inner, end_us]


Read = Callable[[int, int], tuple[list[Reading], list[Reading]]]
# [start, end) -> the meter's states cut at every hour: (low, high, {group of the meter's group_by: state})
Segments = Callable[[int, int], list[tuple[int, int, dict[tuple[str | None, ...], Running]]]]


def report(read: Read, customer: str, meter: MeterSpec, start: datetime, end: datetime,
           window: Window | None, group_by: tuple[str, ...], segments: Segments | None = None) -> UsageReport:
    """The meter's total over [start, end) and its buckets, one series per group of `group_by`.
    `read(start_us, end_us)` gives the readings of the meter's event name inside the range (in log
    order) and before it (newest first); `segments`, when given, the meter's states hour by hour
    instead (projections/usage_hours.py: not for a weighted_sum)."""
    start_us, end_us = microseconds(start), microseconds(end)
    assert start_us < end_us, (start, end)
    unknown = [name for name in group_by if name not in meter.group_by]
    if unknown:
        raise Invalid("group_by", f"{unknown[0]!r} is not among meter {meter.code!r}'s group_by {list(meter.group_by)}")
    if window is not None and (end_us - start_us) // WINDOW_US[window] >= MAX_BUCKETS:
        raise Invalid("window", f"more than {MAX_BUCKETS} buckets: choose a wider window or a shorter range")
    if segments is not None and meter.aggregation != "weighted_sum":
        buckets, total = _from_hours(segments(start_us, end_us), meter, edges(start_us, end_us, window), group_by)
        return UsageReport(meter.code, customer, moment_of(start_us), moment_of(end_us), Amount(total), buckets)
    inside, before = read(start_us, end_us)
    inside = [r for r in inside if matches(meter, r)]
    # only a weighted_sum reads before the range: the level in force at its start
    before = [r for r in before if matches(meter, r)] if meter.aggregation == "weighted_sum" else []
    query = msgspec.structs.replace(meter, group_by=group_by)
    groups = sorted({group_of(query, r) for r in inside + before}, key=str) or [tuple(None for _ in group_by)]
    bounds = edges(start_us, end_us, window)
    buckets = []
    for group in groups:
        mine = [r for r in inside if group_of(query, r) == group]
        earlier = [r for r in before if group_of(query, r) == group]
        label = dict(zip(group_by, group, strict=True)) if group_by else None
        for low, high in zip(bounds, bounds[1:], strict=False):
            value = _value(meter, mine, earlier, low, high)
            buckets.append(Bucket(moment_of(low), moment_of(high), Amount(value), label))
    total = _value(meter, inside, before, start_us, end_us)
    return UsageReport(meter.code, customer, moment_of(start_us), moment_of(end_us), Amount(total), buckets)


def _from_hours(pieces: list[tuple[int, int, dict[tuple[str | None, ...], Running]]], meter: MeterSpec,
            bounds: list[int], group_by: tuple[str, ...]) -> tuple[list[Bucket], Decimal]:
    """The buckets and the total from the meter's states hour by hour (each bucket holds whole pieces)."""
    pick = [meter.group_by.index(name) for name in group_by]
    projected = [[(tuple(group[i] for i in pick), running) for group, running in states.items()]
                 for _, _, states in pieces]
    groups = sorted({group for states in projected for group, _ in states}, key=str) or [tuple(None for _ in group_by)]
    buckets, total = [], Running(meter)
    for group in groups:
        label, at = dict(zip(group_by, group, strict=True)) if group_by else None, 0
        for low, high in zip(bounds, bounds[1:], strict=False):
            running = Running(meter)
            while at < len(pieces) and pieces[at][1] <= high:
                for mine in (each for found, each in projected[at] if found == group):
                    running.merge(mine)
                at += 1
            buckets.append(Bucket(moment_of(low), moment_of(high), Amount(running.value), label))
            total.merge(running)
    return buckets, total.value


def _value(meter: MeterSpec, inside: list[Reading], before: list[Reading], low: int, high: int) -> Decimal:
    """The meter over [low, high). A weighted_sum holds one level per group of the meter's own
    group_by (a level per model, say); the value is the sum of those levels' averages."""
    if meter.aggregation != "weighted_sum":
        return aggregate(meter, inside, low, high)
    total = Decimal(0)
    for group in {group_of(meter, r) for r in inside + before}:
        mine = [r for r in inside if group_of(meter, r) == group]
        held = [r for r in before + mine if r.timestamp_us < low]
        total += aggregate(meter, mine, low, high, level_before(meter, held))
    return total

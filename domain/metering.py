"""Metering: what a meter reads from usage events, as pure functions over exact decimals.

An event here is a `Reading`: its time, its position in the usage log, and its properties. The
aggregations are API.md's:
- `count`: the events; `sum`, `max`: of the field's numeric values; `unique_count`: distinct values;
- `latest`: the value of the last event by event time, ties by record order (position);
- `weighted_sum`: the field is a level held until the next event; Σ level x time held / period
  length, i.e. the time-weighted average level over [start, end). The level in force at `start`
  is carried in from the last event before it (none: 0).
An event without a usable value for the field (missing, not a number) is left out of the numeric
aggregations; `count` counts every event that passes the meter's filters.
"""

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import msgspec

from domain.meter import MeterSpec
from domain.pricing import Transaction

ZERO = Decimal(0)


class Reading(msgspec.Struct, frozen=True, gc=False):
    timestamp_us: int
    position: int
    properties: dict[str, Any]
    event_id: str = ""


def number(value: Any) -> Decimal | None:
    """A property's exact numeric value (ints, Decimals, numeric strings), else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, Decimal)):
        return Decimal(value)
    if isinstance(value, str):
        try:
            found = Decimal(value)
        except InvalidOperation:
            return None
        return found if found.is_finite() else None
    return None


def matches(meter: MeterSpec, reading: Reading) -> bool:
    """The reading passes every filter: its property's value (as text) is one of those listed."""
    for name, allowed in meter.filters.items():
        value = reading.properties.get(name)
        if value is None or _text(value) not in allowed:
            return False
    return True


def group_of(meter: MeterSpec, reading: Reading) -> tuple[str | None, ...]:
    return tuple(_text(reading.properties.get(name)) for name in meter.group_by)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return format(value, "f") if isinstance(value, Decimal) else str(value)


def aggregate(meter: MeterSpec, readings: Sequence[Reading], start_us: int, end_us: int,
              carried: Decimal | None = None) -> Decimal:
    """The meter's value over [start_us, end_us) from readings inside it (any order).

    `carried` is the weighted_sum level in force at start_us (from the last reading before it)."""
    assert start_us < end_us, (start_us, end_us)
    inside = sorted((r for r in readings if start_us <= r.timestamp_us < end_us),
                    key=lambda r: (r.timestamp_us, r.position))
    match meter.aggregation:
        case "count":
            return Decimal(len(inside))
        case "sum":
            return sum(_values(meter, inside), ZERO)
        case "max":
            return max(_values(meter, inside), default=ZERO)
        case "unique_count":
            return Decimal(len({_text(r.properties.get(meter.field)) for r in inside
                                if r.properties.get(meter.field) is not None}))
        case "latest":
            values = list(_values(meter, inside))
            return values[-1] if values else ZERO
        case "weighted_sum":
            return _time_weighted(meter, inside, start_us, end_us, carried or ZERO)
    raise AssertionError(meter.aggregation)


State = tuple[int, str, list[str], str | None, tuple[int, int]]  # a Running's, as `Running.state` gives


class Running:
    """A meter's value kept up as readings arrive, in any order: what `aggregate` gives for them all.
    Not for a weighted_sum, whose value depends on each reading's neighbours in time. The caller
    adds only readings inside the window that pass the meter's filters."""

    __slots__ = ("meter", "count", "total", "seen", "held", "last")

    def __init__(self, meter: MeterSpec) -> None:
        assert meter.aggregation != "weighted_sum", "a weighted_sum is not kept running"
        self.meter, self.count, self.total = meter, 0, ZERO
        self.seen: set[str | None] = set()  # unique_count's values
        self.held: Decimal | None = None  # max's and latest's value so far
        self.last = (0, 0)  # (time, position) of the value held (max: of its earliest reading)

    def add(self, reading: Reading) -> None:
        meter = self.meter
        if meter.aggregation == "count":
            self.count += 1
            return
        raw = reading.properties.get(meter.field)  # type: ignore[arg-type]
        if meter.aggregation == "unique_count":
            if raw is not None:
                self.seen.add(_text(raw))
            return
        value = number(raw)
        if value is None:
            return
        if meter.aggregation == "sum":
            self.total += value
        elif meter.aggregation == "max":  # equal values written differently (7, 7.0): the earliest's, as `aggregate`
            moment = (reading.timestamp_us, reading.position)
            if self.held is None or value > self.held or (value == self.held and moment < self.last):
                self.held, self.last = value, moment
        elif self.held is None or (reading.timestamp_us, reading.position) > self.last:  # latest
            self.held, self.last = value, (reading.timestamp_us, reading.position)

    def merge(self, other: "Running") -> None:
        """Take in another counter's readings (of the same meter): as if each had been added here."""
        self.count += other.count
        self.total += other.total
        self.seen |= other.seen
        if other.held is None:
            return
        if self.meter.aggregation == "max":
            if self.held is None or other.held > self.held or (other.held == self.held and other.last < self.last):
                self.held, self.last = other.held, other.last
        elif self.held is None or other.last > self.last:  # latest
            self.held, self.last = other.held, other.last

    def state(self) -> "State":
        """What it holds, as plain values (exact decimals as text) to keep and give back to `of`."""
        return (self.count, str(self.total), sorted(self.seen), None if self.held is None else str(self.held),
                self.last)

    @classmethod
    def of(cls, meter: MeterSpec, state: "State") -> "Running":
        running = cls(meter)
        count, total, seen, held, last = state
        running.count, running.total, running.seen = count, Decimal(total), set(seen)
        running.held, running.last = (None if held is None else Decimal(held)), tuple(last)
        return running

    @property
    def value(self) -> Decimal:
        if self.meter.aggregation == "count":
            return Decimal(self.count)
        if self.meter.aggregation == "unique_count":
            return Decimal(len(self.seen))
        if self.meter.aggregation == "sum":
            return self.total
        return ZERO if self.held is None else self.held


def _values(meter: MeterSpec, readings: Iterable[Reading]) -> Iterable[Decimal]:
    for reading in readings:
        value = number(reading.properties.get(meter.field))
        if value is not None:
            yield value


def _time_weighted(meter: MeterSpec, readings: Sequence[Reading], start_us: int, end_us: int,
                   level: Decimal) -> Decimal:
    held_since, total = start_us, ZERO
    for reading in readings:
        value = number(reading.properties.get(meter.field))
        if value is None:
            continue
        total += level * (reading.timestamp_us - held_since)
        level, held_since = value, reading.timestamp_us
    total += level * (end_us - held_since)
    return total / (end_us - start_us)


def level_before(meter: MeterSpec, readings: Iterable[Reading]) -> Decimal | None:
    """The weighted_sum level in force after `readings` (all before the window): the last value."""
    last = None
    for reading in sorted(readings, key=lambda r: (r.timestamp_us, r.position)):
        value = number(reading.properties.get(meter.field))
        if value is not None:
            last = value
    return last


def transactions_of(meter: MeterSpec, readings: Iterable[Reading]) -> list[Transaction]:
    """A sum meter's events as the transactions a percentage price rates (those with a numeric value)."""
    assert meter.field is not None, "a percentage price reads a sum meter, which has a field"
    found = []
    for reading in readings:
        value = number(reading.properties.get(meter.field)) if matches(meter, reading) else None
        if value is not None:
            moment = EPOCH + timedelta(microseconds=reading.timestamp_us)
            found.append(Transaction(reading.event_id, moment, value))
    return found


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

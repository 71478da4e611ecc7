"""A usage report's meter values hour by hour, kept once computed: a customer with a million events
a month is read whole once, and then from its hours.

The usage read model holds every event, and a meter is computed from them when asked (so a meter
defined after its events counts them all). For a report, the events of each whole hour that has
ended are reduced to the meter's state (a `Running` per group of the meter's group_by: counts, sums,
maxima, latest values, distinct values), and those states are kept in `tally_usage_hours`, a day's
hours a row (a span; an hour with no events holds nothing). The next report over those hours reads
their states, and the events only of the hours not kept: the range's partial first and last hours,
the current hour, hours never read before.

A kept hour is exactly its events as of the position the read model had applied when they were read:
- the states are written only if that position has not moved since (the read model's position row
  is locked for it, as the runners lock it to write), and
- every write of the read model (an event put, or a void, by either driver) deletes the spans of
  the hours it touches, in its own transaction (`usage_readings.write`).
The log's tail the read model has not applied yet counts on top, as everywhere (DESIGN.md
"Freshness"): an hour the tail touches is read from its events and not kept.

Not for a weighted_sum (a level held across hours) nor for time travel (`as_of` reads the log).
"""

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import msgspec

from domain.meter import MeterSpec
from domain.metering import Reading, Running, State, group_of, matches
from projections.store import Cursor, Database, lock_position
from projections.usage_log import UsageLog
from projections.usage_readings import DAY, HOUR, SPAN, merged, position_name, span

MAX_SEEN = 1_000  # an hour with more distinct values (unique_count) is not kept: read from its events
KEEP_FROM = 1_000  # a read of fewer events keeps nothing (reading them again costs less than keeping them)
Group = tuple[str | None, ...]
States = dict[Group, Running]
Segment = tuple[int, int, States]  # [low, high) and the meter's states in it, by group
Kept = list[tuple[int, list[tuple[Group, State]]]]  # a span's hours (start) with their states
_kept = msgspec.json.Decoder(Kept)
_encode = msgspec.json.Encoder().encode
_properties = msgspec.json.Decoder(dict)
_BARE: dict = {}
SPANS = ("SELECT start_us, end_us, hours FROM tally_usage_hours WHERE tenant_id = ? AND customer = ? "
         "AND event_name = ? AND start_us > ? AND start_us < ? AND meter = ?")
KEEP = ("INSERT INTO tally_usage_hours (tenant_id, customer, event_name, start_us, meter, end_us, hours) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, customer, event_name, start_us, meter) DO NOTHING")
READINGS = ("SELECT event_id, timestamp_us, position, properties FROM tally_usage_readings WHERE tenant_id = ? "
            f"AND customer = ? AND event_name = ? AND {SPAN}")


def signature(meter: MeterSpec) -> str:
    """What the meter's states depend on: its event name, aggregation, field, filters and group_by."""
    spec = (meter.event_name, meter.aggregation, meter.field, sorted((k, sorted(v)) for k, v in meter.filters.items()),
            meter.group_by)
    return hashlib.blake2b(msgspec.json.encode(spec), digest_size=12).hexdigest()


def segments(database: Database, log: UsageLog, tenant_id: str, customer: str, meter: MeterSpec, start_us: int,
             end_us: int, partition: int | None, now_us: int) -> list[Segment]:
    """The meter's states over [start_us, end_us), cut at every hour: each whole hour's from what is kept
    or from its events, the rest from events; every acknowledged event counted (the log's tail too).
    Whole hours ended by `now_us` that were read from their events are kept for the next report, when
    it read KEEP_FROM events or more."""
    assert meter.aggregation != "weighted_sum", "a weighted_sum needs the level held across hours"
    key = (tenant_id, customer, meter.event_name)
    first, last = -(-start_us // HOUR) * HOUR, end_us // HOUR * HOUR  # the whole hours: [first, last)
    name, code = position_name(partition), signature(meter)
    with database.transaction() as cursor:
        found = cursor.execute("SELECT position FROM tally_positions WHERE name = ?", (name,)).one()
        applied = int(found[0]) if found else 0
        kept = _spans(cursor, key, meter, code, first, last)
        rows = _rows(cursor, key, _gaps(start_us, end_us, kept))
    tail = log.tail(applied, tenant_id, (customer,), (meter.event_name,))
    touched = {entry.timestamp_us - entry.timestamp_us % HOUR for entry in tail}
    if touched & kept.keys():  # late events in kept hours, not applied yet: those hours from their events
        with database.transaction() as cursor:
            rows += _rows(cursor, key, [(hour, hour + HOUR) for hour in touched & kept.keys()])
        kept = {hour: states for hour, states in kept.items() if hour not in touched}
    read = len(rows)
    if tail:  # the rows may hold some of the tail's events (read after the read model applied them)
        found = merged({(customer, meter.event_name, event_id): rest for event_id, *rest in rows}, tail)
        rows = [(event_id, *rest) for (_, _, event_id), rest in found.items()]
    computed = _hourly(meter, rows, start_us, end_us)
    skip, ended = kept.keys() | touched, min(last, now_us // HOUR * HOUR)
    if read >= KEEP_FROM:
        _keep(database, name, applied, key, code,
              [(hour, computed.get(hour, {})) for hour in range(first, ended, HOUR) if hour not in skip])
    bounds = [start_us, *(hour for hour in range(first, last + 1, HOUR) if start_us < hour < end_us), end_us]
    return [(low, high, kept[low] if low in kept else computed.get(low, {}))
            for low, high in zip(bounds, bounds[1:], strict=False)]


def kept_any(database: Database, tenant_id: str, customer: str, event_names: Sequence[str], start_us: int,
             end_us: int) -> bool:
    """Whether any hour of these event names in [start_us, end_us) is kept for the customer (one look
    at the kept hours' key)."""
    marks = ",".join("?" * len(event_names))
    return bool(database.query(
        f"SELECT 1 FROM tally_usage_hours WHERE tenant_id = ? AND customer = ? AND event_name IN ({marks}) "
        "AND start_us > ? AND start_us < ? LIMIT 1", (tenant_id, customer, *event_names, start_us - DAY, end_us)))


def _hourly(meter: MeterSpec, rows: Iterable[Sequence], start_us: int, end_us: int) -> dict[int, States]:
    """The meter's states of the events in [start_us, end_us) hour by hour (the first hour from
    start_us), from rows of (event id, time, position, properties)."""
    computed: dict[int, States] = {}
    reads = meter.field is not None or bool(meter.filters) or bool(meter.group_by)  # else the count needs no properties
    for event_id, timestamp_us, position, properties in rows:
        reading = Reading(timestamp_us, position, _properties.decode(properties) if reads else _BARE, event_id)
        if start_us <= timestamp_us < end_us and matches(meter, reading):
            states = computed.setdefault(max(start_us, timestamp_us - timestamp_us % HOUR), {})
            group = group_of(meter, reading) if meter.group_by else ()
            (states.get(group) or states.setdefault(group, Running(meter))).add(reading)
    return computed


def differences(database: Database, meter_of: Callable[[str, str], MeterSpec | None]) -> Iterator[tuple[str, str]]:
    """Each kept span whose states are not what the read model's events in it give (`tally audit verify`):
    its key and what differs. `meter_of(tenant_id, signature)`: the meter whose states those are (None:
    the tenant has no such meter, which a report never keeps). Read in one snapshot: a span there has
    had no write in its hours since it was kept."""
    with database.transaction(snapshot=True) as cursor:
        for tenant, customer, name, start, code, end, body in cursor.execute(
                "SELECT tenant_id, customer, event_name, start_us, meter, end_us, hours FROM tally_usage_hours").all():
            meter = meter_of(tenant, code)
            if meter is None:
                yield f"{tenant}/{customer}/{name}/{code}/{start}", "kept for a meter the tenant does not have"
                continue
            kept = {hour: {tuple(group): Running.of(meter, state).state() for group, state in states}
                    for hour, states in _kept.decode(body)}
            computed = {hour: {group: running.state() for group, running in states.items()}
                        for hour, states in _hourly(meter, _rows(cursor, (tenant, customer, name), [(start, end)]),
                                                    start, end).items()}
            for hour in sorted(kept.keys() | computed.keys()):
                if kept.get(hour, {}) != computed.get(hour, {}):
                    yield (f"{tenant}/{customer}/{name}/{meter.code}/{hour}",
                           f"kept {kept.get(hour, {})} where the events give {computed.get(hour, {})}")


def _keep(database: Database, name: str, applied: int, key: tuple[str, str, str], code: str,
          hours: Sequence[tuple[int, States]]) -> None:
    """Keep these whole hours' states, in spans of consecutive hours within a day, if the read model
    is still at `applied` (what they were read at); an hour with too many distinct values is not kept."""
    spans: list[list] = []  # [start, end, hours]
    for hour, states in hours:
        if any(len(running.seen) > MAX_SEEN for running in states.values()):
            continue
        held = [(group, running.state()) for group, running in states.items()]
        if spans and spans[-1][1] == hour and hour % DAY:
            spans[-1][1] = hour + HOUR
        else:
            spans.append([hour, hour + HOUR, []])
        if held:
            spans[-1][2].append((hour, held))
    if not spans:
        return
    with database.transaction(write=True) as cursor:
        if lock_position(cursor, name) == applied:  # else the hours may have changed since they were read
            cursor.execute_many(KEEP, [(*key, start, code, end, _encode(kept).decode()) for start, end, kept in spans])


def _spans(cursor: Cursor, key: tuple[str, str, str], meter: MeterSpec, code: str, first: int,
           last: int) -> dict[int, States]:
    """The meter's (its signature: `code`) kept hours in [first, last), with their states (an hour with
    none: no events)."""
    hours: dict[int, States] = {}
    if first >= last:
        return hours
    for start, end, body in cursor.execute(SPANS, (*key, first - DAY, last, code)).all():
        held = dict(_kept.decode(body))
        for hour in range(max(start, first), min(end, last), HOUR):
            hours[hour] = {tuple(group): Running.of(meter, state) for group, state in held.get(hour, ())}
    return hours


def _gaps(start_us: int, end_us: int, kept: Iterable[int]) -> list[tuple[int, int]]:
    """[start_us, end_us) less the kept hours, as ranges."""
    gaps, low = [], start_us
    for hour in sorted(kept):
        if low < hour:
            gaps.append((low, hour))
        low = hour + HOUR
    return gaps + [(low, end_us)] if low < end_us else gaps


def _rows(cursor: Cursor, key: tuple[str, str, str], ranges: Sequence[tuple[int, int]]) -> list[tuple]:
    """The read model's rows in these ranges of time: (event id, time, position, properties)."""
    return [row for low, high in ranges for row in cursor.execute(READINGS, (*key, *span(low, high))).all()]

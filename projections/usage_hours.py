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
- the states are written with the read model's position row locked (as the runners lock it to
  write); if the read model has moved on since the read, the hours its writes touched meanwhile (the
  customer's entries of that name applied since, read from the log) are not kept, the others are (so
  steady ingest of other customers does not stop hours being kept), and
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
    key, name, code = (tenant_id, customer, meter.event_name), position_name(partition), signature(meter)
    applied, kept, rows, read, touched = _read(database, log, key, meter, code, name, start_us, end_us)
    first, last = -(-start_us // HOUR) * HOUR, end_us // HOUR * HOUR  # the whole hours: [first, last)
    computed = _hourly(meter, rows, start_us, end_us)
    skip, ended = kept.keys() | touched, min(last, now_us // HOUR * HOUR)
    if read >= KEEP_FROM:
        _keep(database, log, name, applied, key, code,
              [(hour, computed.get(hour, {})) for hour in range(first, ended, HOUR) if hour not in skip])
    bounds = [start_us, *(hour for hour in range(first, last + 1, HOUR) if start_us < hour < end_us), end_us]
    return [(low, high, kept[low] if low in kept else computed.get(low, {}))
            for low, high in zip(bounds, bounds[1:], strict=False)]


def window(database: Database, log: UsageLog, tenant_id: str, customer: str, meter: MeterSpec, start_us: int,
           end_us: int, partition: int | None, seen: int) -> tuple[Running, list[Reading]]:
    """What an entitlement counter of [start_us, end_us) begins from, counting the customer's entries up
    to position `seen` (projections/usage_counters.py): the meter's state of the kept hours that hold
    only entries up to `seen`, groups merged; and the readings of the rest (the read model and the
    log's tail, every position: the counter takes those up to `seen`). A kept hour that still exists
    holds its hours' applied entries (a later write would have deleted it); those an entry of the
    customer's event name after `seen` touches (applied or not) are read from their events instead."""
    _, kept, rows, _, _ = _read(database, log, (tenant_id, customer, meter.event_name), meter, signature(meter),
                                position_name(partition), start_us, end_us, seen)
    base = Running(meter)
    for states in kept.values():
        for running in states.values():
            base.merge(running)
    return base, sorted((Reading(t, p, _properties.decode(properties), event_id)
                         for event_id, t, p, properties in rows if start_us <= t < end_us), key=lambda r: r.position)


def _read(database: Database, log: UsageLog, key: tuple[str, str, str], meter: MeterSpec, code: str, name: str,
          start_us: int, end_us: int, after: int | None = None) -> tuple[int, dict[int, States], list[tuple], int,
                                                                          set[int]]:
    """What [start_us, end_us) holds: the read model's position (`name`'s), the meter's kept whole hours
    that no entry of the log's tail after `after` (default: that position) touches, the rows (event id,
    time, position, properties) of the rest with the tail's unapplied entries merged in, how many rows
    the read model gave, and the hours the tail touches."""
    first, last = -(-start_us // HOUR) * HOUR, end_us // HOUR * HOUR
    with database.transaction() as cursor:
        found = cursor.execute("SELECT position FROM tally_positions WHERE name = ?", (name,)).one()
        applied = int(found[0]) if found else 0
        kept = _spans(cursor, key, meter, code, first, last)
        rows = _rows(cursor, key, _gaps(start_us, end_us, kept))
    tail = log.tail(applied if after is None else min(applied, after), key[0], (key[1],), (key[2],))
    touched = {entry.timestamp_us - entry.timestamp_us % HOUR for entry in tail}
    if touched & kept.keys():  # kept hours with later entries: those hours from their events
        with database.transaction() as cursor:
            rows += _rows(cursor, key, [(hour, hour + HOUR) for hour in touched & kept.keys()])
        kept = {hour: states for hour, states in kept.items() if hour not in touched}
    read = len(rows)
    if tail:  # the rows hold the tail's entries up to `applied` (some read after the read model applied them)
        found_rows = merged({(key[1], key[2], event_id): rest for event_id, *rest in rows},
                            [entry for entry in tail if entry.position > applied])
        rows = [(event_id, *rest) for (_, _, event_id), rest in found_rows.items()]
    return applied, kept, rows, read, touched


def keep_busy(database: Database, log: UsageLog, meters: Callable[[str, str], Sequence[MeterSpec]],
              partition_of: Callable[[str, str], int | None], now_us: int) -> int:
    """Keep, without waiting for a report, the ended hours of each customer's events of a name marked
    busy (usage_readings.BUSY events in an hour) for each meter of that name (`meters(tenant_id,
    event_name)`; not a weighted_sum), from the start of the marked hour's day (a late event drops its
    day's kept hours: they are kept again), then drop the marks. How many were marked."""
    ended = now_us - now_us % HOUR
    with database.transaction() as cursor:
        marked = cursor.execute("SELECT tenant_id, customer, event_name, MIN(hour_us) FROM tally_usage_busy "
                                "WHERE hour_us < ? GROUP BY tenant_id, customer, event_name", (ended,)).all()
    for tenant_id, customer, name, first in marked:
        for meter in meters(tenant_id, name):
            if meter.aggregation != "weighted_sum":
                segments(database, log, tenant_id, customer, meter, first - first % DAY, ended,
                         partition_of(tenant_id, customer), now_us)
        with database.transaction(write=True) as cursor:
            cursor.execute("DELETE FROM tally_usage_busy WHERE tenant_id = ? AND customer = ? AND event_name = ? "
                           "AND hour_us < ?", (tenant_id, customer, name, ended))
    return len(marked)


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


def _keep(database: Database, log: UsageLog, name: str, applied: int, key: tuple[str, str, str], code: str,
          hours: Sequence[tuple[int, States]]) -> None:
    """Keep these whole hours' states, read as of the read model's position `applied`, in spans of
    consecutive hours within a day; an hour with too many distinct values is not kept. The position's
    row is locked (the read model's writers wait): if the read model has moved on since, the hours
    its writes touched meanwhile (the key's entries applied since, from the log) are not kept; a
    write after this one deletes the spans it touches."""
    with database.transaction(write=True) as cursor:
        now_at = lock_position(cursor, name)
        if now_at != applied:
            moved = {entry.timestamp_us - entry.timestamp_us % HOUR
                     for entry in log.tail(applied, key[0], (key[1],), (key[2],)) if entry.position <= now_at}
            hours = [(hour, states) for hour, states in hours if hour not in moved]
        if spans := _as_spans(hours):
            cursor.execute_many(KEEP, [(*key, start, code, end, _encode(kept).decode()) for start, end, kept in spans])


def _as_spans(hours: Sequence[tuple[int, States]]) -> list[list]:
    """Hours' states as spans of consecutive hours within a day: [start, end, [(hour, states), ...]]
    (an hour with no events holds nothing; one with over MAX_SEEN distinct values breaks the span)."""
    spans: list[list] = []
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
    return spans


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

"""The usage read model: each customer's events by name and time, voids applied.

One row per recorded event, keyed by `(tenant, customer, event name, hour of its time, log
position)`; a void (which carries its event's name and time) deletes it. Rows are indexed by
customer, event name and time, which the log is not (the log keeps only what ingest needs, so
ingest stays fast). Totals are computed from the rows by `domain.metering` when asked, so a meter
defined after its events counts them all, and a void is a plain delete.

`reduce` is the pure part; both drivers (the in-process runner and the Faust worker) call `apply`,
which writes the changes with the positions they consumed, in the caller's transaction.

The hot path reads the read model plus the log's tail after the position the model has applied
(`fresh`), through the same `reduce`: usage acknowledged (202) counts at once (DESIGN.md "Freshness").
"""

import logging
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import msgspec

from domain.metering import Reading
from projections.store import Cursor, Database, lock_position, save_position
from projections.usage_log import Entry, UsageLog, bucket_of

# One index: the key leads with what a query reads (the hour of the event's time, `hour_us`: reads
# take whole hours, then the times they want), and ends with what makes it unique: the log position, so a
# batch's rows go at the end of their customer's run of an hour, whatever their times within it and
# their ids. Keyed by the time, then the position (until 2026-11-27), a batch whose events carry many
# times (a client's batch of many sources, a backfill) wrote one page of the index a time: 8.0 µs of
# CPU a row in 1,000-row transactions against 1.9 by the hour (docs/usage.md); keyed by the time, then
# the event id (until 2026-11-26), random ids sharing a time went all over it.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tally_usage_readings (
        tenant_id TEXT NOT NULL, customer TEXT NOT NULL, event_name TEXT NOT NULL, hour_us BIGINT NOT NULL,
        position BIGINT NOT NULL, timestamp_us BIGINT NOT NULL, event_id TEXT NOT NULL, properties TEXT NOT NULL,
        PRIMARY KEY (tenant_id, customer, event_name, hour_us, position)) WITHOUT ROWID""",
    # meters' states of whole hours, kept by usage reports (projections/usage_hours.py): a span of a day's
    # hours [start_us, end_us) a row; every write here deletes the spans of the hours it touches
    """CREATE TABLE IF NOT EXISTS tally_usage_hours (
        tenant_id TEXT NOT NULL, customer TEXT NOT NULL, event_name TEXT NOT NULL, start_us BIGINT NOT NULL,
        meter TEXT NOT NULL, end_us BIGINT NOT NULL, hours TEXT NOT NULL,
        PRIMARY KEY (tenant_id, customer, event_name, start_us, meter)) WITHOUT ROWID""",
    # the hours of a customer's events of a name that reached BUSY events: their meters' hours are kept
    # without waiting for a report (usage_hours.keep_busy), then the mark goes
    """CREATE TABLE IF NOT EXISTS tally_usage_busy (
        tenant_id TEXT NOT NULL, customer TEXT NOT NULL, event_name TEXT NOT NULL, hour_us BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, customer, event_name, hour_us)) WITHOUT ROWID""",
)
COLUMNS = "tenant_id, customer, event_name, hour_us, position, timestamp_us, event_id, properties"
KEY = "tenant_id, customer, event_name, hour_us, position"
HOUR, DAY = 3_600_000_000, 86_400_000_000
# the hour of a time in SQL, as `t - t % HOUR` in Python (floored, before 1970 too)
HOUR_OF = f"timestamp_us - ((timestamp_us % {HOUR}) + {HOUR}) % {HOUR}"
# the events voided in one hour of a customer's events of a name: a void names its event's time and id
# (not its position), so its hour's rows are looked through, once for all of that hour's voids
DELETE = ("DELETE FROM tally_usage_readings WHERE tenant_id = ? AND customer = ? AND event_name = ? AND hour_us = ? "
          "AND (timestamp_us, event_id) IN (VALUES {})")
VOIDS_A_STATEMENT = 500
SPAN = "hour_us >= ? AND hour_us < ? AND timestamp_us >= ? AND timestamp_us < ?"  # rows of a time range: `span`
BUSY = 1_000  # events in an hour (a customer's, of one name) from which the hour is marked busy
BUSY_HOURS = 100_000  # hours a process counts at most (past it, it counts afresh)
MARK = ("INSERT INTO tally_usage_busy (tenant_id, customer, event_name, hour_us) VALUES (?, ?, ?, ?) "
        "ON CONFLICT DO NOTHING")
# the kept spans holding an hour (never across a day's end): tenant, customer, event name, hour - DAY, hour, hour
UNKEEP = ("DELETE FROM tally_usage_hours WHERE tenant_id = ? AND customer = ? AND event_name = ? AND start_us > ? "
          "AND start_us <= ? AND end_us > ?")
IN_PROCESS = "usage"  # the in-process runner's position; the Faust worker keeps one per partition
USAGE_TOPIC = "tally.usage"  # filled by the relay (gateways/kafka.py), consumed by the worker
PARTITIONS = 4
logger = logging.getLogger("tally.usage")
BEFORE_LIMIT = 10_000  # a weighted_sum looks this many events back for the level in force at its start

Key = tuple[str, str, str, int, str]  # tenant, customer, event name, time, event id: a void names all
Put = tuple[str, str, str, int, int, int, str, str]  # a row of the table, its COLUMNS in order


def migrate(database: Database) -> None:
    """Create the read model; one keyed otherwise (by the time, before 2026-11-27; by the event id,
    before 2026-11-26) is re-keyed once, in one transaction, its rows and positions kept."""
    with database.transaction(write=True) as cursor:
        if (key := _key_columns(cursor)) and key != KEY.split(", "):
            logger.warning("usage read model: re-keying by the hour and log position (once; measured a million "
                           "rows in 1 s on SQLite, 6 s on PostgreSQL)")
            (_rekey_postgres if cursor.postgres else _rekey)(cursor)
        for statement in SCHEMA:
            cursor.create(statement)


def _rekey(cursor: Cursor) -> None:
    """SQLite: copy the rows into a table of the new key (a table's key cannot change in place)."""
    cursor.execute("ALTER TABLE tally_usage_readings RENAME TO tally_usage_readings_old")
    cursor.create(SCHEMA[0])
    cursor.raw.execute(f"INSERT INTO tally_usage_readings ({COLUMNS}) SELECT tenant_id, customer, event_name, "
                       f"{HOUR_OF}, position, timestamp_us, event_id, properties FROM tally_usage_readings_old "
                       "ORDER BY 1, 2, 3, 4, 5")
    cursor.execute("DROP TABLE tally_usage_readings_old")


def _rekey_postgres(cursor: Cursor) -> None:
    """PostgreSQL: add the hour, then key the table by it (raw SQL: its `%` is no placeholder)."""
    name = cursor.execute("SELECT conname FROM pg_constraint WHERE contype = 'p' AND "
                          "conrelid = 'tally_usage_readings'::regclass").one()
    assert name is not None
    raw = cursor.raw
    raw.execute("ALTER TABLE tally_usage_readings ADD COLUMN IF NOT EXISTS hour_us BIGINT")
    raw.execute(f"UPDATE tally_usage_readings SET hour_us = {HOUR_OF}")
    raw.execute(f'ALTER TABLE tally_usage_readings ALTER COLUMN hour_us SET NOT NULL, DROP CONSTRAINT "{name[0]}", '
                f"ADD PRIMARY KEY ({KEY})")


def _key_columns(cursor: Cursor) -> list[str]:
    """The primary key's columns of the read model's table, in order (none when there is no table yet)."""
    if cursor.postgres:
        found = cursor.execute(
            "SELECT a.attname FROM pg_index i CROSS JOIN unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
            "JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "WHERE i.indrelid = to_regclass('tally_usage_readings') AND i.indisprimary ORDER BY k.n").all()
    else:
        found = cursor.execute("SELECT name FROM pragma_table_info('tally_usage_readings') WHERE pk > 0 "
                               "ORDER BY pk").all()
    return [name for name, in found]


def reduce(entries: Iterable[Entry]) -> tuple[dict[Key, Put], list[Key]]:
    """The changes the entries make, in log order: keys to delete, then rows to put. A void deletes
    its event, whether an earlier batch put it or this one would."""
    puts: dict[Key, Put] = {}
    deletes: list[Key] = []
    for entry in entries:
        key = (entry.tenant_id, entry.customer, entry.event_name, entry.timestamp_us, entry.event_id)
        if entry.kind == "void":
            puts.pop(key, None)
            deletes.append(key)
        else:
            t = entry.timestamp_us
            puts.setdefault(key, (*key[:3], t - t % HOUR, entry.position, t, entry.event_id, entry.properties))
    return puts, deletes


def apply(cursor: Cursor, entries: Sequence[Entry]) -> None:
    """Write what the entries change (idempotent: a replayed entry changes nothing more)."""
    write(cursor, *reduce(entries))


def write(cursor: Cursor, puts: dict[Key, Put], deletes: list[Key]) -> None:
    """Write what `reduce` gave, and drop the kept hours it changes."""
    voided: dict[tuple[str, str, str, int], list[int | str]] = {}  # an hour's voided events: time, id, time, ...
    for tenant, customer, name, t, event_id in deletes:
        voided.setdefault((tenant, customer, name, t - t % HOUR), []).extend((t, event_id))
    added = Counter(put[:4] for put in puts.values())
    hours = added.keys() | voided.keys()
    if busy := _busy.reached(added):
        cursor.execute_many(MARK, busy)
    if hours:
        cursor.execute_many(UNKEEP, [(*key, hour - DAY, hour, hour) for *key, hour in sorted(hours)])
    for hour, pairs in voided.items():
        for at in range(0, len(pairs), 2 * VOIDS_A_STATEMENT):
            some = pairs[at:at + 2 * VOIDS_A_STATEMENT]
            cursor.execute(DELETE.format(", ".join(["(?, ?)"] * (len(some) // 2))), (*hour, *some))
    if puts:
        cursor.insert_new("tally_usage_readings", COLUMNS, KEY, list(puts.values()))


class Busy:
    """How many events this process's writes have put in each hour of a customer's events of a name;
    an hour reaching BUSY is marked (in the write's transaction). Counted in memory: after a restart
    (or past BUSY_HOURS hours) it counts afresh, so an hour may be marked late or not at all, and a
    report still keeps the hours it reads."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str, int], int] = {}

    def reached(self, added: Mapping[tuple[str, str, str, int], int]) -> list[tuple[str, str, str, int]]:
        """Count these events by hour; the hours they take to BUSY."""
        counts, reached = self.counts, []
        if len(counts) > BUSY_HOURS:
            counts.clear()
        for hour, count in added.items():
            before = counts.get(hour, 0)
            counts[hour] = before + count
            if before < BUSY <= before + count:
                reached.append(hour)
        return reached


_busy = Busy()


def apply_partition(cursor: Cursor, partition: int, messages: Sequence[Entry]) -> int:
    """Apply one partition's messages from Kafka, in their order, with the partition's position.

    A message at or below the position was applied before (a redelivery or a relay resend). A
    message whose `previous` is above the position comes after messages this consumer never saw (a
    broker that lost them): nothing from there is applied, the position stays, and the relay, seeing
    it stop, sends again from it. Returns the position reached."""
    name = position_name(partition)
    position = start = lock_position(cursor, name)
    ready: list[Entry] = []
    for message in messages:
        if message.position <= position:
            continue
        if message.previous > position:
            break
        if message.kind != "mark":
            ready.append(message)
        position = message.position
    if position != start:
        apply(cursor, ready)
        save_position(cursor, name, position)
    return position


def partition_of(tenant_id: str, customer: str, partitions: int = PARTITIONS) -> int:
    """The `tally.usage` partition of a customer's events (stable across processes and versions)."""
    return zlib.crc32(f"{tenant_id}/{customer}".encode()) % partitions


def position_name(partition: int | None) -> str:
    return IN_PROCESS if partition is None else f"{IN_PROCESS}:{partition}"


_properties = msgspec.json.Decoder(dict)


def fresh(database: Database, log: UsageLog, tenant_id: str, customer: str, event_names: Sequence[str],
          start_us: int, end_us: int, partition: int | None,
          before: bool = True) -> dict[str, tuple[list[Reading], list[Reading]]]:
    """For each event name, the customer's readings in [start_us, end_us), and (newest first, when
    `before`: only a weighted_sum needs them) up to BEFORE_LIMIT before start_us: the read model's
    rows, plus the log's tail it has not applied. One read for all the names."""
    return fresh_many(database, log, tenant_id, {customer: partition}, event_names, start_us, end_us,
                      before)[customer]


def fresh_many(database: Database, log: UsageLog, tenant_id: str, customers: Mapping[str, int | None],
               event_names: Sequence[str], start_us: int, end_us: int,
               before: bool = False) -> dict[str, dict[str, tuple[list[Reading], list[Reading]]]]:
    """`fresh` for several customers at once (each with its partition, or None in process): a few
    reads for them all."""
    names, who = tuple(dict.fromkeys(event_names)), tuple(customers)
    marks, people = ",".join("?" * len(names)), ",".join("?" * len(who))
    wanted = {position_name(partition) for partition in customers.values()}
    with database.transaction() as cursor:
        positions = dict(cursor.execute(
            f"SELECT name, position FROM tally_positions WHERE name IN ({','.join('?' * len(wanted))})",
            tuple(wanted)).all())
        found = cursor.execute(
            "SELECT customer, event_name, event_id, timestamp_us, position, properties FROM tally_usage_readings "
            f"WHERE tenant_id = ? AND customer IN ({people}) AND event_name IN ({marks}) AND {SPAN}",
            (tenant_id, *who, *names, *span(start_us, end_us))).all()
        for customer, name in ((c, n) for c in who for n in names) if before else ():
            found += [(customer, name, *row) for row in _before(cursor, (tenant_id, customer, name), start_us)]
    applied = {customer: int(positions.get(position_name(partition), 0)) for customer, partition in customers.items()}
    rows = {(c, name, event_id): (t, p, props) for c, name, event_id, t, p, props in found}
    tail = log.tail(min(applied.values(), default=0), tenant_id, who, names)
    rows = merged(rows, [entry for entry in tail if entry.position > applied[entry.customer]])
    readings: dict[str, dict[str, list[Reading]]] = {c: {name: [] for name in names} for c in who}
    for (c, name, event_id), (t, p, props) in rows.items():
        readings[c][name].append(Reading(t, p, _properties.decode(props), event_id))
    return {c: {name: _split(sorted(each, key=lambda r: r.position), start_us, end_us)
                for name, each in mine.items()} for c, mine in readings.items()}


def span(start_us: int, end_us: int) -> tuple[int, int, int, int]:
    """The parameters of SPAN: the rows of [start_us, end_us)."""
    return start_us - start_us % HOUR, end_us, start_us, end_us


def _before(cursor: Cursor, key: tuple[str, str, str], start_us: int) -> list[tuple]:
    """Up to BEFORE_LIMIT of the rows of `key` (tenant, customer, event name) before start_us, newest
    first. Within an hour the rows go by log position, not time: the hours from the one the
    BEFORE_LIMIT-th row back lies in are read whole, then ordered."""
    hour = start_us - start_us % HOUR
    where = "tenant_id = ? AND customer = ? AND event_name = ? AND hour_us <= ? AND timestamp_us < ?"
    cut = cursor.execute(f"SELECT hour_us FROM tally_usage_readings WHERE {where} ORDER BY hour_us DESC, "
                         "position DESC LIMIT 1 OFFSET ?", (*key, hour, start_us, BEFORE_LIMIT - 1)).one()
    rows = cursor.execute(f"SELECT event_id, timestamp_us, position, properties FROM tally_usage_readings WHERE "
                          f"{where}{' AND hour_us >= ?' if cut else ''}", (*key, hour, start_us, *(cut or ()))).all()
    return sorted(rows, key=lambda row: (row[1], row[2]), reverse=True)[:BEFORE_LIMIT]


def merged(rows: dict[tuple[str, str, str], Sequence], tail: Iterable[Entry]) -> dict[tuple[str, str, str], Sequence]:
    """The read model's rows (by customer, event name and event id: time, position, properties) with the
    log's entries it has not applied: a void drops its event; an event there already stays (the rows may
    have been read after the read model applied some of the entries)."""
    puts, deletes = reduce(tail)
    for _, c, name, _, event_id in deletes:
        rows.pop((c, name, event_id), None)
    for _, c, name, _, p, t, event_id, props in puts.values():
        rows.setdefault((c, name, event_id), (t, p, props))
    return rows


def as_of(log: UsageLog, tenant_id: str, customer: str, event_name: str, start_us: int, end_us: int,
          recorded_us: int) -> tuple[list[Reading], list[Reading]]:
    """As `fresh`, but as the log stood at `recorded_us`: the events recorded by then, less those
    voided by then (time travel reads the log itself)."""
    with log.database.transaction() as cursor:
        rows = cursor.execute(
            "SELECT u.event_id, u.timestamp_us, u.position, u.properties FROM tally_usage u WHERE u.bucket = ? AND "
            "u.tenant_id = ? AND u.customer = ? AND u.event_name = ? AND u.kind = 'event' AND u.recorded_us <= ? "
            "AND u.timestamp_us < ? AND NOT EXISTS (SELECT 1 FROM tally_usage v WHERE v.tenant_id = u.tenant_id "
            "AND v.customer = u.customer AND v.event_id = u.event_id AND v.kind = 'void' AND v.recorded_us <= ?) "
            "ORDER BY u.position",
            (bucket_of(tenant_id, customer), tenant_id, customer, event_name, recorded_us, end_us, recorded_us)).all()
    return _split([Reading(t, p, _properties.decode(props), event_id) for event_id, t, p, props in rows],
                  start_us, end_us)


def _split(readings: list[Reading], start_us: int, end_us: int) -> tuple[list[Reading], list[Reading]]:
    """Readings in log order: those in [start_us, end_us) (in log order), and up to BEFORE_LIMIT
    before start_us (newest first)."""
    return ([r for r in readings if start_us <= r.timestamp_us < end_us],
            sorted((r for r in readings if r.timestamp_us < start_us),
                   key=lambda r: (r.timestamp_us, r.position), reverse=True)[:BEFORE_LIMIT])

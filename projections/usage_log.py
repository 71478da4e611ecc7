"""The usage log: every accepted usage event, once, in the order it was recorded, and every void.

`(tenant, customer, event_id, kind)` is unique in the store itself, so a retried event is counted
once, ever, whatever the caller or a cache does. A void is a row of the log too (kind `void`, with
who and when), so the projections and the relay follow one ordered stream.

On PostgreSQL that is the table's unique constraint. On SQLite the unique index is on a 64-bit `key`
made from the four (`usage_key`): a tenth the size of an index on the text, so a commit of random
ids rewrites far fewer index pages, and a time-ordered id (UUIDv7, ULID) keeps its time in the
key's high bits, so such ids land at the index's end whoever the customer. Two different events
may share a key: a row whose key an event already holds is compared with that event, and when it
differs it goes in without a key, unique by its full key (a partial unique index).

Acknowledged means durable: `submit` resolves after the transaction holding the events committed
(SQLite WAL with synchronous=FULL, or a PostgreSQL commit). Appends are group-committed: one writer
thread takes every batch waiting when it is free and writes them all in one transaction, each
batch counted apart. On PostgreSQL each transaction locks the table first (EXCLUSIVE: readers go
on), so positions become visible in order and a reader that has seen position N never sees a
smaller one appear later. On SQLite the log has a file of its own, so ingesting never waits for
the event store or the read models.
"""

import hashlib
import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from domain.money import encode_hook
from domain.usage import UsageEvent
from projections.background import Wake
from projections.board import Board
from projections.recent import Reader, Recent
from projections.store import Cursor, Database

COLUMNS = "tenant_id, customer, event_id, event_name, timestamp_us, recorded_us, properties"
TABLE = """CREATE TABLE IF NOT EXISTS tally_usage (
        position BIGSERIAL PRIMARY KEY, tenant_id TEXT NOT NULL, customer TEXT NOT NULL,
        event_id TEXT NOT NULL, event_name TEXT NOT NULL, timestamp_us BIGINT NOT NULL,
        recorded_us BIGINT NOT NULL, properties TEXT NOT NULL, kind TEXT NOT NULL DEFAULT 'event',
        actor TEXT, key BIGINT, bucket INTEGER NOT NULL)"""
INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS tally_usage_key ON tally_usage (key)",
    # the events whose key another event took: unique by the full key (none, almost always)
    "CREATE UNIQUE INDEX IF NOT EXISTS tally_usage_collided ON tally_usage (tenant_id, customer, event_id, kind) "
    "WHERE key IS NULL",
    # a customer's rows (time travel), by position within one of 256 buckets of customers: a commit
    # writes at most one page a bucket, at its end, however many customers it holds
    "CREATE INDEX IF NOT EXISTS tally_usage_bucket ON tally_usage (bucket, position, customer)",
    "CREATE INDEX IF NOT EXISTS tally_usage_voids ON tally_usage (tenant_id, customer, event_id) WHERE kind = 'void'",
)
KEYED = f"{COLUMNS}, key, bucket"
STAGE = ("CREATE TEMP TABLE IF NOT EXISTS tally_usage_stage (batch INT, seq INT, tenant_id TEXT, customer TEXT, "
         "event_id TEXT, event_name TEXT, timestamp_us BIGINT, recorded_us BIGINT, properties TEXT, key BIGINT, "
         "bucket INTEGER) ON COMMIT DELETE ROWS")


def _insert(key: str, conflict: str, void: bool) -> str:
    more, values = (", actor, kind", ", ?, 'void'") if void else ("", "")
    return (f"INSERT INTO tally_usage ({KEYED}{more}) VALUES (?, ?, ?, ?, ?, ?, ?, {key}, ?{values}) "
            f"ON CONFLICT {conflict} DO NOTHING")


# for events and for voids (whose rows end with the actor): with the key, and without it
COLLIDED = "(tenant_id, customer, event_id, kind) WHERE key IS NULL"
INSERTS = {void: (_insert("?", "(key)", void), _insert("NULL", COLLIDED, void)) for void in (False, True)}
MAX_GROUP_ROWS = 50_000  # one transaction holds at most this many rows (bounds an answer's wait)
# SQLite, the writer's connection: clients' ids are random, so the unique key takes rows all over its
# index; a page cache keeps its pages, and a checkpoint every 80 MiB of WAL (not 4) writes a page
# changed by many commits once
WRITER_CACHE_MIB = 64
CHECKPOINT_PAGES = 20_000
_encoder = msgspec.json.Encoder(enc_hook=encode_hook)
_keys = msgspec.json.Encoder()
log = logging.getLogger("tally.usage")

# tenant, customer, event_id, event_name, timestamp_us, recorded_us, properties, key, bucket
Row = tuple


class Entry(msgspec.Struct, frozen=True, gc=False):
    """One row of the log, as the projections read it and the relay publishes it (JSON)."""

    position: int
    tenant_id: str
    customer: str
    event_id: str
    event_name: str
    timestamp_us: int
    recorded_us: int
    properties: str  # JSON text
    kind: str  # "event" or "void"; on Kafka also "mark" (see gateways/kafka.py)
    previous: int = 0  # on Kafka: the position of the message sent before it to the same partition


ENTRY = "position, " + COLUMNS + ", kind"
EVERY = 1 << 62  # a position above every other
LAST = "SELECT MAX(position) FROM tally_usage"


def microseconds(moment: datetime) -> int:
    """Exact microseconds since the epoch (UTC): integer time, sortable, never a float."""
    assert moment.tzinfo is not None, moment
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


def moment_of(us: int) -> datetime:
    """The UTC time of microseconds since the epoch (as `microseconds` gives)."""
    return EPOCH + timedelta(microseconds=us)


def rows_of(tenant_id: str, events: Sequence[UsageEvent], recorded_at: datetime) -> list[Row]:
    """The log rows of these events, with their key and bucket."""
    recorded, encode = microseconds(recorded_at), _encoder.encode
    buckets = {customer: bucket_of(tenant_id, customer) for customer in {e.customer for e in events}}
    return [(tenant_id, e.customer, e.event_id, e.event_name, microseconds(e.timestamp), recorded,
             encode(e.properties).decode(), usage_key(tenant_id, e.customer, e.event_id, "event"), buckets[e.customer])
            for e in events]


# The log's key: part of the stored format, never to change. Its high bits are the time of an id
# that begins with one (39 bits of Unix milliseconds: the order wraps every 17 years), its low 24 bits
# a hash of the four; any other id's key is a 64-bit hash.
TIME_BITS, HASH_BITS = 39, 24
# a ULID's Crockford base-32 digits as Python's base-32 digits (either case)
_CROCKFORD = str.maketrans("ABCDEFGHJKMNPQRSTVWXYZabcdefghjkmnpqrstvwxyz",
                           "abcdefghijklmnopqrstuvabcdefghijklmnopqrstuv")


def usage_key(tenant_id: str, customer: str, event_id: str, kind: str) -> int:
    """The 64-bit key of a row of the log (signed, as both stores keep integers)."""
    text = "\x1f".join((tenant_id, customer, event_id, kind)).encode("utf-8", "surrogatepass")
    digest = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest())
    millis = _millis(event_id)
    if millis is None:
        return digest - (1 << 63)
    return (millis & ((1 << TIME_BITS) - 1)) << HASH_BITS | digest & ((1 << HASH_BITS) - 1)


def _millis(event_id: str) -> int | None:
    """The Unix milliseconds a UUIDv7 (RFC 9562) or a ULID begins with; None for any other id. (What
    else `int` reads there, a sign or an underscore, gives a key as good: it only has to be the same.)"""
    try:
        if len(event_id) == 36 and event_id[14] == "7" and event_id[8] == event_id[13] == "-":
            return int(event_id[:8] + event_id[9:13], 16)
        if len(event_id) == 26:
            return int(event_id[:10].translate(_CROCKFORD), 32)
    except ValueError:
        pass
    return None


def bucket_of(tenant_id: str, customer: str) -> int:
    """Which of 256 buckets a customer's rows are indexed in."""
    return hashlib.blake2b(f"{tenant_id}\x1f{customer}".encode("utf-8", "surrogatepass"), digest_size=1).digest()[0]


class UsageLog:
    def __init__(self, database: Database, board: Board | None = None, recent: Recent | None = None) -> None:
        """`board`: where the last position is published after each commit, and `recent`: where the rows
        committed are copied (the embedded store)."""
        self.database, self.board, self.recent = database, board, recent
        migrate(database)
        self._waiting: queue.SimpleQueue[tuple[list[Row], Future[int]] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._start = threading.Lock()
        # set after each commit here, so a follower (another process too) need not poll
        self.changed = Wake()
        self._reader = Reader(recent) if recent is not None else None  # where `entries` reads the ring

    def append(self, tenant_id: str, events: Sequence[UsageEvent], recorded_at: datetime) -> int:
        """Record the events not recorded before; returns how many were new, once they are durable."""
        return self.submit(rows_of(tenant_id, events, recorded_at)).result()

    def submit(self, rows: list[Row]) -> "Future[int]":
        """Queue rows for the next group commit. The future gives how many were new, after the commit."""
        future: Future[int] = Future()
        if not rows:
            future.set_result(0)
            return future
        if self._writer is None:
            with self._start:
                if self._writer is None:
                    self._writer = threading.Thread(target=self._write_groups, name="usage-writer", daemon=True)
                    self._writer.start()
        self._waiting.put((rows, future))
        return future

    def _write_groups(self) -> None:
        self.database.tune(WRITER_CACHE_MIB, CHECKPOINT_PAGES)
        while (first := self._waiting.get()) is not None:
            group, size = [first], len(first[0])
            while size < MAX_GROUP_ROWS:
                try:
                    more = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._waiting.put(None)  # stop after this group
                    break
                group.append(more)
                size += len(more[0])
            self._commit(group)

    def _commit(self, group: list[tuple[list[Row], "Future[int]"]]) -> None:
        try:
            with self.database.transaction(write=True) as cursor:
                before = self._begin(cursor)
                insert = insert_copy if cursor.postgres else insert_keyed
                counts, in_order = insert(cursor, [rows for rows, _ in group])
                last = self._last(cursor)
                record = self._copied(group, counts, before, last) if in_order else None
        except BaseException as error:  # nothing of the group committed: each caller is told
            for _, future in group:
                future.set_exception(error)
            return
        try:
            if record is not None:
                self.recent.commit(record)  # type: ignore[union-attr]
            self._published(last)
        except Exception as error:  # durable, but a check might not count them yet: not acknowledged (a retry
            for _, future in group:  # finds them duplicates), and the writer goes on with the next group
                future.set_exception(error)
            return
        for (_, future), count in zip(group, counts, strict=True):
            future.set_result(count)

    def _copied(self, group: list[tuple[list[Row], Any]], counts: list[int], before: int, last: int) -> int | None:
        """Copy the group's rows to the shared ring of recent entries, when they all were new (then,
        as many positions taken as rows, they are at before + 1, before + 2, ... in order): where
        the record is, or None."""
        if self.recent is None or not last - before == sum(counts) == sum(len(rows) for rows, _ in group):
            return None
        return self.recent.append(before + 1, [row for rows, _ in group for row in rows])

    def void(self, tenant_id: str, customer: str, event_ids: Sequence[str], actor: str,
             voided_at: datetime) -> tuple[int, list[str]]:
        """Take recorded events out of the totals by recording a void for each (who, when).
        Returns how many were voided now, and the ids never recorded."""
        voided_us = microseconds(voided_at)
        with self.database.transaction(write=True) as cursor:
            self._begin(cursor)
            events = _events(cursor, tenant_id, customer, event_ids)
            voided = insert_keyed(cursor, [[(*event[:5], voided_us, event[6], usage_key(
                tenant_id, customer, event[2], "void"), event[8], actor) for event in events]], void=True)[0][0]
            last = self._last(cursor) if voided else 0
        if voided:
            self._published(last)
        known = {event[2] for event in events}
        return voided, [event_id for event_id in event_ids if event_id not in known]

    def _begin(self, cursor: Cursor) -> int:
        """Start writing (PostgreSQL: take the table's lock); where the log ends (0: not needed). The
        ring's latest record, if still pending, is settled: its writer is done."""
        _lock(cursor)
        before = self._last(cursor)
        if self.recent is not None:
            self.recent.settle(before)
        return before

    def _last(self, cursor: Cursor) -> int:
        """The last position, within the transaction that writes (0: not needed, no board or ring)."""
        needed = self.board is not None or self.recent is not None
        return int(cursor.execute(LAST).one()[0] or 0) if needed else 0  # type: ignore[index]

    def _published(self, last: int) -> None:
        """After a commit, before anyone is told: publish where the log ends, wake the follower."""
        if self.board is not None:
            self.board.publish("usage", last)
        self.changed.set()

    def published(self) -> int:
        """The last position of an acknowledged entry, or later: from the board when there is one
        (no query), else from the store."""
        return self.board.get("usage") if self.board is not None else self.last_position()

    def entries(self, after: int, limit: int) -> list[Entry]:
        """Up to `limit` entries after position `after`, in log order (fewer only at the log's end):
        from the ring of recent entries as far as it holds them in order (no read of the store), the
        rest from the log."""
        found = self._recent_entries(after, limit)
        if len(found) == limit:
            return found
        with self.database.transaction() as cursor:
            rows = cursor.execute(f"SELECT {ENTRY} FROM tally_usage WHERE position > ? ORDER BY position LIMIT ?",
                                  (found[-1].position if found else after, limit - len(found))).all()
        return found + [Entry(*row) for row in rows]

    def _recent_entries(self, after: int, limit: int) -> list[Entry]:
        """`entries` from the ring: those it holds from position `after + 1` on (committed: not only the
        published ones), none when it does not hold that one. Measured with the usage runner alone: 0.6 µs
        an entry against 1.6 from the log."""
        if self._reader is None:
            return []
        found: list[Entry] = []
        for first, last, payload in self._reader.after(after, EVERY):
            rows = Recent.rows(payload)[after + 1 - first:after + 1 - first + limit - len(found)]
            found += [Entry(position, *row[:7], "event") for position, row in enumerate(rows, after + 1)]
            if len(found) == limit:
                break
            after = last
        return found

    def tail(self, after: int, tenant_id: str, customers: Sequence[str], event_names: Sequence[str]) -> list[Entry]:
        """These customers' entries of these event names after position `after`: what a read model
        that has applied up to `after` does not hold yet."""
        with self.database.transaction() as cursor:
            rows = cursor.execute(
                f"SELECT {ENTRY} FROM tally_usage WHERE position > ? AND tenant_id = ? "
                f"AND customer IN ({','.join('?' * len(customers))}) "
                f"AND event_name IN ({','.join('?' * len(event_names))}) ORDER BY position",
                (after, tenant_id, *customers, *event_names)).all()
        return [Entry(*row) for row in rows]

    def last_position(self) -> int:
        with self.database.transaction() as cursor:
            row = cursor.execute(LAST).one()
        return int(row[0] or 0) if row else 0

    def settled(self) -> int:
        """The last position, short of the rows of a ring record still pending (their writer has not
        marked them yet, so readers of the ring would not find them): for the board's sync, which
        publishes it."""
        last = self.last_position()
        pending = self.recent.pending() if self.recent is not None else None
        return last if pending is None else min(last, pending - 1)

    def size(self) -> int:
        """How many events the log holds (all tenants; voids not counted)."""
        with self.database.transaction() as cursor:
            row = cursor.execute("SELECT COUNT(*) FROM tally_usage WHERE kind = 'event'").one()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        """Finish the queued groups, then stop the writer."""
        if self._writer is not None:
            self._waiting.put(None)
            self._writer.join()
            self._writer = None


def ring_of(database: Database) -> Recent | None:
    """The ring of recent entries of an embedded store's usage log, shared by its processes (none on
    PostgreSQL: servers may run on several machines)."""
    return None if database.postgres else Recent(Path(f"{database.path}-recent"))


def migrate(database: Database) -> None:
    """Create the log; a log from before its key is re-keyed first, once. One transaction."""
    with database.transaction(write=True) as cursor:
        columns = _columns(cursor)
        if columns and "key" not in columns:
            log.warning("usage log: re-keying it, once (measured: a million events in 10 s on SQLite, "
                        "42 s on PostgreSQL)")
            (_rekey_postgres if cursor.postgres else _rekey)(cursor)
        for statement in (TABLE, *INDEXES):
            cursor.create(statement)


def _columns(cursor: Cursor) -> set[str]:
    return {name for name, in cursor.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND "
        "table_name = 'tally_usage'" if cursor.postgres else "SELECT name FROM pragma_table_info('tally_usage')").all()}


def _rekey(cursor: Cursor) -> None:
    """SQLite: copy the rows of a log unique by its text columns into one unique by `key`, positions kept."""
    connection = cursor.raw.connection
    connection.create_function("tally_usage_key", 4, usage_key, deterministic=True)
    connection.create_function("tally_usage_bucket", 2, bucket_of, deterministic=True)
    cursor.execute("ALTER TABLE tally_usage RENAME TO tally_usage_unkeyed")
    cursor.create(TABLE)
    cursor.execute(INDEXES[0])  # for its ON CONFLICT below
    every = f"position, {COLUMNS}, kind, actor"
    cursor.execute(f"INSERT INTO tally_usage ({every}, key, bucket) SELECT {every}, "
                   f"tally_usage_key(tenant_id, customer, event_id, kind), tally_usage_bucket(tenant_id, customer) "
                   f"FROM tally_usage_unkeyed WHERE true ORDER BY position ON CONFLICT (key) DO NOTHING")
    cursor.execute(f"INSERT INTO tally_usage ({every}, key, bucket) SELECT {every}, NULL, "  # keys two events share
                   f"tally_usage_bucket(tenant_id, customer) FROM tally_usage_unkeyed "
                   f"WHERE position NOT IN (SELECT position FROM tally_usage) ORDER BY position")
    cursor.execute("DROP TABLE tally_usage_unkeyed")


def _rekey_postgres(cursor: Cursor) -> None:
    """PostgreSQL: add the key and bucket to a log unique by its text columns (rows sharing a key: the
    first keeps it), then drop that unique constraint (`migrate` makes the indexes, in the same transaction)."""
    raw = cursor.raw
    raw.execute("ALTER TABLE tally_usage ADD COLUMN key BIGINT, ADD COLUMN bucket INTEGER")
    raw.execute("CREATE TEMP TABLE tally_usage_keys (position BIGINT, key BIGINT, bucket INTEGER) ON COMMIT DROP")
    with raw.connection.cursor(name="tally_usage_rekey") as rows:  # on the server: read a chunk at a time
        rows.execute("SELECT position, tenant_id, customer, event_id, kind FROM tally_usage")
        while chunk := rows.fetchmany(100_000):
            with raw.copy("COPY tally_usage_keys FROM STDIN") as copy:
                for position, tenant_id, customer, event_id, kind in chunk:
                    copy.write_row((position, usage_key(tenant_id, customer, event_id, kind),
                                    bucket_of(tenant_id, customer)))
    raw.execute("UPDATE tally_usage u SET key = k.key, bucket = k.bucket FROM (SELECT position, bucket, CASE WHEN "
                "position = MIN(position) OVER (PARTITION BY key) THEN key END AS key FROM tally_usage_keys) k "
                "WHERE u.position = k.position")
    raw.execute("ALTER TABLE tally_usage ALTER COLUMN bucket SET NOT NULL")
    for name, in raw.execute("SELECT conname FROM pg_constraint WHERE conrelid = 'tally_usage'::regclass "
                             "AND contype = 'u'").fetchall():
        raw.execute(f'ALTER TABLE tally_usage DROP CONSTRAINT "{name}"')


def insert_keyed(cursor: Cursor, batches: list[list[Row]], void: bool = False) -> tuple[list[int], bool]:
    """Each batch's rows whose key is new; then those whose key a different event holds go in without
    a key, unique by their full key. How many of each batch were new, and whether they took their
    positions in the order given (no such collision). Void rows end with their actor."""
    keyed, unkeyed = INSERTS[void]
    counts, in_order = [], True
    for rows in batches:
        count = cursor.execute_many(keyed, rows)
        if count < len(rows):  # duplicates, or keys two events share
            if collided := _collided(cursor, rows, "void" if void else "event"):
                count += cursor.execute_many(unkeyed, [(*row[:7], *row[8:]) for row in collided])
                in_order = False
        counts.append(count)
    return counts, in_order


def _collided(cursor: Cursor, rows: list[Row], kind: str) -> list[Row]:
    """The rows whose key is held by a different event (every row's key is held, now)."""
    keys = [row[7] for row in rows]
    among = "= ANY(?::BIGINT[])" if cursor.postgres else "IN (SELECT value FROM json_each(?))"
    held = {key: rest for key, *rest in cursor.execute(
        f"SELECT key, tenant_id, customer, event_id FROM tally_usage WHERE kind = ? AND key {among}",
        (kind, keys if cursor.postgres else _keys.encode(keys))).all()}
    return [row for row in rows if held.get(row[7]) != [row[0], row[1], row[2]]]


def _events(cursor: Cursor, tenant_id: str, customer: str, event_ids: Sequence[str]) -> list[tuple]:
    """The customer's recorded events of these ids, in log order, as rows."""
    marks, them = ",".join("?" * len(event_ids)), (tenant_id, customer, *event_ids)
    where = f"tenant_id = ? AND customer = ? AND kind = 'event' AND event_id IN ({marks})"
    keys = [usage_key(tenant_id, customer, event_id, "event") for event_id in event_ids]
    found = cursor.execute(f"SELECT position, {KEYED} FROM tally_usage WHERE key IN ({marks}) AND {where} UNION ALL "
                           f"SELECT position, {KEYED} FROM tally_usage WHERE key IS NULL AND {where}",
                           (*keys, *them, *them)).all()
    return [row[1:] for row in sorted(found)]


def _lock(cursor: Cursor) -> None:
    if cursor.postgres:  # SQLite's BEGIN IMMEDIATE already admits one writer at a time
        cursor.execute("LOCK TABLE tally_usage IN EXCLUSIVE MODE")


def insert_copy(cursor: Cursor, batches: list[list[Row]]) -> tuple[list[int], bool]:
    """PostgreSQL, as `insert_keyed`. The group is COPYed straight into the log when every key in it
    is new (the usual case). When one is not (a retry, an event twice in the group, or a key two
    events share), nothing of that COPY stays, and the group goes into a staging table, then in batch
    by batch (so each batch's count of new events is its own, and a batch wins over a later one)."""
    if cursor.copy_new("tally_usage", KEYED, (row for rows in batches for row in rows)):
        return [len(rows) for rows in batches], True
    raw, in_order = cursor.raw, True
    raw.execute(STAGE)
    cursor.copy("tally_usage_stage", f"batch, seq, {KEYED}",
                ((batch, seq, *row) for batch, rows in enumerate(batches) for seq, row in enumerate(rows)))
    counts = []
    for batch, rows in enumerate(batches):
        raw.execute(f"INSERT INTO tally_usage ({KEYED}) SELECT {KEYED} FROM tally_usage_stage WHERE batch = %s "
                    "ORDER BY seq ON CONFLICT (key) DO NOTHING", (batch,))
        count = raw.rowcount
        if count < len(rows):  # duplicates, or keys two events share: those of a different event, without a key
            raw.execute(f"INSERT INTO tally_usage ({KEYED}) SELECT {COLUMNS}, NULL, bucket FROM tally_usage_stage s "
                        "WHERE batch = %s AND NOT EXISTS (SELECT 1 FROM tally_usage u WHERE u.key = s.key AND "
                        "u.tenant_id = s.tenant_id AND u.customer = s.customer AND u.event_id = s.event_id AND "
                        f"u.kind = 'event') ORDER BY seq ON CONFLICT {COLLIDED} DO NOTHING", (batch,))
            count += raw.rowcount
            in_order = in_order and not raw.rowcount
        counts.append(count)
    return counts, in_order

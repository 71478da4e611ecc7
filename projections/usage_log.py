"""The usage log: every accepted usage event, once, in the order it was recorded, and every void.

`(tenant, customer, event_id, kind)` is a unique key of the store itself, so a retried event is
counted once, ever, whatever the caller or a cache does. A void is a row of the log too (kind
`void`, with who and when), so the projections and the relay follow one ordered stream.

Acknowledged means durable: `submit` resolves after the transaction holding the events committed
(SQLite WAL with synchronous=FULL, or a PostgreSQL commit). Appends are group-committed: one writer
thread takes every batch waiting when it is free and writes them all in one transaction, each
batch counted apart. On PostgreSQL each transaction locks the table first (EXCLUSIVE: readers go
on), so positions become visible in order and a reader that has seen position N never sees a
smaller one appear later. On SQLite the log has a file of its own, so ingesting never waits for
the event store or the read models.
"""

import multiprocessing
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import Any

import msgspec

from domain.money import encode_hook
from domain.usage import UsageEvent
from projections.board import Board
from projections.recent import Recent
from projections.store import Cursor, Database

COLUMNS = "tenant_id, customer, event_id, event_name, timestamp_us, recorded_us, properties"
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tally_usage (
        position BIGSERIAL PRIMARY KEY, tenant_id TEXT NOT NULL, customer TEXT NOT NULL,
        event_id TEXT NOT NULL, event_name TEXT NOT NULL, timestamp_us BIGINT NOT NULL,
        recorded_us BIGINT NOT NULL, properties TEXT NOT NULL, kind TEXT NOT NULL DEFAULT 'event',
        actor TEXT, UNIQUE (tenant_id, customer, event_id, kind))""",
)
STAGE = ("CREATE TEMP TABLE IF NOT EXISTS tally_usage_stage (batch INT, seq INT, tenant_id TEXT, customer TEXT, "
         "event_id TEXT, event_name TEXT, timestamp_us BIGINT, recorded_us BIGINT, properties TEXT) "
         "ON COMMIT DELETE ROWS")
CONFLICT = "ON CONFLICT (tenant_id, customer, event_id, kind) DO NOTHING"
INSERT = f"INSERT INTO tally_usage ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) {CONFLICT}"
MAX_GROUP_ROWS = 50_000  # one transaction holds at most this many rows (bounds an answer's wait)
# SQLite, the writer's connection: clients' ids are random, so the unique key takes rows all over its
# index; a page cache keeps its pages, and a checkpoint every 80 MiB of WAL (not 4) writes a page
# changed by many commits once
WRITER_CACHE_MIB = 64
CHECKPOINT_PAGES = 20_000
_encoder = msgspec.json.Encoder(enc_hook=encode_hook)

Row = tuple[str, str, str, str, int, int, str]


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
    recorded, encode = microseconds(recorded_at), _encoder.encode
    return [(tenant_id, e.customer, e.event_id, e.event_name, microseconds(e.timestamp), recorded,
             encode(e.properties).decode()) for e in events]


class UsageLog:
    def __init__(self, database: Database, board: Board | None = None, recent: Recent | None = None) -> None:
        """`board`: where the last position is published after each commit, and `recent`: where the rows
        committed are copied (the embedded store)."""
        self.database, self.board, self.recent = database, board, recent
        database.migrate(SCHEMA)
        self._waiting: queue.SimpleQueue[tuple[list[Row], Future[int]] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._start = threading.Lock()
        # set after each commit here, so a follower (another process too) need not poll
        self.changed = multiprocessing.get_context("spawn").Event()

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
                counts = _insert_copy(cursor, group) if cursor.postgres else [
                    cursor.execute_many(INSERT, rows) for rows, _ in group]
                last = self._last(cursor)
                record = self._copied(group, counts, before, last)
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
        marks = ",".join("?" * len(event_ids))
        with self.database.transaction(write=True) as cursor:
            self._begin(cursor)
            known = {row[0] for row in cursor.execute(
                f"SELECT event_id FROM tally_usage WHERE tenant_id = ? AND customer = ? AND kind = 'event' "
                f"AND event_id IN ({marks})", (tenant_id, customer, *event_ids)).all()}
            ordered = [event_id for event_id in event_ids if event_id in known]
            voided = cursor.execute(
                f"INSERT INTO tally_usage ({COLUMNS}, kind, actor) SELECT {COLUMNS.replace('recorded_us', '?')}, "
                f"'void', ? FROM tally_usage WHERE tenant_id = ? AND customer = ? AND kind = 'event' "
                f"AND event_id IN ({','.join('?' * len(ordered))}) ORDER BY position {CONFLICT}",
                (microseconds(voided_at), actor, tenant_id, customer, *ordered),
            ).rowcount if ordered else 0
            last = self._last(cursor) if voided else 0
        if voided:
            self._published(last)
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
        """Up to `limit` entries after position `after`, in log order."""
        with self.database.transaction() as cursor:
            rows = cursor.execute(f"SELECT {ENTRY} FROM tally_usage WHERE position > ? ORDER BY position LIMIT ?",
                                  (after, limit)).all()
        return [Entry(*row) for row in rows]

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


def _lock(cursor: Cursor) -> None:
    if cursor.postgres:  # SQLite's BEGIN IMMEDIATE already admits one writer at a time
        cursor.execute("LOCK TABLE tally_usage IN EXCLUSIVE MODE")


def _insert_copy(cursor: Cursor, group: list[tuple[list[Row], Any]]) -> list[int]:
    """PostgreSQL: COPY the whole group into a staging table, then insert batch by batch (so each
    batch's count of new events is its own, and a batch wins over a later one in the group)."""
    raw = cursor.raw
    raw.execute(STAGE)
    with raw.copy(f"COPY tally_usage_stage (batch, seq, {COLUMNS}) FROM STDIN") as copy:
        for batch, (rows, _) in enumerate(group):
            for seq, row in enumerate(rows):
                copy.write_row((batch, seq, *row))
    counts = []
    for batch in range(len(group)):
        raw.execute(f"INSERT INTO tally_usage ({COLUMNS}) SELECT {COLUMNS} FROM tally_usage_stage "
                    f"WHERE batch = %s ORDER BY seq {CONFLICT}", (batch,))
        counts.append(raw.rowcount)
    return counts

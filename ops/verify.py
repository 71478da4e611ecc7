"""`tally audit verify`: derive everything derived again, apart, and report each difference.

1. The read models (documents, audit trail, usage readings) are rebuilt from the logs into a scratch
   SQLite store, up to the positions the live models have applied, and compared row by row (in key
   order, a batch at a time: memory stays flat however big the models are). A row the live model
   changed after the check began is not compared, nor a reading a later void took out: the check
   runs on a live store.
2. Every snapshot in the store is compared with its aggregate folded from its events alone.
3. Every finalized invoice is computed again from the events recorded by the moment it was
   finalized, and compared byte for byte with what was recorded.
4. Every hour usage reports keep (projections/usage_hours.py) is computed again from the usage read
   model's events in it (the read model itself checked in 1) and compared.

A difference names the model, the row's key and what differs. `tally replay --from-scratch`
rebuilds a read model; `tally replay --model snapshots` takes the snapshots again.
"""

import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from eventsourcing.utils import get_topic

from api.ledger import Ledger
from domain.billing import IssuedInvoice
from domain.money import encode_hook
from projections import audit, documents, usage_hours, usage_readings
from projections.drivers.inprocess import NAME as DOCUMENTS
from projections.drivers.inprocess import DocumentModel, Runner, UsageRunner
from projections.store import SCHEMA, Database, positions

PAGE = 1_000
_encode = msgspec.json.Encoder(enc_hook=encode_hook).encode
Progress = Callable[[str, int, int], None]  # step, done, of


@dataclass(frozen=True)
class Difference:
    model: str
    key: str
    detail: str


@dataclass(frozen=True)
class Table:
    model: str  # its position's name
    name: str
    key: tuple[str, ...]
    text_key: tuple[bool, ...]  # which key columns are text (ordered byte-wise on both stores)
    columns: tuple[str, ...]
    position: str  # the column of the position that last wrote the row


TABLES = (
    Table(DOCUMENTS, "tally_documents", ("collection", "id"), (True, True),
          ("tenant_id", "code", "parent", "position", "body"), "position"),
    Table(audit.NAME, "tally_streams", ("stream_id",), (True,), ("tenant_id", "kind", "customer", "position"),
          "position"),
    Table(audit.NAME, "tally_audit", ("tenant_id", "position"), (True, False), ("stream_id", "occurred_us"),
          "position"),
    Table(usage_readings.IN_PROCESS, "tally_usage_readings",
          ("tenant_id", "customer", "event_name", "hour_us", "position"), (True, True, True, False, False),
          ("timestamp_us", "event_id", "properties"), "position"),
)


def verify(ledger: Ledger, progress: Progress = lambda step, done, of: None) -> Iterator[Difference]:
    """Every difference between what is derived and what deriving it again gives."""
    ledger.runner.catch_up()
    if not ledger.distributed:
        ledger.usage_runner.catch_up()
    bounds = _bounds(ledger)
    with tempfile.TemporaryDirectory(prefix="tally-verify-") as folder:
        scratch = Database(f"sqlite:///{Path(folder) / 'scratch.sqlite'}", durable=False)
        try:
            scratch.migrate(SCHEMA + usage_readings.SCHEMA + audit.SCHEMA)
            documents.migrate(scratch)
            _rebuild(ledger, scratch, bounds, progress)
            for table in TABLES:
                yield from _compare(table, ledger.database, scratch, bounds[table.model], ledger.usage.database)
        finally:
            scratch.close()
    yield from _kept_hours(ledger)
    yield from _snapshots(ledger, progress)
    yield from _invoices(ledger, progress)


def _bounds(ledger: Ledger) -> dict[str, int]:
    """The position each live model has applied (the usage model: its lowest partition's, distributed)."""
    usage = [usage_readings.position_name(p) for p in range(usage_readings.PARTITIONS)] if ledger.distributed else [
        usage_readings.IN_PROCESS]
    documents_at, audit_at, *usage_at = positions(ledger.database, [DOCUMENTS, audit.NAME, *usage])
    return {DOCUMENTS: documents_at, audit.NAME: audit_at, usage_readings.IN_PROCESS: min(usage_at)}


def _rebuild(ledger: Ledger, scratch: Database, bounds: dict[str, int], progress: Progress) -> None:
    store_last = min(bounds[DOCUMENTS], bounds[audit.NAME])
    runner = Runner(ledger.tenants.recorder, ledger.tenants.mapper, scratch, (DocumentModel(), audit.AuditTrail()))
    runner.catch_up(lambda position: progress("store", position, store_last), until=store_last)
    usage_last = bounds[usage_readings.IN_PROCESS]
    UsageRunner(ledger.usage, scratch).catch_up(lambda position: progress("usage", position, usage_last),
                                                until=usage_last)


def _compare(table: Table, live: Database, scratch: Database, bound: int,
             live_usage: Database) -> Iterator[Difference]:
    """The rows that differ, merging both sides in key order."""
    columns = (*table.key, *table.columns)
    order = ", ".join(f'{name} COLLATE "C"' if text and live.postgres else name
                      for name, text in zip(table.key, table.text_key, strict=True))
    statement = f"SELECT {', '.join(columns)} FROM {table.name} ORDER BY {order}"  # noqa: S608 (names of ours)
    width = len(table.key)
    theirs = iter(scratch.stream(f"SELECT {', '.join(columns)} FROM {table.name} ORDER BY {', '.join(table.key)}"))
    ours = iter(live.stream(statement))
    mine, fresh = next(ours, None), next(theirs, None)
    while mine is not None or fresh is not None:
        if fresh is None or (mine is not None and tuple(mine[:width]) < tuple(fresh[:width])):
            if not _later(table, columns, mine, bound):
                yield Difference(table.model, _key(table, mine), f"{table.name}: a row the logs do not give")
            mine = next(ours, None)
        elif mine is None or tuple(fresh[:width]) < tuple(mine[:width]):
            reading = dict(zip(columns, fresh, strict=True)) if table.name == "tally_usage_readings" else None
            if not (reading and _voided_since(live_usage, reading, bound)):
                yield Difference(table.model, _key(table, fresh), f"{table.name}: missing (the logs give it)")
            fresh = next(theirs, None)
        else:
            if tuple(mine) != tuple(fresh) and not _later(table, columns, mine, bound):
                changed = [_what_differs(name, a, b) for name, a, b in zip(columns, mine, fresh, strict=True) if a != b]
                yield Difference(table.model, _key(table, mine), f"{table.name}: {'; '.join(changed)}")
            mine, fresh = next(ours, None), next(theirs, None)


def _what_differs(name: str, live: Any, derived: Any) -> str:
    """`name` is X where the logs give Y; for a JSON body, each field that differs."""
    if name == "body":
        mine, theirs = msgspec.json.decode(live), msgspec.json.decode(derived)
        if isinstance(mine, dict) and isinstance(theirs, dict):
            fields = [key for key in {**theirs, **mine} if mine.get(key) != theirs.get(key)]
            return "; ".join(f"body.{key} is {_short(mine.get(key))} where the logs give {_short(theirs.get(key))}"
                             for key in fields)
    return f"{name} is {_short(live)} where the logs give {_short(derived)}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else f"{text[:200]}…"


def _voided_since(usage: Database, row: dict[str, Any], bound: int) -> bool:
    """A reading (by column) the live model dropped for a void logged after the check began (not compared)."""
    return bool(usage.query("SELECT 1 FROM tally_usage WHERE kind = 'void' AND position > ? AND tenant_id = ? "
                            "AND customer = ? AND event_id = ? LIMIT 1",
                            (bound, row["tenant_id"], row["customer"], row["event_id"])))


def _later(table: Table, columns: tuple[str, ...], row: Any, bound: int) -> bool:
    """Written by a position after the check began (not compared)."""
    return bool(table.position) and int(row[columns.index(table.position)]) > bound


def _key(table: Table, row: Any) -> str:
    return "/".join(str(value) for value in row[:len(table.key)])


def _kept_hours(ledger: Ledger) -> Iterator[Difference]:
    """Each hour usage reports keep against the read model's events in it (checked against the logs above)."""
    meters = {(tenant_id, usage_hours.signature(spec)): spec for tenant_id, spec in ledger.meters()}
    for key, detail in usage_hours.differences(ledger.database, lambda tenant_id, code: meters.get((tenant_id, code))):
        yield Difference("usage_hours", key, f"tally_usage_hours: {detail}")


def _snapshots(ledger: Ledger, progress: Progress) -> Iterator[Difference]:
    """Each snapshot against its aggregate folded from its events alone."""
    application = ledger.wallets  # every application reads the one store's snapshots
    for done, snapshot in enumerate(application.snapshots_stored(), 1):
        replayed = application.replayed(snapshot.originator_id, snapshot.originator_version)
        if replayed is None or application.snapshot_state(snapshot) != application.snapshot_state(
                type(replayed).Snapshot.take(replayed)):
            yield Difference("snapshots", f"{snapshot.originator_id}/{snapshot.originator_version}",
                             f"the snapshot of {snapshot.topic.rpartition(':')[2]} at version "
                             f"{snapshot.originator_version} is not what its events give")
        progress("snapshots", done, 0)


def _invoices(ledger: Ledger, progress: Progress) -> Iterator[Difference]:
    """Each finalized invoice computed again, byte for byte."""
    recorder, topic, after, done = ledger.tenants.recorder, get_topic(IssuedInvoice.Finalized), 0, 0
    while True:
        found = recorder.select_notifications(start=after + 1, limit=PAGE, topics=[topic])
        for notification in found:
            recorded, again = ledger.recomputed(notification.originator_id)  # type: ignore[misc]
            if _encode(recorded) != _encode(again):
                yield Difference("invoices", f"{notification.originator_id}",
                                 f"invoice {recorded.number}: recorded {_encode(recorded)[:300]!r}, computed "
                                 f"again {_encode(again)[:300]!r}")
            done += 1
            progress("invoices", done, 0)
        if len(found) < PAGE:
            return
        after = found[-1].id

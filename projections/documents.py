"""Reading and writing documents: one JSON body per aggregate, indexed by tenant, code and parent.

Queries answer the stored JSON bytes as they are: a read is a look-up, never a re-encoding.
"""

import threading
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from domain.money import decode_hook, encode_hook
from projections.store import Cursor, Database, lock_position, positions, save_position
from projections.usage_log import microseconds
from projections.views import VIEW_TYPES, Document

_encoder = msgspec.json.Encoder(enc_hook=encode_hook)
_decoders = {name: msgspec.json.Decoder(type_, dec_hook=decode_hook) for name, type_ in VIEW_TYPES.items()}


def load(cursor: Cursor, collection: str, document_id: str) -> Document | None:
    row = cursor.execute(
        "SELECT tenant_id, code, parent, body FROM tally_documents WHERE collection = ? AND id = ?",
        (collection, document_id),
    ).one()
    if row is None:
        return None
    tenant_id, code, parent, body = row
    return Document(tenant_id, code, parent, _decoders[collection].decode(body))


def save_many(cursor: Cursor, changed: Iterable[tuple[str, str, Document, int]]) -> None:
    """Write each (collection, id, document, position of its first event): a new row, or a new body."""
    changed = list(changed)
    cursor.execute_many(
        "INSERT INTO tally_documents (collection, id, tenant_id, code, parent, position, body) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (collection, id) DO UPDATE "
        "SET code = excluded.code, parent = excluded.parent, body = excluded.body",
        [(collection, document_id, document.tenant_id, document.code, document.parent, position,
          _encoder.encode(document.view).decode()) for collection, document_id, document, position in changed])
    closings: dict[str, set[str]] = {}  # the customers, by tenant, whose closing invoices changed
    for collection, _, document, _ in changed:
        if collection == "invoices" and document.view.kind == "closing" and document.view.status != "draft":
            closings.setdefault(document.tenant_id, set()).add(document.parent)
    for tenant_id, customers in closings.items():
        _close(cursor, tenant_id, customers)


# Each customer's latest closed period: its finalized (or paid) closing invoice of the latest period, kept with
# the documents (ingestion reads it for every batch: from each customer's invoices, a batch of a thousand
# customers with a year of invoices took 72-96 ms)
CLOSED_PERIODS = """CREATE TABLE IF NOT EXISTS tally_closed_periods (
        tenant_id TEXT NOT NULL, customer TEXT NOT NULL, period_start_us BIGINT NOT NULL,
        period_end_us BIGINT NOT NULL, number TEXT NOT NULL, PRIMARY KEY (tenant_id, customer))"""
CLOSED = ("finalized", "paid")
# a count of the changes to the closed periods (in tally_positions), for the processes that keep them in memory
CLOSED_CHANGES = "closed_periods"
CLOSED_KEPT = 100_000  # customers' closed periods a process keeps in memory


def migrate(database: Database) -> None:
    """Create the closed periods, and fill them from the invoices when they are new (a store from before
    2026-11-26). One transaction."""
    with database.transaction(write=True) as cursor:
        new = not cursor.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND "
            "table_name = 'tally_closed_periods'" if cursor.postgres else
            "SELECT 1 FROM sqlite_master WHERE name = 'tally_closed_periods'").all()
        cursor.create(CLOSED_PERIODS)
        if new:
            invoiced: dict[str, set[str]] = {}
            for tenant_id, customer in cursor.execute(
                    "SELECT DISTINCT tenant_id, parent FROM tally_documents WHERE collection = 'invoices'").all():
                invoiced.setdefault(tenant_id, set()).add(customer)
            for tenant_id, customers in invoiced.items():
                _close(cursor, tenant_id, customers)


def _close(cursor: Cursor, tenant_id: str, customers: set[str]) -> None:
    """Set these customers' latest closed periods from their invoices (a closed one voided: the one before)."""
    latest: dict[str, tuple[int, int, str]] = {}
    for chunk in _chunks(sorted(customers)):
        for (body,) in cursor.execute(
                f"SELECT body FROM tally_documents WHERE collection = 'invoices' AND tenant_id = ? AND parent IN "
                f"({','.join('?' * len(chunk))})", (tenant_id, *chunk)).all():
            invoice = _decoders["invoices"].decode(body)
            if invoice.kind == "closing" and invoice.status in CLOSED:
                period = (microseconds(invoice.period_start), microseconds(invoice.period_end), invoice.number or "")
                latest[invoice.customer] = max(latest.get(invoice.customer, period), period)
        cursor.execute(f"DELETE FROM tally_closed_periods WHERE tenant_id = ? AND customer IN "
                       f"({','.join('?' * len(chunk))})", (tenant_id, *chunk))
    cursor.execute_many("INSERT INTO tally_closed_periods (tenant_id, customer, period_start_us, period_end_us, "
                        "number) VALUES (?, ?, ?, ?, ?)",
                        [(tenant_id, customer, *period) for customer, period in latest.items()])
    save_position(cursor, CLOSED_CHANGES, lock_position(cursor, CLOSED_CHANGES) + 1)


def _chunks(items: list[str], size: int = 1_000) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Documents:
    """The query side: documents of one tenant, by code, by id, or a page in creation order."""

    def __init__(self, database: Database) -> None:
        self.database = database
        # each customer's closed period (None: none) as of `_changes` changes, kept: every usage batch reads
        # its customers' (measured, 1,000 customers each with a year of invoices: ingest at 75,010 events/s
        # reading them from the table for each batch)
        self._closed: dict[tuple[str, str], tuple[int, int, str] | None] = {}
        self._changes = -1
        self._lock = threading.Lock()

    def by_code(self, collection: str, tenant_id: str, code: str) -> bytes | None:
        return self._one(
            "SELECT body FROM tally_documents WHERE collection = ? AND tenant_id = ? AND code = ?",
            (collection, tenant_id, code),
        )

    def by_id(self, collection: str, tenant_id: str, document_id: str) -> bytes | None:
        return self._one(
            "SELECT body FROM tally_documents WHERE collection = ? AND tenant_id = ? AND id = ?",
            (collection, tenant_id, document_id),
        )

    def credential(self, secret_hash: str) -> tuple[str, dict[str, Any]] | None:
        """The tenant and key document of an API key's hash, across tenants (authentication)."""
        with self.database.transaction() as cursor:
            row = cursor.execute(
                "SELECT tenant_id, body FROM tally_documents WHERE collection = 'api_keys' AND code = ?",
                (secret_hash,),
            ).one()
        return None if row is None else (row[0], msgspec.json.decode(row[1]))

    def page(
        self, collection: str, tenant_id: str, limit: int, starting_after: str | None = None,
        parent: str | None = None, key: str = "code", status: str | None = None,
    ) -> tuple[list[bytes], bool] | None:
        """Up to `limit` bodies in creation order after the document whose `key` is starting_after.

        None when starting_after names no document of this tenant (a 404 for the caller)."""
        assert 1 <= limit <= 100, limit
        assert key in ("code", "id"), key
        sql = "SELECT body FROM tally_documents WHERE collection = ? AND tenant_id = ?"
        params: list[Any] = [collection, tenant_id]
        if parent is not None:
            sql, params = sql + " AND parent = ?", [*params, parent]
        if status is not None:
            sql, params = sql + f" AND {self._status()} = ?", [*params, status]
        with self.database.transaction() as cursor:
            if starting_after is not None:
                row = cursor.execute(
                    f"SELECT position, parent FROM tally_documents WHERE collection = ? AND tenant_id = ? AND {key} = ?",
                    (collection, tenant_id, starting_after),
                ).one()
                if row is not None and parent is not None and row[1] != parent:
                    row = None  # not an item of this list
                if row is None:
                    return None
                sql, params = sql + " AND position > ?", [*params, row[0]]
            rows = cursor.execute(sql + " ORDER BY position LIMIT ?", (*params, limit + 1)).all()
        bodies = [body.encode() if isinstance(body, str) else body for (body,) in rows]
        return bodies[:limit], len(bodies) > limit

    def children(self, collection: str, tenant_id: str, parents: set[str]) -> list[dict[str, Any]]:
        """The bodies of a tenant's documents whose parent is one of `parents`."""
        if not parents:
            return []
        marks = ",".join("?" * len(parents))
        with self.database.transaction() as cursor:
            rows = cursor.execute(
                f"SELECT body FROM tally_documents WHERE collection = ? AND tenant_id = ? AND parent IN ({marks})",
                (collection, tenant_id, *sorted(parents))).all()
        return [msgspec.json.decode(body) for (body,) in rows]

    def closed_periods(self, tenant_id: str, customers: set[str]) -> dict[str, tuple[int, int, str]]:
        """Each of these customers' latest closed period, if it has one: (start, end, in µs; invoice number).
        Kept in memory until the closed periods change (a count of their changes, read each time)."""
        changes = positions(self.database, [CLOSED_CHANGES])[0]
        with self._lock:
            if changes != self._changes or len(self._closed) > CLOSED_KEPT:
                self._closed, self._changes = {}, changes
            kept = {customer: self._closed.get((tenant_id, customer), False) for customer in customers}
        missing = sorted(customer for customer, period in kept.items() if period is False)
        if missing:
            read = dict.fromkeys(missing)
            with self.database.transaction() as cursor:
                for chunk in _chunks(missing):
                    read.update((customer, (start, end, number)) for customer, start, end, number in cursor.execute(
                        "SELECT customer, period_start_us, period_end_us, number FROM tally_closed_periods WHERE "
                        f"tenant_id = ? AND customer IN ({','.join('?' * len(chunk))})", (tenant_id, *chunk)).all())
            kept.update(read)
            with self._lock:
                if self._changes == changes:  # (else read before a change that dropped what was kept: not kept)
                    self._closed.update(((tenant_id, customer), period) for customer, period in read.items())
        return {customer: period for customer, period in kept.items() if period}

    def statuses(self, collection: str, document_ids: list[str]) -> dict[str, str]:
        """The `status` field of each of these documents that exists, by id."""
        if not document_ids:
            return {}
        with self.database.transaction() as cursor:
            rows = cursor.execute(f"SELECT id, {self._status()} FROM tally_documents WHERE collection = ? AND id IN "
                                  f"({','.join('?' * len(document_ids))})", (collection, *document_ids)).all()
        return dict(rows)

    def tenants_with(self, collection: str) -> set[str]:
        """The tenants that have any document of the collection."""
        return {tenant for (tenant,) in self.database.query(
            "SELECT DISTINCT tenant_id FROM tally_documents WHERE collection = ?", (collection,))}

    def each(self, collection: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every document of a collection, all tenants, in creation order: (tenant id, body)."""
        after = -1
        while True:
            with self.database.transaction() as cursor:
                rows = cursor.execute(
                    "SELECT position, tenant_id, body FROM tally_documents WHERE collection = ? AND position > ? "
                    "ORDER BY position LIMIT 500", (collection, after)).all()
            if not rows:
                return
            for position, tenant_id, body in rows:
                yield tenant_id, msgspec.json.decode(body)
            after = rows[-1][0]

    def _status(self) -> str:
        """The body's own `status` field, read by the database's JSON functions."""
        return "(body::jsonb ->> 'status')" if self.database.postgres else "json_extract(body, '$.status')"

    def _one(self, sql: str, params: tuple) -> bytes | None:
        with self.database.transaction() as cursor:
            row = cursor.execute(sql, params).one()
        if row is None:
            return None
        return row[0].encode() if isinstance(row[0], str) else row[0]


def first_tenant(database: Database) -> str | None:
    """The tenant opened first: the one `tally serve` bootstraps and TALLY_API_KEY belongs to."""
    with database.transaction() as cursor:
        row = cursor.execute(
            "SELECT tenant_id FROM tally_documents WHERE collection = 'tenants' ORDER BY position LIMIT 1"
        ).one()
    return None if row is None else row[0]

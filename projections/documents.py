"""Reading and writing documents: one JSON body per aggregate, indexed by tenant, code and parent.

Queries answer the stored JSON bytes as they are: a read is a look-up, never a re-encoding.
"""

from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from domain.money import decode_hook, encode_hook
from projections.store import Cursor, Database
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
    cursor.execute_many(
        "INSERT INTO tally_documents (collection, id, tenant_id, code, parent, position, body) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (collection, id) DO UPDATE "
        "SET code = excluded.code, parent = excluded.parent, body = excluded.body",
        [(collection, document_id, document.tenant_id, document.code, document.parent, position,
          _encoder.encode(document.view).decode()) for collection, document_id, document, position in changed])


class Documents:
    """The query side: documents of one tenant, by code, by id, or a page in creation order."""

    def __init__(self, database: Database) -> None:
        self.database = database

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

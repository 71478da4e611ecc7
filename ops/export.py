"""`tally export`: invoices, usage or wallet transactions to CSV or Parquet, for finance's own tools.

- `invoices`: one row per issued invoice (finalized, paid or void; drafts are not issued yet) whose
  period starts in [--from, --to), with its sums, payments and credits.
- `usage`: one row per usage event (voided ones left out) whose event time is in [--from, --to).
- `wallet-transactions`: one row per wallet transaction (grant, debit, expiry, top-up, reversal)
  made in [--from, --to), with the balance after it.

Amounts are exact: decimal strings in CSV, `decimal128(38, 18)` in Parquet (never float). A value
that would not fit exactly (more than 18 decimal places) stops the export with its row named, rather
than being rounded. Times are UTC (RFC 3339 in CSV, microsecond timestamps in Parquet). Rows are read
and written a batch at a time: memory stays flat however big the export.
"""

import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import msgspec

from api.ledger import Ledger
from projections.usage_log import microseconds, moment_of
from projections.views import private_id

WHAT = ("invoices", "usage", "wallet-transactions")
FORMATS = ("csv", "parquet")
BATCH = 10_000
SCALE = 18
Columns = tuple[tuple[str, str], ...]  # (name, type: string | decimal | time | int)

INVOICE_COLUMNS: Columns = (
    ("tenant_id", "string"), ("id", "string"), ("number", "string"), ("customer", "string"), ("kind", "string"),
    ("status", "string"), ("subscription", "string"), ("wallet", "string"), ("currency", "string"),
    ("period_start", "time"), ("period_end", "time"), ("subtotal", "decimal"), ("commitment_true_up", "decimal"),
    ("tax_rate", "decimal"), ("tax", "decimal"), ("total", "decimal"), ("credits_applied", "decimal"),
    ("amount_due", "decimal"), ("paid", "decimal"), ("credited", "decimal"))
USAGE_COLUMNS: Columns = (
    ("tenant_id", "string"), ("customer", "string"), ("event_id", "string"), ("event_name", "string"),
    ("timestamp", "time"), ("recorded_at", "time"), ("position", "int"), ("properties", "string"))
TRANSACTION_COLUMNS: Columns = (
    ("tenant_id", "string"), ("wallet_id", "string"), ("customer", "string"), ("id", "string"), ("type", "string"),
    ("amount", "decimal"), ("balance", "decimal"), ("grant_id", "string"), ("kind", "string"),
    ("expires_at", "time"), ("usage_through", "int"), ("created_at", "time"), ("created_by", "string"))


class ExportError(Exception):
    pass


def export(ledger: Ledger, what: str, output: Path, fmt: str, start: datetime | None, end: datetime | None,
           tenant: UUID | None = None) -> int:
    """Write the rows to `output`; how many."""
    columns, rows = {
        "invoices": (INVOICE_COLUMNS, _invoices), "usage": (USAGE_COLUMNS, _usage),
        "wallet-transactions": (TRANSACTION_COLUMNS, _transactions)}[what]
    found = rows(ledger, start or datetime.min.replace(tzinfo=UTC), end or datetime.max.replace(tzinfo=UTC),
                 str(tenant) if tenant else None)
    return (_parquet if fmt == "parquet" else _csv)(output, columns, found)


def _invoices(ledger: Ledger, start: datetime, end: datetime, tenant: str | None) -> Iterator[tuple]:
    for tenant_id, body in _documents(ledger, "invoices", tenant):
        summary = msgspec.json.decode(body)
        period_start = datetime.fromisoformat(summary["period_start"])
        if summary["status"] == "draft" or not start <= period_start < end:
            continue
        found = ledger.issued_invoice(UUID(tenant_id), private_id("invoices", summary["id"]))  # type: ignore[arg-type]
        yield (tenant_id, found.id, found.number, found.customer, summary["kind"], found.status, found.subscription,
               found.wallet, found.currency, found.period_start, found.period_end, found.subtotal,
               found.commitment_true_up, found.tax_rate, found.tax, found.total, found.credits_applied,
               found.amount_due, found.paid, found.credited)


def _usage(ledger: Ledger, start: datetime, end: datetime, tenant: str | None) -> Iterator[tuple]:
    where = " AND u.tenant_id = ?" if tenant else ""
    rows = ledger.usage.database.stream(
        "SELECT u.tenant_id, u.customer, u.event_id, u.event_name, u.timestamp_us, u.recorded_us, u.position, "
        "u.properties FROM tally_usage u WHERE u.kind = 'event' AND u.timestamp_us >= ? AND u.timestamp_us < ?"
        f"{where} AND NOT EXISTS (SELECT 1 FROM tally_usage v WHERE v.kind = 'void' AND v.tenant_id = u.tenant_id "
        "AND v.customer = u.customer AND v.event_id = u.event_id) ORDER BY u.position",
        [microseconds(start), microseconds(end), *([tenant] * bool(tenant))])
    for tenant_id, customer, event_id, name, timestamp_us, recorded_us, position, properties in rows:
        yield (tenant_id, customer, event_id, name, moment_of(timestamp_us), moment_of(recorded_us), position,
               properties if isinstance(properties, str) else bytes(properties).decode())


def _transactions(ledger: Ledger, start: datetime, end: datetime, tenant: str | None) -> Iterator[tuple]:
    for tenant_id, body in _documents(ledger, "wallets", tenant):
        wallet = msgspec.json.decode(body)
        wallet_id = private_id("wallets", wallet["id"])
        after = 0
        while True:
            page, more = ledger.wallet_transactions(UUID(tenant_id), wallet_id, after, 100)  # type: ignore[arg-type]
            for found in page:
                if start <= found.created_at < end:
                    yield (tenant_id, wallet["id"], wallet["customer"], found.id, found.type, found.amount,
                           found.balance, found.grant_id, found.kind, found.expires_at, found.usage_through,
                           found.created_at, found.created_by)
            if not more:
                break
            after = int(page[-1].id.rpartition("_")[2])


def _documents(ledger: Ledger, collection: str, tenant: str | None) -> Iterator[tuple[str, str]]:
    where = " AND tenant_id = ?" if tenant else ""
    yield from ledger.database.stream(
        f"SELECT tenant_id, body FROM tally_documents WHERE collection = ?{where} ORDER BY tenant_id, position",
        [collection, *([tenant] * bool(tenant))])


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def _csv(output: Path, columns: Columns, rows: Iterator[tuple]) -> int:
    count = 0
    with output.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([name for name, _ in columns])
        for row in rows:
            writer.writerow([_text(value) for value in row])
            count += 1
    return count


def _parquet(output: Path, columns: Columns, rows: Iterator[tuple]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"string": pa.string(), "decimal": pa.decimal128(38, SCALE), "time": pa.timestamp("us", tz="UTC"),
             "int": pa.int64()}
    schema = pa.schema([(name, types[kind]) for name, kind in columns])
    count = 0
    with pq.ParquetWriter(output, schema) as writer:
        batch: list[tuple] = []
        for row in rows:
            batch.append(row)
            if len(batch) == BATCH:
                writer.write_batch(_batch(pa, schema, columns, batch, count))
                count, batch = count + len(batch), []
        if batch or count == 0:
            writer.write_batch(_batch(pa, schema, columns, batch, count))
            count += len(batch)
    return count


def _batch(pa: Any, schema: Any, columns: Columns, rows: list[tuple], first: int) -> Any:
    arrays = []
    for index, (name, kind) in enumerate(columns):
        values = [row[index] for row in rows]
        if kind == "decimal":
            values = _exact(name, values, first)
        arrays.append(pa.array(values, type=schema.field(name).type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _exact(name: str, values: list[Any], first: int) -> list[Decimal | None]:
    """The column's amounts as plain Decimals; ExportError naming the first that decimal128(38, 18)
    cannot hold exactly."""
    for n, value in enumerate(values):
        if value is not None and -Decimal(value).as_tuple().exponent > SCALE:  # type: ignore[operator]
            raise ExportError(f"row {first + n + 1}, {name}: {_text(value)} has more than {SCALE} decimal places "
                              "and cannot be written exactly as decimal128(38, 18)")
    return [None if value is None else Decimal(value) for value in values]

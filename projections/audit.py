"""The audit trail: which tenant and stream every domain event belongs to, and the envelope the
event is shown in (`GET /v1/audit/events`) and published in (Kafka `tally.ledger`).

The store's events carry their tenant only on the event that created their aggregate, so this read
model keeps two tables, filled in notification order by the in-process runner:
- `tally_streams`: each aggregate (stream) with its tenant, kind, customer (if it has one) and the
  position of its first event;
- `tally_audit`: each event's position under its tenant, with its stream and time, so a tenant's
  events are read a page at a time by position, never by scanning other tenants'.

The envelope is `{id, type, schema_version, tenant, aggregate_id, aggregate_version, position,
occurred_at, actor, idempotency_key, customer, data}` (API.md's, with the aggregate's version, the
request's Idempotency-Key and the stream's customer added). `id` is derived from the aggregate and
version, so a message published twice has one id and consumers de-duplicate by it. `data` is the
event's own fields, amounts as decimal strings. Each type's `data` has a JSON Schema generated from
the event class (`schemas`), with a version: docs/topics.md is generated from them
(`python -m projections.audit > docs/topics.md`) and a test keeps it current.
"""

import functools
import re
import sys
import types
import typing
import uuid
from collections.abc import Collection, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec

from domain import (
    api_key,
    billing,
    charges,
    customer,
    customer_entitlements,
    feature,
    hierarchy,
    meter,
    plan,
    plan_version,
    pricing_unit,
    subscription,
    tenant,
    wallet,
)
from domain.aggregate import Aggregate
from domain.money import Amount, decode_hook, schema_hook
from projections.store import Cursor
from projections.usage_log import microseconds

NAME = "audit"
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tally_streams (
        stream_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, kind TEXT NOT NULL, customer TEXT,
        position BIGINT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS tally_audit (
        tenant_id TEXT NOT NULL, position BIGINT NOT NULL, stream_id TEXT NOT NULL, occurred_us BIGINT NOT NULL,
        PRIMARY KEY (tenant_id, position)) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS tally_audit_stream ON tally_audit (stream_id, position)",
)
ENVELOPE_FIELDS = ("originator_id", "originator_version", "timestamp", "actor", "idempotency_key", "originator_topic")
STREAMS_KEPT = 100_000  # streams whose tenant the trail keeps in memory
NAMESPACE = UUID("6f1c1d52-3b8e-4c53-9a3e-6d2b7f0f4a11")  # of envelope ids: uuid5(aggregate id/version)
AGGREGATES: tuple[type[Aggregate], ...] = (
    tenant.Tenant, api_key.ApiKey, meter.Meter, feature.Feature, pricing_unit.PricingUnit, plan.Plan,
    plan_version.PlanVersion, customer.Customer, hierarchy.Hierarchy, customer_entitlements.CustomerEntitlements,
    subscription.Subscription, billing.IssuedInvoice, billing.IssuedCreditNote, billing.InvoiceNumbers,
    wallet.Wallet, charges.UsageCharges,
)
WITHHELD = {"secret_hash"}  # an API key's hash stays in the store: it authenticates, nobody needs to read it
VERSIONS: dict[str, int] = {}  # an event type's schema version, when not 1: raise it when `data` changes incompatibly
# The alerts `tally.alerts` carries, by the ledger event type they come from (API.md's webhook names).
ALERTS = {"wallet.balance_low": "wallet.balance_low", "wallet.top_up_landed": "wallet.topped_up",
          "customer_entitlements.exceeded": "entitlement.exceeded"}


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    type: str
    schema_version: int
    tenant: str
    aggregate_id: str
    aggregate_version: int
    position: int
    occurred_at: datetime
    actor: str
    idempotency_key: str | None
    customer: str | None
    data: dict[str, Any]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@functools.cache
def event_type(event_class: type) -> str:
    """`wallet.debited` for `Wallet.Debited`: the aggregate's name, then the event's, in snake case."""
    aggregate, _, name = event_class.__qualname__.rpartition(".")
    return f"{_snake(aggregate)}.{_snake(name)}"


def event_classes() -> list[type]:
    """Every event class an aggregate records: its nested event classes that none of its others extend
    (and its own creation event, not the `Created` every aggregate is given)."""
    found = []
    for aggregate in AGGREGATES:
        nested = [value for value in vars(aggregate).values()
                  if isinstance(value, type) and issubclass(value, Aggregate.Event)]
        leaves = [cls for cls in nested if not any(other is not cls and issubclass(other, cls) for other in nested)]
        custom_creation = sum(issubclass(cls, Aggregate.Created) for cls in nested) > 1  # `Created` unused then
        found += [cls for cls in leaves if not (custom_creation and cls.__name__ == "Created")]
    return found


@functools.cache
def data_fields(event_class: type) -> dict[str, Any]:
    """The event class's own fields (what `data` holds), with their types; never a key's secret hash."""
    return {name: hint for name, hint in typing.get_type_hints(event_class).items()
            if name not in ENVELOPE_FIELDS and name not in WITHHELD and typing.get_origin(hint) is not typing.ClassVar}


def _kind(event: Any) -> str:
    return _snake(type(event).__qualname__.rpartition(".")[0])


def _customer_of(event: Any) -> str | None:
    """The customer a new stream belongs to, if any (its first event names it)."""
    for name in ("customer", "external_id"):
        if isinstance(getattr(event, name, None), str):
            return getattr(event, name)
    spec_customer = getattr(getattr(event, "spec", None), "customer", None)
    return spec_customer if isinstance(spec_customer, str) else None


class AuditTrail:
    """The runner's model: each event's tenant and stream (see the module's docstring)."""

    name = NAME
    tables = ("tally_streams", "tally_audit")

    def __init__(self) -> None:
        self._streams: dict[str, tuple[str, str | None]] = {}  # stream -> (tenant, customer): streams never move
        self._new: list[tuple] = []  # a batch's streams and events, written at `flush`
        self._rows: list[tuple] = []

    def apply(self, cursor: Cursor, position: int, event: Any) -> None:
        stream = str(event.originator_id)
        if event.originator_version == 1:
            tenant_id = str(getattr(event, "tenant_id", None) or stream)  # a tenant's own stream is its id
            customer_ = _customer_of(event)
            self._new.append((stream, tenant_id, _kind(event), customer_, position))
            self._streams[stream] = (tenant_id, customer_)
        else:
            tenant_id = self.stream(cursor, stream)[0]
        self._rows.append((tenant_id, position, stream, microseconds(event.timestamp)))

    def flush(self, cursor: Cursor) -> None:
        if self._new:
            cursor.execute_many("INSERT INTO tally_streams (stream_id, tenant_id, kind, customer, position) "
                                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (stream_id) DO NOTHING", self._new)
        if self._rows:
            cursor.execute_many("INSERT INTO tally_audit (tenant_id, position, stream_id, occurred_us) "
                                "VALUES (?, ?, ?, ?) ON CONFLICT (tenant_id, position) DO NOTHING", self._rows)
        self.discard()
        if len(self._streams) >= STREAMS_KEPT:  # between batches: a batch's new streams are all remembered
            self._streams.clear()

    def discard(self) -> None:
        self._new, self._rows = [], []

    def stream(self, cursor: Cursor, stream: str) -> tuple[str, str | None]:
        """The stream's tenant and customer."""
        found = self._streams.get(stream)
        if found is None:
            row = cursor.execute("SELECT tenant_id, customer FROM tally_streams WHERE stream_id = ?", (stream,)).one()
            if row is None:
                raise LookupError(f"event of stream {stream} before the event that created it")
            found = self._streams[stream] = (row[0], row[1])
        return found


def page(cursor: Cursor, tenant_id: str, stream: str | None, since_us: int | None, until_us: int | None,
         after: int, limit: int) -> list[tuple[int, str | None]]:
    """The tenant's events after position `after` (of one stream, if given; occurred in [since,
    until), if given), in order, at most `limit`: each one's position and its stream's customer."""
    where, params = ["a.tenant_id = ?", "a.position > ?"], [tenant_id, after]
    for clause, value in (("a.stream_id = ?", stream), ("a.occurred_us >= ?", since_us),
                          ("a.occurred_us < ?", until_us)):
        if value is not None:
            where.append(clause)
            params.append(value)
    rows = cursor.execute(
        "SELECT a.position, s.customer FROM tally_audit a JOIN tally_streams s ON s.stream_id = a.stream_id "
        f"WHERE {' AND '.join(where)} ORDER BY a.position LIMIT ?", (*params, limit)).all()  # noqa: S608
    return [(int(position), customer_) for position, customer_ in rows]


def streams(cursor: Cursor, stream_ids: Collection[str]) -> dict[str, tuple[str, str | None]]:
    """Each stream's tenant and customer."""
    if not stream_ids:
        return {}
    rows = cursor.execute(f"SELECT stream_id, tenant_id, customer FROM tally_streams WHERE stream_id IN "  # noqa: S608
                          f"({','.join('?' * len(stream_ids))})", list(stream_ids)).all()
    return {stream: (tenant_id, customer_) for stream, tenant_id, customer_ in rows}


def envelope(position: int, event: Any, tenant_id: str, customer_: str | None) -> Envelope:
    kind = event_type(type(event))
    return Envelope(
        id=str(uuid.uuid5(NAMESPACE, f"{event.originator_id}/{event.originator_version}")), type=kind,
        schema_version=VERSIONS.get(kind, 1), tenant=tenant_id, aggregate_id=str(event.originator_id),
        aggregate_version=event.originator_version, position=position, occurred_at=event.timestamp,
        actor=event.actor, idempotency_key=event.idempotency_key, customer=customer_,
        data={name: _plain(getattr(event, name)) for name in data_fields(type(event))})


def _plain(value: Any) -> Any:
    """JSON values: decimals as plain decimal strings ("0.000000000002", never "2E-12")."""
    return _decimals(msgspec.to_builtins(value, builtin_types=(Decimal,), enc_hook=_as_decimal))


def _as_decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal):  # an Amount
        return Decimal(value)
    raise NotImplementedError(type(value))


def _decimals(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, dict):
        return {key: _decimals(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decimals(item) for item in value]
    return value


# The schemas: what each type's `data` holds, as JSON Schema, from the event classes' own annotations.

def _wire(hint: Any) -> Any:
    """The type a field has on the wire: amounts are decimal strings."""
    if hint is Decimal:
        return Amount
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.Union[tuple(_wire(arg) for arg in args)]  # noqa: UP007
    return hint


@functools.cache
def data_type(event_class: type) -> type[msgspec.Struct]:
    """A msgspec type of the event's `data`: decoding a published `data` with it checks it."""
    return msgspec.defstruct(event_type(event_class).replace(".", "_"),
                             [(name, _wire(hint)) for name, hint in data_fields(event_class).items()],
                             forbid_unknown_fields=True, kw_only=True)


@functools.cache
def _by_type() -> dict[str, type]:
    return {event_type(cls): cls for cls in event_classes()}


def check(message: bytes) -> Envelope:
    """Decode a published envelope and check its `data` against its type's schema (ValueError if not)."""
    found = msgspec.json.decode(message, type=Envelope)
    classes = _by_type()
    if found.type not in classes and found.type not in ALERTS.values():
        raise ValueError(f"unknown type {found.type!r}")
    source = found.type if found.type in classes else next(k for k, v in ALERTS.items() if v == found.type)
    if found.schema_version != VERSIONS.get(source, 1):
        raise ValueError(f"{found.type}: schema_version {found.schema_version}, documented {VERSIONS.get(source, 1)}")
    try:
        msgspec.convert(found.data, data_type(classes[source]), dec_hook=decode_hook, strict=False)
    except msgspec.ValidationError as error:
        raise ValueError(f"{found.type}: {error}") from None
    return found


def schemas() -> Iterator[tuple[str, int, dict[str, Any]]]:
    """Each event type, its schema version, and its `data`'s JSON Schema."""
    for cls in sorted(event_classes(), key=event_type):
        kind = event_type(cls)
        (schema,), components = msgspec.json.schema_components([data_type(cls)], schema_hook=schema_hook,
                                                                ref_template="#/$defs/{name}")
        found = components.pop(schema["$ref"].rpartition("/")[2])
        if components:
            found["$defs"] = components
        yield kind, VERSIONS.get(kind, 1), found


def topics_document() -> str:
    """docs/topics.md: every topic, and every event type with its version and schema."""
    import orjson

    lines = [DOCUMENT_HEAD]
    for kind, version, schema in schemas():
        alert = next((name for source, name in ALERTS.items() if source == kind), None)
        lines += [f"### `{kind}` (schema_version {version})", ""]
        if alert:
            lines += [f"Also on `tally.alerts` as `{alert}`.", ""]
        lines += ["```json", orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode(),
                  "```", ""]
    return "\n".join(lines)


DOCUMENT_HEAD = """# Kafka topics

Generated by `python -m projections.audit > docs/topics.md` from the event classes; a test checks
that it is current and that what the relay publishes matches it. Do not edit by hand.

| topic | key | carries |
| --- | --- | --- |
| `tally.usage` | `tenant/customer` | every usage-log entry (event or void), with its log position: see docs/usage.md |
| `tally.ledger` | the aggregate id | every domain event, in the envelope below, in store order per aggregate |
| `tally.alerts` | the aggregate id | `wallet.balance_low`, `wallet.topped_up`, `entitlement.exceeded`, enveloped |

Topics are created by `tally relay` with their partition counts before anything is produced.
Delivery is at least once: a consumer de-duplicates by `id` (the same event always has the same
`id`) and may use `position` (the store's notification position) to resume.

## The envelope

```json
{"id": "uuid", "type": "wallet.debited", "schema_version": 1, "tenant": "uuid",
 "aggregate_id": "uuid", "aggregate_version": 3, "position": 1234,
 "occurred_at": "2026-01-01T00:00:00.123456Z", "actor": "key id or system:<job>",
 "idempotency_key": "the request's, or null", "customer": "external id, or null", "data": {}}
```

Amounts in `data` are decimal strings (`"0.000000000002"`), times RFC 3339 in UTC, ids UUIDs.
`schema_version` changes when a type's `data` changes incompatibly; adding a field does not.
On `tally.alerts`, `type` is the alert's name (API.md's webhook event types).

## Event types
"""


if __name__ == "__main__":
    sys.stdout.write(topics_document())

"""The base of Tally's applications: one event store, shared by all of them.

Every application names itself "Tally", so on PostgreSQL all write to `tally_events` and on SQLite
to `stored_events`: one notification log, one order of events, read by every projection. Any of
them can therefore load any aggregate (a key issuer checks that a customer exists).
"""

from collections.abc import Collection
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import (
    IntegrityError,
    StoredEvent,
    Transcoder,
    Transcoding,
)
from eventsourcing.postgres import PostgresAggregateRecorder
from psycopg.sql import SQL, Identifier

from domain.customer import CustomerDetails
from domain.errors import NotFound
from domain.feature import FeatureSpec
from domain.invoice import Invoice
from domain.meter import MeterSpec
from domain.money import decode_hook, encode_hook
from domain.plan import PlanSpec
from domain.plan_version import PlanVersionSpec
from domain.pricing_unit import PricingUnitSpec
from domain.tenant import TenantSettings
from domain.wallet import GrantSpec, WalletSpec


class StructAsDict(Transcoding):
    """Stores a msgspec value (a meter's definition, a price) as plain JSON inside an event."""

    def __init__(self, type_: type[msgspec.Struct]) -> None:
        self.type = type_
        self.name = f"{type_.__module__}:{type_.__qualname__}"

    def encode(self, obj: msgspec.Struct) -> Any:
        return msgspec.json.decode(msgspec.json.encode(obj, enc_hook=encode_hook))  # plain JSON: decimals as strings

    def decode(self, data: Any) -> msgspec.Struct:
        return msgspec.convert(data, self.type, dec_hook=decode_hook)


# Every value stored inside an event. All applications know all of them: they share one store.
VALUE_TYPES: tuple[type[msgspec.Struct], ...] = (
    TenantSettings, MeterSpec, FeatureSpec, PricingUnitSpec, PlanSpec, PlanVersionSpec, CustomerDetails, Invoice,
    WalletSpec, GrantSpec,
)


class TallyApplication(Application):
    name = "Tally"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = "Tally"  # one store for all: eventsourcing names tables after the application

    def register_transcodings(self, transcoder: Transcoder) -> None:
        super().register_transcodings(transcoder)
        for type_ in VALUE_TYPES:
            transcoder.register(StructAsDict(type_))

    def find(self, aggregate_id: Any) -> Any:
        """The aggregate, or None when it was never created."""
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    def find_many(self, aggregate_ids: Collection[UUID]) -> dict[UUID, Any]:
        """Many aggregates in one read of the store, each replayed from its first event (for
        aggregates of short streams: a snapshot is not looked for); one never created is absent."""
        if not aggregate_ids:
            return {}
        recorder: Any = self.recorder
        table = recorder.events_table_name
        columns = "originator_id, originator_version, topic, state"
        if isinstance(recorder, PostgresAggregateRecorder):
            statement = SQL(f"SELECT {columns} FROM {{}}.{{}} WHERE originator_id = ANY(%s) "  # noqa: S608 (fixed names)
                            "ORDER BY originator_id, originator_version").format(
                Identifier(recorder.datastore.schema), Identifier(table))
            with recorder.datastore.get_connection() as connection, connection.cursor() as cursor:
                cursor.execute(statement, [list(aggregate_ids)])
                rows = cursor.fetchall()
        else:
            marks = ",".join("?" * len(aggregate_ids))
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(f"SELECT {columns} FROM {table} WHERE originator_id IN ({marks}) "  # noqa: S608
                               "ORDER BY originator_id, originator_version", [i.hex for i in aggregate_ids])
                rows = cursor.fetchall()
        found: dict[UUID, Any] = {}
        for row in rows:
            originator = row["originator_id"]
            event = self.mapper.to_domain_event(StoredEvent(
                originator_id=UUID(originator) if isinstance(originator, str) else originator,
                originator_version=row["originator_version"],
                topic=row["topic"], state=bytes(row["state"])))
            found[event.originator_id] = event.mutate(found.get(event.originator_id))
        return found

    def owned(self, kind: type, tenant_id: Any, aggregate_id: Any, noun: str) -> Any:
        """The tenant's aggregate of that kind; NotFound for another kind, or another tenant's."""
        found = self.find(aggregate_id)
        if not isinstance(found, kind) or found.tenant_id != tenant_id:
            raise NotFound(noun, str(aggregate_id))
        return found

    def as_of(self, aggregate_id: Any, moment: Any) -> Any:
        """The aggregate as it was at `moment` (its events recorded by then, replayed), or None."""
        aggregate = None
        for event in self.repository.event_store.get(aggregate_id):
            if event.timestamp > moment:
                break
            aggregate = event.mutate(aggregate)
        return aggregate

    def save_or(self, refusal: Exception, *aggregates: Any) -> None:
        """Save, or raise `refusal` when another command got there first: an aggregate with the same
        derived id was created, or one of these aggregates moved on since it was read."""
        try:
            self.save(*aggregates)
        except IntegrityError:
            raise refusal from None

"""The base of Tally's applications: one event store, shared by all of them.

Every application names itself "Tally", so on PostgreSQL all write to `tally_events` and on SQLite
to `stored_events`: one notification log, one order of events, read by every projection. Any of
them can therefore load any aggregate (a key issuer checks that a customer exists).
"""

from collections.abc import Collection, Iterator
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
from domain.customer_entitlements import OverrideSpec
from domain.errors import NotFound
from domain.feature import FeatureSpec
from domain.invoice import Invoice
from domain.meter import MeterSpec
from domain.money import decode_hook, encode_hook
from domain.plan import PlanSpec
from domain.plan_version import PlanVersionSpec
from domain.pricing_unit import PricingUnitSpec
from domain.tenant import TenantSettings
from domain.wallet import Grant, GrantSpec, TopUp, WalletSpec


class StructAsDict(Transcoding):
    """Stores a msgspec value (a meter's definition, a price) as plain JSON inside an event."""

    def __init__(self, type_: type[msgspec.Struct]) -> None:
        self.type = type_
        self.name = f"{type_.__module__}:{type_.__qualname__}"

    def encode(self, obj: msgspec.Struct) -> Any:
        return msgspec.json.decode(msgspec.json.encode(obj, enc_hook=encode_hook))  # plain JSON: decimals as strings

    def decode(self, data: Any) -> msgspec.Struct:
        return msgspec.convert(data, self.type, dec_hook=decode_hook)


class SetAsList(Transcoding):
    """Stores a set (in a snapshot: a wallet's fired alerts, a customer's limits crossed) as a sorted list;
    its tuples come back as lists, made tuples again."""

    type = set
    name = "set"

    def encode(self, obj: set) -> Any:
        return sorted(obj)

    def decode(self, data: Any) -> set:
        return {tuple(item) if isinstance(item, list) else item for item in data}


# Every value stored inside an event or a snapshot. All applications know all of them: they share one store.
VALUE_TYPES: tuple[type[msgspec.Struct], ...] = (
    TenantSettings, MeterSpec, FeatureSpec, PricingUnitSpec, PlanSpec, PlanVersionSpec, CustomerDetails, Invoice,
    WalletSpec, GrantSpec, OverrideSpec, Grant, TopUp,
)


MANY = 1_000  # aggregates `find_many` reads at a time


class TallyApplication(Application):
    name = "Tally"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.name = "Tally"  # one store for all: eventsourcing names tables after the application

    def register_transcodings(self, transcoder: Transcoder) -> None:
        super().register_transcodings(transcoder)
        for type_ in VALUE_TYPES:
            transcoder.register(StructAsDict(type_))
        transcoder.register(SetAsList())

    def find(self, aggregate_id: Any) -> Any:
        """The aggregate, or None when it was never created."""
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None

    def find_many(self, aggregate_ids: Collection[UUID]) -> dict[UUID, Any]:
        """Many aggregates in two reads of the store per thousand: the latest snapshot of each (when
        the application keeps snapshots), then the events after it. One never created is absent."""
        ids = list(dict.fromkeys(aggregate_ids))
        found: dict[UUID, Any] = {}
        for start in range(0, len(ids), MANY):
            after = dict.fromkeys(ids[start:start + MANY], 0)
            if self.snapshots is not None:
                for snapshot in self._stored(self.snapshots.recorder, self.snapshots.mapper, after, latest=True):
                    found[snapshot.originator_id] = snapshot.mutate(None)
                    after[snapshot.originator_id] = snapshot.originator_version
            for event in self._stored(self.recorder, self.mapper, after, latest=False):
                found[event.originator_id] = event.mutate(found.get(event.originator_id))
        return found

    @staticmethod
    def _stored(recorder: Any, mapper: Any, after: dict[UUID, int], latest: bool) -> Iterator[Any]:
        """The domain events (or snapshots) of these originators: above each one's version in `after`,
        in order; with `latest`, each one's last only."""
        table, columns = recorder.events_table_name, "t.originator_id, t.originator_version, t.topic, t.state"
        if isinstance(recorder, PostgresAggregateRecorder):
            where = SQL("t.originator_id = ANY(%s)" if latest else
                        "t.originator_id = w.id AND t.originator_version > w.v")
            statement = SQL(f"SELECT {'DISTINCT ON (t.originator_id) ' if latest else ''}{columns} FROM {{}}.{{}} AS t"
                            f"{'' if latest else ', unnest(%s::uuid[], %s::bigint[]) AS w(id, v)'} WHERE {{}} "
                            f"ORDER BY t.originator_id, t.originator_version{' DESC' if latest else ''}").format(
                Identifier(recorder.datastore.schema), Identifier(table), where)
            params = [list(after)] if latest else [list(after), list(after.values())]
            with recorder.datastore.get_connection() as connection, connection.cursor() as cursor:
                cursor.execute(statement, params)
                rows = cursor.fetchall()
        else:
            marks = ",".join("(?, ?)" for _ in after)
            latest_only = (f"AND t.originator_version = (SELECT MAX(originator_version) FROM {table} "
                           "WHERE originator_id = t.originator_id)" if latest else "")
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(
                    f"WITH w(id, v) AS (VALUES {marks}) SELECT {columns} FROM {table} AS t JOIN w "  # noqa: S608
                    f"ON t.originator_id = w.id AND t.originator_version > w.v {latest_only} "
                    "ORDER BY t.originator_id, t.originator_version",
                    [value for key, version in after.items() for value in (key.hex, version)])
                rows = cursor.fetchall()
        for row in rows:
            originator = row["originator_id"]
            yield mapper.to_domain_event(StoredEvent(
                originator_id=UUID(originator) if isinstance(originator, str) else originator,
                originator_version=row["originator_version"], topic=row["topic"], state=bytes(row["state"])))

    def notified(self, positions: Collection[int]) -> dict[int, Any]:
        """The domain events at these positions of the notification log, by position (one read)."""
        if not positions:
            return {}
        recorder, columns = self.recorder, "originator_id, originator_version, topic, state"
        if isinstance(recorder, PostgresAggregateRecorder):
            statement = SQL(f"SELECT notification_id, {columns} FROM {{}}.{{}} WHERE notification_id = ANY(%s)").format(
                Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name))
            with recorder.datastore.get_connection() as connection, connection.cursor() as cursor:
                cursor.execute(statement, [list(positions)])
                rows = [(row["notification_id"], row) for row in cursor.fetchall()]
        else:
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(f"SELECT rowid AS notification_id, {columns} FROM {recorder.events_table_name} "  # noqa: S608
                               f"WHERE rowid IN ({','.join('?' * len(positions))})", list(positions))
                rows = [(row["notification_id"], row) for row in cursor.fetchall()]
        return {int(position): self.mapper.to_domain_event(StoredEvent(
            originator_id=UUID(row["originator_id"]) if isinstance(row["originator_id"], str) else row["originator_id"],
            originator_version=row["originator_version"], topic=row["topic"], state=bytes(row["state"])))
            for position, row in rows}

    def snapshots_stored(self) -> Iterator[Any]:
        """Every snapshot in the store (all applications share it), as recorded."""
        assert self.snapshots is not None
        recorder = self.snapshots.recorder
        columns = "originator_id, originator_version, topic, state"
        if isinstance(recorder, PostgresAggregateRecorder):
            statement = SQL(f"SELECT {columns} FROM {{}}.{{}} ORDER BY originator_id, originator_version").format(
                Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name))
            with recorder.datastore.get_connection() as connection, connection.cursor() as cursor:
                cursor.execute(statement)
                rows = cursor.fetchall()
        else:
            with recorder.datastore.transaction(commit=False) as cursor:
                cursor.execute(f"SELECT {columns} FROM {recorder.events_table_name} "  # noqa: S608
                               "ORDER BY originator_id, originator_version")
                rows = cursor.fetchall()
        for row in rows:
            originator = row["originator_id"]
            yield self.snapshots.mapper.to_domain_event(StoredEvent(
                originator_id=UUID(originator) if isinstance(originator, str) else originator,
                originator_version=row["originator_version"], topic=row["topic"], state=bytes(row["state"])))

    def replayed(self, aggregate_id: UUID, version: int | None = None) -> Any:
        """The aggregate folded from its events alone (up to `version`), never from a snapshot."""
        aggregate = None
        for event in self.repository.event_store.get(aggregate_id, lte=version):
            aggregate = event.mutate(aggregate)
        return aggregate

    def snapshot_state(self, snapshot: Any) -> bytes:
        """A snapshot's state as the store encodes it: two snapshots of one state encode the same."""
        return self.mapper.transcoder.encode(snapshot.state)

    def retake_snapshot(self, aggregate_id: UUID) -> None:
        """Replace the aggregate's snapshots by one of its state now, folded from its events alone."""
        assert self.snapshots is not None
        recorder = self.snapshots.recorder
        if isinstance(recorder, PostgresAggregateRecorder):
            statement = SQL("DELETE FROM {}.{} WHERE originator_id = %s").format(
                Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name))
            with recorder.datastore.get_connection() as connection, connection.transaction():
                connection.execute(statement, [aggregate_id])
        else:
            with recorder.datastore.transaction(commit=True) as cursor:
                cursor.execute(f"DELETE FROM {recorder.events_table_name} WHERE originator_id = ?",  # noqa: S608
                               [aggregate_id.hex])
        aggregate = self.replayed(aggregate_id)
        self.snapshots.put([type(aggregate).Snapshot.take(aggregate)])

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

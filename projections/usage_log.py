"""The usage log: every accepted usage event, once, in the order it was recorded.

`(tenant, customer, event_id)` is a unique key of the store itself, so a retried event is counted
once, ever, whatever the caller or a cache does. An append commits before it returns: acknowledged
means durable (SQLite WAL with synchronous=FULL, or a PostgreSQL commit). Each event's position
orders it for the projections and the relay. On SQLite the log has a file of its own, so ingesting
never waits for the event store or the read models.
"""

from collections.abc import Sequence
from datetime import datetime

import msgspec

from domain.metering import Reading
from domain.money import encode_hook
from domain.usage import UsageEvent
from projections.store import Database

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS tally_usage (
        position BIGSERIAL PRIMARY KEY, tenant_id TEXT NOT NULL, customer TEXT NOT NULL,
        event_id TEXT NOT NULL, event_name TEXT NOT NULL, timestamp_us BIGINT NOT NULL,
        recorded_us BIGINT NOT NULL, properties TEXT NOT NULL, UNIQUE (tenant_id, customer, event_id))""",
    "CREATE INDEX IF NOT EXISTS tally_usage_customer ON tally_usage (tenant_id, customer, timestamp_us)",
    """CREATE TABLE IF NOT EXISTS tally_usage_voids (
        position BIGSERIAL PRIMARY KEY, tenant_id TEXT NOT NULL, customer TEXT NOT NULL, event_id TEXT NOT NULL,
        voided_us BIGINT NOT NULL, actor TEXT NOT NULL, UNIQUE (tenant_id, customer, event_id))""",
)
VOIDED = ("NOT EXISTS (SELECT 1 FROM tally_usage_voids v WHERE v.tenant_id = tally_usage.tenant_id "
          "AND v.customer = tally_usage.customer AND v.event_id = tally_usage.event_id)")
INSERT = (
    "INSERT INTO tally_usage (tenant_id, customer, event_id, event_name, timestamp_us, recorded_us, properties) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tenant_id, customer, event_id) DO NOTHING"
)
_encoder = msgspec.json.Encoder(enc_hook=encode_hook)


def microseconds(moment: datetime) -> int:
    """Exact microseconds since the epoch (UTC): integer time, sortable, never a float."""
    assert moment.tzinfo is not None, moment
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")


class UsageLog:
    def __init__(self, database: Database) -> None:
        self.database = database
        database.migrate(SCHEMA)

    def append(self, tenant_id: str, events: Sequence[UsageEvent], recorded_at: datetime) -> int:
        """Record the events not recorded before, in one transaction; returns how many were new."""
        recorded = microseconds(recorded_at)
        rows = [
            (tenant_id, e.customer, e.event_id, e.event_name, microseconds(e.timestamp), recorded,
             _encoder.encode(e.properties).decode())
            for e in events
        ]
        with self.database.transaction(write=True) as cursor:
            return cursor.execute_many(INSERT, rows) if rows else 0

    def void(self, tenant_id: str, customer: str, event_ids: Sequence[str], actor: str,
             voided_at: datetime) -> tuple[int, list[str]]:
        """Take recorded events out of the totals, by recording a void for each (a void is kept like
        an event: who, when). Returns how many were voided now, and the ids never recorded."""
        with self.database.transaction(write=True) as cursor:
            known = {row[0] for row in cursor.execute(
                f"SELECT event_id FROM tally_usage WHERE tenant_id = ? AND customer = ? AND event_id IN "
                f"({','.join('?' * len(event_ids))})", (tenant_id, customer, *event_ids)).all()}
            rows = [(tenant_id, customer, event_id, microseconds(voided_at), actor)
                    for event_id in event_ids if event_id in known]
            voided = cursor.execute_many(
                "INSERT INTO tally_usage_voids (tenant_id, customer, event_id, voided_us, actor) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant_id, customer, event_id) DO NOTHING", rows,
            ) if rows else 0
        return voided, [event_id for event_id in event_ids if event_id not in known]

    def size(self) -> int:
        """How many events the log holds (all tenants)."""
        with self.database.transaction() as cursor:
            row = cursor.execute("SELECT COUNT(*) FROM tally_usage").one()
        assert row is not None
        return int(row[0])


_properties = msgspec.json.Decoder(dict)


def readings(database: Database, tenant_id: str, customer: str, event_name: str,
             start_us: int, end_us: int) -> list[Reading]:
    """The customer's events of one name with event time in [start_us, end_us), in log order."""
    return _select(database, "timestamp_us >= ? AND timestamp_us < ? AND " + VOIDED + " ORDER BY position",
                   (tenant_id, customer, event_name, start_us, end_us))


def latest_before(database: Database, tenant_id: str, customer: str, event_name: str, start_us: int,
                  limit: int = 100) -> list[Reading]:
    """Up to `limit` of the customer's last events of that name before start_us (newest first):
    where a weighted_sum's level in force at start_us is found."""
    return _select(database, "timestamp_us < ? AND " + VOIDED + " ORDER BY timestamp_us DESC, position DESC LIMIT ?",
                   (tenant_id, customer, event_name, start_us, limit))


def _select(database: Database, condition: str, params: tuple) -> list[Reading]:
    """Not-voided events of one customer and event name that meet `condition`."""
    with database.transaction() as cursor:
        rows = cursor.execute(
            "SELECT timestamp_us, position, properties FROM tally_usage "
            "WHERE tenant_id = ? AND customer = ? AND event_name = ? AND " + condition, params,
        ).all()
    return [Reading(t, p, _properties.decode(props)) for t, p, props in rows]

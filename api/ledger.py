"""The ledger the API answers from: the applications (write side) and the documents (read side),
opened on one database URL. Commands catch the documents up before they answer, so a client
reads its own writes."""

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit
from uuid import UUID

from domain.catalogue import Catalogue
from domain.customers import Customers
from domain.subscriptions import Subscriptions
from domain.tenants import Tenants
from projections import usage_readings
from projections.documents import Documents
from projections.drivers import inprocess
from projections.drivers.inprocess import Runner, UsageRunner
from projections.store import SCHEMA, Database
from projections.usage import UsageReport, Window, report
from projections.usage_log import UsageLog

T = TypeVar("T")


def store_env(database_url: str) -> tuple[dict[str, str], str, str]:
    """The eventsourcing settings of the event store, and the URLs of the read-model store and
    of the usage log.

    `sqlite:///dir/events.sqlite` keeps the read models in `dir/events.views.sqlite` and the usage
    log in `dir/events.usage.sqlite`; `postgresql://user:password@host:port/name` keeps all in
    that database."""
    parts = urlsplit(database_url)
    if parts.scheme == "sqlite":
        path = Path(unquote(database_url.removeprefix("sqlite:///")))  # sqlite:///relative, sqlite:////absolute
        path.parent.mkdir(parents=True, exist_ok=True)
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": str(path), "SQLITE_LOCK_TIMEOUT": "30"}
        views, usage = (f"sqlite:///{path.with_suffix(f'.{part}{path.suffix}')}" for part in ("views", "usage"))
        return env, views, usage  # the same form as the URL given
    if parts.scheme in ("postgresql", "postgres"):
        env = {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": parts.path.lstrip("/") or "postgres",
            "POSTGRES_HOST": parts.hostname or "127.0.0.1",
            "POSTGRES_PORT": str(parts.port or 5432),
            "POSTGRES_USER": unquote(parts.username or "postgres"),
            "POSTGRES_PASSWORD": unquote(parts.password or ""),
            "POSTGRES_POOL_SIZE": "4",
            "POSTGRES_LOCK_TIMEOUT": "10",
        }
        return env, database_url, database_url
    raise ValueError(f"TALLY_DATABASE_URL: unsupported scheme {parts.scheme!r} (sqlite:/// or postgresql://)")


class Ledger:
    """`distributed`: the usage read model is kept by `tally worker` from Kafka (one position per
    partition), not by this process's runner."""

    def __init__(self, database_url: str, distributed: bool = False) -> None:
        env, views_url, usage_url = store_env(database_url)
        self.views_url, self.usage_url = views_url, usage_url
        env["CREATE_TABLE"] = "true"
        self.tenants, self.catalogue, self.customers = Tenants(env), Catalogue(env), Customers(env)
        self.subscriptions = Subscriptions(env)
        self.database = Database(views_url)
        self.database.migrate(SCHEMA + usage_readings.SCHEMA)
        self.usage = UsageLog(self.database if usage_url == views_url else Database(usage_url))
        self.documents = Documents(self.database)
        self.runner = Runner(self.tenants.recorder, self.tenants.mapper, self.database)
        self.runner.catch_up()
        self.distributed = distributed
        self.usage_runner = UsageRunner(self.usage, self.database)  # for catching up on demand
        self._follower: Any = None

    def follow_usage(self) -> None:
        """Keep the usage read model up to date beside this server (embedded, or PostgreSQL without
        Kafka), in a process of its own."""
        if not self.distributed and self._follower is None:
            self._follower = inprocess.spawn(self.views_url, self.usage_url, self.usage.changed)

    def command(self, command: Callable[..., T], *args: Any) -> T:
        """Run one command, then bring the documents up to date with what it recorded."""
        try:
            return command(*args)
        finally:  # a refused command may still follow events others recorded meanwhile
            self.runner.catch_up()

    def usage_report(self, tenant_id: UUID, customer: str, meter_code: str, start: datetime, end: datetime,
                     window: Window | None, group_by: tuple[str, ...]) -> UsageReport:
        """A customer's usage of one meter: the read model plus the log's unapplied tail (fresh to the last 202)."""
        meter = self.catalogue.meter(tenant_id, meter_code).spec
        tenant = str(tenant_id)
        partition = usage_readings.partition_of(tenant, customer) if self.distributed else None

        def read(start_us: int, end_us: int) -> tuple[list, list]:
            return usage_readings.fresh(self.database, self.usage, tenant, customer, meter.event_name,
                                        start_us, end_us, partition)

        return report(read, customer, meter, start, end, window, group_by)

    def events_recorded(self) -> int:
        """The position of the last event in the store (0 when empty)."""
        return self.tenants.recorder.max_notification_id() or 0

    def close(self) -> None:
        if self._follower is not None:
            self._follower.terminate()  # between transactions or inside one: either way nothing half-done stays
            self._follower.join(10)
        self.usage.close()
        for application in (self.tenants, self.catalogue, self.customers, self.subscriptions):
            application.close()
        if self.usage.database is not self.database:
            self.usage.database.close()
        self.database.close()

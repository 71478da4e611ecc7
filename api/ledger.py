"""The ledger the API answers from: the applications (write side) and the documents (read side),
opened on one database URL. Commands catch the documents up before they answer, so a client
reads its own writes."""

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar
from urllib.parse import unquote, urlsplit
from uuid import UUID

import msgspec

from domain import invoice
from domain.aggregate import Actor, acting
from domain.api_key import ApiKey, secret_hash, well_formed
from domain.billing import (
    Cutoff,
    InvoiceNumbers,
    IssuedInvoice,
    billing_dates,
    next_due,
    usage_cutoff,
)
from domain.catalogue import Catalogue
from domain.charges import UsageCharges, charge_key
from domain.customer import Customer
from domain.customer_entitlements import CustomerEntitlements, OverrideSpec, applied
from domain.customers import Customers
from domain.entitlements import Decision, decide, refused, unpaid, window
from domain.errors import Conflict, Invalid, NotFound
from domain.feature import Feature, FeatureSpec
from domain.invoicing import ChangedMeanwhile, Invoicing, topup_content, topup_invoice
from domain.meter import MeterSpec
from domain.metering import Reading, Running, transactions_of
from domain.money import Amount
from domain.periods import Period
from domain.plan_version import PlanVersionSpec
from domain.price import FlatPrice, PercentagePrice
from domain.pricing import Transaction
from domain.subscription import Subscription
from domain.subscriptions import Subscriptions
from domain.tenant import Tenant
from domain.tenants import Tenants
from domain.wallet import GrantSpec, Wallet
from domain.wallets import Wallets
from projections import audit, documents, usage_hours, usage_readings, wallets
from projections.board import Board
from projections.documents import Documents
from projections.drivers import inprocess
from projections.drivers.inprocess import Runner, UsageRunner
from projections.memo import Memo
from projections.store import SCHEMA, Database, advance_position, positions
from projections.usage import Read, Segments, UsageReport, Window, report
from projections.usage_counters import UsageCounters
from projections.usage_log import UsageLog, microseconds, moment_of, ring_of
from projections.views import private_id, public_id

T = TypeVar("T")
CLOCK = Actor("system:billing-clock")
FINALIZE_TRIES = 20
CLOCK_CHUNK = 200  # subscriptions the clock reads, drafts and finalizes together
DEBITER = Actor("system:wallet-debits")
DEBITS = "wallet-debits"  # the usage-log position the debits have read up to
DEBIT_BATCH = 100_000  # usage-log entries a debit pass reads (its cost is mostly per customer touched)
DEBIT_SAVE = 500  # customers whose debits go in one save (a save of thousands of aggregates stalls on PostgreSQL)
_NONE: Mapping[UUID, Any] = MappingProxyType({})
FOREVER = datetime(9999, 1, 1, tzinfo=UTC)  # the end of a window that never resets


Prefetched = tuple[int, int, dict[str, tuple[list, list]]]  # [low, high) in microseconds, readings by event name


def _periods(subscription: Subscription, moments: Iterable[datetime]) -> set[Period]:
    """The subscription's billing periods that hold these moments (within its billing range)."""
    ends_at = subscription.ends_at
    return {subscription.period_at(moment) for moment in moments
            if subscription.billing_start <= moment and (ends_at is None or moment < ends_at)}


def _meters(specs: Iterable[PlanVersionSpec], kind: type = object) -> set[str]:
    """The meters these plan versions' prices (of this kind) read."""
    return {price.meter_code for spec in specs for price in spec.prices
            if price.meter_code is not None and isinstance(price, kind)}


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class _Lazy:
    """A mapping read when first asked (`get`), once."""

    def __init__(self, read: Callable[[], Mapping[str, Any]]) -> None:
        self._read: Callable[[], Mapping[str, Any]] | None = read
        self._found: Mapping[str, Any] = {}

    def get(self, key: str) -> Any:
        if self._read is not None:
            self._found, self._read = self._read(), None
        return self._found.get(key)


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
            # six applications, a pool each: 1 connection held, 4 at most (their appends lock the table, so
            # more would wait anyway). With 4 + 10 a process held 32-37 idle: a serve, a relay and a worker
            # passed PostgreSQL's default max_connections of 100, which then refused connections
            "POSTGRES_POOL_SIZE": "1",
            "POSTGRES_MAX_OVERFLOW": "3",
            "POSTGRES_LOCK_TIMEOUT": "10",
        }
        return env, database_url, database_url
    raise ValueError(f"TALLY_DATABASE_URL: unsupported scheme {parts.scheme!r} (sqlite:/// or postgresql://)")


class Credential(NamedTuple):
    tenant_id: UUID
    role: str
    customer: str | None  # a portal key's
    key_id: str  # public


class Ledger:
    """`distributed`: the usage read model is kept by `tally worker` from Kafka (one position per
    partition), not by this process's runner."""

    def __init__(self, database_url: str, distributed: bool = False) -> None:
        env, views_url, usage_url = store_env(database_url)
        self.views_url, self.usage_url = views_url, usage_url
        env["CREATE_TABLE"] = "true"
        self.database = Database(views_url)
        with self.database.serialized("tally-schema"):  # servers starting together create the tables once
            self.tenants, self.catalogue, self.customers = Tenants(env), Catalogue(env), Customers(env)
            self.subscriptions, self.invoicing, self.wallets = Subscriptions(env), Invoicing(env), Wallets(env)
            self.database.migrate(SCHEMA + audit.SCHEMA)
            documents.migrate(self.database)
            usage_readings.migrate(self.database)
            # the embedded store's processes share the positions a check reads in memory (projections/board.py)
            self.board = None if self.database.postgres else Board(Path(f"{self.database.path}-positions"))
            usage = self.database if usage_url == views_url else Database(usage_url)
            # and the usage rows just committed (projections/recent.py)
            self.usage = UsageLog(usage, self.board, ring_of(usage))
        self.documents = Documents(self.database)
        self.runner = Runner(self.tenants.recorder, self.tenants.mapper, self.database, board=self.board)
        if self.board is not None:
            self.board.follow({inprocess.NAME: self.runner.stored, "usage": self.usage.settled})
        self.runner.catch_up()
        self.distributed = distributed
        self.usage_runner = UsageRunner(self.usage, self.database)  # for catching up on demand
        self._immutable: dict[tuple, Any] = {}  # plan versions and meters never change once made
        self.memo = Memo(self.tenants.recorder, self.runner.applied, (ApiKey, Customer, CustomerEntitlements,
                                                                      Subscription, Tenant, Wallet),
                         new_kinds=(Subscription, Wallet))
        self.counters = UsageCounters(self.usage, self._window_readings)
        self._next_due: dict[str, tuple[Any, datetime]] = {}  # the clock's: subscription -> (what it saw, when due)
        self._wallets_seen: dict[str, datetime] = {}  # the clock's: wallet -> when it last looked at it
        self._follower: Any = None

    @property
    def embedded(self) -> bool:
        """On the embedded SQLite store (a local file: a read takes microseconds)."""
        return not self.database.postgres

    def credential(self, secret: str) -> Credential | None:
        """Who an API key is (None: unknown or revoked), kept until the key changes (is revoked)."""
        def read() -> tuple[Credential | None, list[UUID] | None]:
            found = self.documents.credential(secret_hash(secret)) if well_formed(secret) or not secret.startswith(
                "tly_") else None  # a typo of a Tally key is told apart without a look-up
            if found is None:
                return None, None  # not kept: the key may be issued next
            tenant_id, key = found
            key_id = private_id("api_keys", key["id"])
            assert key_id is not None
            return (None if key["revoked"] else Credential(UUID(tenant_id), key["role"], key["customer"],
                                                           key["id"])), [key_id]
        return self.memo.get(("credential", secret), read)

    def now(self) -> datetime:
        """The ledger's clock (the subscriptions' clock, which tests stop)."""
        return self.subscriptions.clock()

    def watch(self) -> None:
        """While serving: the entitlement counters follow the usage log in the background, and the
        positions board is set from the store now and then (a check reads both, not the store)."""
        self.counters.start()
        if self.board is not None:
            self.board.start()

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
        meter, tenant = self.catalogue.meter(tenant_id, meter_code).spec, str(tenant_id)
        return report(self._usage_reader(tenant, customer, meter), customer, meter, start, end, window, group_by,
                      self._hours(tenant, customer, meter))

    def keep_busy_hours(self) -> int:
        """Keep the ended hours of customers' busy hours for their meters, before any report reads
        them (usage_hours.keep_busy): their reports and invoices then read the kept hours. How many
        customers' event names were marked busy."""
        specs: dict[tuple[str, str], list[MeterSpec]] | None = None

        def meters(tenant: str, event_name: str) -> list[MeterSpec]:
            nonlocal specs
            if specs is None:  # read once a pass, when some hour is marked
                specs = {}
                for tenant_id, spec in self.meters():
                    specs.setdefault((tenant_id, spec.event_name), []).append(spec)
            return specs.get((tenant, event_name), [])

        return usage_hours.keep_busy(self.database, self.usage, meters, self._partition, microseconds(self.now()))

    def meters(self) -> Iterator[tuple[str, MeterSpec]]:
        """Every tenant's meters: (tenant id, definition)."""
        for tenant_id, body in self.documents.each("meters"):
            yield tenant_id, self._meter_spec(UUID(tenant_id), body["code"])

    def _hours(self, tenant: str, customer: str, meter: MeterSpec) -> Segments:
        """The meter's values hour by hour, from the hours kept (projections/usage_hours.py)."""
        now_us = microseconds(self.now())
        return lambda start_us, end_us: usage_hours.segments(
            self.database, self.usage, tenant, customer, meter, start_us, end_us, self._partition(tenant, customer),
            now_us)

    def _usage_reader(self, tenant: str, customer: str, meter: MeterSpec, as_of: datetime | None = None) -> Read:
        if as_of is not None:
            return lambda start_us, end_us: usage_readings.as_of(
                self.usage, tenant, customer, meter.event_name, start_us, end_us, microseconds(as_of))
        partition = self._partition(tenant, customer)
        levels = meter.aggregation == "weighted_sum"  # only a level held from before the range needs earlier rows
        return lambda start_us, end_us: usage_readings.fresh(
            self.database, self.usage, tenant, customer, (meter.event_name,), start_us, end_us, partition,
            levels)[meter.event_name]

    def upcoming_invoice(self, tenant_id: UUID, customer: str, subscription_id: UUID | None,
                         now: datetime) -> invoice.Invoice:
        """The live draft of the closing invoice of the current period (API.md "Invoices")."""
        subscription = self._subscription_of(tenant_id, customer, subscription_id, now)
        return self._computed(subscription, subscription.period_at(max(now, subscription.billing_start)),
                              "closing", "upcoming", counted=self.usage.published())

    def _computed(self, subscription: Subscription, period: Period, kind: str, status: str,
                  late: bool = True, as_of: datetime | None = None,
                  loaded: Mapping[UUID, Any] = _NONE, counted: int | None = None) -> invoice.Invoice:
        """A period's invoice of that kind, computed from the contract, its prices and the usage so far
        (with `late`, a closing invoice also carries the previous period's late usage); `as_of`: from
        the usage and the settings as they stood then; `loaded`: the tenant and customer, if read already;
        `counted`: the period's quantities from the counters (see `_usage`: the live draft, not an issued
        invoice, which is computed from its events)."""
        tenant_id, customer = subscription.tenant_id, subscription.customer
        lines, parts = self._lines(subscription, period, kind, as_of, counted=counted)
        credits = Decimal(0)
        if kind == "closing":
            credits = self._covered(subscription, period, as_of, loaded)
            if late:
                extra, late_credits = self._late_usage(subscription, period, as_of)
                lines, credits = lines + extra, credits + late_credits
        sums = invoice.sums(lines, parts if kind == "closing" else [], period, subscription.currency,
                            self._tax_rate(tenant_id, customer, as_of, loaded), credits)
        return invoice.Invoice(
            customer=customer, subscription=public_id("subscriptions", subscription.id), status=status,
            currency=subscription.currency, period_start=period.start, period_end=period.end, lines=tuple(lines),
            **msgspec.structs.asdict(sums),
        )

    def _lines(self, subscription: Subscription, period: Period, kind: str, as_of: datetime | None = None,
               prefetched: Prefetched | None = None,
               counted: int | None = None) -> tuple[list[invoice.InvoiceLine], list[invoice.Segment]]:
        """A period's invoice lines of that kind (no late usage), and the period's contract segments
        (`counted`: see `_usage`)."""
        tenant_id = subscription.tenant_id
        specs, parts = self._segments(subscription, period)
        conversion = {
            price.pricing_unit: self.catalogue.pricing_unit(tenant_id, price.pricing_unit).spec.conversion_rate
            for spec in specs.values() for price in spec.prices if price.pricing_unit is not None}
        start = max(period.start, subscription.billing_start)
        first = subscription.version_at(start)
        billed = invoice.Segment(start, period.end, first, specs[first])
        if kind == "advance":
            return invoice.advance_lines(subscription.plan_code, billed, period, conversion,
                                         subscription.currency), parts
        usage = self._usage(tenant_id, subscription.customer, _meters(specs.values()), period, as_of, prefetched,
                            counted)
        return invoice.closing_lines(subscription.plan_code, parts, period, usage, conversion, subscription.currency,
                                     billed), parts

    def _segments(self, subscription: Subscription,
                  period: Period) -> tuple[dict[int, PlanVersionSpec], list[invoice.Segment]]:
        """The subscription's plan versions, and the period's parts under each."""
        specs = {number: self._version_spec(subscription.tenant_id, subscription.plan_code, number)
                 for _, number in subscription.versions}
        return specs, invoice.segments(subscription.versions, specs, period, subscription.billing_start,
                                       subscription.ends_at)

    def _late_usage(self, subscription: Subscription, period: Period,
                    as_of: datetime | None) -> tuple[list[invoice.InvoiceLine], Decimal]:
        """The previous period's usage that its finalized closing invoice did not bill, and the wallet
        credits that paid for it since (they apply here, so late usage a wallet paid is not billed twice)."""
        if period.start <= subscription.billing_start:
            return [], Decimal(0)
        previous = subscription.period_at(period.start - timedelta(microseconds=1))
        previous_id = IssuedInvoice.create_id(subscription.id, "closing", previous.start)
        issued = self.invoicing.find(previous_id) if as_of is None else self.invoicing.as_of(previous_id, as_of)
        if issued is None or issued.content is None or issued.status == "void":
            return [], Decimal(0)
        now = self._computed(subscription, previous, "closing", issued.status, late=False, as_of=as_of)
        lines = invoice.late_usage_lines([line for line in issued.content.lines
                                          if not line.description.startswith("Late usage: ")], now.lines)
        return lines, max(now.credits_applied - issued.content.credits_applied, Decimal(0))

    def _covered(self, subscription: Subscription, period: Period, as_of: datetime | None,
                 loaded: Mapping[UUID, Any]) -> Decimal:
        """The fiat the customer's wallets have paid for the subscription's usage in the period (as of then)."""
        charges_id = UsageCharges.create_id(subscription.tenant_id, subscription.customer)
        if as_of is not None:
            charges = self.wallets.as_of(charges_id, as_of)
        else:
            charges = loaded[charges_id] if charges_id in loaded else self.wallets.find(charges_id)
        return charges.covered_in(subscription.id, period.start) if charges is not None else Decimal(0)

    def issued_invoice(self, tenant_id: UUID, invoice_id: UUID, as_of: datetime | None = None) -> invoice.Invoice:
        """An issued invoice: as finalized, or (a draft) computed now from what it bills. `as_of`: as it
        stood then, from the events recorded by then (time travel)."""
        issued = self.invoicing.invoice(tenant_id, invoice_id)
        if as_of is not None:
            issued = self.invoicing.as_of(invoice_id, as_of)
            if issued is None:
                raise NotFound("invoice as of", f"{public_id('invoices', invoice_id)} at {as_of.isoformat()}")
        if issued.content is None:
            subscription = self.subscriptions.subscription(tenant_id, issued.subscription_id)
            if as_of is not None:
                subscription = self.subscriptions.as_of(issued.subscription_id, as_of)
            found = self._computed(subscription, subscription.period_at(issued.period_start), issued.kind,
                                   issued.status, as_of=as_of)
        else:
            found = issued.content
        wallet = public_id("wallets", issued.subscription_id) if issued.kind == "topup" else None
        return msgspec.structs.replace(found, id=public_id("invoices", issued.id), status=issued.status, wallet=wallet,
                                       paid=Amount(issued.paid), credited=Amount(issued.credited))

    def recomputed(self, invoice_id: UUID) -> tuple[invoice.Invoice, invoice.Invoice] | None:
        """A finalized invoice as recorded, and as computed again from the events recorded by the
        moment it was finalized (None for one never finalized): the two must be the same."""
        issued, finalized = None, None
        for event in self.invoicing.repository.event_store.get(invoice_id):  # up to the finalize, in one read
            issued = event.mutate(issued)
            if isinstance(event, IssuedInvoice.Finalized):
                finalized = event
                break
        if finalized is None:
            return None
        at = finalized.timestamp
        if issued.kind == "topup":
            wallet = self.wallets.as_of(issued.subscription_id, at)
            amount = next(topup.amount for topup in wallet.topups if topup.invoice_id == invoice_id)
            found = topup_content(wallet.spec, amount, issued.period_start,
                                  self._tax_rate(issued.tenant_id, issued.customer, at), finalized.number)
        else:
            subscription = self.subscriptions.as_of(issued.subscription_id, at)
            found = self._computed(subscription, subscription.period_at(issued.period_start), issued.kind, "draft",
                                   as_of=at)
            found = msgspec.structs.replace(found, id=public_id("invoices", invoice_id), number=finalized.number,
                                            status="finalized")
        return finalized.content, found

    def finalize(self, by: Actor, tenant_id: UUID, invoice_id: UUID) -> IssuedInvoice:
        """Number the draft and record what it bills, as computed now. Finalizes of other invoices
        take numbers at the same time: losing that race is retried (a race on this invoice is not)."""
        prefix = self.tenants.tenant(tenant_id).settings.invoice_prefix
        for attempt in range(FINALIZE_TRIES):
            issued = self.invoicing.invoice(tenant_id, invoice_id)
            subscription = self.subscriptions.subscription(tenant_id, issued.subscription_id)
            try:
                return self.invoicing.finalize(by, issued, prefix, self._billed(issued, subscription))
            except ChangedMeanwhile:
                if attempt == FINALIZE_TRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def _billed(self, issued: IssuedInvoice, subscription: Subscription,
                loaded: Mapping[UUID, Any] = _NONE) -> invoice.Invoice:
        """What a draft bills, as it is recorded when finalized (payments and credits come after)."""
        found = self._computed(subscription, subscription.period_at(issued.period_start), issued.kind, issued.status,
                               loaded=loaded)
        return msgspec.structs.replace(found, id=public_id("invoices", issued.id), status=issued.status)

    def _charges_in_advance(self, subscription: Subscription, period: Period) -> bool:
        number = subscription.version_at(max(period.start, subscription.billing_start))
        return any(isinstance(price, FlatPrice) and price.pay_in == "advance"
                   for price in self._version_spec(subscription.tenant_id, subscription.plan_code, number).prices)

    def _version_spec(self, tenant_id: UUID, plan_code: str, number: int) -> PlanVersionSpec:
        """A plan version's prices: immutable once published, so read once per process."""
        key = (tenant_id, plan_code, number)
        if key not in self._immutable:
            self._immutable[key] = self.catalogue.plan_version(self.catalogue.plan(tenant_id, plan_code), number).spec
        return self._immutable[key]

    def _meter_spec(self, tenant_id: UUID, code: str) -> MeterSpec:
        """A meter's definition: immutable once defined, so read once per process."""
        key = (tenant_id, "meter", code)
        if key not in self._immutable:
            self._immutable[key] = self.catalogue.meter(tenant_id, code).spec
        return self._immutable[key]

    def usage_cutoffs(self, tenant_id: UUID, customers: set[str], now: datetime) -> dict[str, Cutoff]:
        """For each customer that has one, the instant before which its usage is refused (closed periods)."""
        closed = self.documents.closed_periods(str(tenant_id), customers)
        if not closed:
            return {}
        grace = self.memo.get(("grace", tenant_id), lambda: (
            timedelta(hours=self.tenants.tenant(tenant_id).settings.grace_period_hours), [tenant_id]))
        found = {customer: usage_cutoff([(moment_of(start), moment_of(end), number)], grace, now)
                 for customer, (start, end, number) in closed.items()}
        return {customer: cutoff for customer, cutoff in found.items() if cutoff is not None}

    def close_periods(self, now: datetime) -> int:
        """The billing clock: draft every period's invoices that are due by `now` (advance at the
        period's start, closing at its end), and finalize the drafts that are due (advance at once,
        closing after the tenant's grace period). Idempotent; returns how many invoices changed.
        Subscriptions are taken CLOCK_CHUNK at a time: read together, their invoices drafted in one
        save and finalized in one save per tenant."""
        changed, graces, chunk = 0, {}, []
        try:
            for tenant, body in self.documents.each("subscriptions"):
                if tenant not in graces:  # read once a tick, not once a subscription
                    graces[tenant] = timedelta(hours=self.tenants.tenant(UUID(tenant)).settings.grace_period_hours)
                seen = (body["updated_at"], graces[tenant])
                known = self._next_due.get(body["id"])
                if known is not None and known[0] == seen and now < known[1]:
                    continue  # unchanged since the last tick, and nothing due yet
                chunk.append((body["id"], seen))
                if len(chunk) == CLOCK_CHUNK:
                    changed, chunk = changed + self._close(chunk, now), []
            return changed + self._close(chunk, now)
        finally:
            self.runner.catch_up()

    def expire_grants(self, now: datetime) -> int:
        """The billing clock, for wallets: record the expiry of what is left of each grant whose time
        has come by `now`, and grant the next of each recurring series that is due; how many changed.
        A wallet is read only when one of its due times falls after the last look at it (a grant's
        due times are in the future when it is made, so nothing else can make one due)."""
        changed = 0
        try:
            for tenant, body in self.documents.each("wallets"):
                since = self._wallets_seen.get(body["id"])
                if any(since is None or moment > since for moment in map(_moment, body["due"]) if moment <= now):
                    try:
                        changed += self.wallets.expire(CLOCK, UUID(tenant), private_id("wallets", body["id"]), now)
                    except Conflict:  # the wallet moved on meanwhile: look again next tick
                        continue
                self._wallets_seen[body["id"]] = now
        finally:
            self.runner.catch_up()
        return changed

    def _close(self, chunk: list[tuple[str, Any]], now: datetime) -> int:
        """Bill what is due of these subscriptions (public id, what the clock saw of it), then note
        when each is next due."""
        found = self.subscriptions.find_many([private_id("subscriptions", public) for public, _ in chunk])
        due, ahead = [], []
        for public, seen in chunk:
            subscription: Subscription = found[private_id("subscriptions", public)]
            dates = list(billing_dates(subscription, seen[1], now))
            due += [(subscription, kind, period, finalize_at) for period, kind, finalize_at in dates
                    if kind == "closing" or self._charges_in_advance(subscription, period)]
            ahead.append((public, seen, next_due(subscription, dates, now)))
        changed = self._bill(due, now)
        self._next_due.update((public, (seen, when)) for public, seen, when in ahead)
        return changed

    def _bill(self, due: list[tuple[Subscription, str, Period, datetime]], now: datetime) -> int:
        """Draft the invoices not there yet, and finalize the drafts due; how many steps were taken.
        What the invoice documents say is done is not read again (they follow the store: one they
        call missing or a draft is checked against the store when saved)."""
        ids = [IssuedInvoice.create_id(subscription.id, kind, period.start) for subscription, kind, period, _ in due]
        statuses = self.documents.statuses("invoices", list(map(str, ids)))  # documents are keyed by aggregate id
        missing = [(subscription, kind, period) for (subscription, kind, period, _), invoice_id in zip(due, ids)
                   if str(invoice_id) not in statuses]
        drafted = self.invoicing.draft_many(CLOCK, missing) if missing else []
        drafts = {issued.id: issued for issued, _ in drafted if issued.status == "draft"}
        ready = [invoice_id for (*_, finalize_at), invoice_id in zip(due, ids) if finalize_at <= now and (
            invoice_id in drafts or statuses.get(str(invoice_id)) == "draft")]
        drafts.update(self.invoicing.find_many([invoice_id for invoice_id in ready if invoice_id not in drafts]))
        subscriptions = {subscription.id: subscription for subscription, *_ in due}
        finalizing = [(drafts[invoice_id], subscriptions[drafts[invoice_id].subscription_id]) for invoice_id in ready
                      if drafts[invoice_id].status == "draft"]
        return sum(created for _, created in drafted) + self._finalize_many(finalizing)

    def _finalize_many(self, finalizing: list[tuple[IssuedInvoice, Subscription]]) -> int:
        """Finalize these drafts, each tenant's in one save (one by one if that save lost a race); how many."""
        done = 0
        for tenant_id in dict.fromkeys(issued.tenant_id for issued, _ in finalizing):
            mine = [(issued, subscription) for issued, subscription in finalizing if issued.tenant_id == tenant_id]
            customers = {subscription.customer for _, subscription in mine}
            charge_ids = [UsageCharges.create_id(tenant_id, customer) for customer in customers]
            charges = self.wallets.find_many(charge_ids)
            loaded = {tenant_id: self.tenants.tenant(tenant_id),
                      **self.customers.find_many({Customer.id_for(tenant_id, customer) for customer in customers}),
                      **{charge_id: charges.get(charge_id) for charge_id in charge_ids}}  # none: nothing paid
            try:
                self.invoicing.finalize_many(CLOCK, loaded[tenant_id].settings.invoice_prefix,
                                             [(issued, self._billed(issued, s, loaded)) for issued, s in mine])
                done += len(mine)
            except Conflict:  # numbers taken or a draft finalized meanwhile (by hand or another clock)
                for issued, _ in mine:
                    with contextlib.suppress(Conflict):
                        self.finalize(CLOCK, tenant_id, issued.id)
                        done += 1
        return done

    def _subscription_of(self, tenant_id: UUID, customer: str, subscription_id: UUID | None,
                         now: datetime) -> Subscription:
        """The named subscription of the customer, or its one subscription still running at `now`."""
        if subscription_id is not None:
            found = self.subscriptions.subscription(tenant_id, subscription_id)
            if found.customer != customer:
                raise NotFound("subscription", public_id("subscriptions", subscription_id))
            return found
        running = [found for found in self._subscriptions(tenant_id, customer)
                   if found.ends_at is None or found.ends_at > now]
        if not running:
            raise NotFound("running subscription of customer", customer)
        if len(running) > 1:
            raise Invalid("subscription", f"customer {customer!r} has {len(running)} running subscriptions: name one")
        return running[0]

    def _subscriptions(self, tenant_id: UUID, customer: str) -> list[Subscription]:
        """The customer's subscriptions, in one read of the store."""
        return self._subscriptions_of_many(tenant_id, {customer}).get(customer, [])

    def _subscriptions_of_many(self, tenant_id: UUID, customers: set[str]) -> dict[str, list[Subscription]]:
        """Each of these customers' subscriptions, in one read of the documents and one of the store."""
        bodies = self.documents.children("subscriptions", str(tenant_id), customers)
        found: dict[str, list[Subscription]] = {}
        ids = [private_id("subscriptions", body["id"]) for body in bodies]
        for subscription in self.subscriptions.find_many(ids).values():
            found.setdefault(subscription.customer, []).append(subscription)
        return found

    def _usage(self, tenant_id: UUID, customer: str, meter_codes: set[str], span: Period,
               as_of: datetime | None = None, prefetched: Prefetched | None = None,
               counted: int | None = None) -> invoice.Usage:
        """A customer's usage as the invoice lines read it: the read model plus the log's tail (or the
        log as it stood `as_of`). The meters' events in `span` are read at once, when first needed (but a
        weighted_sum's, which needs the level held before a range), unless `prefetched` holds them
        already; a quantity comes from the hours usage reports keep when the customer has any in `span`
        (projections/usage_hours.py: then only a percentage price's events are read). `counted`
        (what the usage has cost so far, the log counted up to that position at least): a quantity is the
        entitlement counters' (but a weighted_sum's), which follow the log in memory, and only a
        percentage price's events are read (measured, a debit pass for a customer with a million events
        in its period: 2.9 s reading them)."""
        tenant, hourly = str(tenant_id), False
        if prefetched is not None:
            low, high, read = prefetched
        elif counted is not None:
            low, high, read = 0, 0, {}
        else:
            low, high = microseconds(span.start), microseconds(span.end)
            names = self._event_names(tenant_id, meter_codes)
            # hours kept by a usage report: the quantities from them, the events read only if a price needs them
            hourly = bool(names) and as_of is None and usage_hours.kept_any(
                self.database, tenant, customer, names, low, high)
            read = {} if not names or as_of is not None else _Lazy(lambda: usage_readings.fresh(
                self.database, self.usage, tenant, customer, names, low, high, self._partition(tenant, customer),
                before=False))

        def reader(meter: MeterSpec) -> Read:
            def read_range(start_us: int, end_us: int) -> tuple[list[Reading], list[Reading]]:
                inside = read.get(meter.event_name)  # (read at the first call: quantities may need none)
                if inside is None:
                    return self._usage_reader(tenant, customer, meter, as_of)(start_us, end_us)
                if low <= start_us <= end_us <= high:
                    return [r for r in inside[0] if start_us <= r.timestamp_us < end_us], []
                return self._usage_reader(tenant, customer, meter)(start_us, end_us)
            return read_range

        def quantity(meter_code: str, start: datetime, end: datetime) -> Decimal:
            meter = self._meter_spec(tenant_id, meter_code)
            if counted is not None and meter.aggregation != "weighted_sum":
                return self.counters.used(tenant, customer, meter, microseconds(start), microseconds(end), counted)
            return report(reader(meter), customer, meter, start, end, None, (),
                          self._hours(tenant, customer, meter) if hourly else None).total

        def transactions(meter_code: str, start: datetime, end: datetime) -> list[Transaction]:
            meter = self._meter_spec(tenant_id, meter_code)
            inside, _ = reader(meter)(microseconds(start), microseconds(end))
            return transactions_of(meter, inside)

        return invoice.Usage(quantity, transactions)

    def _tax_rate(self, tenant_id: UUID, customer: str, as_of: datetime | None = None,
                  loaded: Mapping[UUID, Any] = _NONE) -> Decimal:
        """The customer's tax rate, else the tenant's default (as they stood `as_of`)."""
        if as_of is None:
            holder = loaded.get(Customer.id_for(tenant_id, customer)) or self.customers.customer(tenant_id, customer)
            tenant = loaded.get(tenant_id) or self.tenants.tenant(tenant_id)
        else:
            holder = self.customers.as_of(Customer.id_for(tenant_id, customer), as_of)
            tenant = self.tenants.as_of(tenant_id, as_of)
        found = holder.details.tax_rate if holder is not None else None
        return found if found is not None else tenant.settings.default_tax_rate

    def override(self, by: Actor, tenant_id: UUID, customer: str, spec: OverrideSpec) -> Any:
        return self.customers.override(by, tenant_id, customer, spec, self.now())

    def grant(self, by: Actor, tenant_id: UUID, wallet_id: UUID, spec: GrantSpec) -> Wallet:
        return self.wallets.grant(by, tenant_id, wallet_id, spec, self.now())

    def wallet(self, tenant_id: UUID, wallet_id: UUID, as_of: datetime | None = None) -> wallets.WalletView:
        """The wallet now, or as it stood at `as_of` (from its events recorded by then). Grants whose
        time has come show as expired, whether or not the clock has recorded it yet; now, usage
        acknowledged and not yet debited is taken off too (in this copy only: DESIGN.md "Freshness")."""
        now = as_of or self.now()
        if as_of is not None:
            found = self.wallets.as_of(wallet_id, as_of)
            if not isinstance(found, Wallet) or found.tenant_id != tenant_id:  # not yet, or not this tenant's
                raise NotFound("wallet as of", f"{public_id('wallets', wallet_id)} at {as_of.isoformat()}")
            with acting(CLOCK):
                found.expire(now)  # in this copy only: the clock records it
            return wallets.view(found)
        return self._live_view(tenant_id, self.wallets.wallet(tenant_id, wallet_id), now)

    def _live_view(self, tenant_id: UUID, found: Wallet, now: datetime) -> wallets.WalletView:
        """The wallet at `now`, on this copy: usage not debited yet (of the customer and, a pooled
        wallet, of its children) taken off, and grants whose time has come expired."""
        drawing = {found.customer, *([body["external_id"] for body in self.documents.children(
            "customers", str(tenant_id), {found.customer})] if found.spec.pooled else [])}
        counted = self.usage.published()  # every usage acknowledged before the read counts
        for customer, wallets_of in self._holders(tenant_id, drawing).items():
            wallets_of = [found if wallet.id == found.id else wallet for wallet in wallets_of]
            costs = self._usage_costs(tenant_id, customer, [now], counted)
            self.wallets.pending(tenant_id, customer, wallets_of, costs, self._feature_meters(tenant_id, wallets_of),
                                 now)
        with acting(CLOCK):
            found.expire(now)  # in this copy only: the clock records it
        return wallets.view(found)

    def top_up(self, by: Actor, tenant_id: UUID, wallet_id: UUID, amount: Decimal) -> IssuedInvoice:
        """Sell credits of a wallet: an invoice at its topup_conversion_rate; they land when it is paid."""
        tenant = self.tenants.tenant(tenant_id)
        for attempt in range(FINALIZE_TRIES):
            wallet = self.wallets.wallet(tenant_id, wallet_id)
            try:
                return self.invoicing.top_up(by, wallet, amount, tenant.settings.invoice_prefix,
                                             self._tax_rate(tenant_id, wallet.customer), self.now())
            except ChangedMeanwhile:  # another invoice took the number, or the wallet moved on: again
                if attempt == FINALIZE_TRIES - 1:
                    raise
        raise AssertionError("unreachable")

    def debit_usage(self, limit: int = DEBIT_BATCH) -> int:
        """Debit wallets for the usage logged since the last call (up to `limit` log entries): for
        each customer with wallets, what the usage of the periods it falls in costs beyond what was
        charged, from its wallets by priority; DEBIT_SAVE customers' debits and charges in one save.
        Returns the entries read. A pass cut short (a crash, a race) is read again and charges
        nothing twice: each customer's charges know the position they reached."""
        paying = self.documents.tenants_with("wallets")
        if not paying:  # no wallet anywhere: nothing to read (a customer's next usage prices its whole period)
            advance_position(self.database, DEBITS, self.usage.last_position())
            return 0
        entries = self.usage.entries(positions(self.database, [DEBITS])[0], limit)
        if not entries:
            return 0
        through, now = entries[-1].position, self.now()
        moments: dict[tuple[str, str], set[datetime]] = {}
        for entry in entries:
            moments.setdefault((entry.tenant_id, entry.customer), set()).add(moment_of(entry.timestamp_us))
        for tenant in sorted({tenant for tenant, _ in moments} & paying):
            customers = sorted(customer for t, customer in moments if t == tenant)
            for start in range(0, len(customers), DEBIT_SAVE):
                chunk = {customer: moments[tenant, customer] for customer in customers[start:start + DEBIT_SAVE]}
                changed = self._charge(UUID(tenant), chunk, through, now)
                if changed:  # a pooled wallet is read again by the next chunk, after this one saved it
                    self.wallets.save(*changed, *self._auto_topups(changed, now))
        advance_position(self.database, DEBITS, through)
        self.runner.catch_up()
        return len(entries)

    def _charge(self, tenant_id: UUID, moments: dict[str, set[datetime]], through: int, now: datetime) -> list[Any]:
        """These customers' charges and the wallets they debit for their usage up to `through` (unsaved)."""
        holders = self._holders(tenant_id, set(moments))
        subscriptions = self._subscriptions_of_many(tenant_id, set(holders))
        charges = self.wallets.find_many([UsageCharges.create_id(tenant_id, customer) for customer in holders])
        mine = {customer: subscriptions.get(customer, []) for customer in holders}
        counted = self._count_ahead(tenant_id, mine, moments, through)
        prefetched = self._prefetch(tenant_id, mine, {customer: moments[customer] for customer in holders})
        changed: dict[UUID, Any] = {}
        for customer, wallets_of in holders.items():
            costs = self._usage_costs(tenant_id, customer, moments[customer], counted, mine[customer],
                                      prefetched.get(customer))
            changed.update((found.id, found) for found in self.wallets.charge(
                DEBITER, tenant_id, customer, charges.get(UsageCharges.create_id(tenant_id, customer)), wallets_of,
                through, costs, self._feature_meters(tenant_id, wallets_of), now))
        return list(changed.values())

    def _auto_topups(self, changed: list[Any], now: datetime) -> list[Any]:
        """The invoices (and number counters) of the auto top-ups the debited wallets ask for: once per
        crossing below their level (a pending one disarms it), saved with the debits."""
        invoices: list[Any] = []
        numbers: dict[UUID, InvoiceNumbers] = {}
        for wallet in (found for found in changed if isinstance(found, Wallet)):
            amount = wallet.wants_topup()
            if amount is None:
                continue
            tenant_id = wallet.tenant_id
            with acting(DEBITER):
                if tenant_id not in numbers:
                    numbers[tenant_id] = (self.invoicing.find(InvoiceNumbers.create_id(tenant_id))
                                          or InvoiceNumbers(tenant_id=tenant_id))
                invoices.append(topup_invoice(wallet, amount, numbers[tenant_id],
                                              self.tenants.tenant(tenant_id).settings.invoice_prefix,
                                              self._tax_rate(tenant_id, wallet.customer), now, auto=True))
        return [*numbers.values(), *invoices]

    def _holders(self, tenant_id: UUID, customers: set[str]) -> dict[str, list[Wallet]]:
        """For each of these customers that has any, the wallets its usage is paid from, in spending
        order: its own by priority (then the oldest first), then its parent's pooled ones the same
        way. A wallet is one object however many of them draw on it. A few reads for them all."""
        found = self.customers.find_many([Customer.id_for(tenant_id, customer) for customer in customers])
        parents = {customer.external_id: customer.details.parent_external_id for customer in found.values()}
        owners = set(customers) | {parent for parent in parents.values() if parent is not None}
        by_owner: dict[str, list[Wallet]] = {}
        bodies = self.documents.children("wallets", str(tenant_id), owners)
        for wallet in self.wallets.find_many([private_id("wallets", body["id"]) for body in bodies]).values():
            by_owner.setdefault(wallet.customer, []).append(wallet)
        for mine in by_owner.values():
            mine.sort(key=lambda w: (w.spec.priority, w.created_on, w.id.hex))
        holders = {customer: by_owner.get(customer, []) + [
            wallet for wallet in by_owner.get(parents.get(customer) or "", []) if wallet.spec.pooled]
            for customer in customers}
        return {customer: wallets_of for customer, wallets_of in holders.items() if wallets_of}

    def _event_names(self, tenant_id: UUID, meter_codes: Iterable[str]) -> list[str]:
        """The event names of these meters, but a weighted_sum's (it reads before a range too)."""
        meters = map(functools.partial(self._meter_spec, tenant_id), sorted(meter_codes))
        return [meter.event_name for meter in meters if meter.aggregation != "weighted_sum"]

    def _partition(self, tenant: str, customer: str) -> int | None:
        return usage_readings.partition_of(tenant, customer) if self.distributed else None

    def _count_ahead(self, tenant_id: UUID, subscriptions: dict[str, list[Subscription]],
                     moments: Mapping[str, set[datetime]], through: int) -> int:
        """For a debit pass: the counters of the quantities its customers' costs take (see `_usage`),
        those not counted yet begun for them all at once (one read a window, not one a customer).
        Returns the position of the log they count up to: `through` at least, the pass's last entry
        (which may not be published yet: its charges say they reached it)."""
        wanted = {customer: {(meter.code, start, end): (meter, start, end)  # (a spec is not hashable)
                             for subscription in mine for period in _periods(subscription, moments[customer])
                             for meter, start, end in self._counted_windows(subscription, period)}
                  for customer, mine in subscriptions.items()}
        return self.counters.prime(str(tenant_id), {customer: list(windows.values())
                                                    for customer, windows in wanted.items() if windows},
                                   self._windows_readings, through)

    def _counted_windows(self, subscription: Subscription, period: Period) -> Iterator[tuple[MeterSpec, int, int]]:
        """The windows (meter, start, end in µs) whose quantities the period's closing lines take from the
        counters: each part's metered prices, but percentage prices and weighted_sum meters (see `_usage`)."""
        for part in self._segments(subscription, period)[1]:
            for price in part.spec.prices:
                if price.meter_code is not None and not isinstance(price, PercentagePrice):
                    meter = self._meter_spec(subscription.tenant_id, price.meter_code)
                    if meter.aggregation != "weighted_sum":
                        yield meter, microseconds(part.start), microseconds(part.end)

    def _windows_readings(self, tenant: str, customers: list[str], names: list[str], start_us: int,
                          end_us: int) -> dict[str, dict[str, list[Reading]]]:
        """The counters' source for many customers: their readings of these event names in the window."""
        found = usage_readings.fresh_many(self.database, self.usage, tenant,
                                          {customer: self._partition(tenant, customer) for customer in customers},
                                          names, start_us, end_us)
        return {customer: {name: inside for name, (inside, _) in by_name.items()}
                for customer, by_name in found.items()}

    def _prefetch(self, tenant_id: UUID, subscriptions: dict[str, list[Subscription]],
                  moments: dict[str, set[datetime]]) -> dict[str, Prefetched]:
        """For a debit pass: these customers' events in all the periods their `moments` fall in, of the
        meters of percentage prices (the others' quantities are counted: see `_usage`), read at once (a
        few queries for them all)."""
        periods = [period for customer, mine in subscriptions.items() for subscription in mine
                   for period in _periods(subscription, moments[customer])]
        codes = {code for mine in subscriptions.values() for subscription in mine
                 for code in _meters((self._version_spec(tenant_id, subscription.plan_code, number)
                                      for _, number in subscription.versions), PercentagePrice)}
        names = self._event_names(tenant_id, codes)
        if not periods or not names:
            return {}
        low, high = microseconds(min(p.start for p in periods)), microseconds(max(p.end for p in periods))
        tenant = str(tenant_id)
        read = usage_readings.fresh_many(self.database, self.usage, tenant,
                                         {customer: self._partition(tenant, customer) for customer in subscriptions},
                                         names, low, high)
        return {customer: (low, high, mine) for customer, mine in read.items()}

    def _usage_costs(self, tenant_id: UUID, customer: str, moments: Iterable[datetime], counted: int,
                     subscriptions: list[Subscription] | None = None,
                     prefetched: Prefetched | None = None) -> dict[str, Decimal]:
        """What the customer's usage has cost so far (fiat, the invoice's metered line amounts), by
        charge key (subscription, period, meter), in each period that holds one of `moments`, the log
        counted up to position `counted` at least (see `_usage`). `subscriptions`, `prefetched`: the
        customer's, and its usage, if read already."""
        costs: dict[str, Decimal] = {}
        for subscription in subscriptions if subscriptions is not None else self._subscriptions(tenant_id, customer):
            for period in _periods(subscription, moments):
                for line in self._lines(subscription, period, "closing", prefetched=prefetched, counted=counted)[0]:
                    if line.meter_code is not None:
                        key = charge_key(subscription.id, period.start, line.meter_code)
                        costs[key] = costs.get(key, Decimal(0)) + line.amount
        return costs

    def _feature_meters(self, tenant_id: UUID, holders: Iterable[Wallet]) -> dict[str, str]:
        """The meter of each feature the wallets apply to."""
        codes = {code for wallet in holders if wallet.spec.applies_to for code in wallet.spec.applies_to.features}
        return {code: self._feature_spec(tenant_id, code).meter_code for code in codes}

    def _feature_spec(self, tenant_id: UUID, code: str) -> FeatureSpec:
        """A feature's definition: immutable once defined, so read once per process."""
        key = (tenant_id, "feature", code)
        if key not in self._immutable:
            found = self.catalogue.find(Feature.id_for(tenant_id, code))
            if found is None:
                raise NotFound("feature", code)
            self._immutable[key] = found.spec
        return self._immutable[key]

    def check(self, by: Actor, tenant_id: UUID, customer: str, feature_code: str, quantity: Decimal,
              now: datetime) -> Decision:
        """May the customer use `quantity` more of the feature now? The hot path: the customer's plan
        and overrides are kept until they change, and its metered use in counters that follow the
        usage log, so a check costs a few small queries. The first check in a reset window that asks
        beyond a limit records the crossing (entitlement.exceeded), once per limit and window."""
        (decision, start), = self._decisions(tenant_id, customer, now, feature_code, quantity)
        if decision.reason in ("soft_limit", "limit_exceeded") and start is not None and decision.limit is not None:
            record = self._entitlement_context(tenant_id, customer)[1]
            if record is None or not record.crossed(feature_code, start, decision.limit):
                assert decision.used is not None
                self.command(self.customers.exceed, by, tenant_id, customer, feature_code, start, decision.resets_at,
                             decision.limit, decision.used, quantity, decision.allowed)  # the kept context learns it
        return decision

    def entitlements(self, tenant_id: UUID, customer: str, now: datetime, feature_code: str | None = None,
                     quantity: Decimal = Decimal(1)) -> list[Decision]:
        """What the customer may use now by its running plan version and its overrides in force: one
        feature (asking for `quantity` more of a metered one), or every feature granted."""
        return [decision for decision, _ in self._decisions(tenant_id, customer, now, feature_code, quantity)]

    def _decisions(self, tenant_id: UUID, customer: str, now: datetime, feature_code: str | None,
                   quantity: Decimal) -> list[tuple[Decision, datetime | None]]:
        """Each decision (one feature's, or every feature's), with the start of its reset window."""
        subscriptions, record = self._entitlement_context(tenant_id, customer)
        running = [found for found in subscriptions
                   if found.start_at <= now and (found.ends_at is None or now < found.ends_at)]
        if not running:
            return [] if feature_code is None else [(refused(feature_code, "no_subscription"), None)]
        subscription = min(running, key=lambda found: (found.start_at, found.id.hex))
        spec = self._version_spec(tenant_id, subscription.plan_code, subscription.version_at(now))
        plan = {e.feature_code: e for e in spec.entitlements}
        overrides = record.overrides if record else []
        codes = dict.fromkeys([*plan, *(o.feature_code for o in overrides)])
        in_force = [applied(plan.get(code), record.in_force(code, now) if record else None)
                    for code in codes if feature_code is None or code == feature_code]
        granted = [found for found in in_force if found is not None]
        if feature_code is not None and not granted:
            return [(refused(feature_code, "not_in_plan"), None)]
        decisions = []
        for entitlement in granted:
            used, start, resets_at = None, None, None
            if entitlement.limit is not None:
                meter = self._meter_spec(tenant_id, self._feature_spec(tenant_id, entitlement.feature_code).meter_code)
                period = subscription.period_at(max(now, subscription.billing_start)) \
                    if entitlement.reset == "period" else None
                start, resets_at = window(entitlement.reset, now, period, subscription.billing_start)
                used = self._used(str(tenant_id), customer, meter, start, resets_at, now)
            decision = decide(entitlement, used, quantity, resets_at)
            if decision.allowed and entitlement.wallet_gated and not self._paid_for(tenant_id, customer,
                                                                                    entitlement.feature_code, now):
                decision = unpaid(decision)
            decisions.append((decision, start))
        return decisions

    def _entitlement_context(self, tenant_id: UUID, customer: str) -> tuple[list[Subscription],
                                                                           CustomerEntitlements | None]:
        """The customer's subscriptions and its entitlement record, kept until one of them changes
        (NotFound for a customer that does not exist)."""
        def read() -> tuple[tuple[list[Subscription], CustomerEntitlements | None], list[UUID]]:
            found = self.customers.customer(tenant_id, customer)
            subscriptions = self._subscriptions(tenant_id, customer)
            sources = [found.id, CustomerEntitlements.create_id(tenant_id, customer), *(s.id for s in subscriptions)]
            return (subscriptions, self.customers.entitlements(tenant_id, customer)), sources
        return self.memo.get(("entitlements", tenant_id, customer), read)

    def _used(self, tenant: str, customer: str, meter: MeterSpec, start: datetime, resets_at: datetime | None,
              now: datetime) -> Decimal:
        """The customer's use of the meter in its window [start, resets_at): from the counters, but a
        weighted_sum's (averaged over the window, or a day from now when it never resets)."""
        if meter.aggregation != "weighted_sum":
            return self.counters.used(tenant, customer, meter, microseconds(start), microseconds(resets_at or FOREVER))
        return report(self._usage_reader(tenant, customer, meter), customer, meter, start,
                      resets_at or now + timedelta(days=1), None, ()).total

    def _window_readings(self, tenant: str, customer: str, meter: MeterSpec, start_us: int, end_us: int,
                         seen: int) -> tuple[Running, list[Reading]]:
        """The counters' source: the window's kept hours holding entries up to position `seen` only, and
        every acknowledged reading of the rest (usage_hours.window)."""
        return usage_hours.window(self.database, self.usage, tenant, customer, meter, start_us, end_us,
                                  self._partition(tenant, customer), seen)

    def _paid_for(self, tenant_id: UUID, customer: str, feature_code: str, now: datetime) -> bool:
        """Whether a wallet that pays for the feature has credits left beyond its overdraft, its usage
        not debited yet taken off (as a balance read shows it). Kept until a wallet or the customer's
        usage changes, or a grant's expiry comes; a sibling's usage of a parent's pooled wallet counts
        once debited."""
        stamp = self.counters.stamp(str(tenant_id), customer)

        def read() -> tuple[tuple[int, datetime | None, bool], list[UUID]]:
            holders = self._holders(tenant_id, {customer}).get(customer, [])
            paying = [self._live_view(tenant_id, found, now) for found in holders if found.spec.pays_for(feature_code)]
            expiries = [grant.expires_at for view in paying for grant in view.grants
                        if grant.expires_at is not None and grant.remaining > 0]
            room = any(view.balance + view.overdraft_limit > 0 for view in paying)
            return (stamp, min(expiries, default=None), room), [Customer.id_for(tenant_id, customer),
                                                                *(found.id for found in holders)]

        def valid(kept: tuple[int, datetime | None, bool]) -> bool:
            return kept[0] == stamp and (kept[1] is None or now < kept[1])
        return self.memo.get(("gate", tenant_id, customer, feature_code), read, valid)[2]

    def audit_events(self, tenant_id: UUID, stream: UUID | None, since: datetime | None, until: datetime | None,
                     after: int, limit: int) -> tuple[list[audit.Envelope], bool]:
        """A page of the tenant's domain events after position `after`, as recorded (of one stream;
        occurred in [since, until)); and whether more follow."""
        self.runner.catch_up()  # what other processes recorded too
        with self.database.transaction() as cursor:
            found = audit.page(cursor, str(tenant_id), str(stream) if stream else None,
                               microseconds(since) if since else None, microseconds(until) if until else None,
                               after, limit + 1)
        events = self.tenants.notified([position for position, _ in found[:limit]])
        return [audit.envelope(position, events[position], str(tenant_id), customer)
                for position, customer in found[:limit]], len(found) > limit

    def ledger_events(self, after: int, limit: int) -> list[audit.Envelope]:
        """The domain events of every tenant after position `after`, in order, at most `limit`, as the
        relay publishes them (up to what the audit trail has applied: it knows each one's tenant)."""
        self.runner.catch_up()
        top = positions(self.database, [audit.NAME])[0]
        notifications = self.tenants.recorder.select_notifications(start=after + 1, limit=limit, stop=top)
        events = [(notification.id, self.tenants.mapper.to_domain_event(notification))
                  for notification in notifications]
        with self.database.transaction() as cursor:
            owners = audit.streams(cursor, {str(event.originator_id) for _, event in events})
        return [audit.envelope(position, event, *owners[str(event.originator_id)]) for position, event in events]

    def wallet_transactions(self, tenant_id: UUID, wallet_id: UUID, after: int,
                            limit: int) -> tuple[list[wallets.TransactionView], bool]:
        """A page of the wallet's transactions after its event number `after`, oldest first (each with
        the balance after it); and whether more follow. A page reads its own events, not the history."""
        wallet = self.wallets.wallet(tenant_id, wallet_id)  # the tenant's, or NotFound
        if after >= wallet.version:
            return [], False
        before = self.wallets.repository.get(wallet_id, version=after).balance if after > 1 else Decimal(0)
        events = self.wallets.repository.event_store.get(wallet_id, gt=after, limit=limit + 2)
        found = wallets.transactions(events, before)
        return found[:limit], len(found) > limit

    def events_recorded(self) -> int:
        """The position of the last event in the store (0 when empty)."""
        return self.tenants.recorder.max_notification_id() or 0

    def close(self) -> None:
        self.counters.stop()
        if self.board is not None:
            self.board.stop()  # no sync while the stores close
        if self._follower is not None:
            self._follower.terminate()  # between transactions or inside one: either way nothing half-done stays
            self._follower.join(10)
        self.usage.close()
        if self.usage.recent is not None:
            self.usage.recent.close()
        for application in (self.tenants, self.catalogue, self.customers, self.subscriptions, self.invoicing,
                            self.wallets):
            application.close()
        if self.usage.database is not self.database:
            self.usage.database.close()
        self.database.close()
        if self.board is not None:
            self.board.close()

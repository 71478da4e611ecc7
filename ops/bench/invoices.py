"""Benchmark: a billing period closed for many customers: invoices drafted and finalized per second, on each store.

For each store, in this process (no HTTP), on a fresh store (SQLite files in a temp dir; PostgreSQL
from `ops.services.postgres(durable=True)`):

1. **Setup (not timed, each step's seconds printed).** `api.ledger.Ledger(url)`; a tenant (invoice
   prefix ACME-, 24 hours' grace); five meters on five event names (sum, count, unique_count, max,
   and a second sum for payments); one monthly USD plan with one version: a $30.00 flat fee paid in
   advance and five metered prices (graduated on tokens, per_unit on requests, volume on active
   users, package on storage, percentage on payments); `--customers` customers, each with a
   calendar subscription from 2026-01-01 (straight through the domain applications, the documents
   caught up every 1,000); `--events-per-customer` usage events each in January, appended to the
   usage log in batches of about `--batch-events` (`ledger.usage.append`), then the usage read model
   caught up (`ledger.usage_runner.catch_up()`, timed apart). Then the clock at 2026-01-01T00:00Z,
   as it would have run on Jan 1: January's advance invoices, drafted and finalized
   (ACME-000001..). It is printed as a pass of its own, but it is part of the setup.
2. **Timed: the period close.** `ledger.close_periods(2026-02-01T00:00Z)`: January's closing
   invoices drafted, February's advance invoices drafted and finalized at once.
3. **Timed: the grace period ends.** `ledger.close_periods(2026-02-02T01:00Z)`: every January
   closing draft finalized, its amounts computed from the usage.
4. **The same tick again** (timed, apart): nothing is due, so nothing changes; what every later tick
   of the clock (every 60 s by default) costs while nothing is due.

For each pass: invoices drafted and finalized (counted from the invoice documents before and after,
checked against what `close_periods` returned and against what the pass should do), seconds,
invoices/s (drafted + finalized: a draft and its finalize are two steps), and the peak RSS during the
pass (ru_maxrss, reset before it through /proc/self/clear_refs). Then the checks: every invoice
finalized, 3 per customer (2 of them in the timed passes), numbers gapless ACME-000001.., and each
January closing invoice's metered quantities equal to those of the events generated here (up to
`--check-lines` invoices). Not a test: it prints, it does not assert speed. Target (issue 4): a
period close for 10,000 customers drafted in under 60 s on a 2-core machine, memory bounded.

    .venv/bin/python -m ops.bench.invoices [--store sqlite|postgres|both] [--customers 10000]
        [--events-per-customer 100] [--batch-events 20000] [--check-lines 10000] [--profile DIR]
"""

import argparse
import contextlib
import cProfile
import os
import pstats
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from api.ledger import Ledger
from domain.aggregate import Actor
from domain.customer import CustomerSpec
from domain.meter import MeterSpec
from domain.money import trap_floats
from domain.plan import PlanSpec
from domain.plan_version import PlanVersionSpec
from domain.price import (
    FlatPrice,
    GraduatedPrice,
    PackagePrice,
    PercentagePrice,
    PerUnitPrice,
    Tier,
    VolumePrice,
)
from domain.subscription import SubscriptionSpec
from domain.tenant import TenantSettings
from domain.usage import UsageEvent
from ops import services
from projections.views import private_id

SETUP = Actor("bench:setup")
PREFIX = "ACME-"
PLAN = "bench"
JANUARY = datetime(2026, 1, 1, tzinfo=UTC)
JANUARY_SECONDS = 31 * 86_400
CLOCKS = {  # the passes: (when the clock runs, what it does)
    "jan-1 (setup)": (datetime(2026, 1, 1, tzinfo=UTC), "Jan advance drafted + finalized"),
    "close": (datetime(2026, 2, 1, tzinfo=UTC), "Jan closing drafted; Feb advance drafted + finalized"),
    "grace": (datetime(2026, 2, 2, 1, tzinfo=UTC), "Jan closing finalized"),
    "idle (again)": (datetime(2026, 2, 2, 1, tzinfo=UTC), "nothing due: the cost of a tick that changes nothing"),
}
TIMED = ("close", "grace")
TARGET_SECONDS = 60


# --- the catalogue and the usage ------------------------------------------------------------------------------

METERS = (
    MeterSpec(code="tokens", name="Tokens", event_name="llm.completion", aggregation="sum", field="tokens"),
    MeterSpec(code="requests", name="API requests", event_name="api.request", aggregation="count"),
    MeterSpec(code="active_users", name="Active users", event_name="user.login", aggregation="unique_count",
              field="user"),
    MeterSpec(code="storage_gb", name="Storage (GB)", event_name="storage.sample", aggregation="max", field="gb"),
    MeterSpec(code="payments", name="Payments", event_name="payment.captured", aggregation="sum", field="amount"),
)
USD = "USD"


def d(text: str) -> Decimal:
    return Decimal(text)


VERSION = PlanVersionSpec(prices=(
    FlatPrice(currency=USD, amount=d("30.00"), pay_in="advance"),
    GraduatedPrice(meter_code="tokens", currency=USD, tiers=(
        Tier(up_to=d("20000"), unit_amount=d("0.0001")),
        Tier(up_to=d("50000"), unit_amount=d("0.00008")),
        Tier(up_to=None, unit_amount=d("0.00005"), flat_amount=d("1.00")))),
    PerUnitPrice(meter_code="requests", currency=USD, unit_amount=d("0.002")),
    VolumePrice(meter_code="active_users", currency=USD, tiers=(
        Tier(up_to=d("3"), unit_amount=d("4.00")),
        Tier(up_to=None, unit_amount=d("3.00"), flat_amount=d("2.00")))),
    PackagePrice(meter_code="storage_gb", currency=USD, package_amount=d("5.00"), package_size=d("50"),
                 free_units=d("10")),
    PercentagePrice(meter_code="payments", currency=USD, rate=d("2.9"), fixed_fee=d("0.30"),
                    min_per_transaction=d("0.50"), max_per_transaction=d("25.00"), free_units=d("2")),
))


def customer_id(n: int) -> str:
    return f"cus-{n:06d}"


def events_of(n: int, count: int) -> list[UsageEvent]:
    """Customer n's January: `count` events spread over the five event names (event i reads meter i % 5),
    at times spread over the month, with properties that vary by customer and event."""
    customer, found = customer_id(n), []
    for i in range(count):
        moment = JANUARY + timedelta(seconds=(i * 26_777 + n * 13) % JANUARY_SECONDS)
        match i % 5:
            case 0:
                properties: dict[str, Any] = {"tokens": 100 + (i * 37 + n) % 5_000}
            case 1:
                properties = {"path": "/v1/things"}
            case 2:
                properties = {"user": f"u{(i // 5 + n) % 7}"}
            case 3:
                properties = {"gb": (i * 13 + n) % 400}
            case _:
                properties = {"amount": Decimal((i * 97 + n) % 50_000).scaleb(-2)}
        found.append(UsageEvent(event_id=f"{customer}-{i:05d}", customer=customer,
                                event_name=METERS[i % 5].event_name, timestamp=moment, properties=properties))
    return found


def expected_quantities(n: int, count: int) -> dict[str, Decimal]:
    """What each metered line of customer n's January closing invoice should show as its quantity, worked out
    here from the events (the percentage line's quantity is its count of transactions)."""
    by_meter: dict[str, list[Any]] = {meter.code: [] for meter in METERS}
    for event in events_of(n, count):
        meter = next(m for m in METERS if m.event_name == event.event_name)
        by_meter[meter.code].append(event.properties.get(meter.field) if meter.field else None)
    return {
        "tokens": Decimal(sum(by_meter["tokens"])),
        "requests": Decimal(len(by_meter["requests"])),
        "active_users": Decimal(len(set(by_meter["active_users"]))),
        "storage_gb": Decimal(max(by_meter["storage_gb"], default=0)),
        "payments": Decimal(len(by_meter["payments"])),
    }


# --- setup -----------------------------------------------------------------------------------------------------

@dataclass
class Setup:
    tenant_id: UUID
    seconds: dict[str, float] = field(default_factory=dict)
    events: int = 0


@contextlib.contextmanager
def step(setup: Setup | None, name: str, store: str) -> Iterator[None]:
    log(f"{store}: {name} ...")
    began = time.perf_counter()
    yield
    seconds = time.perf_counter() - began
    if setup is not None:
        setup.seconds[name] = seconds
    log(f"{store}: {name}: {seconds:.1f} s")


def set_up(ledger: Ledger, store: str, customers: int, per_customer: int, batch_events: int) -> Setup:
    tenant = ledger.command(ledger.tenants.open_tenant, SETUP,
                            TenantSettings(name="Bench", invoice_prefix=PREFIX, grace_period_hours=24))
    setup = Setup(tenant.id)
    with step(setup, "catalogue", store):
        for meter in METERS:
            ledger.catalogue.define_meter(SETUP, tenant.id, meter)
        ledger.catalogue.define_plan(SETUP, tenant.id, PlanSpec(code=PLAN, name="Bench", currency=USD,
                                                                interval="month"))
        ledger.catalogue.publish_plan_version(SETUP, tenant.id, PLAN, VERSION)
        ledger.runner.catch_up()
    with step(setup, "customers + subscriptions", store):
        for n in range(customers):
            external_id = customer_id(n)
            ledger.customers.register(SETUP, tenant.id, CustomerSpec(external_id=external_id, name=external_id,
                                                                     currency=USD))
            ledger.subscriptions.start(SETUP, tenant.id, SubscriptionSpec(
                customer=external_id, plan_code=PLAN, start_at=JANUARY, billing_anchor="calendar"))
            if n % 1000 == 999:
                ledger.runner.catch_up()  # the documents in steps, as commands would keep them
        ledger.runner.catch_up()
    with step(setup, "usage appended", store):
        per_batch = max(1, batch_events // max(per_customer, 1))
        tenant_text = str(tenant.id)
        for first in range(0, customers, per_batch):
            batch = [e for n in range(first, min(first + per_batch, customers)) for e in events_of(n, per_customer)]
            setup.events += ledger.usage.append(tenant_text, batch, datetime.now(UTC))
    with step(setup, "usage read model caught up", store):
        ledger.usage_runner.catch_up()
    return setup


# --- the passes --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Counts:
    invoices: int
    final: int  # finalized (or later: paid, void)


@dataclass(frozen=True)
class Pass:
    name: str
    what: str
    now: datetime
    drafted: int
    finalized: int
    changed: int  # what close_periods returned
    seconds: float
    peak_rss_kb: int  # during the pass (ru_maxrss, reset before it; else the process's peak so far)
    peak_reset: bool

    @property
    def per_second(self) -> float:
        return (self.drafted + self.finalized) / self.seconds

    def speed(self, customers: int) -> str:
        """invoices/s, or (a pass that changed nothing) subscriptions looked at per second."""
        if self.drafted + self.finalized:
            return f"{self.per_second:,.1f}"
        return f"({customers / self.seconds:,.0f} sub/s)"


def invoice_documents(ledger: Ledger) -> Iterator[dict[str, Any]]:
    for _, body in ledger.documents.each("invoices"):
        yield body


def counts(ledger: Ledger) -> Counts:
    total = final = 0
    for body in invoice_documents(ledger):
        total += 1
        final += body["status"] != "draft"
    return Counts(total, final)


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def status_kb(name: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {name} in /proc/self/status")


def run_pass(ledger: Ledger, name: str, store: str, profile_dir: Path | None) -> Pass:
    now, what = CLOCKS[name]
    before = counts(ledger)
    reset = reset_peak_rss()
    log(f"{store}: clock at {now.isoformat()} ({what}) ...")
    profiler = cProfile.Profile() if profile_dir is not None else None
    began = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    changed = ledger.close_periods(now)
    if profiler is not None:
        profiler.disable()
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # = VmHWM: since the reset, else since the start
    after = counts(ledger)
    if profiler is not None and profile_dir is not None:
        path = profile_dir / f"invoices-{store}-{name.split()[0]}.prof"
        profiler.dump_stats(path)
        log(f"{store}: profile of the pass in {path}")
    result = Pass(name, what, now, after.invoices - before.invoices, after.final - before.final, changed, seconds,
                  peak, reset)
    log(f"{store}: {result.drafted:,} drafted, {result.finalized:,} finalized in {seconds:.1f} s")
    return result


# --- checks ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Checks:
    invoices: int
    finalized: int
    drafts: int
    by_kind: dict[str, int]
    numbers_gapless: bool
    numbers_first_last: tuple[str | None, str | None]
    lines_checked: int
    lines_wrong: list[str]
    closing_total: Decimal  # Σ amount_due of January's closing invoices
    problems: list[str]


def check(ledger: Ledger, setup: Setup, customers: int, per_customer: int, check_lines: int) -> Checks:
    bodies = list(invoice_documents(ledger))
    statuses = [b["status"] for b in bodies]
    numbers = sorted(b["number"] for b in bodies if b["number"] is not None)
    expected_numbers = [f"{PREFIX}{n:06d}" for n in range(1, len(numbers) + 1)]
    by_kind: dict[str, int] = {}
    for b in bodies:
        key = f"{b['kind']} {b['period_start'][:7]}"
        by_kind[key] = by_kind.get(key, 0) + 1
    closing = [b for b in bodies if b["kind"] == "closing" and b["period_start"].startswith("2026-01")]
    closing_total = sum((Decimal(b["amount_due"]) for b in closing if b["amount_due"] is not None), Decimal(0))
    wrong: list[str] = []
    checked = 0
    for body in sorted(closing, key=lambda b: b["customer"])[:check_lines]:
        invoice_id = private_id("invoices", body["id"])
        assert invoice_id is not None
        content = ledger.invoicing.invoice(setup.tenant_id, invoice_id).content
        if content is None:
            wrong.append(f"{body['customer']}: no content (still a draft)")
            continue
        n = int(body["customer"].removeprefix("cus-"))
        found = {line.meter_code: Decimal(line.quantity) for line in content.lines if line.meter_code is not None}
        if found != expected_quantities(n, per_customer):
            wrong.append(f"{body['customer']}: quantities {found}, expected {expected_quantities(n, per_customer)}")
        checked += 1
    problems = []
    if len(bodies) != 3 * customers:
        problems.append(f"{len(bodies):,} invoices, expected 3 x {customers:,} customers")
    if statuses.count("finalized") != len(bodies):
        problems.append(f"{len(bodies) - statuses.count('finalized'):,} invoices not finalized")
    if numbers != expected_numbers:
        problems.append(f"numbers are not {PREFIX}000001..{len(numbers):06d} without a gap or a repeat")
    if any(count != customers for count in by_kind.values()) or len(by_kind) != 3:
        problems.append(f"invoices by kind and month {by_kind}, expected {customers:,} of each of 3")
    if setup.events != customers * per_customer:
        problems.append(f"{setup.events:,} usage events recorded, expected {customers * per_customer:,}")
    if wrong:
        problems.append(f"{len(wrong):,} closing invoices with wrong quantities, e.g. {wrong[0]}")
    return Checks(len(bodies), statuses.count("finalized"), statuses.count("draft"), by_kind,
                  numbers == expected_numbers, (numbers[0] if numbers else None, numbers[-1] if numbers else None),
                  checked, wrong, closing_total, problems)


# --- one store ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    store: str
    durability: str
    customers: int
    setup: Setup
    passes: list[Pass]
    checks: Checks
    rss_after_setup_kb: int
    setup_peak_rss_kb: int  # VmHWM at the end of the setup (before any reset)


def durability(store: str, url: str) -> str:
    if store == "sqlite":
        return "WAL; event store synchronous=FULL (SQLite's default), views FULL, usage log FULL"
    return services.postgres_durability(url)


def bench(store: str, args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory(prefix=f"tally-bench-invoices-{store}-") as temp, \
            contextlib.ExitStack() as stack:
        url = (stack.enter_context(services.postgres(durable=True)) if store == "postgres"
               else f"sqlite:///{Path(temp) / 'events.sqlite'}")
        ledger = Ledger(url)
        stack.callback(ledger.close)
        setup = set_up(ledger, store, args.customers, args.events_per_customer, args.batch_events)
        rss_after_setup, setup_peak = status_kb("VmRSS"), status_kb("VmHWM")
        passes = [run_pass(ledger, name, store, args.profile) for name in CLOCKS]
        log(f"{store}: checking ...")
        checks = check(ledger, setup, args.customers, args.events_per_customer, args.check_lines)
        return Result(store, durability(store, url), args.customers, setup, passes, checks, rss_after_setup,
                      setup_peak)


# --- output ------------------------------------------------------------------------------------------------------

def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def mib(kb: int) -> str:
    return f"{kb / 1024:,.0f}"


def report(results: list[Result], args: argparse.Namespace) -> str:
    title = (f"Period close: {args.customers:,} customers x 1 monthly subscription, 5 metered prices + 1 advance "
             f"fee, {args.events_per_customer} usage events each in January; {os.cpu_count()} CPUs")
    lines = [title, "", (f"{'store':<9} {'pass':<14} {'clock at':<17} {'drafted':>8} {'finalized':>9} {'seconds':>8} "
                         f"{'invoices/s':>14} {'peak RSS MiB':>12}  what")]
    for r in results:
        for p in r.passes:
            peak = mib(p.peak_rss_kb) + ("" if p.peak_reset else "*")
            lines.append(f"{r.store:<9} {p.name:<14} {p.now.strftime('%Y-%m-%d %H:%M'):<17} {p.drafted:>8,} "
                         f"{p.finalized:>9,} {p.seconds:>8.1f} {p.speed(r.customers):>14} {peak:>12}  {p.what}")
        timed = [p for p in r.passes if p.name in TIMED]
        seconds, steps = sum(p.seconds for p in timed), sum(p.drafted + p.finalized for p in timed)
        lines.append(f"{r.store:<9} {'close + grace':<14} {'':<17} {sum(p.drafted for p in timed):>8,} "
                     f"{sum(p.finalized for p in timed):>9,} {seconds:>8.1f} {steps / seconds:>14,.1f} {'':>12}  "
                     f"the timed passes (target: the close of {r.customers:,} customers in < {TARGET_SECONDS} s)")
    lines += ["", "setup (not timed):"]
    for r in results:
        steps_text = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in r.setup.seconds.items())
        lines.append(f"  {r.store}: {steps_text}; {r.setup.events:,} usage events; RSS after setup "
                     f"{mib(r.rss_after_setup_kb)} MiB (peak during setup {mib(r.setup_peak_rss_kb)} MiB); "
                     f"{r.durability}")
    lines += ["", "checks:"]
    for r in results:
        c = r.checks
        kinds = ", ".join(f"{kind}: {count:,}" for kind, count in sorted(c.by_kind.items()))
        lines.append(f"  {r.store}: {c.invoices:,} invoices ({kinds}), {c.finalized:,} finalized, {c.drafts:,} drafts; "
                     f"numbers {c.numbers_first_last[0]}..{c.numbers_first_last[1]} gapless: {c.numbers_gapless}; "
                     f"metered quantities of {c.lines_checked:,} January closing invoices checked, "
                     f"{len(c.lines_wrong)} wrong; Σ January closing amount_due {c.closing_total:,} USD")
        for problem in c.problems + pass_problems(r):
            lines.append(f"  {r.store}: PROBLEM: {problem}")
    lines += ["", ("invoices/s = (drafted + finalized) / seconds: a draft and its finalize count as two steps (a pass "
                   "that changed nothing shows subscriptions looked at per second). Peak RSS: getrusage ru_maxrss "
                   "(= VmHWM) during the pass, reset before it through /proc/self/clear_refs (*: could not reset: the "
                   "process's peak so far).")]
    return "\n".join(lines)


def pass_problems(r: Result) -> list[str]:
    """What each pass should have done: the close drafts 2 invoices a customer and finalizes 1, the grace pass
    finalizes 1 (2 a customer finalized in the timed passes), the idle pass nothing; close_periods says the same."""
    expected = {"jan-1 (setup)": (1, 1), "close": (2, 1), "grace": (0, 1), "idle (again)": (0, 0)}
    found = []
    for p in r.passes:
        drafted, finalized = (n * r.customers for n in expected[p.name])
        if (p.drafted, p.finalized) != (drafted, finalized):
            found.append(f"pass {p.name}: {p.drafted:,} drafted and {p.finalized:,} finalized, expected {drafted:,} "
                         f"and {finalized:,}")
        if p.changed != p.drafted + p.finalized:
            found.append(f"pass {p.name}: close_periods returned {p.changed:,}, the documents show "
                         f"{p.drafted + p.finalized:,} steps")
    return found


def print_profile(profile_dir: Path) -> None:
    for path in sorted(profile_dir.glob("invoices-*.prof")):
        print(f"\n--- {path.name}: top 25 by cumulative time")
        pstats.Stats(str(path)).sort_stats("cumulative").print_stats(25)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.invoices", description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--customers", type=int, default=10_000, help="customers, one subscription each (default 10,000)")
    parser.add_argument("--events-per-customer", type=int, default=100, help="usage events each in January (default 100)")
    parser.add_argument("--batch-events", type=int, default=20_000,
                        help="usage events per append (whole customers; default 20,000)")
    parser.add_argument("--check-lines", type=int, default=10_000,
                        help="check the metered quantities of up to this many closing invoices (default 10,000)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="cProfile each pass into DIR/invoices-<store>-<pass>.prof and print the top functions")
    args = parser.parse_args(argv)
    if args.customers < 1 or args.events_per_customer < 0 or args.batch_events < 1 or args.check_lines < 0:
        parser.error("--customers and --batch-events must be at least 1, the others at least 0")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    trap_floats()  # the Decimal context `tally serve` runs with
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM also stops the PostgreSQL started here
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stores = ("sqlite", "postgres") if args.store == "both" else (args.store,)
    results = []
    try:
        for store in stores:
            results.append(bench(store, args))
            print(report(results[-1:], args), flush=True)  # each store's figures as soon as it is done
    except KeyboardInterrupt:
        sys.exit("interrupted")
    if len(results) > 1:
        print("\n" + report(results, args))
    if args.profile is not None:
        print_profile(args.profile)


if __name__ == "__main__":
    main()

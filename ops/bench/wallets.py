"""Benchmark: wallet debits per second, on one hot wallet and across many wallets, and how fresh a
balance read is, on each store.

For each store, in this process (no HTTP), on a fresh store (SQLite files in a temp dir; PostgreSQL
from `ops.services.postgres(durable=True)`), with the ledger's clock stopped at 2026-01-20:

1. **Setup (not timed, printed).** A tenant; a `sum` meter on `llm.completion` (field `tokens`); a
   monthly USD plan at $0.00001 a token; `--wallets` + 1 customers, each subscribed from
   2026-01-01 with one wallet (a credit is worth $0.0001) holding 1,000,000,000 paid credits.
2. **Hot wallet (timed).** `--hot-events` events of one customer appended to the usage log (in
   batches of 1,000, and the usage read model caught up, as `tally serve`'s follower keeps it; not
   timed), then debit passes (`ledger.debit_usage()`, 100,000 log entries a
   pass) until none is left: usage events debited per second.
3. **Many wallets (timed).** `--events-per-wallet` events for each of the `--wallets` other
   customers, appended interleaved; then (after step 4) the same drain: events/s.
4. **Freshness** (between the appends of step 3 and their drain: no wallet's usage is debited yet).
   `--reads` times: one event for a customer (appended, durable, as a 202 is), then
   `ledger.wallet(...)` — the balance as the API answers it, which must count all of that
   customer's usage. The time from the append's start to that read, p50/p99.

Then the checks: each wallet's balance equals its grant less what its invoice line bills (the
usage at the price, rounded to the cent as the line is), in credits. Not a test: it prints, it does not assert speed.
Targets (issue 5): >= 2,000 debits/s on one hot wallet, 10,000 wallets kept within 1 s of their
usage.

    .venv/bin/python -m ops.bench.wallets [--store sqlite|postgres|both] [--hot-events 200000]
        [--wallets 10000] [--events-per-wallet 10] [--reads 200]
"""

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from uuid import UUID

from api.ledger import DEBIT_BATCH, Ledger
from domain.aggregate import Actor
from domain.customer import CustomerSpec
from domain.meter import MeterSpec
from domain.money import round_money
from domain.plan import PlanSpec
from domain.plan_version import PlanVersionSpec
from domain.price import PerUnitPrice
from domain.subscription import SubscriptionSpec
from domain.tenant import TenantSettings
from domain.usage import UsageEvent
from domain.wallet import GrantSpec, WalletSpec
from ops import services

SETUP = Actor("bench:setup")
NOW = datetime(2026, 1, 20, tzinfo=UTC)
JANUARY = datetime(2026, 1, 1, tzinfo=UTC)
PRICE = Decimal("0.00001")  # a token, in USD
RATE = Decimal("0.0001")  # a credit, in USD
GRANT = Decimal(1_000_000_000)
APPEND_BATCH = 1_000


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    log(f"{name} ...")
    began = time.perf_counter()
    yield
    log(f"{name}: {time.perf_counter() - began:.1f} s")


def customer(n: int) -> str:
    return f"cus-{n:06d}"


def event(n: int, i: int, tokens: int) -> UsageEvent:
    return UsageEvent(event_id=f"{customer(n)}-{i:07d}", customer=customer(n), event_name="llm.completion",
                      timestamp=JANUARY + timedelta(seconds=i % 1_500_000), properties={"tokens": tokens})


def set_up(ledger: Ledger, count: int) -> tuple[UUID, list[UUID]]:
    tenant = ledger.command(ledger.tenants.open_tenant, SETUP, TenantSettings(name="Bench"))
    ledger.catalogue.define_meter(SETUP, tenant.id, MeterSpec(code="tokens", name="Tokens",
                                                              event_name="llm.completion", aggregation="sum",
                                                              field="tokens"))
    ledger.catalogue.define_plan(SETUP, tenant.id, PlanSpec(code="ai", name="AI", currency="USD", interval="month"))
    ledger.catalogue.publish_plan_version(SETUP, tenant.id, "ai", PlanVersionSpec(prices=(
        PerUnitPrice(meter_code="tokens", currency="USD", unit_amount=PRICE),)))
    wallets = []
    for n in range(count):
        ledger.customers.register(SETUP, tenant.id, CustomerSpec(external_id=customer(n), name=f"C{n}",
                                                                 currency="USD"))
        ledger.subscriptions.start(SETUP, tenant.id, SubscriptionSpec(customer=customer(n), plan_code="ai",
                                                                      start_at=JANUARY, billing_anchor="calendar"))
        wallet = ledger.wallets.create(SETUP, tenant.id, WalletSpec(customer=customer(n), name="Credits",
                                                                    credit_unit="credit", currency="USD",
                                                                    conversion_rate=RATE))
        ledger.wallets.grant(SETUP, tenant.id, wallet.id, GrantSpec(amount=GRANT, kind="paid"), NOW)
        wallets.append(wallet.id)
        if n % 1_000 == 999:
            ledger.runner.catch_up()
    ledger.runner.catch_up()
    return tenant.id, wallets


def balance(tokens: int) -> Decimal:
    """What a wallet holds after `tokens` of January: its grant less the invoice line's amount (rounded to
    the cent, as the line is) in credits."""
    return GRANT - round_money(tokens * PRICE, "USD") / RATE


def append(ledger: Ledger, tenant_id: UUID, events: list[UsageEvent]) -> None:
    """Into the usage log, then the usage read model caught up (as `tally serve`'s follower keeps it)."""
    for start in range(0, len(events), APPEND_BATCH):
        ledger.usage.append(str(tenant_id), events[start:start + APPEND_BATCH], NOW)
    ledger.usage_runner.catch_up()


def drain(ledger: Ledger) -> tuple[float, int, int]:
    """Debit passes until none is left: seconds, entries read, passes."""
    began, read, passes = time.perf_counter(), 0, 0
    while found := ledger.debit_usage():
        read, passes = read + found, passes + 1
    return time.perf_counter() - began, read, passes


def run(store: str, args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix=f"tally-bench-wallets-{store}-") as temp, \
            (services.postgres(durable=True) if store == "postgres" else contextlib.nullcontext(None)) as url:
        ledger = Ledger(url or f"sqlite:///{Path(temp) / 'events.sqlite'}")
        ledger.subscriptions.clock = lambda: NOW
        try:
            with timed(f"{store}: setup ({args.wallets + 1:,} customers, subscriptions, wallets, grants)"):
                tenant_id, wallets = set_up(ledger, args.wallets + 1)
            hot_tokens = [100 + i % 900 for i in range(args.hot_events)]
            append(ledger, tenant_id, [event(0, i, t) for i, t in enumerate(hot_tokens)])
            with timed(f"{store}: hot wallet, {args.hot_events:,} events"):
                hot_seconds, hot_read, hot_passes = drain(ledger)
            wide_tokens: dict[int, int] = {}
            wide = []
            for i in range(args.events_per_wallet):
                for n in range(1, args.wallets + 1):
                    tokens = 10 + (n * 7 + i) % 90
                    wide_tokens[n] = wide_tokens.get(n, 0) + tokens
                    wide.append(event(n, 1_000 + i, tokens))
            append(ledger, tenant_id, wide)
            latencies, shown = [], 0  # read while none of the 10,000 wallets' usage is debited yet
            for r in range(args.reads):
                n = random.randint(1, args.wallets)
                began = time.perf_counter()
                ledger.usage.append(str(tenant_id), [event(n, 10_000_000 + r, 1_000)], NOW)
                view = ledger.wallet(tenant_id, wallets[n])
                latencies.append((time.perf_counter() - began) * 1000)
                wide_tokens[n] += 1_000
                shown += view.balance == balance(wide_tokens[n])
            ledger.usage_runner.catch_up()
            with timed(f"{store}: {args.wallets:,} wallets, {len(wide) + args.reads:,} events"):
                wide_seconds, wide_read, wide_passes = drain(ledger)
            hot_balance = ledger.wallets.wallet(tenant_id, wallets[0]).balance
            wrong = sum(ledger.wallets.wallet(tenant_id, wallets[n]).balance != balance(tokens)
                        for n, tokens in wide_tokens.items())
            return {
                "hot": (hot_read, hot_seconds, hot_passes), "wide": (wide_read, wide_seconds, wide_passes),
                "reads": latencies, "shown": shown,
                "hot_ok": hot_balance == balance(sum(hot_tokens)), "wrong": wrong,
            }
        finally:
            ledger.close()


def report(results: dict[str, dict[str, object]], args: argparse.Namespace) -> None:
    print(f"\nWallet debits: 1 hot wallet x {args.hot_events:,} events; {args.wallets:,} wallets x "
          f"{args.events_per_wallet} events; {args.reads} fresh reads; debit passes of {DEBIT_BATCH:,} log entries\n")
    print(f"{'store':<9} {'run':<14} {'events':>9} {'seconds':>8} {'events/s':>10} {'passes':>7} "
          f"{'target':>8}")
    for store, found in results.items():
        for name, target in (("hot", "2,000/s"), ("wide", "-")):
            read, seconds, passes = found[name]  # type: ignore[misc]
            label = "hot wallet" if name == "hot" else f"{args.wallets:,} wallets"
            print(f"{store:<9} {label:<14} {read:>9,} {seconds:>8.2f} {read / seconds:>10,.0f} {passes:>7} "
                  f"{target:>8}")
    print(f"\n{'store':<9} {'read p50 ms':>12} {'read p99 ms':>12} {'target':>8} {'reads showing the usage':>24}  "
          "checks")
    for store, found in results.items():
        latencies = sorted(found["reads"])  # type: ignore[arg-type]
        p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] if latencies else 0.0
        print(f"{store:<9} {statistics.median(latencies) if latencies else 0:>12.1f} {p99:>12.1f} {'< 1,000':>8} "
              f"{found['shown']:>10} of {len(latencies):<11}  hot balance right: {found['hot_ok']}; "
              f"wallets with a wrong balance: {found['wrong']}")
    print("\nevents/s: usage events debited per second by the debit passes (each pass: one debit event per wallet "
          "it touches, 500 customers' in a save). A read's time is from the event's durable append to the balance "
          "that counts it, read while none of the many wallets' usage is debited yet (reads add the usage not "
          "debited yet): the usage -> balance latency the target '10,000 wallets within 1 s of their usage' is about.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--hot-events", type=int, default=200_000)
    parser.add_argument("--wallets", type=int, default=10_000)
    parser.add_argument("--events-per-wallet", type=int, default=10)
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()
    stores = ("sqlite", "postgres") if args.store == "both" else (args.store,)
    report({store: run(store, args) for store in stores}, args)


if __name__ == "__main__":
    main()

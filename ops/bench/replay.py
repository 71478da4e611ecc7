"""Benchmark: how fast `tally replay --from-scratch` rebuilds the read models, on each store.

Setup (not timed): a store with `--domain-events` domain events (customers, each with a wallet and
three grants: five events a customer, saved 500 customers at a time) and `--usage-events` usage
events (batches of 10,000 to those customers, through the usage log). Then, timed, in this process:

1. the documents and the audit trail rebuilt from the notification log (`ops.replay.replay`,
   `--from-scratch`, models `documents` and `audit`): domain events/s;
2. the usage read model rebuilt from the usage log (model `usage`): usage events/s;
3. with `--verify`, `tally audit verify` over the whole store (it must find no difference).

Each step prints its seconds, events/s and the peak RSS during it (VmHWM reset before it). The
overall figure is all events replayed over the seconds of steps 1 and 2. Target (issue 7):
>= 100,000 events/s embedded, memory bounded. Figures only; nothing here asserts a speed.

    .venv/bin/python -m ops.bench.replay [--store sqlite|postgres|both] [--domain-events 100000]
        [--usage-events 1000000] [--verify]
"""

import argparse
import resource
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from api.ledger import Ledger
from domain.aggregate import Actor, acting
from domain.customer import Customer, CustomerDetails
from domain.tenant import TenantSettings
from domain.usage import UsageEvent
from domain.wallet import GrantSpec, Wallet, WalletSpec
from ops import services
from ops.bench.invoices import reset_peak_rss
from ops.replay import replay
from projections import audit
from projections.drivers.inprocess import NAME as DOCUMENTS

SETUP = Actor("bench:setup")
NOW = datetime(2026, 1, 20, tzinfo=UTC)
SAVE = 500  # customers a save holds
USAGE_BATCH = 10_000


def log(text: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {text}", flush=True)


def set_up(ledger: Ledger, domain_events: int, usage_events: int) -> None:
    tenant = ledger.command(ledger.tenants.open_tenant, SETUP, TenantSettings(name="Bench")).id
    customers = max(1, (domain_events - 1) // 5)
    for start in range(0, customers, SAVE):
        with acting(SETUP):
            made = [Customer(tenant_id=tenant, external_id=f"c-{n}", currency="USD", details=CustomerDetails(name=f"C{n}"))
                    for n in range(start, min(start + SAVE, customers))]
            wallets = [Wallet(tenant_id=tenant, spec=WalletSpec(customer=customer.external_id, name="Credits",
                                                                credit_unit="credit", currency="USD",
                                                                conversion_rate=Decimal("0.01")))
                       for customer in made]
            for wallet in wallets:
                for amount in ("10", "20.5", "0.000001"):
                    wallet.grant(GrantSpec(amount=Decimal(amount), kind="paid"), NOW)
        ledger.customers.save(*made)
        ledger.wallets.save(*wallets)
    for start in range(0, usage_events, USAGE_BATCH):
        batch = [UsageEvent(event_id=f"u-{n}", customer=f"c-{n % customers}", event_name="llm",
                            timestamp=NOW - timedelta(seconds=n % 86_400), properties={"tokens": n % 1000})
                 for n in range(start, min(start + USAGE_BATCH, usage_events))]
        ledger.usage.append(str(tenant), batch, NOW)


def step(name: str, run: "callable") -> tuple[float, int]:  # type: ignore[valid-type]
    reset_peak_rss()
    began = time.perf_counter()
    run()
    seconds = time.perf_counter() - began
    return seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def bench(store: str, url: str, args: argparse.Namespace) -> list[tuple]:
    ledger = Ledger(url)
    try:
        log(f"{store}: setup ({args.domain_events:,} domain events, {args.usage_events:,} usage events)")
        set_up(ledger, args.domain_events, args.usage_events)
        ledger.runner.catch_up()
        ledger.usage_runner.catch_up()
        domain = ledger.events_recorded()
        usage = ledger.usage.last_position()
        log(f"{store}: replay documents + audit")
        seconds_d, rss_d = step("store", lambda: replay(ledger, [DOCUMENTS, audit.NAME], from_scratch=True))
        log(f"{store}: replay usage")
        seconds_u, rss_u = step("usage", lambda: replay(ledger, ["usage"], from_scratch=True))
        rows = [(store, "documents + audit", domain, seconds_d, rss_d), (store, "usage", usage, seconds_u, rss_u),
                (store, "both (overall)", domain + usage, seconds_d + seconds_u, max(rss_d, rss_u))]
        if args.verify:
            from ops.verify import verify

            log(f"{store}: audit verify")
            found: list = []
            seconds_v, rss_v = step("verify", lambda: found.extend(verify(ledger)))
            rows.append((store, f"audit verify ({len(found)} differences)", domain + usage, seconds_v, rss_v))
        return rows
    finally:
        ledger.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--domain-events", type=int, default=100_000)
    parser.add_argument("--usage-events", type=int, default=1_000_000)
    parser.add_argument("--verify", action="store_true", help="also time tally audit verify over the store")
    args = parser.parse_args()
    rows = []
    with ExitStack() as stack:
        if args.store in ("sqlite", "both"):
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="tally-bench-replay-"))
            rows += bench("sqlite", f"sqlite:///{Path(folder) / 'events.sqlite'}", args)
        if args.store in ("postgres", "both"):
            rows += bench("postgres", stack.enter_context(services.postgres(durable=True)), args)
    print(f"\n{'store':<10} {'step':<34} {'events':>11} {'seconds':>9} {'events/s':>10} {'peak RSS':>10}")
    for store, name, events, seconds, rss in rows:
        print(f"{store:<10} {name:<34} {events:>11,} {seconds:>9.2f} {events / seconds:>10,.0f} "
              f"{rss / 1024:>7.0f} MiB")
    print("target (issue 7): >= 100,000 events/s embedded (overall), memory bounded")


if __name__ == "__main__":
    main()

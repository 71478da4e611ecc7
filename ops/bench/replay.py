"""Benchmark: how fast `tally replay --from-scratch` rebuilds the read models, on each store.

Setup (not timed): a store with `--domain-events` domain events (customers, each with a wallet and
three grants: five events a customer, saved 500 customers at a time) and `--usage-events` usage
events (batches of 10,000 to those customers, through the usage log). Then, timed, in this process:

1. `tally replay --from-scratch --model documents --model audit --model usage`, the real command
   in a process of its own (the store's log there, the usage log at the same time in a process of
   the command's own). Printed: the command's table (each model's seconds), the replay's own seconds
   and events/s (all events over the seconds the command reports for the replay), and the wall
   seconds of the command from start to exit (Python's start-up and imports included);
2. with `--verify`, `tally audit verify` over the whole store (exit 0: no difference).

Peak RSS is the largest of the command's processes (getrusage RUSAGE_CHILDREN). Target (issue 7):
>= 100,000 events/s embedded, memory bounded. Figures only; nothing here asserts a speed.

    .venv/bin/python -m ops.bench.replay [--store sqlite|postgres|both] [--domain-events 100000]
        [--usage-events 1000000] [--verify]
"""

import argparse
import os
import re
import resource
import subprocess
import sys
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

SETUP = Actor("bench:setup")
TALLY = os.path.join(os.path.dirname(sys.executable), "tally")
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
            made = [Customer(tenant_id=tenant, external_id=f"c-{n}", currency="USD",
                             details=CustomerDetails(name=f"C{n}")) for n in range(start, min(start + SAVE, customers))]
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


def command(url: str, *args: str) -> tuple[str, float, int]:
    """Run `tally ARGS` on the store; its output, wall seconds and peak RSS (KiB, its processes')."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}, "TALLY_DATABASE_URL": url}
    began = time.perf_counter()
    done = subprocess.run([TALLY, *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"tally {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done.stdout, seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def bench(store: str, url: str, args: argparse.Namespace) -> list[tuple]:
    ledger = Ledger(url)
    try:
        log(f"{store}: setup ({args.domain_events:,} domain events, {args.usage_events:,} usage events)")
        set_up(ledger, args.domain_events, args.usage_events)
        ledger.runner.catch_up()
        ledger.usage_runner.catch_up()
        domain, usage = ledger.events_recorded(), ledger.usage.last_position()
    finally:
        ledger.close()
    log(f"{store}: tally replay --from-scratch (the two logs at once)")
    output, wall, rss = command(url, "replay", "--from-scratch", "--model", "documents", "--model", "audit",
                                "--model", "usage")
    print(output, flush=True)
    seconds = float(re.search(r"in ([0-9.]+) s", output).group(1))  # type: ignore[union-attr]
    rows = [(store, "replay --from-scratch (its own time)", domain + usage, seconds, rss),
            (store, "the command, start to exit", domain + usage, wall, rss)]
    if args.verify:
        log(f"{store}: tally audit verify")
        output, wall, rss = command(url, "audit", "verify")
        rows.append((store, "audit verify (exit 0: no difference)", domain + usage, wall, rss))
    return rows


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

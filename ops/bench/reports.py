"""Benchmark: usage reports of a heavy customer, from its events and from kept hours, on each store.

For each store, in this process (no HTTP), on a fresh store (SQLite files in a temp dir; PostgreSQL
from `ops.services.postgres(durable=True)`):

1. **Setup (not timed, printed).** A tenant with four meters on `llm.completion`: `tokens` (sum, by
   model), `calls` (count), `users` (unique_count of the user) and `peak` (max, by model); one
   customer with `--events` events spread evenly over January 2026 (3 models, 50 users), appended in
   batches of 10,000 and the usage read model caught up (as `tally serve`'s follower keeps it).
2. **Reports (timed).** Each query below, as `GET /v1/customers/{id}/usage` computes it
   (`ledger.usage_report`), three ways: from the events alone (as before hours were kept), the first
   read (which keeps the month's hours), and a second read. Then one late event at January 15th,
   applied by the read model, and the query read again (its hour from the events, the others kept).
   Every answer must equal the one from the events (the late event counted): else the bench stops.

Not a test: it prints, it does not assert speed.

    .venv/bin/python -m ops.bench.reports [--store sqlite|postgres|both] [--events 1000000]
"""

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from api.ledger import Ledger
from domain.aggregate import Actor
from domain.meter import MeterSpec
from domain.tenant import TenantSettings
from domain.usage import UsageEvent
from ops import services
from projections.usage import report

SETUP = Actor("bench:setup")
JANUARY, FEBRUARY = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
RECORDED = datetime(2026, 2, 2, tzinfo=UTC)
LATE = datetime(2026, 1, 15, tzinfo=UTC)
CUSTOMER = "heavy"
METERS = (
    MeterSpec(code="tokens", name="Tokens", event_name="llm.completion", aggregation="sum", field="tokens",
              group_by=("model",)),
    MeterSpec(code="calls", name="Calls", event_name="llm.completion", aggregation="count"),
    MeterSpec(code="users", name="Users", event_name="llm.completion", aggregation="unique_count", field="user"),
    MeterSpec(code="peak", name="Peak", event_name="llm.completion", aggregation="max", field="tokens",
              group_by=("model",)),
)
QUERIES = (  # meter, window, group_by
    ("tokens", None, ()),
    ("tokens", "day", ("model",)),
    ("calls", "hour", ()),
    ("users", "day", ()),
    ("peak", None, ("model",)),
)


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def set_up(ledger: Ledger, events: int) -> UUID:
    tenant = ledger.command(ledger.tenants.open_tenant, SETUP, TenantSettings(name="Bench")).id
    for meter in METERS:
        ledger.catalogue.define_meter(SETUP, tenant, meter)
    step = (FEBRUARY - JANUARY) / events
    for start in range(0, events, 10_000):
        ledger.usage.append(str(tenant), [
            UsageEvent(event_id=f"e{n}", customer=CUSTOMER, event_name="llm.completion", timestamp=JANUARY + n * step,
                       properties={"tokens": 100 + n % 900, "model": f"m{n % 3}", "user": f"u{n % 50}"})
            for n in range(start, min(events, start + 10_000))], RECORDED)
    ledger.usage_runner.catch_up()
    return tenant


def timed(read: Callable[[], Any]) -> tuple[Any, float]:
    began = time.perf_counter()
    found = read()
    return found, (time.perf_counter() - began) * 1000


def run(store: str, args: argparse.Namespace) -> list[tuple[str, ...]]:
    with tempfile.TemporaryDirectory(prefix=f"tally-bench-reports-{store}-") as temp, \
            (services.postgres(durable=True) if store == "postgres" else contextlib.nullcontext(None)) as url:
        ledger = Ledger(url or f"sqlite:///{Path(temp) / 'events.sqlite'}")
        try:
            began = time.perf_counter()
            tenant = set_up(ledger, args.events)
            log(f"{store}: {args.events:,} events of one customer in January, in {time.perf_counter() - began:.0f} s")
            return [measure(ledger, tenant, store, query, n) for n, query in enumerate(QUERIES)]
        finally:
            ledger.close()


def measure(ledger: Ledger, tenant: UUID, store: str, query: tuple[str, str | None, tuple[str, ...]],
            n: int) -> tuple[str, ...]:
    code, window, group_by = query
    meter = ledger.catalogue.meter(tenant, code).spec

    def from_events() -> Any:
        return report(ledger._usage_reader(str(tenant), CUSTOMER, meter), CUSTOMER, meter, JANUARY, FEBRUARY, window,
                      group_by)

    def kept() -> Any:
        return ledger.usage_report(tenant, CUSTOMER, code, JANUARY, FEBRUARY, window, group_by)

    expected, old_ms = timed(from_events)
    first, first_ms = timed(kept)
    again, again_ms = timed(kept)
    ledger.usage.append(str(tenant), [UsageEvent(
        event_id=f"late-{n}", customer=CUSTOMER, event_name="llm.completion", timestamp=LATE,
        properties={"tokens": 5_000 + n, "model": "m1", "user": f"late-{n}"})], RECORDED)
    ledger.usage_runner.catch_up()
    late, late_ms = timed(kept)
    assert first == again == expected, f"{code}: a report from kept hours differs from the one from the events"
    assert late == from_events() != expected, f"{code}: the late event is not counted as from the events"
    log(f"{store} {code} {window} {group_by}: {old_ms:,.0f} / {first_ms:,.0f} / {again_ms:,.1f} / {late_ms:,.1f} ms")
    return (store, code, window or "-", ",".join(group_by) or "-", f"{len(first.buckets):,}", f"{old_ms:,.0f}",
            f"{first_ms:,.0f}", f"{again_ms:,.1f}", f"{late_ms:,.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    stores = ("sqlite", "postgres") if args.store == "both" else (args.store,)
    rows = [row for store in stores for row in run(store, args)]
    print(f"\nUsage reports of one customer over January 2026, {args.events:,} events, ms "
          "(from events: as before hours were kept; then the first read, which keeps them, a second, and one "
          "after a late event)\n")
    head = ("store", "meter", "window", "group_by", "buckets", "from events", "first", "second", "after late")
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()

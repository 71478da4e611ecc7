"""Benchmark: how fast an entitlement check answers, in process and over HTTP under ingest load.

1. **In process** (embedded store, a temp dir; the ledger's clock stopped at 2026-01-20). A tenant;
   a `sum` meter of tokens and a `count` meter of images; a monthly plan granting 100,000,000 tokens
   a month (soft limit 10 % above), 1,000 images a day, and a boolean feature; `--customers`
   customers subscribed from 2026-01-01, each with `--history` usage events in January (in the
   usage read model, as `tally serve`'s follower keeps it). Then one check per customer (the first:
   it reads the customer's plan and counts its window), then `--checks` checks of random customers
   and features, each timed: p50/p99. Then for 200 customers the check's `used` is compared with
   the usage report's total of the same window (must be equal).
2. **Over HTTP** (`tally serve` on the embedded store with `TALLY_WORKERS=--workers`, real time). The
   same catalogue through the API, `--customers` customers. A process ingests `--ingest-rate`
   events/s (batches of 1,000 to random customers, on a fixed schedule); another process (raw
   asyncio HTTP/1.1 client on uvloop, `--connections` keep-alive connections) asks `--rate` checks/s,
   each connection paced on a fixed schedule: a check's latency counts from when it was due to be
   sent, so a server that falls behind shows it (no coordinated omission); a connection that slept
   until then counts from when its timer woke it (uvloop's timers fire up to 1 ms late: the
   client's delay, not the server's). The first `--warm-seconds` (each serving process reads each
   customer once) are reported apart from the
   `--seconds` after them. Printed: checks/s achieved, p50/p99/max (and apart for the metered and
   the boolean checks), events/s ingested, and the cores each process used mid-run.

Targets (issue 6): p99 < 1 ms in process; p99 < 5 ms over HTTP at >= 5,000 checks/s while another
process ingests 10,000 events/s. Figures only; nothing here asserts a speed.

    .venv/bin/python -m ops.bench.entitlements [--part inprocess|http|both] [--customers 1000]
        [--history 100] [--checks 50000] [--rate 5000] [--connections 50] [--warm-seconds 5]
        [--seconds 20] [--ingest-rate 10000] [--workers 2]
"""

import argparse
import asyncio
import multiprocessing
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import httpx
import orjson
import uvloop

from api.ledger import Ledger
from domain.aggregate import Actor
from domain.customer import CustomerSpec
from domain.feature import FeatureSpec
from domain.meter import MeterSpec
from domain.plan import PlanSpec
from domain.plan_version import PlanVersionSpec
from domain.price import Entitlement, FlatPrice
from domain.subscription import SubscriptionSpec
from domain.tenant import TenantSettings
from domain.usage import UsageEvent
from ops import services
from ops.bench import freshness
from ops.bench import ingest as ingest_bench
from ops.bench.ingest import Server, serving

SETUP = Actor("bench:setup")
CHECKER = Actor("bench:checks")
NOW = datetime(2026, 1, 20, tzinfo=UTC)
JANUARY = datetime(2026, 1, 1, tzinfo=UTC)
METERS = [{"code": "tokens", "name": "Tokens", "event_name": "llm", "aggregation": "sum", "field": "tokens"},
          {"code": "images", "name": "Images", "event_name": "image", "aggregation": "count"}]
FEATURES = [{"code": "ai", "name": "AI", "type": "metered", "meter_code": "tokens"},
            {"code": "img", "name": "Images", "type": "metered", "meter_code": "images"},
            {"code": "sso", "name": "SSO", "type": "boolean"}]
ENTITLEMENTS = [{"feature_code": "ai", "limit": "100000000", "soft_limit": "110000000", "reset": "month"},
                {"feature_code": "img", "limit": "1000", "reset": "day"},
                {"feature_code": "sso", "enabled": True}]
PLAN = {"code": "pro", "name": "Pro", "currency": "USD", "interval": "month"}
PRICES = [{"type": "flat", "currency": "USD", "amount": "10.00", "pay_in": "advance"}]
LATE_SECONDS = 2.0
INGEST_LANES = 4
CODES = ["ai", "ai", "img", "sso"]  # what the checks ask for: mostly the big metered one
METERED = {"ai", "img"}  # the others: boolean


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def customer(n: int) -> str:
    return f"cus-{n:05d}"


def percentiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[max(0, int(len(ordered) * 0.99) - 1)], ordered[-1]


# 1. In process

def set_up(ledger: Ledger, count: int) -> UUID:
    tenant = ledger.command(ledger.tenants.open_tenant, SETUP, TenantSettings(name="Bench")).id
    for meter in METERS:
        ledger.catalogue.define_meter(SETUP, tenant, MeterSpec(**meter))
    for feature in FEATURES:
        ledger.catalogue.define_feature(SETUP, tenant, FeatureSpec(**feature))
    ledger.catalogue.define_plan(SETUP, tenant, PlanSpec(**PLAN))
    ledger.catalogue.publish_plan_version(SETUP, tenant, "pro", PlanVersionSpec(
        prices=(FlatPrice(currency="USD", amount=Decimal("10.00"), pay_in="advance"),),
        entitlements=tuple(Entitlement(**{k: Decimal(v) if k.endswith("limit") else v for k, v in e.items()})
                           for e in ENTITLEMENTS)))
    for n in range(count):
        ledger.customers.register(SETUP, tenant, CustomerSpec(external_id=customer(n), name=f"C{n}", currency="USD"))
        ledger.subscriptions.start(SETUP, tenant, SubscriptionSpec(customer=customer(n), plan_code="pro",
                                                                   start_at=JANUARY, billing_anchor="calendar"))
    ledger.runner.catch_up()
    return tenant


def history(ledger: Ledger, tenant: UUID, count: int, per_customer: int) -> None:
    events = []
    for n in range(count):
        for i in range(per_customer):
            when = JANUARY + timedelta(minutes=(n * 7919 + i * 104_729) % (19 * 24 * 60))
            name, properties = ("image", {}) if i % 4 == 0 else ("llm", {"tokens": 100 + i % 900})
            events.append(UsageEvent(event_id=f"{customer(n)}-{i}", customer=customer(n), event_name=name,
                                     timestamp=when, properties=properties))
    for start in range(0, len(events), 1_000):
        ledger.usage.append(str(tenant), events[start:start + 1_000], NOW)
    ledger.usage_runner.catch_up()


def in_process(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="tally-bench-entitlements-") as temp:
        ledger = Ledger(f"sqlite:///{Path(temp) / 'events.sqlite'}")
        ledger.subscriptions.clock = lambda: NOW
        try:
            log(f"in process: setup ({args.customers:,} customers, {args.customers * args.history:,} events)")
            tenant = set_up(ledger, args.customers)
            history(ledger, tenant, args.customers, args.history)
            first = []
            for n in range(args.customers):
                began = time.perf_counter()
                ledger.check(CHECKER, tenant, customer(n), "ai", Decimal(1), NOW)
                first.append((time.perf_counter() - began) * 1000)
            log(f"in process: {args.checks:,} checks")
            asks = [(customer(random.randrange(args.customers)), random.choice(CODES)) for _ in range(args.checks)]
            timings = []
            began_all = time.perf_counter()
            for who, code in asks:
                began = time.perf_counter()
                ledger.check(CHECKER, tenant, who, code, Decimal(1), NOW)
                timings.append((time.perf_counter() - began) * 1000)
            seconds = time.perf_counter() - began_all
            wrong = 0
            for n in random.sample(range(args.customers), min(200, args.customers)):
                used = ledger.check(CHECKER, tenant, customer(n), "ai", Decimal(1), NOW).used
                total = ledger.usage_report(tenant, customer(n), "tokens", JANUARY, datetime(2026, 2, 1, tzinfo=UTC),
                                            None, ()).total
                wrong += used != total
            return {"first": first, "timings": timings, "seconds": seconds, "wrong": wrong,
                    "compared": min(200, args.customers)}
        finally:
            ledger.close()


# 2. Over HTTP

def set_up_http(base_url: str, key: str, count: int) -> None:
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as api:
        month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        posts = [("/v1/meters", m) for m in METERS] + [("/v1/features", f) for f in FEATURES] + [
            ("/v1/plans", PLAN), ("/v1/plans/pro/versions", {"prices": PRICES, "entitlements": ENTITLEMENTS})]
        for n in range(count):
            posts += [("/v1/customers", {"external_id": customer(n), "name": f"C{n}", "currency": "USD"}),
                      ("/v1/subscriptions", {"customer": customer(n), "plan_code": "pro",
                                             "start_at": month.isoformat(), "billing_anchor": "calendar"})]
        for path, body in posts:
            answer = api.post(path, json=body)
            if answer.status_code != 201:
                raise RuntimeError(f"POST {path}: {answer.status_code} {answer.text}")


def ingest(port: int, key: str, customers: int, rate: int, seconds: float, out: "multiprocessing.Queue") -> None:
    """Batches of 1,000 events to random customers at `rate` events/s, on a fixed schedule shared by
    INGEST_LANES keep-alive connections (a batch waits for its 202: a slow answer must not slow the rate)."""
    moment = datetime.now(UTC).isoformat()
    bodies = [orjson.dumps({"events": [
        {"event_id": uuid.uuid4().hex, "customer": customer(random.randrange(customers)),
         "event_name": "llm" if i % 4 else "image", "timestamp": moment, "properties": {"tokens": 100 + i}}
        for i in range(1_000)]}) for _ in range(int(seconds * max(1, rate // 1_000)))]
    start, _, acked = freshness.send(port, bodies, max(1, rate // 1_000), INGEST_LANES, key)
    out.put((1_000 * len(bodies), max(acked) - start))


def cpu_seconds(server: int, others: dict[str, int | None]) -> dict[str, float]:
    """CPU seconds of the server, of its child processes (serving processes and the usage read model's
    follower) together, and of the other processes named."""
    found = {"server": ingest_bench.cpu_seconds(server),
             "server's children": sum(ingest_bench.cpu_seconds(pid) for pid in services.children(server)
                                      if _alive(pid))}
    return found | {name: ingest_bench.cpu_seconds(pid) for name, pid in others.items() if pid and _alive(pid)}


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").exists()


class _Lane(asyncio.Protocol):
    """One keep-alive connection asking on a fixed schedule: its next check is due `interval` after
    the last was due, sent at once when that time has passed (the server fell behind), else when
    the timer wakes. A check's latency counts from when it was due, or from when its timer woke the
    lane (uvloop's timers fire up to 1 ms late: the client's delay, not the server's). An asyncio
    protocol parses the answers as they come, with no coroutine step per header line: the client's
    own cost runs on the same cores as the server's."""

    def __init__(self, requests: list[tuple[bytes, str]], interval: float, start: float, end: float,
                 latencies: list[tuple[float, float, str]], statuses: dict[int, int], done: asyncio.Future) -> None:
        self.requests, self.interval, self.start, self.end = requests, interval, start, end
        self.latencies, self.statuses, self.done = latencies, statuses, done
        self.loop = asyncio.get_running_loop()
        self.due, self.sent, self.i, self.buffer = start, 0.0, 0, b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._next()

    def _next(self) -> None:
        now = time.perf_counter()
        if self.due >= self.end or now >= self.end + LATE_SECONDS:  # a server far behind: stop asking
            self.transport.close()  # type: ignore[union-attr]
            if not self.done.done():
                self.done.set_result(None)
        elif now < self.due:
            self.loop.call_later(self.due - now, self._send, True)
        else:
            self._send(False)

    def _send(self, woken: bool) -> None:
        self.sent = time.perf_counter() if woken else self.due
        self.transport.write(self.requests[self.i % len(self.requests)][0])  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = self.buffer[:head_end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15:].partition(b"\r\n")[0]) if at >= 0 else 0
        if len(self.buffer) < head_end + 4 + length:
            return
        self.latencies.append((self.due - self.start, (time.perf_counter() - self.sent) * 1000,
                               self.requests[self.i % len(self.requests)][1]))
        status = int(head[9:12])
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.buffer = self.buffer[head_end + 4 + length:]
        self.due, self.i = self.due + self.interval, self.i + 1
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def checks(port: int, key: str, customers: int, rate: int, connections: int, seconds: float,
           out: "multiprocessing.Queue") -> None:
    """`rate` checks/s over `connections` keep-alive connections, each on a fixed schedule."""
    requests = []
    for _ in range(2_000):
        code = random.choice(CODES)
        body = orjson.dumps({"customer": customer(random.randrange(customers)), "feature_code": code})
        requests.append((b"POST /v1/entitlements/check HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                         + key.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body, code))
    latencies: list[tuple[float, float, str]] = []
    statuses: dict[int, int] = {}

    async def run() -> float:
        start = time.perf_counter() + 0.2
        interval = connections / rate
        loop, lanes = asyncio.get_running_loop(), []
        for c in range(connections):
            done = loop.create_future()
            await loop.create_connection(lambda c=c, done=done: _Lane(
                requests[c::connections], interval, start + c * interval / connections, start + seconds, latencies,
                statuses, done), "127.0.0.1", port)
            lanes.append(done)
        await asyncio.gather(*lanes)
        return time.perf_counter() - start

    elapsed = uvloop.run(run())  # the client's own cost is the machine's too: the fast loop
    out.put((latencies, statuses, elapsed))


def over_http(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="tally-bench-entitlements-http-") as temp:
        folder = Path(temp)
        with serving(f"sqlite:///{folder / 'events.sqlite'}", folder, {"TALLY_WORKERS": str(args.workers)}) as server:
            log(f"http: setup ({args.customers:,} customers through the API)")
            set_up_http(server.base_url, server.key, args.customers)
            context = multiprocessing.get_context("spawn")
            results: multiprocessing.Queue = context.Queue()
            ingested: multiprocessing.Queue = context.Queue()
            total = args.warm_seconds + args.seconds
            log(f"http: {args.rate:,} checks/s for {args.warm_seconds:.0f} + {args.seconds:.0f} s while ingesting "
                f"{args.ingest_rate:,} events/s")
            feeder = context.Process(target=ingest, args=(server.port, server.key, args.customers, args.ingest_rate,
                                                          total + 1, ingested))
            if args.client == "wrk":
                return _with_wrk(args, server, folder, feeder, ingested)
            asker = context.Process(target=checks, args=(server.port, server.key, args.customers, args.rate,
                                                         args.connections, total, results))
            if args.ingest_rate:
                feeder.start()
                time.sleep(0.5)
            asker.start()
            time.sleep(args.warm_seconds + args.seconds / 4)
            named = {"checks client": asker.pid, "ingest client": feeder.pid}
            before, wall = cpu_seconds(server.process.pid, named), time.perf_counter()
            time.sleep(args.seconds / 2)  # the busy middle of the run
            after, wall = cpu_seconds(server.process.pid, named), time.perf_counter() - wall
            latencies, statuses, elapsed = results.get()
            sent, ingest_seconds = ingested.get() if args.ingest_rate else (0, 1.0)
            asker.join()
            if args.ingest_rate:
                feeder.join()
            warm = [ms for due, ms, _ in latencies if due < args.warm_seconds]
            steady = [ms for due, ms, _ in latencies if due >= args.warm_seconds]
            kinds = {kind: percentiles([ms for due, ms, code in latencies if due >= args.warm_seconds
                                        and (code in METERED) == (kind == "metered")])
                     for kind in ("metered", "boolean")}
            return {"warm": percentiles(warm), "steady": percentiles(steady), "kinds": kinds, "rate": len(steady) / (
                elapsed - args.warm_seconds), "statuses": statuses, "ingested": sent / ingest_seconds,
                "cpu": {name: (after[name] - before.get(name, 0.0)) / wall for name in after}}


def _with_wrk(args: argparse.Namespace, server: Server, folder: Path, feeder: multiprocessing.process.BaseProcess,
              ingested: "multiprocessing.Queue") -> dict[str, object]:
    """The checks from wrk (Debian's, in C): `--connections` connections, each sending its next check as
    soon as the last is answered (a closed loop: the rate is what the server gives at that concurrency)."""
    bodies = [orjson.dumps({"customer": customer(random.randrange(args.customers)),
                            "feature_code": random.choice(CODES)}).decode() for _ in range(2_000)]
    script = folder / "check.lua"
    script.write_text("local bodies = {" + ",".join(f"[[{body}]]" for body in bodies) + "}\n"
                      "local headers = {['Content-Type'] = 'application/json', "
                      f"['Authorization'] = 'Bearer {server.key}'}}\n"
                      "local i = 0\nrequest = function()\n  i = i + 1\n"
                      "  return wrk.format('POST', '/v1/entitlements/check', headers,\n"
                      "                    bodies[(i % #bodies) + 1])\nend\n")

    def run(seconds: float) -> subprocess.Popen:
        return subprocess.Popen(["wrk", "-t1", f"-c{args.connections}", f"-d{seconds:.0f}s", "--latency", "-s",
                                 str(script), f"{server.base_url}/v1/entitlements/check"],
                                stdout=subprocess.PIPE, text=True)

    if args.ingest_rate:
        feeder.start()
        time.sleep(0.5)
    warm_out = run(args.warm_seconds).communicate()[0]
    steady = run(args.seconds)
    time.sleep(args.seconds / 4)
    named = {"checks client": steady.pid, "ingest client": feeder.pid}
    before, wall = cpu_seconds(server.process.pid, named), time.perf_counter()
    time.sleep(args.seconds / 2)
    after, wall = cpu_seconds(server.process.pid, named), time.perf_counter() - wall
    steady_out = steady.communicate()[0]
    sent, ingest_seconds = ingested.get() if args.ingest_rate else (0, 1.0)
    if args.ingest_rate:
        feeder.join()
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", steady_out)
    requests = int(re.search(r"(\d+) requests in", steady_out)[1])  # type: ignore[index]
    return {"warm": _wrk_latency(warm_out), "steady": _wrk_latency(steady_out),
            "rate": float(re.search(r"Requests/sec:\s+([\d.]+)", steady_out)[1]),  # type: ignore[index]
            "statuses": {200: requests - int(bad[1]) if bad else requests, "other": int(bad[1]) if bad else 0},
            "ingested": sent / ingest_seconds,
            "cpu": {name: (after[name] - before.get(name, 0.0)) / wall for name in after}}


def _wrk_latency(output: str) -> tuple[float, float, float]:
    """p50, p99 and max from wrk's --latency output, in ms."""
    found = [re.search(pattern, output) for pattern in (r"50%\s+([\d.]+)(us|ms|s)\b", r"99%\s+([\d.]+)(us|ms|s)\b",
                                                        r"Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)\b")]
    if not all(found):
        raise RuntimeError(f"wrk printed no latencies:\n{output}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p50, p99, top = (float(match[1]) * scale[match[2]] for match in found)  # type: ignore[index]
    return p50, p99, top


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("inprocess", "http", "both"), default="both")
    parser.add_argument("--customers", type=int, default=1_000)
    parser.add_argument("--history", type=int, default=100)
    parser.add_argument("--checks", type=int, default=50_000)
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--connections", type=int, default=None,
                        help="paced: 50 connections; wrk: 6 (a closed loop: more connections, more latency)")
    parser.add_argument("--client", choices=("paced", "wrk"), default="paced",
                        help="paced: our asyncio client on a fixed schedule; wrk: Debian's wrk (apt install wrk)")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--warm-seconds", type=float, default=5, help="at the rate first, not counted: caches fill")
    parser.add_argument("--ingest-rate", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="TALLY_WORKERS: serving processes")
    args = parser.parse_args()
    if args.connections is None:
        args.connections = 50 if args.client == "paced" else 6
    if args.client == "wrk" and shutil.which("wrk") is None:
        parser.error("--client wrk needs wrk on the PATH (Debian: apt install wrk)")
    print()
    if args.part in ("inprocess", "both"):
        found = in_process(args)
        first, timings = found["first"], found["timings"]
        print(f"In process, embedded store: {args.customers:,} customers x {args.history} events")
        print(f"{'checks':<28} {'count':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'target':>8}")
        for label, values in (("first per customer", first), ("kept (random)", timings)):
            p50, p99, top = percentiles(values)  # type: ignore[arg-type]
            print(f"{label:<28} {len(values):>8,} {p50:>8.3f} {p99:>8.3f} {top:>8.2f} "  # type: ignore[arg-type]
                  f"{'< 1' if label.startswith('kept') else '-':>8}")
        print(f"one thread: {len(timings) / found['seconds']:,.0f} checks/s; "  # type: ignore[arg-type]
              f"used == usage report total for {found['compared'] - found['wrong']} of {found['compared']} "
              "customers\n")
    if args.part in ("http", "both"):
        found = over_http(args)
        how = (f"{args.connections} connections asking {args.rate:,} checks/s on schedule" if args.client == "paced"
               else f"wrk, {args.connections} connections in a closed loop")
        print(f"Over HTTP (tally serve, embedded store, TALLY_WORKERS={args.workers}), {how}, while another process "
              f"ingests {args.ingest_rate:,} events/s")
        print(f"{'phase':<26} {'checks/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'events/s in':>12} "
              f"{'target':>22}")
        warm50, warm99, warm_top = found["warm"]  # type: ignore[misc]
        print(f"{f'first {args.warm_seconds:.0f} s (caches fill)':<26} {'':>9} {warm50:>8.2f} {warm99:>8.2f} "
              f"{warm_top:>8.1f}")
        p50, p99, top = found["steady"]  # type: ignore[misc]
        print(f"{f'then {args.seconds:.0f} s':<26} {found['rate']:>9,.0f} {p50:>8.2f} {p99:>8.2f} {top:>8.1f} "
              f"{found['ingested']:>12,.0f} {'p99 < 5 at >= 5,000/s':>22}")
        for kind, label in (("metered", "metered (ai, img)"), ("boolean", "boolean (sso)")):
            if kind in found.get("kinds", {}):  # type: ignore[operator]  (wrk does not tell them apart)
                p50, p99, top = found["kinds"][kind]  # type: ignore[index]
                print(f"{f'  of which {label}':<26} {'':>9} {p50:>8.2f} {p99:>8.2f} {top:>8.1f}")
        print(f"answers: {found['statuses']}; cores busy mid-run: "
              + ", ".join(f"{name} {share:.2f}" for name, share in found["cpu"].items()))  # type: ignore[union-attr]


if __name__ == "__main__":
    main()

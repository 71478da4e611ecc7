"""Benchmark: how long from the 202 to the event in the usage read model, embedded and with Faust.

For each mode it starts the processes itself, over real HTTP:

- **embedded**: `tally serve` on SQLite in a temp dir (TALLY_DATA_DIR); the in-process UsageRunner
  keeps the read model (`tally_usage_readings` in `events.views.sqlite`).
- **kafka**: a throwaway PostgreSQL (`ops.services.postgres()`) and Tansu broker (`ops.services.tansu()`),
  then `tally serve` (TALLY_DATABASE_URL + TALLY_KAFKA_BOOTSTRAP: it does not run the usage runner),
  `tally relay` (usage log -> Kafka `tally.usage`) and `tally worker` (Faust: `tally.usage` -> the read
  model, in the same database).

It waits for `/healthz`, then sends `--warmup` batches one at a time, each waited for until all its
events are in the read model (in kafka mode this is also the wait for the relay and the Faust
worker's consumer group to be running). Then `--senders` threads post `--batches` batches of
`--batch-size` events (unique event_ids, `--customers` customers, pre-built JSON bodies) to
`POST /v1/events/batch` on a fixed schedule, `--rate` batches a second (open loop: a slow answer
does not delay the next batch, up to `--senders` in flight), and record the monotonic time each
202 arrives. A separate poller process reads the read model every `--poll-ms` (SQLite: its own
read-only connection to the views file; PostgreSQL: its own connection to the same database),
counting each pending batch's rows with one range query over the table's primary key, and records
the first poll that finds all of a batch's events. Freshness = that time - the 202's time; a batch
seen complete before its 202 arrived (the runner can apply a commit before the answer is written)
counts as 0 and is reported. The result is an upper bound by up to one poll period.

Everything started is stopped at the end (SIGTERM, then SIGKILL), also on Ctrl-C or SIGTERM. Not a
test: it prints, it does not assert speed. Target (issue): p99 < 1 s.

    .venv/bin/python -m ops.bench.freshness [--mode embedded|kafka|both] [--batches 200] [--rate 20]
        [--batch-size 100] [--customers 4] [--senders 4] [--warmup 2] [--poll-ms 2] [--settle 10]
"""

import argparse
import contextlib
import http.client
import json
import multiprocessing
import os
import queue
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from ops import services

TALLY = Path(sys.executable).with_name("tally")
KEY = "freshness-bench-admin-key"
PATH = "/v1/events/batch"
EVENT_NAME = "bench.call"
START_SECONDS = 60
STOP_SECONDS = 10
TARGET_P99_MS = 1000.0


def event_id(prefix: str, batch: int, n: int) -> str:
    """Zero-padded, so that one batch's ids are one range of the primary key: [f00012-, f00013-)."""
    return f"{prefix}{batch:05d}-{n:05d}"


def low_id(prefix: str, batch: int) -> str:
    return f"{prefix}{batch:05d}-"


def body(prefix: str, batch: int, size: int, customers: list[str]) -> bytes:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"events": [
        {"event_id": event_id(prefix, batch, n), "customer": customers[n % len(customers)], "event_name": EVENT_NAME,
         "timestamp": now, "properties": {"tokens": n % 10}} for n in range(size)]}).encode()


# -- the read model, seen from outside the processes that write it -------------------------------------------


class ReadModel:
    """Counts of a run's rows in `tally_usage_readings`, on a connection of our own (read-only on SQLite)."""

    def __init__(self, target: str) -> None:
        self.postgres = target.startswith(("postgresql://", "postgres://"))
        if self.postgres:
            self.connection: Any = psycopg.connect(target, autocommit=True)
        else:  # autocommit: each query reads the latest commit
            self.connection = sqlite3.connect(f"file:{target}?mode=ro", uri=True, isolation_level=None)

    def _all(self, sql: str, params: tuple) -> list[tuple]:
        return self.connection.execute(sql.replace("?", "%s") if self.postgres else sql, params).fetchall()

    def tenants(self, low: str, high: str) -> dict[str, int]:
        """Rows per tenant with event ids in [low, high) (used once, to learn the tenant of the run)."""
        return dict(self._all("SELECT tenant_id, COUNT(*) FROM tally_usage_readings WHERE event_id >= ? "
                              "AND event_id < ? GROUP BY tenant_id", (low, high)))

    def counts(self, tenant: str, customers: list[str], prefix: str, first: int, end: int) -> dict[int, int]:
        """Rows per batch for batches [first, end): a range of the primary key per customer."""
        marks = ",".join("?" * len(customers))
        width = len(low_id(prefix, 0))
        rows = self._all(f"SELECT SUBSTR(event_id, 1, {width}), COUNT(*) FROM tally_usage_readings "
                         f"WHERE tenant_id = ? AND customer IN ({marks}) AND event_id >= ? AND event_id < ? GROUP BY 1",
                         (tenant, *customers, low_id(prefix, first), low_id(prefix, end)))
        return {int(batch_text[len(prefix):-1]): int(count) for batch_text, count in rows}

    def close(self) -> None:
        self.connection.close()


@dataclass(frozen=True)
class Watch:
    target: str  # the views SQLite file, or the PostgreSQL URL
    tenant: str
    customers: list[str]
    prefix: str
    batches: int
    size: int
    poll_seconds: float
    deadline_seconds: float


def poll(watch: Watch, ready: Any, stop: Any, results: Any) -> None:
    """The poller process: the monotonic time each batch was first seen complete; ends when all are,
    when `stop` is set, or at the deadline. Sends ({batch: seen}, polls, seconds polled)."""
    model = ReadModel(watch.target)
    seen: dict[int, float] = {}
    pending = set(range(watch.batches))
    polls, began = 0, time.monotonic()
    ready.set()
    try:
        while pending and not stop.is_set() and time.monotonic() - began < watch.deadline_seconds:
            first = min(pending)
            counts = model.counts(watch.tenant, watch.customers, watch.prefix, first, watch.batches)
            now = time.monotonic()
            polls += 1
            for batch, count in counts.items():
                if count >= watch.size and batch in pending:
                    pending.discard(batch)
                    seen[batch] = now
            time.sleep(watch.poll_seconds)
    finally:
        model.close()
        results.put((seen, polls, time.monotonic() - began))


# -- the processes -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def started(command: str, env: dict[str, str], folder: Path) -> Iterator[subprocess.Popen]:
    """`tally COMMAND` with output to a log file; SIGTERM, then SIGKILL, on the way out."""
    environ = {**{k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}, **env}
    with (folder / f"{command}.log").open("wb") as out:  # a file, not a pipe: a chatty process never blocks
        process = subprocess.Popen([str(TALLY), command], env=environ, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        services.stop(process, timeout=STOP_SECONDS)


def log_tail(folder: Path) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}" for log in folder.glob("*.log"))


def wait_up(port: int, processes: list[subprocess.Popen], folder: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            raise RuntimeError(f"a tally process exited early:\n{log_tail(folder)}")
        with contextlib.suppress(OSError):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            try:
                connection.request("GET", "/healthz")
                if connection.getresponse().status == 200:
                    return
            finally:
                connection.close()
        time.sleep(0.05)
    raise RuntimeError(f"tally serve did not come up in {START_SECONDS}s:\n{log_tail(folder)}")


def post(connection: http.client.HTTPConnection, payload: bytes, key: str = KEY) -> None:
    connection.request("POST", PATH, body=payload, headers={"Authorization": f"Bearer {key}",
                                                             "Content-Type": "application/json"})
    answer = connection.getresponse()
    text = answer.read()
    if answer.status != 202:
        raise RuntimeError(f"POST {PATH}: {answer.status} {text[:500]!r}")
    if json.loads(text)["rejected"]:
        raise RuntimeError(f"POST {PATH}: events rejected: {text[:500]!r}")


# -- one mode ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    mode: str
    batches: int  # sent
    size: int
    seconds: float  # from the first send to the last 202
    ack_ms: list[float]  # send -> 202, per batch
    fresh_ms: list[float]  # 202 -> all of the batch in the read model, clamped at 0, per batch measured
    before_ack: int  # batches seen complete before their 202 arrived
    missing: int  # batches never seen complete
    warmup_seconds: float  # start of the processes -> the last warm-up batch in the read model
    poll_ms: float  # the poller's mean period

    @property
    def events_per_second(self) -> float:
        return self.batches * self.size / self.seconds


def warm_up(port: int, target: str, prefix: str, count: int, size: int, customers: list[str],
            processes: list[subprocess.Popen], folder: Path) -> str:
    """Send `count` batches, each waited for in the read model; returns the tenant id of the run."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    model: ReadModel | None = None
    tenant = ""
    try:
        for batch in range(count):
            post(connection, body(prefix, batch, size, customers))
            deadline = time.monotonic() + START_SECONDS
            while True:
                if any(p.poll() is not None for p in processes):
                    raise RuntimeError(f"a tally process exited early:\n{log_tail(folder)}")
                if model is None and (target.startswith("postgres") or Path(target).exists()):
                    model = ReadModel(target)
                if model is not None:
                    if not tenant:
                        found = model.tenants(low_id(prefix, batch), low_id(prefix, batch + 1))
                        tenant = next(iter(found), "")
                    if tenant and model.counts(tenant, customers, prefix, batch, batch + 1).get(batch, 0) >= size:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"warm-up batch {batch} not in the read model after {START_SECONDS}s:\n"
                                       f"{log_tail(folder)}")
                time.sleep(0.01)
    finally:
        connection.close()
        if model is not None:
            model.close()
    return tenant


def send(port: int, bodies: list[bytes], rate: float, senders: int,
         key: str = KEY) -> tuple[float, list[float], list[float]]:
    """Post the bodies on a fixed schedule (batch i at start + i/rate) from `senders` threads, each
    with its own keep-alive connection. Returns (start, send times, 202 times), monotonic."""
    sent, acked = [0.0] * len(bodies), [0.0] * len(bodies)
    claim, lock, errors = iter(range(len(bodies))), threading.Lock(), []
    start = time.monotonic() + 0.05

    def sender() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while not errors:
                with lock:
                    batch = next(claim, None)
                if batch is None:
                    return
                delay = start + batch / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                sent[batch] = time.monotonic()
                post(connection, bodies[batch], key)
                acked[batch] = time.monotonic()
        except (OSError, http.client.HTTPException, RuntimeError, ValueError) as error:  # raised by the main thread
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=sender, name=f"sender-{n}", daemon=True) for n in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return start, sent, acked


def measure(mode: str, port: int, target: str, processes: list[subprocess.Popen], folder: Path, began: float,
            args: argparse.Namespace) -> Result:
    customers = [f"fresh-{n}" for n in range(args.customers)]
    tenant = warm_up(port, target, "w", args.warmup, args.batch_size, customers, processes, folder)
    warmup_seconds = time.monotonic() - began
    bodies = [body("f", batch, args.batch_size, customers) for batch in range(args.batches)]
    context = multiprocessing.get_context("spawn")
    ready, stop, results = context.Event(), context.Event(), context.Queue()
    watch = Watch(target, tenant, customers, "f", args.batches, args.batch_size, args.poll_ms / 1000,
                  args.batches / args.rate + args.settle + 30)
    poller = context.Process(target=poll, args=(watch, ready, stop, results), name="freshness-poller")
    poller.start()
    try:
        deadline = time.monotonic() + START_SECONDS
        while not ready.wait(0.1):
            if not poller.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the poller did not start")
        _, sent, acked = send(port, bodies, args.rate, args.senders)
        try:  # the poller ends by itself once every batch is seen
            seen, polls, polled = results.get(timeout=args.settle)
        except queue.Empty:  # some batches still not in the read model after --settle seconds
            stop.set()
            seen, polls, polled = results.get(timeout=30)
        poller.join(10)
    finally:
        stop.set()
        if poller.is_alive():
            poller.kill()
            poller.join()
    fresh = [max(0.0, seen[b] - acked[b]) * 1000 for b in sorted(seen)]
    return Result(mode, args.batches, args.batch_size, max(acked) - min(sent),
                  [(a - s) * 1000 for s, a in zip(sent, acked, strict=True)], fresh,
                  sum(1 for b in seen if seen[b] <= acked[b]), args.batches - len(seen), warmup_seconds,
                  polled / max(polls, 1) * 1000)


def embedded(args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory(prefix="tally-bench-fresh-") as folder:
        port, began = services.free_port(), time.monotonic()
        env = {"TALLY_DATA_DIR": folder, "TALLY_API_KEY": KEY, "TALLY_HOST": "127.0.0.1", "TALLY_PORT": str(port)}
        with started("serve", env, Path(folder)) as serve:
            wait_up(port, [serve], Path(folder))
            views = str(Path(folder, "events.views.sqlite"))
            return measure("embedded", port, views, [serve], Path(folder), began, args)


def kafka(args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory(prefix="tally-bench-fresh-") as folder, contextlib.ExitStack() as stack:
        began = time.monotonic()
        database_url = stack.enter_context(services.postgres())
        bootstrap = stack.enter_context(services.tansu())
        port = services.free_port()
        env = {"TALLY_DATABASE_URL": database_url, "TALLY_KAFKA_BOOTSTRAP": bootstrap, "TALLY_API_KEY": KEY,
               "TALLY_HOST": "127.0.0.1", "TALLY_PORT": str(port), "TALLY_DATA_DIR": folder}
        serve = stack.enter_context(started("serve", env, Path(folder)))
        wait_up(port, [serve], Path(folder))  # serve first: it creates the schema the others use
        relay = stack.enter_context(started("relay", env, Path(folder)))
        worker = stack.enter_context(started("worker", env, Path(folder)))
        return measure("kafka", port, database_url, [serve, relay, worker], Path(folder), began, args)


# -- the table ---------------------------------------------------------------------------------------------


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def table(results: list[Result], args: argparse.Namespace) -> str:
    head = (f"{'mode':<9} {'batches':>7} {'events/s':>8} {'202 p50':>8} {'202 p99':>8} │ {'fresh p50':>9} "
            f"{'fresh p99':>9} {'fresh max':>9} {'<202':>5} {'missing':>7} {'p99<1s':>6} │ {'poll':>6} {'warm-up':>7}")
    rows = [head, "─" * len(head)]
    for r in results:
        p99 = percentile(r.fresh_ms, 99)
        met = "yes" if r.fresh_ms and not r.missing and p99 < TARGET_P99_MS else "NO"
        rows.append(f"{r.mode:<9} {len(r.fresh_ms):>3}/{r.batches:<3} {r.events_per_second:>8.0f} "
                    f"{percentile(r.ack_ms, 50):>6.1f}ms {percentile(r.ack_ms, 99):>6.1f}ms │ "
                    f"{percentile(r.fresh_ms, 50):>7.1f}ms {p99:>7.1f}ms "
                    f"{max(r.fresh_ms, default=float('nan')):>7.1f}ms {r.before_ack:>5} {r.missing:>7} {met:>6} │ "
                    f"{r.poll_ms:>4.1f}ms {r.warmup_seconds:>6.1f}s")
    return "\n".join([
        f"Freshness: from the 202 of POST {PATH} to all of the batch in tally_usage_readings",
        (f"{args.batches} batches x {args.batch_size} events, {args.rate:g} batches/s "
         f"({args.rate * args.batch_size:,.0f} events/s offered), {args.customers} customers, "
         f"up to {args.senders} batches in flight"),
        "", *rows, "",
        "batches: measured/sent; events/s: sent, first send to last 202; 202: send -> 202 latency;",
        "fresh: 202 -> the poller's first sight of the whole batch (an upper bound by up to one poll period);",
        "<202: batches already complete when their 202 arrived (counted as 0); poll: the poller's mean period;",
        f"warm-up: process start -> the last warm-up batch in the read model. Target: p99 < {TARGET_P99_MS:.0f} ms.",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.freshness", description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("embedded", "kafka", "both"), default="both", help="default both")
    parser.add_argument("--batches", type=int, default=200, help="batches measured per mode (default 200)")
    parser.add_argument("--rate", type=float, default=20, help="batches sent per second (default 20)")
    parser.add_argument("--batch-size", type=int, default=100, help="events per batch (default 100)")
    parser.add_argument("--customers", type=int, default=4, help="customers the events spread over (default 4)")
    parser.add_argument("--senders", type=int, default=4, help="sender threads: batches in flight at most (default 4)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up batches, each waited for (default 2)")
    parser.add_argument("--poll-ms", type=float, default=2, help="the poller's pause between reads (default 2)")
    parser.add_argument("--settle", type=float, default=10,
                        help="seconds to wait after the last 202 for the read model to catch up (default 10)")
    args = parser.parse_args(argv)
    if min(args.batches, args.batch_size, args.customers, args.senders, args.warmup) < 1 or args.rate <= 0:
        parser.error("--batches, --batch-size, --customers, --senders and --warmup must be >= 1, --rate > 0")
    if args.batches > 99_999 or args.batch_size > 10_000:
        parser.error("--batches is at most 99,999 and --batch-size at most 10,000")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM also stops what was started
    signal.signal(signal.SIGINT, signal.default_int_handler)
    began = time.monotonic()
    try:
        results = [{"embedded": embedded, "kafka": kafka}[mode](args)
                   for mode in (("embedded", "kafka") if args.mode == "both" else (args.mode,))]
    except KeyboardInterrupt:  # the processes, PostgreSQL and Tansu started here are stopped by now
        sys.exit("interrupted")
    print(table(results, args))
    print(f"(whole run: {time.monotonic() - began:.1f}s)")


if __name__ == "__main__":
    main()

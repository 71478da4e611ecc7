"""Benchmark: customers created per second through the HTTP API, on each store.

For each store it starts `tally serve` itself (embedded SQLite in a temp dir; PostgreSQL from
`ops.services.postgres()` via TALLY_DATABASE_URL), creates `--count` customers from
`--concurrency` async clients over real HTTP, checks they are all listed, stops what it started
and prints one row per store. Not a test.

    .venv/bin/python -m ops.bench.catalogue [--count 2000] [--concurrency 8] [--store sqlite|postgres]
"""

import argparse
import asyncio
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from ops import services

TALLY = Path(sys.executable).with_name("tally")
START_SECONDS = 30
WARM_UP = 20  # customers created (and not timed) before the run: connections, caches, first pages


@dataclass(frozen=True)
class Result:
    store: str
    customers: int
    seconds: float
    latency_ms_p50: float
    latency_ms_p99: float

    @property
    def customers_per_second(self) -> float:
        return self.customers / self.seconds


@contextlib.contextmanager
def serving(env: dict[str, str], folder: Path) -> Iterator[tuple[str, str]]:
    """`tally serve` on a free port: yields (base URL, admin key); SIGTERM and wait on the way out."""
    port = services.free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}, **env,
           "TALLY_HOST": "127.0.0.1", "TALLY_PORT": str(port)}
    log = folder / "serve.log"
    with log.open("wb") as out:  # a file, not a pipe: a chatty server can never block
        process = subprocess.Popen([str(TALLY), "serve"], env=env, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        base_url = f"http://127.0.0.1:{port}"
        key = _wait_for_key(process, base_url, log)
        yield base_url, key
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_for_key(process: subprocess.Popen, base_url: str, log: Path) -> str:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tally serve exited with status {process.returncode}:\n{log.read_text()}")
        found = re.search(r"^Admin API key: (\S+)$", log.read_text(), re.MULTILINE)
        with contextlib.suppress(httpx.TransportError):
            if found and httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return found[1]
        time.sleep(0.05)
    raise RuntimeError(f"tally serve did not come up in {START_SECONDS}s:\n{log.read_text()}")


async def create_customers(http: httpx.AsyncClient, names: Iterator[str], latencies_ms: list[float]) -> None:
    """One client: create customers until `names` runs out, timing each request."""
    for external_id in names:
        began = time.perf_counter()
        answer = await http.post("/v1/customers", json={"external_id": external_id, "name": external_id,
                                                         "currency": "USD"})
        latencies_ms.append((time.perf_counter() - began) * 1000)
        if answer.status_code != 201:
            raise RuntimeError(f"POST /v1/customers {external_id}: {answer.status_code} {answer.text}")


async def listed_customers(http: httpx.AsyncClient) -> int:
    count, params = 0, {"limit": 100}
    while True:
        page = (await http.get("/v1/customers", params=params)).json()
        count += len(page["data"])
        if not page["has_more"]:
            return count
        params = {"limit": 100, "starting_after": page["data"][-1]["external_id"]}


async def run(base_url: str, key: str, store: str, count: int, concurrency: int) -> Result:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {key}"}
    clients = [httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60, limits=limits)
               for _ in range(concurrency)]
    try:
        await create_customers(clients[0], (f"warm-{n}" for n in range(WARM_UP)), [])
        names = (f"cus-{n:06d}" for n in range(count))  # shared: each client takes the next name
        latencies_ms: list[float] = []
        began = time.perf_counter()
        await asyncio.gather(*(create_customers(http, names, latencies_ms) for http in clients))
        seconds = time.perf_counter() - began
        listed = await listed_customers(clients[0])
        assert listed == count + WARM_UP, f"{listed} customers listed, {count + WARM_UP} created"
    finally:
        for http in clients:
            await http.aclose()
    assert len(latencies_ms) == count, len(latencies_ms)
    percentiles = statistics.quantiles(latencies_ms, n=100, method="inclusive")
    return Result(store, count, seconds, statistics.median(latencies_ms), percentiles[98])


def bench(store: str, count: int, concurrency: int) -> Result:
    with tempfile.TemporaryDirectory(prefix=f"tally-bench-{store}-") as folder, contextlib.ExitStack() as stack:
        env = {"TALLY_DATA_DIR": folder}
        if store == "postgres":
            env["TALLY_DATABASE_URL"] = stack.enter_context(services.postgres())
        base_url, key = stack.enter_context(serving(env, Path(folder)))
        return asyncio.run(run(base_url, key, store, count, concurrency))


def table(results: list[Result], concurrency: int) -> str:
    rows = [f"{'store':<10} {'customers':>9} {'seconds':>8} {'customers/s':>11} {'p50 ms':>7} {'p99 ms':>7}"]
    rows += [f"{r.store:<10} {r.customers:>9} {r.seconds:>8.2f} {r.customers_per_second:>11.1f} "
             f"{r.latency_ms_p50:>7.1f} {r.latency_ms_p99:>7.1f}" for r in results]
    return "\n".join([f"POST /v1/customers over HTTP, {concurrency} concurrent clients", *rows])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.catalogue", description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="customers to create per store (default 2000)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent HTTP clients (default 8)")
    parser.add_argument("--store", choices=("sqlite", "postgres"), action="append",
                        help="store to measure (repeatable; default both)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM also stops what was started
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    if args.count < 1 or args.concurrency < 1:
        parser.error("--count and --concurrency must be at least 1")
    try:
        results = [bench(store, args.count, args.concurrency) for store in args.store or ("sqlite", "postgres")]
    except KeyboardInterrupt:  # the servers and PostgreSQL started here are stopped by now
        sys.exit("interrupted")
    print(table(results, args.concurrency))


if __name__ == "__main__":
    main()

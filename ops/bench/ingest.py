"""Benchmark: acknowledged usage events per second through HTTP batches, against the raw durable ceiling.

For each store it measures, in one run:

1. **HTTP ingest.** It starts `tally serve` itself (embedded SQLite in a temp dir; PostgreSQL from
   `ops.services.postgres()` via TALLY_DATABASE_URL), creates a `count` meter and the customers
   through the API, sends one warm-up batch (not timed), then starts `--senders` processes (spawn).
   Each sender builds its JSON bodies *before* the clock starts (batches of `--batch-size` events,
   unique event_ids, a few customers, a numeric property), opens keep-alive connections, waits on a
   start signal, then posts its batches to `POST /v1/events/batch` with `--inflight` requests in
   flight (one thread and one connection each), checking every answer is 202 with all events
   accepted. events/s = events acknowledged / wall seconds from the start to the last 202.
   Batch latencies (p50/p99) are per request. Then it checks the server's usage log holds exactly
   the events sent (a COUNT of `tally_usage`, and, up to `--api-check-max` events, the totals of
   the count meter over `GET /v1/customers/{id}/usage`), and reads the server's peak RSS (VmHWM)
   before stopping it (SIGTERM, then SIGKILL).
2. **The raw durable ceiling.** The same rows, into the usage log's own table (made by its own code:
   same columns, unique key, indexes), in the same batches, one transaction per batch, the same
   durability, straight into a scratch store with one connection, with the log's own insert: SQLite
   (a file of its own, WAL, synchronous=FULL) takes `executemany INSERT ... ON CONFLICT (key) DO
   NOTHING`; PostgreSQL (a scratch database in the same cluster) takes a COPY straight into the table
   when every key is new, else COPY into a temp staging table + `INSERT ... SELECT ... ON CONFLICT
   (key) DO NOTHING` (either then inserts the rows whose key a different event holds, if any).
   rows/s = rows / seconds spent in those transactions (building the rows is not timed). The ratio
   printed is HTTP events/s over ceiling rows/s: group commit can take it above 1.0. The server is
   stopped by then, so the two never compete. Beside it: the share of the SQLite ceiling's time its
   CPU took, and what a 4 KiB write and an fsync cost on this disk. Group commit saves commits; when
   fsync is cheap and the ceiling is all CPU, there is little for it to save, and HTTP, the decoding
   and the usage read model share the same two cores.

Bodies are pre-built when they fit in `--prebuild-mb` per sender; otherwise (e.g. `--events
10000000`) each sender keeps one body template and joins fresh random ids into it for each batch
(~0.1 ms a batch), so memory stays flat. Event ids are random (128 bits), as clients that make
uuid4s send them, or (`--ids ordered`) UUIDv7s, as the SDK's EventSender makes them: the log's key
then takes random ids at random places in its index, and UUIDv7s at its end. Event times are the
same 1,000 in every batch, or (`--times growing`) later in each batch than in the one before, as live
traffic sends them: the usage read model, whose index goes by customer and time, then writes each
batch at its end instead of all over it. With `--invoiced-months M`, before the server starts, every
customer is subscribed to a monthly plan M months before this month and billed month by month by the
clock (its closing invoices finalized): the run then ingests for a tenant with that much history
(ingestion reads each batch's customers' closed periods). Not a test: it prints, it does not assert speed. Targets
(issue 3): >= 100,000 events/s embedded, >= 60,000 on PostgreSQL, ratio >= 1.0, memory flat over 10
million events.

    .venv/bin/python -m ops.bench.ingest [--store sqlite|postgres|both] [--events 200000] [--senders 4]
        [--inflight 2] [--batch-size 1000] [--ids random|ordered] [--times repeated|growing] [--customers 4]
        [--invoiced-months 0] [--api-check-max 2000000]
        [--prebuild-mb 64]
"""

import argparse
import contextlib
import functools
import http.client
import json
import multiprocessing
import os
import queue
import resource
import secrets
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
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import httpx
import psycopg

from domain.aggregate import Actor
from domain.customer import CustomerSpec
from domain.meter import MeterSpec
from domain.plan import PlanSpec
from domain.plan_version import PlanVersionSpec
from domain.price import FlatPrice, PerUnitPrice
from domain.subscription import SubscriptionSpec
from domain.tenant import TenantSettings
from ops import services
from projections import usage_log
from projections.store import Cursor, Database
from projections.usage_log import (
    CHECKPOINT_PAGES,
    WRITER_CACHE_MIB,
    bucket_of,
    insert_copy,
    insert_keyed,
    usage_key,
)

TALLY = Path(sys.executable).with_name("tally")
START_SECONDS = 60
STOP_SECONDS = 30
PATH = "/v1/events/batch"
EVENT_NAME = "llm.completion"
METER = "bench_events"
READY = "ready"  # a sender's word that its bodies are built and its connections open
TARGETS = {"sqlite": 100_000, "postgres": 60_000}
TARGET_RATIO = 1.0


# --- the events: the same in the HTTP bodies and in the ceiling's rows ---------------------------------------

@dataclass(frozen=True)
class Shape:
    """What a batch looks like. Event i: a random id (128 bits in hex, as a client that makes uuid4s sends:
    so the unique key takes each row at a random place, not at its end), customer `cus-{i % customers}`,
    event time `base + i` seconds in every batch (or, `growing`, batch number b's at `base + b * batch_size + i`
    milliseconds: later batches, later times, as live traffic sends), properties {"tokens": 100 + i,
    "model": "m{i % 3}"}."""

    batch_size: int
    customers: int
    base: datetime  # a whole second, in the past
    ordered: bool = False  # ids that grow, as time-ordered ids (UUIDv7, ULID) do, instead of random ones
    growing: bool = False  # event times that grow from batch to batch, instead of the same times in each

    @property
    def id_width(self) -> int:
        return 36 if self.ordered else 32

    def ids(self, serial: int) -> bytes:
        """Batch number `serial`'s event ids, `id_width` characters each, back to back: 128 random bits
        in hex (~20 us for 1,000), or (ordered) UUIDv7s, as the SDK makes them, whose time grows by a
        millisecond every 100 events (from `base`)."""
        if not self.ordered:
            return os.urandom(16 * self.batch_size).hex().encode()
        first, millis = serial * self.batch_size, int(self.base.timestamp()) * 1000
        return b"".join(_uuid7(millis + (n // 100 & 0xFFFFFFFF), n) for n in range(first, first + self.batch_size))

    def customer(self, i: int) -> str:
        return f"cus-{i % self.customers}"

    def moment(self, i: int) -> datetime:
        return self.base + timedelta(seconds=i)

    def moments_us(self, serial: int) -> list[int]:
        """Batch number `serial`'s event times, in microseconds."""
        if not self.growing:
            return [moment_us for _, moment_us, _ in self.columns]
        first = (int(self.base.timestamp()) * 1000 + serial * self.batch_size) * 1000
        return [first + 1000 * n for n in range(self.batch_size)]

    def times(self, serial: int) -> list[bytes]:
        """`growing`: batch number `serial`'s event times, RFC 3339 to the millisecond (~0.4 ms for 1,000)."""
        seconds: dict[int, bytes] = {}
        out = []
        for moment_us in self.moments_us(serial):
            second, rest = divmod(moment_us // 1000, 1000)
            if second not in seconds:
                seconds[second] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S").encode()
            out.append(b"%s.%03dZ" % (seconds[second], rest))
        return out

    @staticmethod
    def properties(i: int) -> dict:
        return {"tokens": 100 + i, "model": f"m{i % 3}"}

    def template(self) -> list[bytes]:
        """A batch body, cut where each event's id goes (`body` puts fresh ids there)."""
        mark = "@" * self.id_width  # where each event's id goes (and, growing, its time)
        events = [{"event_id": mark, "customer": self.customer(i), "event_name": EVENT_NAME,
                   "timestamp": mark if self.growing else self.moment(i).strftime("%Y-%m-%dT%H:%M:%SZ"),
                   "properties": self.properties(i)} for i in range(self.batch_size)]
        return json.dumps({"events": events}, separators=(",", ":")).encode().split(mark.encode())

    @functools.cached_property
    def columns(self) -> list[tuple[str, str, int, str]]:
        """Per event index: (customer, event time in microseconds, properties as the server encodes
        them), computed once."""
        return [(self.customer(i), int(self.moment(i).timestamp()) * 1_000_000,
                 json.dumps(self.properties(i), separators=(",", ":"))) for i in range(self.batch_size)]

    def rows(self, tenant_id: str, serial: int, recorded_us: int) -> list[tuple]:
        """The rows the usage log records for batch number `serial`, with their key and bucket."""
        ids = [event_id.decode() for event_id in self.event_ids(serial)]
        return [(tenant_id, customer, event_id, EVENT_NAME, moment_us, recorded_us, properties,
                 usage_key(tenant_id, customer, event_id, "event"), bucket_of(tenant_id, customer))
                for (customer, _, properties), moment_us, event_id in zip(self.columns, self.moments_us(serial), ids)]

    def event_ids(self, serial: int) -> list[bytes]:
        """Batch number `serial`'s event ids, one each."""
        ids, width = self.ids(serial), self.id_width
        return [ids[at:at + width] for at in range(0, len(ids), width)]


def _uuid7(millis: int, counter: int) -> bytes:
    """A UUIDv7 of these milliseconds, unique by `counter` (in its 62 low bits)."""
    digits = b"%032x" % (millis << 80 | 0x7 << 76 | 0b10 << 62 | counter & ((1 << 62) - 1))
    return b"-".join((digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:]))


def body(shape: Shape, template: list[bytes], serial: int) -> bytes:
    """Batch number `serial`'s body, from its template (~0.1 ms for 1,000 events)."""
    fills = shape.event_ids(serial)
    if shape.growing:
        fills = [fill for pair in zip(fills, shape.times(serial), strict=True) for fill in pair]
    parts = [template[0]]
    for fill, piece in zip(fills, template[1:], strict=True):
        parts += (fill, piece)
    return b"".join(parts)


# --- senders: separate processes -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    port: int
    key: str
    sender: int
    senders: int
    batches: int  # in the whole run; this sender takes every `senders`-th
    inflight: int
    shape: Shape
    prebuild_bytes: int


@dataclass(frozen=True)
class Sent:
    sender: int
    acknowledged: int
    latencies_ms: list[float]
    last_ack: float  # time.monotonic(): one clock for every process on Linux
    peak_rss_kb: int
    cpu_seconds: float  # this sender's CPU time from the start to its last ack
    error: str | None = None


def post(connection: http.client.HTTPConnection, payload: bytes, headers: dict[str, str], expected: int) -> None:
    """One batch over a keep-alive connection; anything but 202 with every event accepted is an error."""
    connection.request("POST", PATH, payload, headers)
    answer = connection.getresponse()
    text = answer.read()
    if answer.status != 202:
        raise RuntimeError(f"POST {PATH}: {answer.status} {text[:300]!r}")
    found = json.loads(text)
    if found.get("accepted") != expected or found.get("rejected"):
        raise RuntimeError(f"POST {PATH}: expected {expected} accepted, got {text[:300]!r}")


def send(plan: Plan, start, messages) -> None:
    """A sender process: build the bodies, connect, say it is ready, wait for the start, post, report."""
    try:
        mine = list(range(plan.sender, plan.batches, plan.senders))
        template = plan.shape.template()
        size = sum(map(len, template)) + (32 + 24 * plan.shape.growing) * plan.shape.batch_size
        prebuilt = [body(plan.shape, template, b) for b in mine] if size * len(mine) <= plan.prebuild_bytes else None
        headers = {"Authorization": f"Bearer {plan.key}", "Content-Type": "application/json"}
        connections = [http.client.HTTPConnection("127.0.0.1", plan.port, timeout=300) for _ in range(plan.inflight)]
        for connection in connections:  # connected and kept alive before the clock starts
            connection.request("GET", "/healthz")
            connection.getresponse().read()
        latencies: list[float] = []
        errors: list[BaseException] = []

        def run(lane: int) -> None:
            try:
                for n in range(lane, len(mine), plan.inflight):
                    payload = prebuilt[n] if prebuilt is not None else body(plan.shape, template, mine[n])
                    began = time.perf_counter()
                    post(connections[lane], payload, headers, plan.shape.batch_size)
                    latencies.append((time.perf_counter() - began) * 1000)
            except BaseException as error:  # noqa: BLE001 - reported to the parent
                errors.append(error)

        lanes = [threading.Thread(target=run, args=(lane,)) for lane in range(plan.inflight)]
        messages.put(READY)
        start.wait()
        cpu_before = cpu_seconds()
        for lane in lanes:
            lane.start()
        for lane in lanes:
            lane.join()
        last_ack = time.monotonic()
        if errors:
            raise errors[0]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        messages.put(Sent(plan.sender, len(latencies) * plan.shape.batch_size, latencies, last_ack, peak,
                         cpu_seconds() - cpu_before))
    except BaseException as error:  # noqa: BLE001 - the parent prints it
        messages.put(Sent(plan.sender, 0, [], time.monotonic(), 0, 0.0, f"sender {plan.sender}: {error!r}"))


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system, all threads) of this process, or of another one from /proc."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def family_cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its living child processes (a server's decoding process and
    usage read model follower)."""
    total = cpu_seconds(pid)
    for child in services.children(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(child)
    return total


def collect(processes: list, messages) -> list:
    """One message per sender (READY, or its report); a sender's error, or a sender that died without a word,
    raises at once rather than hangs."""
    got: list = []
    while len(got) < len(processes):
        try:
            message = messages.get(timeout=1)
        except queue.Empty:
            if any(p.exitcode is not None for p in processes if p.exitcode != 0):
                raise RuntimeError(f"a sender died (exit codes {[p.exitcode for p in processes]})") from None
            continue
        if isinstance(message, Sent) and message.error:
            raise RuntimeError(message.error)
        got.append(message)
    return got


@dataclass(frozen=True)
class HttpRun:
    events: int
    seconds: float
    p50_ms: float
    p99_ms: float
    sender_peak_rss_kb: int
    sender_cpu_seconds: float  # all senders together
    server_cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.events / self.seconds


def run_senders(server: "Server", shape: Shape, batches: int, senders: int, inflight: int,
                prebuild_mb: int) -> HttpRun:
    context = multiprocessing.get_context("spawn")
    start, messages = context.Event(), context.Queue()
    plans = [Plan(server.port, server.key, n, senders, batches, inflight, shape, prebuild_mb * 1024 * 1024)
             for n in range(senders)]
    processes = [context.Process(target=send, args=(plan, start, messages), daemon=True) for plan in plans]
    for process in processes:
        process.start()
    try:
        collect(processes, messages)  # every sender built its bodies and connected
        began, server_cpu = time.monotonic(), family_cpu_seconds(server.process.pid)
        start.set()
        sent: list[Sent] = collect(processes, messages)  # before join: a queue's big item blocks its exit
        server_cpu = family_cpu_seconds(server.process.pid) - server_cpu
    except BaseException:
        for process in processes:
            process.kill()
        raise
    finally:
        for process in processes:
            process.join()
    latencies = [ms for s in sent for ms in s.latencies_ms]
    p99 = statistics.quantiles(latencies, n=100, method="inclusive")[98] if len(latencies) > 1 else latencies[0]
    return HttpRun(sum(s.acknowledged for s in sent), max(s.last_ack for s in sent) - began,
                   statistics.median(latencies), p99, max(s.peak_rss_kb for s in sent),
                   sum(s.cpu_seconds for s in sent), server_cpu)


# --- the server ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Server:
    process: subprocess.Popen
    port: int
    key: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def serving(database_url: str, folder: Path, settings: dict[str, str] | None = None) -> Iterator[Server]:
    """`tally serve` on a free port with a known admin key (and these TALLY_ settings); SIGTERM, then
    SIGKILL, on the way out."""
    port, key = services.free_port(), f"bench-{secrets.token_hex(16)}"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}, **(settings or {}),
           "TALLY_DATA_DIR": str(folder), "TALLY_DATABASE_URL": database_url, "TALLY_API_KEY": key,
           "TALLY_HOST": "127.0.0.1", "TALLY_PORT": str(port)}
    log = folder / "serve.log"
    with log.open("wb") as out:  # a file, not a pipe: a chatty server can never block
        process = subprocess.Popen([str(TALLY), "serve"], env=env, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        server = Server(process, port, key)
        wait_ready(server, log)
        yield server
    finally:
        services.stop(process, timeout=STOP_SECONDS)


def wait_ready(server: Server, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"tally serve exited with status {server.process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"tally serve did not come up in {START_SECONDS}s:\n{log.read_text()}")


def memory_kb(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of a process, in kB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def prepare(api: httpx.Client, shape: Shape, warm_up: int, billed: bool) -> None:
    """The count meter and the customers, through the API (unless `billed`: `bill_history` made them);
    then one warm-up batch (not timed), number `warm_up` (after those of the run: its ids and times
    are none of theirs)."""
    if not billed:
        meter = {"code": METER, "name": "Bench events", "event_name": EVENT_NAME, "aggregation": "count"}
        expect(api.post("/v1/meters", json=meter), 201)
        for n in range(shape.customers):
            customer = {"external_id": shape.customer(n), "name": f"Customer {n}", "currency": "USD"}
            expect(api.post("/v1/customers", json=customer), 201)
    answer = expect(api.post(PATH, content=body(shape, shape.template(), warm_up),
                             headers={"Content-Type": "application/json"}), 202)
    assert answer.json()["accepted"] == shape.batch_size, answer.text


def bill_history(url: str, shape: Shape, months: int) -> int:
    """Before the server starts, straight through the ledger on its store: the tenant (24 hours' grace),
    the count meter, a monthly plan ($10.00 in advance, $0.001 an event), and each customer subscribed
    `months` months before this one began, billed month by month by the clock (each period's closing
    invoice finalized after its grace): the invoices a tenant has after that long. The server then
    keeps this tenant (its first). Returns how many invoices were issued."""
    from api.ledger import Ledger

    ledger, by = Ledger(url), Actor("system:bench")
    try:
        tenant = ledger.command(ledger.tenants.open_tenant, by, TenantSettings(name="Bench", grace_period_hours=24)).id
        ledger.catalogue.define_meter(by, tenant, MeterSpec(code=METER, name="Bench events", event_name=EVENT_NAME,
                                                            aggregation="count"))
        ledger.catalogue.define_plan(by, tenant, PlanSpec(code="bench", name="Bench", currency="USD", interval="month"))
        ledger.catalogue.publish_plan_version(by, tenant, "bench", PlanVersionSpec(prices=(
            FlatPrice(currency="USD", amount=Decimal("10.00"), pay_in="advance"),
            PerUnitPrice(currency="USD", meter_code=METER, unit_amount=Decimal("0.001")))))
        now = datetime.now(UTC)
        months_ago = [_month_start(now, back) for back in range(months, -1, -1)]
        for n in range(shape.customers):
            ledger.customers.register(by, tenant, CustomerSpec(external_id=shape.customer(n), name=f"Customer {n}",
                                                               currency="USD"))
            ledger.subscriptions.start(by, tenant, SubscriptionSpec(customer=shape.customer(n), plan_code="bench",
                                                                    start_at=months_ago[0], billing_anchor="calendar"))
        ledger.runner.catch_up()
        issued = 0
        for start in months_ago:
            issued += ledger.close_periods(start)
            if start + timedelta(hours=25) <= now:
                ledger.close_periods(start + timedelta(hours=25))
        ledger.runner.catch_up()
        return issued
    finally:
        ledger.close()


def _month_start(moment: datetime, back: int) -> datetime:
    """The start of the month `back` months before the one of `moment` (UTC)."""
    months = moment.year * 12 + moment.month - 1 - back
    return datetime(months // 12, months % 12 + 1, 1, tzinfo=UTC)


def expect(answer: httpx.Response, status: int) -> httpx.Response:
    if answer.status_code != status:
        raise RuntimeError(f"{answer.request.method} {answer.request.url.path}: {answer.status_code} {answer.text}")
    return answer


def api_total(api: httpx.Client, shape: Shape) -> int:
    """Events counted by the count meter over every customer, as GET .../usage reports them."""
    window = {"meter_code": METER, "from": (shape.base - timedelta(days=1)).isoformat(),
              "to": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}
    total = Decimal(0)
    for n in range(shape.customers):
        answer = expect(api.get(f"/v1/customers/cus-{n}/usage?{urlencode(window)}", timeout=600), 200)
        total += Decimal(str(answer.json()["total"]))
    return int(total)


def usage_url(database_url: str) -> str:
    """Where the server keeps its usage log (its own file on SQLite)."""
    from api.ledger import store_env  # the server's own rule

    return store_env(database_url)[2]


def count_usage(database_url: str) -> int:
    """COUNT(*) of the server's usage log table."""
    url = usage_url(database_url)
    if url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as connection:
            return connection.execute("SELECT COUNT(*) FROM tally_usage").fetchone()[0]
    with psycopg.connect(url) as connection:
        return connection.execute("SELECT COUNT(*) FROM tally_usage").fetchone()[0]


# --- the raw durable ceiling -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ceiling:
    rows: int
    seconds: float  # inside the transactions only (building the rows is not timed)
    cpu_seconds: float | None = None  # this process's CPU in them (SQLite, in process; None: PostgreSQL's server)

    @property
    def per_second(self) -> float:
        return self.rows / self.seconds


TENANT = "00000000-0000-0000-0000-000000000001"


def create_usage_table(url: str) -> None:
    """The scratch store gets the usage log's own table (columns, unique key, indexes), made by its own code."""
    database = Database(url)
    try:
        usage_log.migrate(database)
    finally:
        database.close()


def ceiling_sqlite(path: Path, shape: Shape, batches: int) -> Ceiling:
    """One connection, one transaction per batch: the usage log's own insert (executemany INSERT ... ON CONFLICT
    (key) DO NOTHING, then the rows whose key a different event holds, if any)."""
    create_usage_table(f"sqlite:///{path}")
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute(f"PRAGMA cache_size = -{WRITER_CACHE_MIB * 1024}")  # as the log's writer has
        connection.execute(f"PRAGMA wal_autocheckpoint = {CHECKPOINT_PAGES}")
        inserted, seconds, cpu, cursor = 0, 0.0, 0.0, Cursor(connection.cursor(), postgres=False)
        for batch in range(batches):
            rows = shape.rows(TENANT, batch, time.time_ns() // 1000)
            began, began_cpu = time.perf_counter(), time.process_time()
            connection.execute("BEGIN IMMEDIATE")
            inserted += insert_keyed(cursor, [rows])[0][0]  # the log's own insert: two events may share a key
            connection.execute("COMMIT")
            seconds, cpu = seconds + time.perf_counter() - began, cpu + time.process_time() - began_cpu
    assert inserted == batches * shape.batch_size, (inserted, batches * shape.batch_size)
    return Ceiling(inserted, seconds, cpu)


def fsync_ms(folder: Path, times: int = 200) -> float:
    """The disk's price of a durable commit's last step: a 4 KiB write and an fsync, the median of `times`."""
    path, spent = folder / "fsync.probe", []
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for n in range(times):
            began = time.perf_counter()
            os.pwrite(descriptor, b"\0" * 4096, n * 4096)
            os.fsync(descriptor)
            spent.append((time.perf_counter() - began) * 1000)
    finally:
        os.close(descriptor)
        path.unlink()
    return statistics.median(spent)


def ceiling_postgres(cluster_url: str, shape: Shape, batches: int) -> Ceiling:
    """A scratch database in the same cluster; per batch one transaction: the usage log's own insert (a COPY
    straight into the table when every key is new, else through a staging table: see `insert_copy`)."""
    with psycopg.connect(cluster_url, autocommit=True) as admin:
        admin.execute("CREATE DATABASE tally_bench_ceiling")
    url = cluster_url.rsplit("/", 1)[0] + "/tally_bench_ceiling"
    create_usage_table(url)
    with psycopg.connect(url) as connection:
        inserted, seconds, cursor = 0, 0.0, Cursor(connection.cursor(), postgres=True)
        for batch in range(batches):
            rows = shape.rows(TENANT, batch, time.time_ns() // 1000)
            began = time.perf_counter()
            inserted += insert_copy(cursor, [rows])[0][0]
            connection.commit()
            seconds += time.perf_counter() - began
    assert inserted == batches * shape.batch_size, (inserted, batches * shape.batch_size)
    return Ceiling(inserted, seconds)


def durability(store: str, database_url: str) -> str:
    if store == "sqlite":
        return "WAL, synchronous=FULL"
    return services.postgres_durability(database_url)


# --- one store, end to end -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    store: str
    durability: str
    http: HttpRun
    ceiling: Ceiling
    expected: int  # events sent, warm-up included
    recorded: int  # COUNT(*) of the server's usage log
    counted: int | None  # the count meter's totals over the API (None: skipped, too many events)
    server_rss_before_kb: int
    server_peak_rss_kb: int
    fsync_ms: float  # the disk's: a 4 KiB write and an fsync, in the run's folder

    @property
    def ratio(self) -> float:
        return self.http.per_second / self.ceiling.per_second


def bench(store: str, args: argparse.Namespace) -> Result:
    batches = args.events // args.batch_size
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2, milliseconds=2 * args.events)
    shape = Shape(args.batch_size, args.customers, base, args.ids == "ordered", args.times == "growing")
    with tempfile.TemporaryDirectory(prefix=f"tally-bench-ingest-{store}-") as temp, \
            contextlib.ExitStack() as stack:
        folder = Path(temp)
        url = (stack.enter_context(services.postgres(durable=True)) if store == "postgres"
               else f"sqlite:///{folder / 'events.sqlite'}")
        if args.invoiced_months:
            log(f"{store}: {args.customers:,} customers billed for {args.invoiced_months} months before the run")
            log(f"{store}: {bill_history(url, shape, args.invoiced_months):,} invoice changes by the clock")
        with serving(url, folder) as server, httpx.Client(
                base_url=server.base_url, headers={"Authorization": f"Bearer {server.key}"}, timeout=60) as api:
            prepare(api, shape, batches, billed=args.invoiced_months > 0)
            rss_before = memory_kb(server.process.pid, "VmRSS")
            log(f"{store}: sending {args.events:,} events ({args.senders} senders x {args.inflight} in flight)")
            sent = run_senders(server, shape, batches, args.senders, args.inflight, args.prebuild_mb)
            peak = memory_kb(server.process.pid, "VmHWM")  # before the checks below read anything
            expected = sent.events + shape.batch_size
            recorded = count_usage(url)
            counted = api_total(api, shape) if expected <= args.api_check_max else None
        log(f"{store}: {sent.per_second:,.0f} events/s over HTTP; measuring the raw ceiling")
        ceiling = (ceiling_postgres(url, shape, batches) if store == "postgres"
                   else ceiling_sqlite(folder / "ceiling.sqlite", shape, batches))
        return Result(store, durability(store, url), sent, ceiling, expected, recorded, counted, rss_before, peak,
                      fsync_ms(folder))


# --- output ----------------------------------------------------------------------------------------------------

def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mib(kb: int) -> str:
    return f"{kb / 1024:,.0f}"


def table(results: list[Result], args: argparse.Namespace) -> str:
    title = (f"Usage ingest: {args.events:,} events in batches of {args.batch_size:,}, {args.senders} sender "
             f"processes x {args.inflight} in flight, {args.customers} customers, {args.ids} event ids, "
             f"{args.times} times; {os.cpu_count()} CPUs")
    speed = (f"{'store':<9} {'events/s':>9} {'target':>8} {'seconds':>8} {'p50 ms':>7} {'p99 ms':>7} "
             f"{'ceiling rows/s':>14} {'its CPU':>7} {'fsync ms':>8} {'ratio':>6} {'target':>6}  durability (both)")
    checks = (f"{'store':<9} {'sent':>11} {'in log':>11} {'meter':>11} {'server RSS MiB before/peak':>27} "
              f"{'sender peak MiB':>15} {'CPU cores: server':>17} {'senders':>7}")
    bench_rss = mib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    notes = (f"bench process peak RSS: {bench_rss} MiB. 'sent' includes one warm-up batch (not timed); 'in log' is "
             "COUNT(*) of tally_usage; 'meter' is the count meter's totals over GET .../usage.\n"
             "ceiling: the same rows and batches, one transaction each, one connection, straight into the store; "
             "ratio = HTTP events/s / ceiling rows/s. its CPU: the ceiling's CPU seconds / its seconds in the "
             "transactions (SQLite, in this process): near 1.00, it is bound by the insert's CPU, not by the disk, and "
             "group commit saves little of it. fsync ms: a 4 KiB write and an fsync on this disk, median of 200.\n"
             "CPU cores: CPU seconds used during the timed run / its wall seconds (server: its process and its "
             "child processes; senders: all).")
    lines = [title, "", speed, *map(speed_row, results), "", checks, *map(check_row, results), "", notes]
    mismatched = [r.store for r in results if r.recorded != r.expected or r.counted not in (None, r.expected)]
    if mismatched:
        lines.append(f"MISMATCH: the usage log does not hold exactly the events sent on {', '.join(mismatched)}")
    return "\n".join(lines)


def speed_row(r: Result) -> str:
    return (f"{r.store:<9} {r.http.per_second:>9,.0f} {TARGETS[r.store]:>8,} {r.http.seconds:>8.2f} "
            f"{r.http.p50_ms:>7.1f} {r.http.p99_ms:>7.1f} {r.ceiling.per_second:>14,.0f} {_share(r.ceiling):>7} "
            f"{r.fsync_ms:>8.2f} {r.ratio:>6.2f} {TARGET_RATIO:>6.1f}  {r.durability}")


def _share(ceiling: Ceiling) -> str:
    return "—" if ceiling.cpu_seconds is None else f"{ceiling.cpu_seconds / ceiling.seconds:.2f}"


def check_row(r: Result) -> str:
    counted = f"{r.counted:,}" if r.counted is not None else "skipped"
    memory = f"{mib(r.server_rss_before_kb)} / {mib(r.server_peak_rss_kb)}"
    return (f"{r.store:<9} {r.expected:>11,} {r.recorded:>11,} {counted:>11} {memory:>27} "
            f"{mib(r.http.sender_peak_rss_kb):>15} {r.http.server_cpu_seconds / r.http.seconds:>17.2f} "
            f"{r.http.sender_cpu_seconds / r.http.seconds:>7.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.bench.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--events", type=int, default=200_000, help="events to send per store (default 200,000)")
    parser.add_argument("--senders", type=int, default=4, help="sender processes (default 4)")
    parser.add_argument("--inflight", type=int, default=2, help="requests in flight per sender (default 2)")
    parser.add_argument("--batch-size", type=int, default=1000, help="events per batch (default 1,000)")
    parser.add_argument("--ids", choices=("random", "ordered"), default="random",
                        help="event ids: random 128 bits (as uuid4s), or growing (as UUIDv7s); default random")
    parser.add_argument("--times", choices=("repeated", "growing"), default="repeated",
                        help="event times: the same in every batch, or growing from batch to batch (default repeated)")
    parser.add_argument("--customers", type=int, default=4, help="customers the events go to (default 4)")
    parser.add_argument("--invoiced-months", type=int, default=0,
                        help="bill every customer for this many months before the run (default 0)")
    parser.add_argument("--api-check-max", type=int, default=2_000_000,
                        help="check the count meter over the API up to this many events (default 2,000,000)")
    parser.add_argument("--prebuild-mb", type=int, default=64,
                        help="pre-build a sender's bodies when they fit in this many MiB (default 64)")
    args = parser.parse_args(argv)
    if min(args.events, args.senders, args.inflight, args.batch_size, args.customers) < 1:
        parser.error("--events, --senders, --inflight, --batch-size and --customers must be at least 1")
    if args.events % args.batch_size or args.batch_size > 10_000:
        parser.error("--events must be a multiple of --batch-size, which is at most 10,000")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a SIGTERM also stops what was started
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stores = ("sqlite", "postgres") if args.store == "both" else (args.store,)
    try:
        results = [bench(store, args) for store in stores]
    except KeyboardInterrupt:  # the servers and PostgreSQL started here are stopped by now
        sys.exit("interrupted")
    print(table(results, args))


if __name__ == "__main__":
    main()

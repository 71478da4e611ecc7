"""Crash safety of usage ingestion (DESIGN rule 6, "Nothing lost"): `tally serve` is killed with
SIGKILL while several clients are sending batches, and restarted on the same store. Every event
that got a 202 is there exactly once; once the client has retried everything, each event counts
once. Runs on both stores, against a real `tally serve` process.
"""

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx

from api.ledger import Ledger
from ops.services import children, free_port, state
from projections import store, usage_readings
from projections.drivers import inprocess
from projections.store import Database

ROOT = Path(__file__).resolve().parents[1]
TALLY = Path(sys.executable).parent / "tally"
API_KEY = "crash-test-" + "k" * 16  # TALLY_API_KEY: the admin key of the first tenant, on every start
START_SECONDS = 30
TIMEOUT = httpx.Timeout(15, connect=3)

CUSTOMERS = [f"cust-{n}" for n in range(5)]
SENDERS = 4
BATCHES = 250
KILL_AFTER = 10, 0.3, 100  # SIGKILL after this many 202s and this many seconds, or that many 202s
BATCH_SIZE = 200
EVENT_NAME = "api.call"
AT = "2026-11-01T12:00:00Z"
PERIOD = {"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"}


def batch(number: int) -> list[dict]:
    """Batch `number`: 200 events with ids of their own, spread over the customers."""
    return [{"event_id": f"b{number:03d}-e{i:03d}", "customer": CUSTOMERS[(number * BATCH_SIZE + i) % len(CUSTOMERS)],
             "event_name": EVENT_NAME, "timestamp": AT, "properties": {"n": i}} for i in range(BATCH_SIZE)]


ALL = [batch(number) for number in range(BATCHES)]


def per_customer(numbers: object) -> Counter:
    return Counter(event["customer"] for number in numbers for event in ALL[number])


@dataclass
class Server:
    process: subprocess.Popen
    base_url: str
    stderr: Path

    def log(self) -> str:
        return self.stderr.read_text(errors="replace")[-3000:]


@contextmanager
def serving(database_url: str, folder: Path, name: str) -> Iterator[Server]:
    """`tally serve` as a real process on a free port, answering /healthz; always killed on the way out."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TALLY_")}
    port = free_port()
    env.update(TALLY_DATABASE_URL=database_url, TALLY_API_KEY=API_KEY, TALLY_HOST="127.0.0.1", TALLY_PORT=str(port))
    stdout, stderr = folder / f"{name}.out", folder / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:  # files, not pipes: output can never block it
        process = subprocess.Popen([str(TALLY), "serve"], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                   stdout=out, stderr=err)
    server = Server(process, f"http://127.0.0.1:{port}", stderr)
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            assert process.poll() is None, f"tally serve ({name}) exited:\n{server.log()}"
            try:
                if httpx.get(f"{server.base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"tally serve ({name}) did not answer in time:\n{server.log()}"
            time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def cmdline(pid: int) -> bytes:
    """A process's command line (Linux: from /proc), empty once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def api(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=TIMEOUT)


@dataclass
class Load:
    """Batches sent by several senders at once, each taking the next batch number; what each got back."""

    todo: Iterator[int]
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: list[tuple[int, dict]] = field(default_factory=list)  # (batch, its 202 answer)
    failed: dict[int, str] = field(default_factory=dict)  # batch -> the error instead of an answer
    other: dict[int, str] = field(default_factory=dict)  # batch -> an answer that was not a 202
    in_flight: int = 0

    @property
    def acked(self) -> dict[int, dict]:
        with self.lock:
            return dict(self.answers)

    def next(self) -> int | None:
        with self.lock:
            number = next(self.todo, None)
            if number is not None:
                self.in_flight += 1
            return number

    def sender(self, server: Server, stop_on_error: bool) -> None:
        with api(server) as http:
            while (number := self.next()) is not None:
                try:
                    answer = http.post("/v1/events/batch", json={"events": ALL[number]})
                except httpx.TransportError as error:
                    with self.lock:
                        self.in_flight -= 1
                        self.failed[number] = type(error).__name__
                    if stop_on_error:
                        return
                    continue
                with self.lock:
                    self.in_flight -= 1
                    if answer.status_code == 202:
                        self.answers.append((number, answer.json()))
                    else:
                        self.other[number] = f"{answer.status_code} {answer.text[:300]}"

    def run(self, server: Server, stop_on_error: bool) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.sender, args=(server, stop_on_error), daemon=True)
                   for _ in range(SENDERS)]
        for thread in threads:
            thread.start()
        return threads


def join(threads: list[threading.Thread], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a sender did not finish in time"


def counts(server: Server) -> Counter:
    """Each customer's count of events, read over HTTP."""
    found = Counter()
    with api(server) as http:
        for customer in CUSTOMERS:
            answer = http.get(f"/v1/customers/{customer}/usage", params={"meter_code": "calls", **PERIOD})
            assert answer.status_code == 200, answer.text
            total = Decimal(answer.json()["total"])
            assert total == int(total), answer.json()
            found[customer] = int(total)
    return found


def test_a_kill_9_during_concurrent_ingestion_loses_no_acknowledged_event_and_a_retry_counts_each_once(
    database_url, tmp_path
):
    # Given tally serve with a count meter and five customers
    with serving(database_url, tmp_path, "first") as first:
        with api(first) as http:
            meter = http.post("/v1/meters", json={"code": "calls", "name": "Calls", "event_name": EVENT_NAME,
                                                  "aggregation": "count"})
            assert meter.status_code == 201, meter.text
            for customer in CUSTOMERS:
                made = http.post("/v1/customers", json={"external_id": customer, "name": customer, "currency": "USD"})
                assert made.status_code == 201, made.text
        # When four clients send 200-event batches at once, and the server is killed with SIGKILL
        # once some batches are acknowledged, with others in flight
        load = Load(iter(range(BATCHES)))
        started = time.monotonic()
        threads = load.run(first, stop_on_error=True)
        least, seconds, most = KILL_AFTER
        while len(load.acked) < least or (time.monotonic() - started < seconds and len(load.acked) < most):
            assert time.monotonic() - started < 15, f"too few 202s: {load.acked.keys()} {load.other} {first.log()}"
            assert not load.failed and not load.other, (load.failed, load.other, first.log())
            time.sleep(0.002)
        kill_at = time.monotonic() - started
        in_flight = load.in_flight
        helpers = children(first.process.pid)  # the usage read model's follower, the batches' decoding process
        os.kill(first.process.pid, signal.SIGKILL)
        assert first.process.wait(10) == -signal.SIGKILL
        join(threads, 20)
        # and its helper processes end with it
        assert len(helpers) >= 2, helpers
        deadline = time.monotonic() + 10
        while any(state(pid) != "Z" for pid in helpers):
            assert time.monotonic() < deadline, f"helpers outlived the server: {helpers}"
            time.sleep(0.1)

    acked, attempted = set(load.acked), set(load.acked) | set(load.failed)
    print(f"killed after {kill_at:.2f}s: {len(acked)} batches acknowledged, {in_flight} in flight,"
          f" cut short: {sorted(Counter(load.failed.values()).items())}")
    assert not load.other, load.other
    assert in_flight > 0 and load.failed, "the kill cut no request short"
    assert all(answer == {"accepted": BATCH_SIZE, "duplicates": 0, "rejected": []}
               for answer in load.acked.values()), load.acked

    # When it is restarted on the same store
    with serving(database_url, tmp_path, "second") as second:
        # Then each customer counts every acknowledged event, and nothing that was never sent
        present = counts(second)
        for customer in CUSTOMERS:
            assert per_customer(acked)[customer] <= present[customer] <= per_customer(attempted)[customer], (
                customer, present, per_customer(acked), per_customer(attempted))

        # When the client retries everything, acknowledged or not, from four senders at once, each batch
        # twice with the two copies sent together (as a client that timed out and retried would)
        retry = Load(iter([number for number in range(BATCHES) for _ in range(2)]))
        join(retry.run(second, stop_on_error=False), 60)
        # Then every request is answered 202 with nothing rejected
        assert not retry.failed and not retry.other, (retry.failed, retry.other, second.log())
        assert sorted(number for number, _ in retry.answers) == sorted(2 * list(range(BATCHES)))
        assert all(answer["rejected"] == [] and answer["accepted"] + answer["duplicates"] == BATCH_SIZE
                   for _, answer in retry.answers), retry.answers
        # And every acknowledged batch was there in full: each of its events is a duplicate
        assert [(number, answer) for number, answer in retry.answers if number in acked and answer["accepted"]] == []
        # And the retry accepted exactly the events that were missing, once (none was there twice)
        accepted = sum(answer["accepted"] for _, answer in retry.answers)
        print(f"after the restart: {sum(present.values())} events present, {sum(per_customer(acked).values())}"
              f" acknowledged, {sum(per_customer(attempted).values())} sent; the retry accepted {accepted}")
        assert accepted == BATCHES * BATCH_SIZE - sum(present.values()), (accepted, present)
        # And each event now counts once
        assert counts(second) == per_customer(range(BATCHES))
        assert "Traceback" not in second.log(), second.log()
    # And the usage log itself holds each event once (read from the store, not through the read model)
    reopened = Ledger(database_url)
    try:
        assert reopened.usage.size() == BATCHES * BATCH_SIZE
    finally:
        reopened.close()


def _spawn_follower_then_die_holding_its_event(views_url: str, usage_url: str, told) -> None:  # noqa: ANN001
    """A server's part: start the usage runner's process, tell its pid, then be killed inside
    `changed.set()` (its lock taken, never given back)."""
    changed = multiprocessing.get_context("spawn").Event()
    follower = inprocess.spawn(views_url, usage_url, changed)
    usage = Database(usage_url)
    while not usage.query("SELECT 1 FROM sqlite_master WHERE name = 'tally_usage'"):  # made by the runner
        time.sleep(0.05)
    time.sleep(1)  # the runner in its loop, waiting on the event
    told.send(follower.pid)
    changed._cond.acquire()  # noqa: SLF001 (as `set` holds it)
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_usage_runner_process_ends_with_a_server_killed_while_it_signalled_it(tmp_path):
    # Given a server (a process of its own) that started the usage runner's process
    views_url, usage_url = f"sqlite:///{tmp_path / 'views.sqlite'}", f"sqlite:///{tmp_path / 'usage.sqlite'}"
    Database(views_url).migrate(store.SCHEMA + usage_readings.SCHEMA)
    theirs, ours = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.get_context("fork").Process(
        target=_spawn_follower_then_die_holding_its_event, args=(views_url, usage_url, ours))
    server.start()
    assert theirs.poll(30)
    follower = theirs.recv()
    # When it is killed while waking the runner (the event's lock held)
    server.join(30)
    assert server.exitcode == -signal.SIGKILL
    # Then the runner's process ends too, though it waits on that event
    deadline = time.monotonic() + 10
    while state(follower) != "Z":
        assert time.monotonic() < deadline, f"the usage runner outlived its server: {follower}"
        time.sleep(0.1)


def test_a_serving_process_starts_its_decoding_process_before_its_first_batch(tmp_path):
    """So that the first batch after a start does not wait for a Python process to start."""
    with serving(f"sqlite:///{tmp_path / 'events.sqlite'}", tmp_path, "fresh") as server:
        def helpers() -> list[int]:  # the usage read model's runner and the batches' decoding process
            return [pid for pid in children(server.process.pid) if b"spawn_main" in cmdline(pid)]

        deadline = time.monotonic() + 30
        while len(helpers()) < 2:
            assert time.monotonic() < deadline, f"no decoding process before any batch: {helpers()}"
            time.sleep(0.05)
        with api(server) as client:
            answer = client.post("/v1/events/batch", json={"events": batch(0)})
        assert answer.status_code == 202 and answer.json()["accepted"] == BATCH_SIZE
        assert len(helpers()) == 2  # the batch went to that process: no other was started

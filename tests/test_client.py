"""The Python SDK (api/client.py) against a real Tally over real HTTP, on both stores: the sync and
async clients, their errors and Idempotency-Key, and the batching EventSender, whose failures are
provoked by a real HTTP proxy in front of Tally rather than a mock transport."""

import asyncio
import inspect
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from uuid import UUID

import httpx
import pytest
from conftest import open_tenant

from api.app import OPERATIONS
from api.client import AsyncClient, Client, FieldError, TallyError
from api.sender import EventSender, SenderFull

NOW = datetime.now(UTC).replace(microsecond=0)
CUSTOMER = "acme+eu@example.com"  # an external id that must be escaped in paths


class Proxy:
    """A real HTTP server on 127.0.0.1 in front of Tally that records each body it is sent, can hold
    requests until released, and answers 503 (Retry-After: 0) to the first requests, one per fault:
    "refuse" without passing the request on, "lose" after Tally took it (its answer is lost)."""

    def __init__(self, upstream: str) -> None:
        self.upstream, self.faults = upstream, list[str]()
        self.bodies: list[dict[str, Any]] = []
        self.arrived, self.released = threading.Event(), threading.Event()
        self.released.set()
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=10)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), type("Forward", (_Forward,), {"proxy": self}))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()

    def answer(self, path: str, authorization: str, body: bytes) -> tuple[int, str, bytes]:
        with self._lock:
            self.bodies.append(json.loads(body, parse_float=Decimal))
            fault = self.faults.pop(0) if self.faults else None
        self.arrived.set()
        assert self.released.wait(10), "the test never released the proxy"
        if fault == "refuse":
            return 503, "application/problem+json", b'{"title": "Unavailable", "detail": "try again", "status": 503}'
        forwarded = self._http.post(self.upstream + path, content=body,
                                    headers={"Authorization": authorization, "Content-Type": "application/json"})
        if fault == "lose":
            return 503, "text/html", b"<h1>503 Service Unavailable</h1>"
        return forwarded.status_code, forwarded.headers["content-type"], forwarded.content

    def stop(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()
        self._http.close()


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: Proxy

    def do_POST(self) -> None:  # the name http.server calls
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status, media, content = self.proxy.answer(self.path, self.headers["Authorization"], body)
        self.send_response(status)
        self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(content)))
        if status == 503:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api_key(ledger) -> str:
    return open_tenant(ledger)[1]


@pytest.fixture
def proxy(base_url: str) -> Iterator[Proxy]:
    started = Proxy(base_url)
    yield started
    started.stop()


@pytest.fixture
def tally(base_url: str, api_key: str) -> Iterator[Client]:
    """A sync client of a tenant with meter "calls" (a count of llm.call) and customer CUSTOMER."""
    with Client(base_url, api_key) as client:
        client.create_meter(code="calls", name="Calls", event_name="llm.call", aggregation="count")
        client.create_customer(external_id=CUSTOMER, name="Acme EU", currency="USD")
        yield client


def call(usage: int, **fields: Any) -> dict[str, Any]:
    return {"customer": CUSTOMER, "event_name": "llm.call", "properties": {"tokens": usage}, **fields}


def calls_counted(tally: Client) -> Decimal:
    report = tally.get_usage(CUSTOMER, meter_code="calls", from_=NOW - timedelta(hours=1), to=NOW + timedelta(hours=1))
    return Decimal(report["total"])


async def until(condition: Callable[[], bool], seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def run(client: Client | AsyncClient, operation: str, *args: Any, **fields: Any) -> Any:
    """One operation on either client: the sync one answers, the async one is awaited."""
    answer = getattr(client, operation)(*args, **fields)
    return await answer if inspect.isawaitable(answer) else answer


async def each_client(base_url: str, sync_key: str, async_key: str) -> AsyncIterator[Client | AsyncClient]:
    """The sync client, then the async one, each closed after use."""
    with Client(base_url, sync_key) as sync:
        yield sync
    async with AsyncClient(base_url, async_key) as concurrent:
        yield concurrent


# --- the clients ---------------------------------------------------------------------------------

WALK = [
    ("create_meter", (), {"code": "tokens", "name": "Tokens", "event_name": "llm.completion",
                          "aggregation": "sum", "field": "tokens", "group_by": ["model"]}),
    ("create_plan", (), {"code": "pro", "name": "Pro", "currency": "USD", "interval": "month"}),
    ("publish_plan_version", ("pro",), {"prices": [{"type": "per_unit", "meter_code": "tokens", "currency": "USD",
                                                    "unit_amount": Decimal("0.000000000002")}]}),
    ("create_customer", (), {"external_id": CUSTOMER, "name": "Acme EU", "currency": "USD",
                             "tax_rate": Decimal("0.20")}),
    ("send_event", ({"event_id": "e-1", "customer": CUSTOMER, "event_name": "llm.completion", "timestamp": NOW,
                     "properties": {"tokens": 1000, "model": "m1"}},), {}),
    ("send_events", (), {"events": [{"event_id": "e-2", "customer": CUSTOMER, "event_name": "llm.completion",
                                     "timestamp": NOW, "properties": {"tokens": Decimal("0.5"), "model": "m2"}}]}),
    ("get_usage", (CUSTOMER,), {"meter_code": "tokens", "from_": NOW - timedelta(hours=1),
                                "to": NOW + timedelta(hours=1), "group_by": ["model"]}),
    ("get_plan_version", ("pro", 1), {}),
]


def test_the_clients_have_a_method_for_every_route_that_takes_a_key():
    # Given the server's route table
    routes = {f"{operation.method} {operation.path}" for operation in OPERATIONS if operation.roles}
    # Then the clients have one method per route, and none for a route the server does not have
    methods = [getattr(Client, name) for name in dir(Client) if hasattr(getattr(Client, name), "route")]
    assert sorted(method.route for method in methods) == sorted(routes)


async def test_both_clients_walk_from_a_meter_and_a_plan_to_a_customers_usage(ledger, base_url):
    # Given two tenants: one for the sync client, one for the async client
    keys = open_tenant(ledger, "Sync")[1], open_tenant(ledger, "Async")[1]
    async for client in each_client(base_url, *keys):
        # When each client defines a meter, a plan, its version and a customer, sends usage and reads it
        answers = [await run(client, operation, *args, **fields) for operation, args, fields in WALK]
        meter, plan, version, customer, one, batch, usage, read_version = answers
        # Then each answer is the decoded resource, amounts kept exactly as decimal strings
        assert (meter["code"], plan["code"], version["version"]) == ("tokens", "pro", 1)
        assert version["prices"][0]["unit_amount"] == "0.000000000002" == read_version["prices"][0]["unit_amount"]
        assert (customer["external_id"], customer["tax_rate"]) == (CUSTOMER, "0.20")
        assert one == {"accepted": 1, "duplicates": 0}
        assert batch == {"accepted": 1, "duplicates": 0, "rejected": []}
        # And the usage report counts both events, by model
        assert Decimal(usage["total"]) == Decimal("1000.5")
        assert {bucket["group"]["model"]: Decimal(bucket["value"]) for bucket in usage["buckets"]} == {
            "m1": Decimal(1000), "m2": Decimal("0.5")}


async def test_a_refusal_is_a_tally_error_with_the_problems_status_and_field_errors(base_url, api_key):
    async for client in each_client(base_url, api_key, api_key):
        # When a meter with an unknown aggregation and a customer with a float tax rate are sent
        with pytest.raises(TallyError) as meter:
            await run(client, "create_meter", code="tokens", name="Tokens", event_name="e", aggregation="median")
        with pytest.raises(TallyError) as customer:
            await run(client, "create_customer", {"external_id": "acme", "name": "Acme", "currency": "USD"},
                      tax_rate=0.2)
        # And a meter that does not exist is read
        with pytest.raises(TallyError) as missing:
            await run(client, "get_meter", "tokens")
        # Then each is a TallyError carrying the problem+json status, title, detail and field errors
        assert (meter.value.status, meter.value.title) == (422, "Invalid request")
        assert [error.field for error in meter.value.errors] == ["aggregation"]
        assert meter.value.detail.startswith("aggregation:")
        assert customer.value.errors[0] == FieldError("tax_rate", customer.value.errors[0].message)
        assert (missing.value.status, missing.value.errors) == (404, [])


def test_a_repeat_under_the_same_idempotency_key_answers_the_first_response(base_url, api_key):
    with Client(base_url, api_key) as client:
        # Given a customer created under an Idempotency-Key
        spec = {"external_id": "acme", "name": "Acme", "currency": "USD"}
        first = client.create_customer(spec, idempotency_key="create-acme")
        # When it is sent again under the same key, and without one
        replay = client.create_customer(spec, idempotency_key="create-acme")
        with pytest.raises(TallyError) as again:
            client.create_customer(spec)
        # And another body is sent under the same key
        with pytest.raises(TallyError) as other:
            client.create_customer(spec, name="Acme Ltd", idempotency_key="create-acme")
        # Then the replay is the first answer, the keyless repeat a conflict, the other body a 422
        assert replay == first
        assert again.value.status == 409
        assert (other.value.status, other.value.errors[0].field) == (422, "Idempotency-Key")
        assert [c["external_id"] for c in client.list_customers(limit=10)["data"]] == ["acme"]


# --- the event sender ----------------------------------------------------------------------------

async def test_the_sender_posts_a_batch_as_soon_as_max_batch_events_wait(proxy, api_key):
    async with AsyncClient(proxy.url, api_key) as client:
        sender = EventSender(client, max_batch=10, flush_interval=60)
        # When 25 events are sent
        for usage in range(25):
            sender.send_nowait(call(usage))
        # Then two full batches go at once, and five wait for the clock
        await until(lambda: sender.counts.accepted == 20)
        assert [len(body["events"]) for body in proxy.bodies] == [10, 10]
        assert sender.pending == 5
        # And closing sends the rest
        await sender.close()
    assert [len(body["events"]) for body in proxy.bodies] == [10, 10, 5]
    assert sender.counts.accepted == 25


async def test_the_sender_posts_what_waits_every_flush_interval(proxy, api_key):
    async with AsyncClient(proxy.url, api_key) as client, EventSender(client, flush_interval=0.05) as sender:
        # When three events are sent, far fewer than max_batch
        started = time.monotonic()
        for usage in range(3):
            await sender.send(call(usage))
        # Then they go in one batch within about one interval, with no flush asked for
        await until(lambda: sender.counts.accepted == 3, seconds=2)
        assert time.monotonic() - started < 1
        assert [len(body["events"]) for body in proxy.bodies] == [3]


async def test_a_retried_batch_carries_the_same_event_ids_and_counts_once(proxy, api_key, tally):
    # Given a proxy that answers 503 to the first batch without passing it on, and to the second
    # after Tally took it (as if the answer were lost on the way back)
    proxy.faults = ["refuse", "lose"]
    async with AsyncClient(proxy.url, api_key) as client, EventSender(client, backoff_initial=0.01) as sender:
        # When five events without event ids are sent
        event_ids = [sender.send_nowait(call(usage)) for usage in range(5)]
        await sender.flush()
    # Then the one batch was posted three times, the same ids and timestamps each time
    assert len(proxy.bodies) == 3
    assert proxy.bodies[0] == proxy.bodies[1] == proxy.bodies[2]
    assert [event["event_id"] for event in proxy.bodies[0]["events"]] == event_ids
    assert {UUID(event_id).version for event_id in event_ids} == {7}  # time-ordered: the store takes them fastest
    assert sender.counts.retries == 2
    # And Tally counted each event once: the third attempt found them all recorded
    assert (sender.counts.accepted, sender.counts.duplicates) == (0, 5)
    assert calls_counted(tally) == 5


async def test_a_batch_refused_whole_is_not_retried_and_events_refused_alone_are_reported(proxy, api_key, tally):
    rejected, failed = [], []
    async with AsyncClient(proxy.url, api_key) as good, AsyncClient(proxy.url, "tly_a_unknown") as bad:
        # Given a sender with a valid key, and one whose key Tally does not know
        async with EventSender(good, on_rejected=lambda e, errors: rejected.append((e, errors))) as sender:
            # When a good event, one without a customer and another good one are sent
            sender.send_nowait(call(1, event_id="good-1"))
            sender.send_nowait({"event_id": "bad", "event_name": "llm.call", "properties": {}})
            sender.send_nowait(call(2, event_id="good-2"))
        async with EventSender(bad, on_failed=lambda batch, error: failed.append((batch, error))) as refused:
            refused.send_nowait(call(3))
    # Then the bad event alone is reported, with its field errors, and the others land
    assert [(event["event_id"], errors[0].field) for event, errors in rejected] == [("bad", "customer")]
    assert (sender.counts.accepted, sender.counts.rejected, sender.counts.retries) == (2, 1, 0)
    # And the 401 was given up at once: one request, no retry
    assert [(len(batch), error.status) for batch, error in failed] == [(1, 401)]
    assert (refused.counts.failed, refused.counts.retries, len(proxy.bodies)) == (1, 0, 2)
    assert calls_counted(tally) == 2


async def test_sending_never_waits_on_the_network_and_a_full_buffer_is_refused_or_awaited(proxy, api_key):
    # Given a proxy that holds every request until released
    proxy.released.clear()
    async with AsyncClient(proxy.url, api_key) as client:
        sender = EventSender(client, max_batch=1, max_buffered=2)
        # When one event is sent and its batch is held at the proxy
        sender.send_nowait(call(1))
        assert await asyncio.to_thread(proxy.arrived.wait, 5)
        # Then two more are taken at once, while that request is still unanswered
        started = time.perf_counter()
        sender.send_nowait(call(2))
        sender.send_nowait(call(3))
        assert time.perf_counter() - started < 0.05
        assert (sender.pending, sender.counts.accepted, len(proxy.bodies)) == (2, 0, 1)
        # And with the buffer full, send_nowait refuses and send waits for room
        with pytest.raises(SenderFull):
            sender.send_nowait(call(4))
        waiting = asyncio.create_task(sender.send(call(4)))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        # When the proxy lets requests through
        proxy.released.set()
        await asyncio.wait_for(waiting, 5)
        await sender.close()
    # Then every event landed, one batch each
    assert sender.counts.accepted == 4
    assert [len(body["events"]) for body in proxy.bodies] == [1, 1, 1, 1]

"""Usage ingestion: one event, or a batch in which a bad event is rejected alone.

202 means durable: the answer is sent after the transaction holding the events committed. The
events are handed to the usage log's group commit and the request waits for it without holding a
thread, so many concurrent batches share one transaction.

A batch is decoded in one call when every event is valid (the usual case); only a batch with a bad
event is decoded event by event, to reject that one alone. Batches are decoded, validated and turned
into log rows in a process of their own (one per serving process, started with it): that
work holds the GIL for milliseconds a batch, and in the serving process it kept the usage log's writer
(which takes the GIL back at every row it inserts) and the event loop waiting for it. The serving
process then refuses the events of closed periods and queues the rest for the group commit.
"""

import asyncio
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from decimal import Decimal
from typing import Annotated

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api.errors import ApiError, FieldError, field_error
from api.http import JSON, Call, Deferred, Operation, decode_body, encoder
from domain.codes import ExternalId
from domain.money import decode_hook
from domain.usage import EventBatch, EventId, UsageEvent, too_far_ahead
from projections.background import end_with
from projections.usage_log import Row, microseconds, moment_of, rows_of

INGEST = frozenset({"admin", "ingest"})
log = logging.getLogger("tally.api")
RETRY_SECONDS = 5  # after the decoding process failed, the serving process decodes batches this long
START_SECONDS = 30  # a serving process waits this long at most for its decoding process to start
MAX_EVENTS = 10_000
MAX_BATCH_BYTES = 16 * 1024 * 1024
# Numbers in properties are read as Decimal from their text (float_hook), never through float. Only
# here: with a float_hook, msgspec would also let a JSON number into an `Amount` field.
decode_event = msgspec.json.Decoder(UsageEvent, dec_hook=decode_hook, float_hook=Decimal)


class _ValidBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    events: list[UsageEvent]


_batch = msgspec.json.Decoder(_ValidBatch, dec_hook=decode_hook, float_hook=Decimal)
_raw_batch = msgspec.json.Decoder(EventBatch)


class Ingested(msgspec.Struct, frozen=True):
    accepted: int  # new events, now durable
    duplicates: int  # events recorded before (same customer and event_id): counted once, ever


class Rejected(msgspec.Struct, frozen=True):
    index: int
    errors: list[FieldError]


class BatchIngested(msgspec.Struct, frozen=True):
    accepted: int
    duplicates: int
    rejected: list[Rejected]


def _future_error(event: UsageEvent) -> FieldError:
    return FieldError("timestamp", f"{event.timestamp.isoformat()} is more than 5 minutes in the future")


async def ingest_one(call: Call) -> Response:
    event: UsageEvent = call.body
    now = call.ledger.now()
    if too_far_ahead(event, now):
        error = _future_error(event)
        raise ApiError(422, f"timestamp: {error.message}", [error])
    rows, refused = await call.quick(_admitted, call, [0], rows_of(str(call.tenant_id), [event], now), [], now)
    if refused:
        raise ApiError(422, f"timestamp: {refused[0].errors[0].message}", refused[0].errors)
    accepted = await asyncio.wrap_future(call.ledger.usage.submit(rows))
    return Response(encoder.encode(Ingested(accepted, 1 - accepted)), 202, media_type=JSON)


async def ingest_batch(call: Call) -> Response:
    now, tenant = call.ledger.now(), str(call.tenant_id)
    decoded = await _decoding.run(call.raw, tenant, now)
    if decoded is None:  # refused whole (or no decoding process): decoded here, to say why
        decoded = await run_in_threadpool(_decoded, call.raw, tenant, now)
    rows, rejected = await run_in_threadpool(_admitted, call, *decoded, now)
    accepted = await asyncio.wrap_future(call.ledger.usage.submit(rows))
    answer = BatchIngested(accepted, len(rows) - accepted, rejected)
    return Response(encoder.encode(answer), 202, media_type=JSON)


Decoded = tuple[list[int], list[Row], list[Rejected]]


def _decoded(body: bytes, tenant: str, now: datetime) -> Decoded:
    """A batch's good events as log rows, with their indexes, and its rejected events; a batch refused
    whole (malformed, too many events) raises the error."""
    indexed, rejected = _decode(body, now)
    return [index for index, _ in indexed], rows_of(tenant, [event for _, event in indexed], now), rejected


def _decoded_apart(body: bytes, tenant: str, now: datetime) -> Decoded | None:
    """`_decoded` in the decoding process: None for a batch refused whole (the serving process
    decodes it again to answer the error, which then need not cross processes)."""
    try:
        return _decoded(body, tenant, now)
    except Exception:
        return None


class _Decoding:
    """The process decoding this serving process's batches (`_decoded`), started with the serving
    process (`start`), or at the first batch after it failed."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._retry_at = 0.0  # after a failure, batches are decoded in the serving process until then

    async def start(self) -> None:
        """Start the process as the serving process starts, and wait (START_SECONDS at most) until it
        answers: the first batch then need not wait for a Python process to start (measured, the
        first batch of 1,000 after a start: 377 ms before, 56 ms now; 12 ms for the next ones)."""
        if (pool := self._started()) is None:
            return
        try:  # the executor starts its process with its first task
            await asyncio.wait_for(asyncio.wrap_future(pool.submit(int)), START_SECONDS)
        except TimeoutError:  # slow to start: the first batches will wait for it, as they would have
            log.warning("usage: the batch decoding process took over %d s to start", START_SECONDS)
        except (BrokenProcessPool, OSError):
            self._failed()

    async def run(self, body: bytes, tenant: str, now: datetime) -> Decoded | None:
        """`_decoded` in the decoding process; None for a batch it refused whole, or when no process
        could run it (it died, or none could be started: another is tried RETRY_SECONDS later)."""
        if (pool := self._started()) is None:
            return None
        try:
            return await asyncio.wrap_future(pool.submit(_decoded_apart, body, tenant, now))
        except (BrokenProcessPool, OSError):
            return self._failed()

    def _started(self) -> ProcessPoolExecutor | None:
        """The decoding process's executor, started if need be; None when there is none to be had."""
        if self._pool is None:
            if time.monotonic() < self._retry_at:
                return None
            try:
                # it ends with its server, even one killed outright (nothing else would stop it). Not at a
                # lower priority: on a busy machine it then fell behind and sent the batches on in bursts
                # (a check's p99 under ingest 25-288 ms against 11-14)
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=end_with, initargs=(os.getpid(),))
            except OSError:
                return self._failed()
        return self._pool

    def _failed(self) -> None:
        log.warning("usage: the batch decoding process is gone or could not start; batches are decoded in the "
                    "serving process, another decoding process is tried in %d s", RETRY_SECONDS, exc_info=True)
        self._pool, self._retry_at = None, time.monotonic() + RETRY_SECONDS


_decoding = _Decoding()
start_decoding = _decoding.start


def _admitted(call: Call, indexes: list[int], rows: list[Row], rejected: list[Rejected],
              now: datetime) -> tuple[list[Row], list[Rejected]]:
    """The rows of the events whose period is still open to usage, and every event refused
    (`rejected`, and those of a closed period, with the reason), by index."""
    cutoffs = call.ledger.usage_cutoffs(call.tenant_id, {row[1] for row in rows}, now) if rows else {}
    if not cutoffs:
        return rows, rejected
    kept, refused = [], []
    for index, row in zip(indexes, rows, strict=True):
        cutoff = cutoffs.get(row[1])
        if cutoff is not None and row[4] < microseconds(cutoff.before):
            refused.append(Rejected(index, [FieldError("timestamp", (
                f"{moment_of(row[4]).isoformat()} falls in a period invoiced on {cutoff.number}, closed to usage "
                f"since {cutoff.closed_at.isoformat()} (its grace period ended)"))]))
        else:
            kept.append(row)
    return kept, sorted(rejected + refused, key=lambda r: r.index)


def _decode(body: bytes, now: datetime) -> tuple[list[tuple[int, UsageEvent]], list[Rejected]]:
    """The batch's good events with their indexes, and the bad ones' indexes and errors. One parse
    when all are good."""
    try:
        events = _batch.decode(body).events
    except (msgspec.ValidationError, msgspec.DecodeError):
        events = None
    if events is not None and len(events) <= MAX_EVENTS and not any(too_far_ahead(e, now) for e in events):
        return list(enumerate(events)), []
    batch: EventBatch = decode_body(_raw_batch, body)  # a malformed body is refused whole here
    if len(batch.events) > MAX_EVENTS:
        raise ApiError(413, f"a batch holds at most {MAX_EVENTS} events, not {len(batch.events)}")
    events, rejected = [], []
    for index, raw in enumerate(batch.events):
        try:
            event = decode_event.decode(raw)
        except msgspec.ValidationError as error:
            rejected.append(Rejected(index, [field_error(error)]))
            continue
        if too_far_ahead(event, now):
            rejected.append(Rejected(index, [_future_error(event)]))
            continue
        events.append((index, event))
    return events, rejected


class VoidBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    customer: ExternalId
    event_ids: Annotated[list[EventId], msgspec.Meta(min_length=1, max_length=1000)]


class Voided(msgspec.Struct, frozen=True):
    voided: int  # taken out of the totals by this request
    already_voided: int
    not_found: list[str]  # never recorded for this customer


async def void(call: Call) -> Response:
    body: VoidBody = call.body
    event_ids = list(dict.fromkeys(body.event_ids))
    voided, missing = await run_in_threadpool(
        call.ledger.usage.void, str(call.tenant_id), body.customer, event_ids, call.actor.key_id, call.ledger.now()
    )
    answer = Voided(voided, len(event_ids) - len(missing) - voided, missing)
    return Response(encoder.encode(answer), media_type=JSON)


OPERATIONS = [
    Operation("POST", "/v1/events", ingest_one, INGEST, "Ingest one usage event (202 once durable)",
              UsageEvent, Ingested, status=202, decoder=decode_event),
    Operation("POST", "/v1/events/batch", ingest_batch, INGEST,
              f"Ingest up to {MAX_EVENTS:,} usage events; a bad event is rejected alone", EventBatch, BatchIngested,
              status=202, max_body=MAX_BATCH_BYTES, decoder=Deferred()),
    Operation("POST", "/v1/events/void", void, frozenset({"admin"}),
              "Take wrongly sent events out of the totals (a void is recorded, with who and when)", VoidBody, Voided),
]

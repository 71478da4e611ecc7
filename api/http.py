"""The frame every operation runs in: authenticate, check the role, read and decode the body,
honour Idempotency-Key, then call the handler. Handlers hold no rules: one application call each.
"""

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from api.errors import HANDLERS, ApiError, FieldError, problem
from api.idempotency import Idempotency, fingerprint
from api.ledger import Ledger
from domain.aggregate import Actor
from domain.money import decode_hook, encode_hook
from domain.periods import parse_instant
from projections.usage_counters import QUICK, Slow
from projections.views import private_id

MAX_BODY = 1024 * 1024
log = logging.getLogger("tally.api")
JSON = "application/json"
encoder = msgspec.json.Encoder(enc_hook=encode_hook)

T = TypeVar("T")


@dataclass(frozen=True)
class Operation:
    """One route: what it takes, what it answers, and which roles may call it (none: public)."""

    method: str
    path: str
    handler: Callable[["Call"], Awaitable[Response]]
    roles: frozenset[str]
    summary: str
    body: type | None = None
    response: type | None = None
    status: int = 200
    listing: bool = False
    max_body: int = MAX_BODY
    decoder: Any = field(default=None, compare=False)
    media: str = "application/json"  # of the success answer

    def __post_init__(self) -> None:
        if self.body is not None and self.decoder is None:
            object.__setattr__(self, "decoder", msgspec.json.Decoder(self.body, dec_hook=decode_hook))


class Call:
    """What a handler gets: the ledger, who calls (tenant, actor, role), the decoded body, the path."""

    def __init__(self, request: Request, ledger: Ledger) -> None:
        self.request, self.ledger = request, ledger
        self.params: dict[str, str] = request.path_params
        self.tenant_id: UUID = UUID(int=0)
        self.actor = Actor("anonymous")
        self.role = ""
        self.customer: str | None = None
        self.secret = ""  # the caller's API key: seals what Idempotency-Key keeps for replay
        self.body: Any = None
        self.raw = b""  # the body as sent
        # the request's headers, read once (the first of a repeated name): a hot path reads three
        self._headers = dict(reversed(request.scope["headers"]))

    def header(self, name: bytes) -> str | None:
        """A request header by its lower-case name, or None."""
        value = self._headers.get(name)
        return None if value is None else value.decode("latin-1")

    async def command(self, command: Callable[..., Any], *args: Any) -> Any:
        """One application command, as this caller, for this caller's tenant."""
        return await run_in_threadpool(self.ledger.command, command, self.actor, self.tenant_id, *args)

    async def quick(self, read: Callable[..., T], *args: Any) -> T:
        """A read well under a millisecond on the embedded store (a local file): run on the event loop,
        sparing a thread hop; on PostgreSQL (a network round trip) in a thread. A read that finds it
        must begin a usage counter (reading a customer's period: seconds for a million events) says
        so before it has done anything, and is run again in a thread: the loop goes on meanwhile."""
        if self.ledger.embedded:
            token = QUICK.set(True)
            try:
                return read(*args)
            except Slow:
                pass
            finally:
                QUICK.reset(token)
        return await run_in_threadpool(read, *args)

    async def document(self, collection: str, *, code: str | None = None, id: UUID | None = None,  # noqa: A002
                       status: int = 200) -> Response:
        documents, tenant = self.ledger.documents, str(self.tenant_id)
        if id is not None:
            body = await run_in_threadpool(documents.by_id, collection, tenant, str(id))
        else:
            body = await run_in_threadpool(documents.by_code, collection, tenant, code or "")
        if body is None:
            raise ApiError(404, f"no {collection.rstrip('s').replace('_', ' ')} {code or id}")
        return Response(body, status, media_type=JSON)

    async def page(self, collection: str, *, parent: str | None = None, key: str = "code",
                   status: str | None = None) -> Response:
        limit = limit_of(self)
        after = self.request.query_params.get("starting_after")
        if after is not None and key == "id":  # listed by id: the caller names an item by its public id (`key_…`)
            after = str(private_id(collection, after) or after)  # not one of ours: matches nothing, so 404
        found = await run_in_threadpool(
            self.ledger.documents.page, collection, str(self.tenant_id), limit, after, parent, key, status
        )
        if found is None:
            raise ApiError(404, f"starting_after: no {collection} item {after!r}",
                           [FieldError("starting_after", "names nothing in this list")])
        bodies, has_more = found
        body = b'{"data":[' + b",".join(bodies) + b'],"has_more":' + (b"true" if has_more else b"false") + b"}"
        return Response(body, media_type=JSON)


async def customer_page(call: Call, collection: str) -> Response:
    """A page of one customer's items of `collection` (?customer=, required; a portal key lists its own
    customer's, and another customer's list is empty for it)."""
    customer = call.request.query_params.get("customer")
    if call.role == "portal":
        customer = call.customer if customer in (None, call.customer) else ""
    if customer is None:
        raise ApiError(422, f"customer: list the {collection} of one customer (?customer=external_id)",
                       [FieldError("customer", "required")])
    return await call.page(collection, parent=customer, key="id")


def query_moment(call: Call, name: str) -> datetime | None:
    """The query parameter `name` as an RFC 3339 time with an offset, if given; else a 422 naming it."""
    text = call.request.query_params.get(name)
    if text is None:
        return None
    moment = parse_instant(text)
    if moment is None:
        raise ApiError(422, f"{name}: an RFC 3339 time with an offset", [FieldError(name, "a time with an offset")])
    return moment


def limit_of(call: Call) -> int:
    """The page size: ?limit=, 1 to 100 (default 20)."""
    text = call.request.query_params.get("limit", "20")
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 100:  # "²".isdigit(), but int("²") fails
        raise ApiError(422, "limit: a whole number from 1 to 100", [FieldError("limit", "a whole number from 1 to 100")])
    return int(text)


async def authenticate(call: Call) -> None:
    """Bearer key -> tenant, role and actor; 401 when missing, malformed, unknown or revoked."""
    scheme, _, secret = (call.header(b"authorization") or "").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise ApiError(401, "send an API key: Authorization: Bearer <key>", headers={"WWW-Authenticate": "Bearer"})
    found = await call.quick(call.ledger.credential, secret)
    if found is None:
        raise ApiError(401, "this API key is not valid (unknown or revoked)", headers={"WWW-Authenticate": "Bearer"})
    call.tenant_id, call.role, call.customer = found.tenant_id, found.role, found.customer
    call.secret = secret
    call.actor = Actor(found.key_id, call.header(b"idempotency-key"))


async def _read_body(call: Call, limit: int) -> bytes:
    """The body, read straight from the server's messages (most bodies come in one)."""
    declared = call.header(b"content-length") or ""
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is over {limit} bytes")
    chunks, size, more = [], 0, True
    while more:
        message = await call.request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk, more = message.get("body", b""), message.get("more_body", False)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body is over {limit} bytes")
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _answer(operation: Operation, call: Call, raw: bytes) -> Response:
    """The handler's response, or the error response it raised (so it can be kept for replay)."""
    call.raw = raw
    try:
        if operation.decoder is not None:
            call.body = _decode(operation, raw or b"{}")
        return await operation.handler(call)
    except tuple(HANDLERS) as error:
        return await handled(call.request, error)


async def handled(request: Request, error: Exception) -> Response:
    """The problem+json response for an error the API maps (HANDLERS)."""
    handler = next(handler for kind, handler in HANDLERS.items() if isinstance(error, kind))
    return await handler(request, error)


def _decode(operation: Operation, raw: bytes) -> Any:
    return decode_body(operation.decoder, raw)


def decode_body(decoder: Any, raw: bytes) -> Any:
    """The body by `decoder`; malformed JSON is a 400, even when a wrong type came before the syntax error."""
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError:
        msgspec.json.decode(raw)
        raise


class Deferred:
    """A decoder that leaves the body to its handler (which decodes it faster on its own)."""

    def decode(self, raw: bytes) -> bytes:
        return raw


def endpoint(operation: Operation) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        try:
            return await _run(request)
        except tuple(HANDLERS):
            raise
        except Exception:  # a defect: log it, answer problem+json, keep no Idempotency-Key claim
            log.exception("%s %s failed", operation.method, request.url.path)
            return problem(500, "an internal error occurred; the request may be retried")

    async def _run(request: Request) -> Response:
        call = Call(request, request.app.state.ledger)
        if operation.roles:
            await authenticate(call)
            if call.role not in operation.roles:
                raise ApiError(403, f"a {call.role} key may not {operation.method} {operation.path}")
            if call.role == "portal" and call.params.get("external_id", call.customer) != call.customer:
                raise ApiError(404, f"no customer {call.params['external_id']!r}")  # a portal key sees its own
        raw = await _read_body(call, operation.max_body) if operation.method in ("POST", "PATCH", "PUT") else b""
        key = call.header(b"idempotency-key")
        if key is None or operation.method not in ("POST", "PATCH"):
            return await _answer(operation, call, raw)
        idempotency: Idempotency = request.app.state.idempotency
        tenant = str(call.tenant_id)
        request_print = fingerprint(operation.method, request.url.path, raw)
        first = await run_in_threadpool(idempotency.claim, tenant, key, request_print, call.secret)
        if first is not None:
            status, body = first
            media = "application/problem+json" if status >= 400 else JSON
            return Response(body, status, media_type=media, headers={"Idempotent-Replayed": "true"})
        try:
            response = await _answer(operation, call, raw)
        except BaseException:
            await run_in_threadpool(idempotency.finish, tenant, key, 500, b"", call.secret)
            raise
        await run_in_threadpool(
            idempotency.finish, tenant, key, response.status_code, bytes(response.body), call.secret
        )
        return response

    return run

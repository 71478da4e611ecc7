"""The Starlette application: one explicit route table, one error map."""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from api import (
    audit,
    catalogue,
    customers,
    entitlements,
    invoices,
    openapi,
    subscriptions,
    tenant,
    usage,
    wallets,
)
from api.errors import HANDLERS
from api.http import JSON, Call, Operation, encoder, endpoint, handled
from api.idempotency import Idempotency
from api.ledger import Ledger

PUBLIC = frozenset()


async def healthz(call: Call) -> Response:
    return Response(b'{"status":"ok"}', media_type=JSON)


async def openapi_json(call: Call) -> Response:
    return Response(call.request.app.state.openapi, media_type=JSON)


OPERATIONS: list[Operation] = [
    Operation("GET", "/healthz", healthz, PUBLIC, "Liveness: answers without a key"),
    Operation("GET", "/openapi.json", openapi_json, PUBLIC, "This OpenAPI 3.1 document"),
    *tenant.OPERATIONS,
    *catalogue.OPERATIONS,
    *customers.OPERATIONS,
    *usage.OPERATIONS,
    *subscriptions.OPERATIONS,
    *invoices.OPERATIONS,
    *wallets.OPERATIONS,
    *entitlements.OPERATIONS,
    *audit.OPERATIONS,
]


def _following(ledger: Ledger, follow: bool) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """While the app serves, the usage read model follows the usage log beside this process (unless
    another serving process keeps it), and the entitlement counters follow it in this one; it
    serves once the batches' decoding process has started."""

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        if follow:
            ledger.follow_usage()
        ledger.watch()
        await usage.start_decoding()
        yield

    return lifespan


class Dispatch:
    """A request for a fixed path (no parameter) goes straight to its endpoint by one dict look-up;
    any other, to Starlette's routes. Starlette tries its routes one by one through its middleware,
    which costs a hot path such as the entitlement check a fifth of its time."""

    def __init__(self, app: Starlette, operations: list[Operation]) -> None:
        self.app = app
        self.fixed = {(op.method, op.path): endpoint(op) for op in operations if "{" not in op.path}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        run = self.fixed.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        if run is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        request = Request(scope, receive)
        try:
            response = await run(request)
        except tuple(HANDLERS) as error:
            response = await handled(request, error)
        await response(scope, receive, send)


def create_app(ledger: Ledger, follow: bool = True) -> Dispatch:
    routes = [Route(op.path, endpoint(op), methods=[op.method]) for op in OPERATIONS]
    app = Starlette(routes=routes, exception_handlers=HANDLERS, lifespan=_following(ledger, follow))
    app.state.ledger = ledger
    app.state.idempotency = Idempotency(ledger.database)
    app.state.openapi = encoder.encode(openapi.document(OPERATIONS))
    return Dispatch(app, OPERATIONS)

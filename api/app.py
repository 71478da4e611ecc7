"""The Starlette application: one explicit route table, one error map."""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from api import (
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
from api.http import JSON, Call, Operation, encoder, endpoint
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
]


HOT = {"/v1/entitlements/check", "/v1/events/batch", "/v1/events"}


def _following(ledger: Ledger) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """While the app serves, the usage read model follows the usage log in this process."""

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        ledger.follow_usage()
        yield

    return lifespan


def create_app(ledger: Ledger) -> Starlette:
    # Starlette tries routes in order: the hot paths first, then every fixed path before any with a parameter
    ordered = sorted(OPERATIONS, key=lambda op: (op.path not in HOT, "{" in op.path))
    routes = [Route(op.path, endpoint(op), methods=[op.method]) for op in ordered]
    app = Starlette(routes=routes, exception_handlers=HANDLERS, lifespan=_following(ledger))
    app.state.ledger = ledger
    app.state.idempotency = Idempotency(ledger.database)
    app.state.openapi = encoder.encode(openapi.document(OPERATIONS))
    return app

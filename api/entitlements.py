"""Entitlement operations: the check (the hot path) and a customer's entitlements."""

from decimal import Decimal

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api.http import JSON, Call, Operation, encoder
from api.tenant import ADMIN, READERS
from domain.customer_entitlements import OverrideSpec
from domain.entitlements import CheckSpec, Decision

CHECKERS = ADMIN | {"ingest"}


async def check(call: Call) -> Response:
    body: CheckSpec = call.body
    ledger = call.ledger
    found = await call.quick(ledger.check, call.actor, call.tenant_id, body.customer, body.feature_code,
                             Decimal(1) if body.quantity is None else body.quantity, ledger.now())
    return Response(encoder.encode(found), media_type=JSON)


async def listing(call: Call) -> Response:
    ledger = call.ledger
    found = await run_in_threadpool(ledger.entitlements, call.tenant_id, call.params["external_id"], ledger.now())
    return Response(encoder.encode({"data": found, "has_more": False}), media_type=JSON)


async def override(call: Call) -> Response:
    ledger, customer, body = call.ledger, call.params["external_id"], call.body
    await call.command(ledger.override, customer, body)
    found = await run_in_threadpool(ledger.entitlements, call.tenant_id, customer, ledger.now(), body.feature_code,
                                    Decimal(0))
    return Response(encoder.encode(found[0]), 201, media_type=JSON)


OPERATIONS = [
    Operation("POST", "/v1/entitlements/check", check, CHECKERS,
              "May the customer use (quantity more of) a feature now? Counts every usage event acknowledged",
              CheckSpec, Decision),
    Operation("GET", "/v1/customers/{external_id}/entitlements", listing, READERS | {"portal"},
              "Every feature the customer's plan grants, with what is left of each now", response=Decision,
              listing=True),
    Operation("POST", "/v1/customers/{external_id}/entitlement-overrides", override, ADMIN,
              "Set a feature's limit, switch or value for one customer apart from its plan (until ?until)",
              OverrideSpec, Decision, status=201),
]

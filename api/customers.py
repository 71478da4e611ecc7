"""Customer operations, addressed by the caller's external_id."""

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api.errors import ApiError, FieldError
from api.http import JSON, Call, Operation, encoder
from api.tenant import ADMIN, READERS
from domain.codes import Code
from domain.customer import CustomerChanges, CustomerSpec
from projections.usage import UsageReport
from projections.views import CustomerView

Moment = Annotated[datetime, msgspec.Meta(tz=True)]


class UsageQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    meter_code: Code
    from_: Moment = msgspec.field(name="from")
    to: Moment
    window: Literal["hour", "day"] | None = None
    group_by: str | None = None  # comma-separated, among the meter's own group_by


async def register(call: Call) -> Response:
    customer = await call.command(call.ledger.customers.register, call.body)
    return await call.document("customers", id=customer.id, status=201)


async def read(call: Call) -> Response:
    return await call.document("customers", code=call.params["external_id"])


async def change(call: Call) -> Response:
    customer = await call.command(call.ledger.customers.change, call.params["external_id"], call.body)
    return await call.document("customers", id=customer.id)


async def listing(call: Call) -> Response:
    return await call.page("customers")


async def children(call: Call) -> Response:
    await call.document("customers", code=call.params["external_id"])  # 404 for an unknown customer
    return await call.page("customers", parent=call.params["external_id"])


async def usage(call: Call) -> Response:
    await call.document("customers", code=call.params["external_id"])  # 404 for an unknown customer
    query = msgspec.convert(dict(call.request.query_params), UsageQuery, strict=False)
    if query.to <= query.from_:
        raise ApiError(422, "to: must be after from", [FieldError("to", "must be after from")])
    group_by = tuple(name for name in (query.group_by or "").split(",") if name)
    found = await run_in_threadpool(
        call.ledger.usage_report, call.tenant_id, call.params["external_id"], query.meter_code, query.from_,
        query.to, query.window, group_by,
    )
    return Response(encoder.encode(found), media_type=JSON)


OPERATIONS = [
    Operation("POST", "/v1/customers", register, ADMIN, "Create a customer", CustomerSpec, CustomerView, status=201),
    Operation("GET", "/v1/customers", listing, READERS, "List customers", response=CustomerView, listing=True),
    Operation("GET", "/v1/customers/{external_id}", read, READERS, "Read a customer", response=CustomerView),
    Operation("PATCH", "/v1/customers/{external_id}", change, ADMIN, "Change a customer", CustomerChanges,
              CustomerView),
    Operation("GET", "/v1/customers/{external_id}/children", children, READERS, "List a customer's children",
              response=CustomerView, listing=True),
    Operation("GET", "/v1/customers/{external_id}/usage", usage, READERS | {"portal"},
              "A customer's usage of one meter over [from, to), by hour or day and by group", response=UsageReport),
]

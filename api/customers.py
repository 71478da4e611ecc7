"""Customer operations, addressed by the caller's external_id."""

from starlette.responses import Response

from api.http import Call, Operation
from api.tenant import ADMIN, READERS
from domain.customer import CustomerChanges, CustomerSpec
from projections.views import CustomerView


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


OPERATIONS = [
    Operation("POST", "/v1/customers", register, ADMIN, "Create a customer", CustomerSpec, CustomerView, status=201),
    Operation("GET", "/v1/customers", listing, READERS, "List customers", response=CustomerView, listing=True),
    Operation("GET", "/v1/customers/{external_id}", read, READERS, "Read a customer", response=CustomerView),
    Operation("PATCH", "/v1/customers/{external_id}", change, ADMIN, "Change a customer", CustomerChanges,
              CustomerView),
    Operation("GET", "/v1/customers/{external_id}/children", children, READERS, "List a customer's children",
              response=CustomerView, listing=True),
]

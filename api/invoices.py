"""Invoice operations. For now the upcoming invoice: the live draft of the current period's closing
invoice, computed when asked from the contract, its price versions and the usage so far."""

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from api.errors import ApiError
from api.http import JSON, Call, Operation, encoder
from api.tenant import READERS
from domain.invoice import Invoice
from projections.views import private_id


async def upcoming(call: Call) -> Response:
    customer = call.params["external_id"]
    await call.document("customers", code=customer)  # 404 for an unknown customer
    named = call.request.query_params.get("subscription")
    subscription_id = None if named is None else private_id("subscriptions", named)
    if named is not None and subscription_id is None:
        raise ApiError(404, f"no subscription {named}")
    ledger = call.ledger
    found = await run_in_threadpool(ledger.upcoming_invoice, call.tenant_id, customer, subscription_id,
                                    ledger.subscriptions.clock())
    return Response(encoder.encode(found), media_type=JSON)


OPERATIONS = [
    Operation("GET", "/v1/customers/{external_id}/upcoming-invoice", upcoming, READERS | {"portal"},
              "The live draft of the current period's closing invoice (?subscription= when several run)",
              response=Invoice),
]

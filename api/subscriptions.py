"""Subscription operations: start, read, list by customer, amend, cancel, and the contract versions."""

from uuid import UUID

import msgspec
from starlette.responses import Response

from api.errors import ApiError
from api.http import JSON, Call, Operation, customer_page
from api.tenant import ADMIN, READERS
from domain.subscription import AmendmentSpec, Cancellation, SubscriptionSpec
from projections.views import ContractVersion, SubscriptionView, private_id

OWN = READERS | {"portal"}  # a portal key reads its own customer's subscriptions
_customer_of = msgspec.json.Decoder(dict[str, object])


def _subscription_id(call: Call) -> UUID:
    found = private_id("subscriptions", call.params["id"])
    if found is None:
        raise ApiError(404, f"no subscription {call.params['id']}")
    return found


async def _own(call: Call) -> Response:
    """The subscription's document; 404 for another tenant's, or for a portal key, another customer's."""
    response = await call.document("subscriptions", id=_subscription_id(call))
    if call.role == "portal" and _customer_of.decode(response.body)["customer"] != call.customer:
        raise ApiError(404, f"no subscription {call.params['id']}")
    return response


async def start(call: Call) -> Response:
    subscription = await call.command(call.ledger.subscriptions.start, call.body)
    return await call.document("subscriptions", id=subscription.id, status=201)


async def read(call: Call) -> Response:
    return await _own(call)


async def listing(call: Call) -> Response:
    return await customer_page(call, "subscriptions")


async def amend(call: Call) -> Response:
    await call.command(call.ledger.subscriptions.amend, _subscription_id(call), call.body)
    return await call.document("subscriptions", id=_subscription_id(call))


async def cancel(call: Call) -> Response:
    await call.command(call.ledger.subscriptions.cancel, _subscription_id(call), call.body)
    return await call.document("subscriptions", id=_subscription_id(call))


async def versions(call: Call) -> Response:
    body = (await _own(call)).body
    found = msgspec.json.decode(body)["versions"]
    return Response(msgspec.json.encode({"data": found, "has_more": False}), media_type=JSON)


OPERATIONS = [
    Operation("POST", "/v1/subscriptions", start, ADMIN, "Subscribe a customer to a plan version",
              SubscriptionSpec, SubscriptionView, status=201),
    Operation("GET", "/v1/subscriptions", listing, OWN, "List a customer's subscriptions (?customer=)",
              response=SubscriptionView, listing=True),
    Operation("GET", "/v1/subscriptions/{id}", read, OWN, "Read a subscription", response=SubscriptionView),
    Operation("POST", "/v1/subscriptions/{id}/amendments", amend, ADMIN,
              "Change the plan version, now or at a given time (a new contract version)", AmendmentSpec,
              SubscriptionView),
    Operation("POST", "/v1/subscriptions/{id}/cancel", cancel, ADMIN,
              "Cancel now, or at the end of the current period", Cancellation, SubscriptionView),
    Operation("GET", "/v1/subscriptions/{id}/versions", versions, OWN,
              "The contract's history: every change, who made it, when, why", response=ContractVersion,
              listing=True),
]

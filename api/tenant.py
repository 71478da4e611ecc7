"""Operations on the caller's own tenant: its settings and its API keys."""

import msgspec
from starlette.responses import Response

from api.errors import ApiError
from api.http import JSON, Call, Operation, encoder
from domain.api_key import Role
from domain.codes import ExternalId
from domain.tenant import TenantChanges
from projections.views import ApiKeyView, IssuedApiKeyView, TenantView, private_id

ADMIN = frozenset({"admin"})
READERS = frozenset({"admin", "finance", "readonly"})
FINANCE = ADMIN | {"finance"}  # invoices, grants, top-ups, audit (API.md's roles)


class ApiKeyBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    role: Role
    customer: ExternalId | None = None  # a portal key's customer, by external_id


async def get_tenant(call: Call) -> Response:
    return await call.document("tenants", id=call.tenant_id)


async def change_tenant(call: Call) -> Response:
    await call.command(call.ledger.tenants.change_settings, call.body)
    return await call.document("tenants", id=call.tenant_id)


async def create_key(call: Call) -> Response:
    key, secret = await call.command(call.ledger.tenants.issue_key, call.body.role, call.body.customer)
    stored = await call.document("api_keys", id=key.id)
    view = msgspec.json.decode(stored.body)
    return Response(encoder.encode({**view, "key": secret}), 201, media_type=JSON)


async def list_keys(call: Call) -> Response:
    return await call.page("api_keys", key="id")


def _key_id(call: Call):  # noqa: ANN202
    key_id = private_id("api_keys", call.params["id"])
    if key_id is None:
        raise ApiError(404, f"no api key {call.params['id']!r}")
    return key_id


async def get_key(call: Call) -> Response:
    return await call.document("api_keys", id=_key_id(call))


async def revoke_key(call: Call) -> Response:
    key_id = _key_id(call)
    await call.command(call.ledger.tenants.revoke_key, key_id)
    return await call.document("api_keys", id=key_id)


OPERATIONS = [
    Operation("GET", "/v1/tenant", get_tenant, READERS, "The caller's tenant and its settings", response=TenantView),
    Operation("PATCH", "/v1/tenant", change_tenant, ADMIN, "Change tenant settings", TenantChanges, TenantView),
    Operation("POST", "/v1/api-keys", create_key, ADMIN, "Create an API key (its secret is shown once)",
              ApiKeyBody, IssuedApiKeyView, status=201),
    Operation("GET", "/v1/api-keys", list_keys, ADMIN, "List API keys (prefix only)", response=ApiKeyView, listing=True),
    Operation("GET", "/v1/api-keys/{id}", get_key, ADMIN, "Read an API key (prefix only)", response=ApiKeyView),
    Operation("DELETE", "/v1/api-keys/{id}", revoke_key, ADMIN, "Revoke an API key", response=ApiKeyView),
]

"""Tenants are walled off from each other: codes are per tenant, and another tenant's objects are
404 everywhere: read by code or id, listed, changed, named in a body, or paged after.
"""

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import client, open_tenant

METER = {"name": "Tokens", "event_name": "llm.call", "aggregation": "sum", "field": "tokens"}
PLAN = {"name": "Pro", "currency": "USD", "interval": "month"}
FLAT = {"type": "flat", "currency": "USD", "amount": "49.00", "pay_in": "advance"}


@pytest.fixture
def tenants(ledger, base_url) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    """The admin clients of two tenants, Acme (A) and Globex (B)."""
    _, secret_a = open_tenant(ledger, "Acme")
    _, secret_b = open_tenant(ledger, "Globex")
    with client(base_url, secret_a) as a, client(base_url, secret_b) as b:
        yield a, b


def created(http: httpx.Client, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post(path, json=body)
    assert response.status_code == 201, (path, response.text)
    return response.json()


def define_catalogue(http: httpx.Client, code: str, label: str) -> None:
    """A meter, a metered feature, a pricing unit, a plan with version 1, and a customer with a child,
    all named `code` (the child `code-child`), with `label` in their names."""
    created(http, "/v1/meters", {**METER, "code": code, "name": f"{label} tokens"})
    created(http, "/v1/features", {"code": code, "name": f"{label} tokens", "type": "metered", "meter_code": code})
    created(http, "/v1/pricing-units", {"code": code, "name": f"{label} credits", "currency": "USD",
                                        "conversion_rate": "0.01"})
    created(http, "/v1/plans", {**PLAN, "code": code, "name": f"{label} pro"})
    created(http, f"/v1/plans/{code}/versions", {"prices": [FLAT]})
    created(http, "/v1/customers", {"external_id": code, "name": f"{label} customer", "currency": "USD"})
    created(http, "/v1/customers", {"external_id": f"{code}-child", "name": f"{label} child", "currency": "USD",
                                    "parent_external_id": code})


READS_BY_CODE = [
    "/v1/meters/{code}", "/v1/features/{code}", "/v1/pricing-units/{code}", "/v1/plans/{code}",
    "/v1/customers/{code}",
]


def test_two_tenants_may_use_the_same_codes_and_external_ids(tenants):
    a, b = tenants
    # When Acme and Globex each define a meter, feature, pricing unit, plan and customer named "shared"
    define_catalogue(a, "shared", "Acme")
    define_catalogue(b, "shared", "Globex")
    # Then each reads its own under that code, and its own plan's version 1
    for template in READS_BY_CODE:
        path = template.format(code="shared")
        assert a.get(path).json()["name"].startswith("Acme"), path
        assert b.get(path).json()["name"].startswith("Globex"), path
    assert a.get("/v1/plans/shared/versions/1").json()["id"] != b.get("/v1/plans/shared/versions/1").json()["id"]
    assert [c["name"] for c in b.get("/v1/customers/shared/children").json()["data"]] == ["Globex child"]


def test_another_tenants_objects_are_404_everywhere_and_never_listed(tenants, ledger):
    a, b = tenants
    # Given Acme's catalogue under "acme-only", an Acme finance key, and a plan "pro" only Acme versioned
    define_catalogue(a, "acme-only", "Acme")
    key = created(a, "/v1/api-keys", {"role": "finance"})
    created(a, "/v1/plans", {**PLAN, "code": "pro"})
    created(a, "/v1/plans/pro/versions", {"prices": [FLAT]})
    created(b, "/v1/plans", {**PLAN, "code": "pro"})
    recorded = ledger.events_recorded()
    # When Globex asks for each of them
    paths = [template.format(code="acme-only") for template in READS_BY_CODE] + [
        f"/v1/api-keys/{key['id']}",
        "/v1/plans/acme-only/versions", "/v1/plans/acme-only/versions/1", "/v1/plans/pro/versions/1",
        "/v1/customers/acme-only/children",
    ]
    # Then each is a 404 problem
    for path in paths:
        response = b.get(path)
        assert response.status_code == 404, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json", path
    # And Globex cannot revoke Acme's key, nor publish a version of Acme's plan
    assert b.delete(f"/v1/api-keys/{key['id']}").status_code == 404
    assert b.post("/v1/plans/acme-only/versions", json={"prices": [FLAT]}).status_code == 404
    assert ledger.events_recorded() == recorded
    assert a.get(f"/v1/api-keys/{key['id']}").json()["revoked"] is False
    assert a.get("/v1/plans/acme-only").json()["latest_version"] == 1
    assert b.get("/v1/plans/pro/versions").json() == {"data": [], "has_more": False}
    # And Globex cannot rename Acme's customer: a 404, and Acme's customer is as it was
    before = a.get("/v1/customers/acme-only").json()
    assert b.patch("/v1/customers/acme-only", json={"name": "Taken over"}).status_code == 404
    assert ledger.events_recorded() == recorded
    assert a.get("/v1/customers/acme-only").json() == before
    # When Globex, with its own catalogue under "globex-only", lists each collection
    define_catalogue(b, "globex-only", "Globex")
    # Then it sees only its own objects
    for collection, field, own in [
        ("meters", "code", ["globex-only"]), ("features", "code", ["globex-only"]),
        ("pricing-units", "code", ["globex-only"]), ("plans", "code", ["pro", "globex-only"]),
        ("customers", "external_id", ["globex-only", "globex-only-child"]),
    ]:
        assert [item[field] for item in b.get(f"/v1/{collection}").json()["data"]] == own, collection
    assert [v["plan_code"] for v in b.get("/v1/plans/globex-only/versions").json()["data"]] == ["globex-only"]
    globex_keys = b.get("/v1/api-keys").json()["data"]
    assert [key["role"] for key in globex_keys] == ["admin"]
    assert globex_keys[0]["id"] not in {key["id"] for key in a.get("/v1/api-keys").json()["data"]}
    # And paging after one of Acme's items is a 404 for Globex
    assert b.get("/v1/meters", params={"starting_after": "acme-only"}).status_code == 404
    assert b.get("/v1/customers", params={"starting_after": "acme-only"}).status_code == 404
    acme_key = a.get("/v1/api-keys").json()["data"][0]["id"]
    assert b.get("/v1/api-keys", params={"starting_after": acme_key}).status_code == 404


def test_a_tenant_cannot_name_another_tenants_objects_in_a_body(tenants, ledger):
    a, b = tenants
    # Given Acme's catalogue under "acme-only", and a Globex plan "pro"
    define_catalogue(a, "acme-only", "Acme")
    created(b, "/v1/plans", {**PLAN, "code": "pro"})
    recorded = ledger.events_recorded()
    # When Globex names Acme's meter, pricing unit, feature and customer in its own requests
    refusals = {
        "meter_code": b.post("/v1/features", json={"code": "t", "name": "T", "type": "metered",
                                                   "meter_code": "acme-only"}),
        "prices[0].meter_code": b.post("/v1/plans/pro/versions", json={"prices": [
            {"type": "per_unit", "currency": "USD", "meter_code": "acme-only", "unit_amount": "0.01"}]}),
        "prices[0].pricing_unit": b.post("/v1/plans/pro/versions", json={"prices": [
            {**FLAT, "currency": None, "pricing_unit": "acme-only"}]}),
        "entitlements[0].feature_code": b.post("/v1/plans/pro/versions", json={
            "prices": [FLAT], "entitlements": [{"feature_code": "acme-only", "limit": "100"}]}),
        "parent_external_id": b.post("/v1/customers", json={"external_id": "g", "name": "G", "currency": "USD",
                                                            "parent_external_id": "acme-only"}),
        "customer": b.post("/v1/api-keys", json={"role": "portal", "customer": "acme-only"}),
    }
    # Then each is a 422 naming the field, as if the object did not exist, and nothing was recorded
    for field, response in refusals.items():
        assert response.status_code == 422, (field, response.text)
        assert response.json()["errors"][0]["field"] == field
    assert ledger.events_recorded() == recorded


def test_each_tenant_has_its_own_settings_and_its_own_idempotency_keys(tenants):
    a, b = tenants
    # When Acme changes its invoice prefix and tax rate
    changed = a.patch("/v1/tenant", json={"invoice_prefix": "ACME-", "default_tax_rate": "0.20"})
    assert changed.status_code == 200, changed.text
    # Then Acme reads its new settings, and Globex its own, untouched
    acme, globex = a.get("/v1/tenant").json(), b.get("/v1/tenant").json()
    assert (acme["name"], acme["invoice_prefix"], acme["default_tax_rate"]) == ("Acme", "ACME-", "0.20")
    assert (globex["name"], globex["invoice_prefix"], globex["default_tax_rate"]) == ("Globex", "INV-", "0")
    assert acme["id"] != globex["id"]
    # Given Acme created a meter under Idempotency-Key "k-1"
    first = a.post("/v1/meters", json={**METER, "code": "tokens"}, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201, first.text
    # When Globex sends another body under the same key
    other = b.post("/v1/meters", json={**METER, "code": "images"}, headers={"Idempotency-Key": "k-1"})
    # Then Globex's request runs as its own (neither a 422 nor Acme's answer replayed)
    assert other.status_code == 201, other.text
    assert other.json()["code"] == "images"
    assert b.get("/v1/meters/images").status_code == 200
    assert b.get("/v1/meters/tokens").status_code == 404

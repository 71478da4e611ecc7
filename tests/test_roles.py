"""Who may call what: API.md's role table, written out here on its own and checked route by route.

The table below is the specification, kept apart from the code's own `roles=`: a route added
without a rule here fails the suite, and so does a role that may do more (or less) than it says.
"""

from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import httpx
from conftest import client

from api.app import OPERATIONS
from domain.api_key import Role, new_secret

ROLES = ("admin", "finance", "readonly", "ingest", "portal")
ANONYMOUS = "anonymous"  # a caller with no key at all
PUBLIC = frozenset({ANONYMOUS, *ROLES})
ADMIN = frozenset({"admin"})
READERS = frozenset({"admin", "finance", "readonly"})  # finance reads everything; readonly is GET only
INGEST = frozenset({"admin", "ingest"})  # usage ingestion: the ingest key's job (and the admin's)

EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    # Tenant settings and keys: the admin's alone, but for reading the settings
    ("GET", "/v1/tenant"): READERS,
    ("PATCH", "/v1/tenant"): ADMIN,
    ("POST", "/v1/api-keys"): ADMIN,
    ("GET", "/v1/api-keys"): ADMIN,
    ("GET", "/v1/api-keys/{id}"): ADMIN,
    ("DELETE", "/v1/api-keys/{id}"): ADMIN,
    # Catalogue: the admin defines, readers read
    ("POST", "/v1/meters"): ADMIN,
    ("GET", "/v1/meters"): READERS,
    ("GET", "/v1/meters/{code}"): READERS,
    ("POST", "/v1/features"): ADMIN,
    ("GET", "/v1/features"): READERS,
    ("GET", "/v1/features/{code}"): READERS,
    ("POST", "/v1/pricing-units"): ADMIN,
    ("GET", "/v1/pricing-units"): READERS,
    ("GET", "/v1/pricing-units/{code}"): READERS,
    ("POST", "/v1/plans"): ADMIN,
    ("GET", "/v1/plans"): READERS,
    ("GET", "/v1/plans/{code}"): READERS,
    ("POST", "/v1/plans/{code}/versions"): ADMIN,
    ("GET", "/v1/plans/{code}/versions"): READERS,
    ("GET", "/v1/plans/{code}/versions/{number}"): READERS,
    # Customers: the admin registers and changes, readers read
    ("POST", "/v1/customers"): ADMIN,
    ("GET", "/v1/customers"): READERS,
    ("GET", "/v1/customers/{external_id}"): READERS,
    ("PATCH", "/v1/customers/{external_id}"): ADMIN,
    ("GET", "/v1/customers/{external_id}/children"): READERS,
    ("GET", "/v1/customers/{external_id}/usage"): READERS | {"portal"},  # a portal key: its own customer's
    # Usage
    ("POST", "/v1/events"): INGEST,
    ("POST", "/v1/events/batch"): INGEST,
    ("POST", "/v1/events/void"): ADMIN,  # a correction, not ingestion
    # Subscriptions: the admin contracts, readers read, a portal key reads its own customer's
    ("POST", "/v1/subscriptions"): ADMIN,
    ("GET", "/v1/subscriptions"): READERS | {"portal"},
    ("GET", "/v1/subscriptions/{id}"): READERS | {"portal"},
    ("GET", "/v1/subscriptions/{id}/versions"): READERS | {"portal"},
    ("POST", "/v1/subscriptions/{id}/amendments"): ADMIN,
    ("POST", "/v1/subscriptions/{id}/cancel"): ADMIN,
    # Invoices: finance finalizes, voids and takes payments; readers read; a portal key its own
    ("GET", "/v1/customers/{external_id}/upcoming-invoice"): READERS | {"portal"},
    ("GET", "/v1/invoices"): READERS | {"portal"},
    ("GET", "/v1/invoices/{id}"): READERS | {"portal"},
    ("GET", "/v1/invoices/{id}/pdf"): READERS | {"portal"},
    ("GET", "/v1/customers/{external_id}/invoices/{id}"): READERS | {"portal"},
    ("POST", "/v1/invoices/{id}/finalize"): ADMIN | {"finance"},
    ("POST", "/v1/invoices/{id}/void"): ADMIN | {"finance"},
    ("POST", "/v1/invoices/{id}/pay"): ADMIN | {"finance"},
    ("POST", "/v1/credit-notes"): ADMIN | {"finance"},
    ("GET", "/v1/credit-notes"): READERS,
    ("GET", "/v1/credit-notes/{id}"): READERS,
    ("POST", "/v1/wallets"): ADMIN,
    ("POST", "/v1/entitlements/check"): ADMIN | {"ingest"},
    ("GET", "/v1/customers/{external_id}/entitlements"): READERS | {"portal"},
    ("POST", "/v1/customers/{external_id}/entitlement-overrides"): ADMIN,
    ("GET", "/v1/wallets"): READERS | {"portal"},
    ("GET", "/v1/wallets/{id}"): READERS | {"portal"},
    ("POST", "/v1/wallets/{id}/grants"): ADMIN | {"finance"},
    ("POST", "/v1/wallets/{id}/topups"): ADMIN | {"finance", "portal"},
    ("GET", "/v1/wallets/{id}/transactions"): READERS | {"portal"},
    # Audit: finance and admin read the raw events
    ("GET", "/v1/audit/events"): ADMIN | {"finance"},
}
USAGE = {"event_id": "e-1", "customer": "acme", "event_name": "llm.call",
         "timestamp": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),  # an open period
         "properties": {"tokens": 12}}

WALLET = {"customer": "acme", "name": "AI credits", "credit_unit": "credit", "currency": "USD",
          "conversion_rate": "0.01"}
FLAT = {"type": "flat", "currency": "USD", "amount": "49.00", "pay_in": "advance"}


def sample_requests(spare_key_id: str, subscription: str = "sub_x",
                    invoices: dict[str, dict[str, str]] | None = None) -> dict[tuple[str, str], tuple[Any, Any]]:
    """For each route, a request an allowed caller can make succeed: (URL, JSON body). Where a call
    changes what the next one can do (finalize, void, pay), the URL is a function of the caller."""
    invoices = invoices or {}

    def each(action: str) -> Any:
        return lambda caller: f"/v1/invoices/{invoices.get(action, {}).get(caller, 'inv_x')}/{action}"

    return {
        ("GET", "/healthz"): ("/healthz", None),
        ("GET", "/openapi.json"): ("/openapi.json", None),
        ("GET", "/v1/tenant"): ("/v1/tenant", None),
        ("PATCH", "/v1/tenant"): ("/v1/tenant", {"invoice_prefix": "ACME-"}),
        ("POST", "/v1/api-keys"): ("/v1/api-keys", {"role": "readonly"}),
        ("GET", "/v1/api-keys"): ("/v1/api-keys", None),
        ("GET", "/v1/api-keys/{id}"): (f"/v1/api-keys/{spare_key_id}", None),
        ("DELETE", "/v1/api-keys/{id}"): (f"/v1/api-keys/{spare_key_id}", None),
        ("POST", "/v1/meters"): ("/v1/meters", {"code": "images", "name": "Images", "event_name": "image.made",
                                                "aggregation": "count"}),
        ("GET", "/v1/meters"): ("/v1/meters", None),
        ("GET", "/v1/meters/{code}"): ("/v1/meters/tokens", None),
        ("POST", "/v1/features"): ("/v1/features", {"code": "sso", "name": "SSO", "type": "boolean"}),
        ("GET", "/v1/features"): ("/v1/features", None),
        ("GET", "/v1/features/{code}"): ("/v1/features/tokens", None),
        ("POST", "/v1/pricing-units"): ("/v1/pricing-units", {"code": "gems", "name": "Gems", "currency": "USD",
                                                              "conversion_rate": "0.10"}),
        ("GET", "/v1/pricing-units"): ("/v1/pricing-units", None),
        ("GET", "/v1/pricing-units/{code}"): ("/v1/pricing-units/credits", None),
        ("POST", "/v1/plans"): ("/v1/plans", {"code": "team", "name": "Team", "currency": "USD",
                                              "interval": "month"}),
        ("GET", "/v1/plans"): ("/v1/plans", None),
        ("GET", "/v1/plans/{code}"): ("/v1/plans/pro", None),
        ("POST", "/v1/plans/{code}/versions"): ("/v1/plans/pro/versions", {"prices": [FLAT]}),
        ("GET", "/v1/plans/{code}/versions"): ("/v1/plans/pro/versions", None),
        ("GET", "/v1/plans/{code}/versions/{number}"): ("/v1/plans/pro/versions/1", None),
        ("POST", "/v1/customers"): ("/v1/customers", {"external_id": "globex", "name": "Globex",
                                                      "currency": "USD"}),
        ("GET", "/v1/customers"): ("/v1/customers", None),
        ("GET", "/v1/customers/{external_id}"): ("/v1/customers/acme", None),
        ("PATCH", "/v1/customers/{external_id}"): ("/v1/customers/acme", {"name": "Acme Inc"}),
        ("GET", "/v1/customers/{external_id}/children"): ("/v1/customers/acme/children", None),
        ("GET", "/v1/customers/{external_id}/usage"): (
            "/v1/customers/acme/usage?meter_code=tokens&from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z", None),
        ("POST", "/v1/events"): ("/v1/events", USAGE),
        ("POST", "/v1/events/batch"): ("/v1/events/batch", {"events": [USAGE]}),
        ("POST", "/v1/events/void"): ("/v1/events/void", {"customer": "acme", "event_ids": ["e-1"]}),
        ("POST", "/v1/subscriptions"): ("/v1/subscriptions", {
            "customer": "acme", "plan_code": "pro", "start_at": "2026-01-01T00:00:00Z", "billing_anchor": "calendar"}),
        ("GET", "/v1/subscriptions"): ("/v1/subscriptions?customer=acme", None),
        ("GET", "/v1/subscriptions/{id}"): (f"/v1/subscriptions/{subscription}", None),
        ("GET", "/v1/subscriptions/{id}/versions"): (f"/v1/subscriptions/{subscription}/versions", None),
        ("POST", "/v1/subscriptions/{id}/amendments"): (f"/v1/subscriptions/{subscription}/amendments", {
            "reason": "upgrade", "changes": {"plan_version": 2}}),
        ("POST", "/v1/subscriptions/{id}/cancel"): (f"/v1/subscriptions/{subscription}/cancel", {"at": "period_end"}),
        ("GET", "/v1/customers/{external_id}/upcoming-invoice"): (f"/v1/customers/acme/upcoming-invoice?subscription={subscription}", None),
        ("GET", "/v1/invoices"): ("/v1/invoices?customer=acme&status=draft", None),
        ("GET", "/v1/invoices/{id}"): (f"/v1/invoices/{invoices.get('read', 'inv_x')}", None),
        ("GET", "/v1/invoices/{id}/pdf"): (f"/v1/invoices/{invoices.get('read', 'inv_x')}/pdf", None),
        ("GET", "/v1/customers/{external_id}/invoices/{id}"): (
            f"/v1/customers/acme/invoices/{invoices.get('read', 'inv_x')}?as_of=2099-01-01T00:00:00Z", None),
        ("POST", "/v1/invoices/{id}/finalize"): (each("finalize"), None),
        ("POST", "/v1/invoices/{id}/void"): (each("void"), {"reason": "sent twice"}),
        ("POST", "/v1/invoices/{id}/pay"): (each("pay"), {}),
        ("POST", "/v1/credit-notes"): ("/v1/credit-notes", {
            "invoice_id": invoices.get("pay", {}).get("admin", "inv_x"), "amount": "1.00", "reason": "goodwill"}),
        ("GET", "/v1/credit-notes"): (f"/v1/credit-notes?invoice_id={invoices.get('credited', 'inv_x')}", None),
        ("GET", "/v1/credit-notes/{id}"): (f"/v1/credit-notes/{invoices.get('credit_note', 'cn_x')}", None),
        ("POST", "/v1/wallets"): ("/v1/wallets", WALLET),
        ("POST", "/v1/entitlements/check"): ("/v1/entitlements/check", {"customer": "acme", "feature_code": "tokens"}),
        ("GET", "/v1/customers/{external_id}/entitlements"): ("/v1/customers/acme/entitlements", None),
        ("POST", "/v1/customers/{external_id}/entitlement-overrides"): (
            "/v1/customers/acme/entitlement-overrides", {"feature_code": "tokens", "limit": "5"}),
        ("GET", "/v1/wallets"): ("/v1/wallets?customer=acme", None),
        ("GET", "/v1/wallets/{id}"): (f"/v1/wallets/{invoices.get('wallet', 'wal_x')}", None),
        ("POST", "/v1/wallets/{id}/grants"): (f"/v1/wallets/{invoices.get('wallet', 'wal_x')}/grants",
                                              {"amount": "100", "kind": "promotional"}),
        ("POST", "/v1/wallets/{id}/topups"): (f"/v1/wallets/{invoices.get('wallet', 'wal_x')}/topups",
                                              {"amount": "100"}),
        ("GET", "/v1/wallets/{id}/transactions"): (f"/v1/wallets/{invoices.get('wallet', 'wal_x')}/transactions",
                                                   None),
        ("GET", "/v1/audit/events"): ("/v1/audit/events", None),
    }


def test_every_route_and_every_role_has_a_rule_in_the_table():
    # Given the routes Tally serves and the roles a key can carry
    routes = {(operation.method, operation.path) for operation in OPERATIONS}
    # Then the table has exactly those routes, and knows exactly those roles
    assert set(EXPECTED) == routes, "a route without a rule in EXPECTED, or a rule for a route that is gone"
    assert set(get_args(Role)) == set(ROLES)
    assert set(sample_requests("key_x")) == routes


def _given_a_tenant_with_a_key_of_each_role(admin: httpx.Client) -> tuple[dict[str, str], str, str]:
    """The catalogue, customers and a subscription the walk reads, a key of each role, and a spare key
    to revoke."""
    for path, body in [
        ("/v1/meters", {"code": "tokens", "name": "Tokens", "event_name": "llm.call", "aggregation": "sum",
                        "field": "tokens"}),
        ("/v1/features", {"code": "tokens", "name": "Tokens", "type": "metered", "meter_code": "tokens"}),
        ("/v1/pricing-units", {"code": "credits", "name": "Credits", "currency": "USD", "conversion_rate": "0.01"}),
        ("/v1/plans", {"code": "pro", "name": "Pro", "currency": "USD", "interval": "month"}),
        ("/v1/plans/pro/versions", {"prices": [FLAT]}),
        ("/v1/plans/pro/versions", {"prices": [FLAT], "trial_days": 7}),
        ("/v1/customers", {"external_id": "acme", "name": "Acme", "currency": "USD"}),
        ("/v1/customers", {"external_id": "acme-eu", "name": "Acme EU", "currency": "EUR",
                           "parent_external_id": "acme"}),
    ]:
        response = admin.post(path, json=body)
        assert response.status_code == 201, (path, response.text)
    secrets = {"admin": admin.headers["Authorization"].removeprefix("Bearer ")}
    for role in ROLES[1:]:
        body = {"role": role, "customer": "acme"} if role == "portal" else {"role": role}
        issued = admin.post("/v1/api-keys", json=body)
        assert issued.status_code == 201, issued.text
        assert issued.json()["key"].startswith(f"tly_{role[0]}_")
        secrets[role] = issued.json()["key"]
    spare = admin.post("/v1/api-keys", json={"role": "finance"}).json()["id"]
    subscription = admin.post("/v1/subscriptions", json={
        "customer": "acme", "plan_code": "pro", "plan_version": 1, "start_at": "2026-01-01T00:00:00Z",
        "billing_anchor": "calendar"}).json()["id"]
    return secrets, spare, subscription


def _given_invoices(admin: httpx.Client, ledger: Any) -> dict[str, Any]:
    """Billing run to mid-May with a 90-day grace: advance invoices of January to May are final, the
    closing ones of March and April drafts; April's advance one paid and credited. Which invoice
    each caller may act on."""
    assert admin.patch("/v1/tenant", json={"grace_period_hours": 2160}).status_code == 200
    ledger.close_periods(datetime(2026, 5, 15, tzinfo=UTC))
    found = admin.get("/v1/invoices", params={"customer": "acme", "limit": 100}).json()["data"]
    by = {(i["kind"], i["period_start"][:7]): i["id"] for i in found}
    assert admin.post(f"/v1/invoices/{by['advance', '2026-04']}/pay", json={}).status_code == 200
    note = admin.post("/v1/credit-notes", json={"invoice_id": by["advance", "2026-04"], "amount": "5.00",
                                                "reason": "goodwill"})
    assert note.status_code == 201, note.text
    credited = by["advance", "2026-04"]
    wallet = admin.post("/v1/wallets", json=WALLET)
    assert wallet.status_code == 201, wallet.text
    return {"wallet": wallet.json()["id"], "read": by["closing", "2026-03"], "credited": credited, "credit_note": note.json()["id"],
            "finalize": {"admin": by["closing", "2026-03"], "finance": by["closing", "2026-04"]},
            "void": {"admin": by["advance", "2026-01"], "finance": by["advance", "2026-02"]},
            "pay": {"admin": by["advance", "2026-03"], "finance": by["advance", "2026-05"]}}


def test_each_role_may_call_exactly_the_routes_the_role_table_allows(admin, ledger, base_url):
    # Given a tenant with a catalogue, customers "acme" and its child "acme-eu", and a key of each role
    secrets, spare, subscription = _given_a_tenant_with_a_key_of_each_role(admin)
    samples = sample_requests(spare, subscription, _given_invoices(admin, ledger))
    callers = {role: client(base_url, secret) for role, secret in secrets.items()} | {
        ANONYMOUS: client(base_url, None)}
    mismatches = []
    try:
        # When every caller sends every route's request
        for route, allowed in EXPECTED.items():
            target, body = samples[route]
            for caller, http in callers.items():
                recorded = ledger.events_recorded()
                url = target(caller) if callable(target) else target
                response = http.request(route[0], url, json=body)
                # Then an allowed caller succeeds; a key whose role may not gets 403, no key 401;
                # and a refused caller changes nothing
                if caller in allowed:
                    ok = 200 <= response.status_code < 300
                else:
                    refused = 401 if caller == ANONYMOUS else 403
                    ok = response.status_code == refused and ledger.events_recorded() == recorded
                if not ok:
                    mismatches.append((caller, *route, response.status_code, response.text[:200]))
        paths = callers[ANONYMOUS].get("/openapi.json").json()["paths"]
    finally:
        for http in callers.values():
            http.close()
    assert mismatches == []
    # And the OpenAPI document states each operation's roles as the table does (none when public)
    for (method, path), allowed in EXPECTED.items():
        spec = paths[path][method.lower()]
        if allowed == PUBLIC:
            assert (spec["x-roles"], spec["security"]) == ([], []), (method, path)
        else:
            assert spec["x-roles"] == sorted(allowed), (method, path)


def test_a_missing_malformed_unknown_or_revoked_key_is_a_401(admin, ledger, base_url):
    # Given a finance key that works
    issued = admin.post("/v1/api-keys", json={"role": "finance"}).json()
    with client(base_url, issued["key"]) as finance:
        assert finance.get("/v1/meters").status_code == 200
    well_shaped_but_never_issued = new_secret("admin")
    typo = issued["key"][:-1] + ("A" if issued["key"][-1] != "A" else "B")
    with client(base_url, None) as anonymous:
        attempts = {
            "no header": {},
            "empty bearer": {"Authorization": "Bearer"},
            "another scheme": {"Authorization": f"Basic {issued['key']}"},
            "garbage": {"Authorization": "Bearer not-a-key"},
            "never issued": {"Authorization": f"Bearer {well_shaped_but_never_issued}"},
            "checksum typo": {"Authorization": f"Bearer {typo}"},
        }
        # When each is sent
        for name, headers in attempts.items():
            response = anonymous.get("/v1/meters", headers=headers)
            # Then each is a 401 problem that asks for a bearer key
            assert response.status_code == 401, (name, response.text)
            assert response.headers["content-type"] == "application/problem+json", name
            assert response.headers["www-authenticate"] == "Bearer", name
        # When the finance key is revoked
        assert admin.delete(f"/v1/api-keys/{issued['id']}").status_code == 200
        assert admin.get(f"/v1/api-keys/{issued['id']}").json()["revoked"] is True
        # Then it is a 401 from then on, and a refused write records nothing
        recorded = ledger.events_recorded()
        revoked = {"Authorization": f"Bearer {issued['key']}"}
        assert anonymous.get("/v1/meters", headers=revoked).status_code == 401
        assert anonymous.patch("/v1/tenant", headers=revoked, json={"name": "X"}).status_code == 401
        assert ledger.events_recorded() == recorded


def test_only_a_portal_key_is_bound_to_a_customer_and_it_must_exist(admin, ledger):
    # Given customer "acme"
    assert admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme",
                                             "currency": "USD"}).status_code == 201
    recorded = ledger.events_recorded()
    # When keys are asked for with the wrong customer binding
    unbound_portal = admin.post("/v1/api-keys", json={"role": "portal"})
    unknown_customer = admin.post("/v1/api-keys", json={"role": "portal", "customer": "nobody"})
    bound_finance = admin.post("/v1/api-keys", json={"role": "finance", "customer": "acme"})
    # Then each is a 422 naming customer, and no key was issued
    for response in (unbound_portal, unknown_customer, bound_finance):
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "customer"
    assert ledger.events_recorded() == recorded
    # And a portal key bound to acme is issued, bound to acme
    portal = admin.post("/v1/api-keys", json={"role": "portal", "customer": "acme"})
    assert portal.status_code == 201, portal.text
    assert (portal.json()["role"], portal.json()["customer"]) == ("portal", "acme")

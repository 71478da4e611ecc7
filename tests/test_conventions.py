"""The conventions every operation keeps (API.md, "Conventions"), over real HTTP on both stores:
the public endpoints, the OpenAPI document, Idempotency-Key, pagination, decimal strings,
problem+json errors, refusals that change nothing, and UTC times.
"""

import re
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
from conftest import PROBLEM, SETUP, assert_problem, client, open_tenant

from api.app import OPERATIONS
from api.idempotency import Idempotency, fingerprint
from domain.meter import MeterSpec

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$")


def meter(code: str) -> dict[str, Any]:
    return {"code": code, "name": f"Meter {code}", "event_name": "llm.call", "aggregation": "count"}


def customer(external_id: str) -> dict[str, Any]:
    return {"external_id": external_id, "name": f"Customer {external_id}", "currency": "USD"}


def codes(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["code"] for item in response.json()["data"]]


# --- public endpoints and the OpenAPI document -------------------------------------------------

def _resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    prefix = "#/components/schemas/"
    assert ref.startswith(prefix), ref
    assert ref[len(prefix):] in document["components"]["schemas"], f"{ref} does not resolve"
    return document["components"]["schemas"][ref[len(prefix):]]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if "$ref" in node else []) + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_anyone_may_check_health_and_read_an_openapi_3_1_document_that_describes_every_route(base_url):
    # Given a caller with no API key
    with client(base_url, None) as anonymous:
        # When it asks whether Tally is alive, and for the API's description
        health = anonymous.get("/healthz")
        response = anonymous.get("/openapi.json")
    # Then both answer 200 with JSON
    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok"}
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    # And the document is OpenAPI 3.1.0 and documents every route of the route table, and nothing else
    document = response.json()
    routes = {(operation.method, operation.path) for operation in OPERATIONS}
    assert document["openapi"] == "3.1.0"
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert documented == routes
    # And every $ref anywhere in it resolves in components
    for ref in _refs(document):
        _resolve(document, ref)
    for operation in OPERATIONS:
        spec = document["paths"][operation.path][operation.method.lower()]
        where = f"{operation.method} {operation.path}"
        if not operation.roles:
            assert spec["security"] == [], where
            continue
        # And each operation that needs a key says so, and names its request body schema when it takes one
        assert spec["security"] == [{"apiKey": []}], where
        assert document["components"]["securitySchemes"]["apiKey"] == {"type": "http", "scheme": "bearer"}
        if operation.body is not None:
            body_schema = spec["requestBody"]["content"]["application/json"]["schema"]
            assert body_schema["$ref"].endswith("/" + operation.body.__name__), where
        else:
            assert "requestBody" not in spec, where
        # And its success answer has a schema in components (a listing answers a page of them); a
        # document that is not JSON (a PDF) is said to be binary
        content = spec["responses"][str(operation.status)]["content"]
        if operation.media != "application/json":
            assert content == {operation.media: {"schema": {"type": "string", "format": "binary"}}}, where
            continue
        answer = content["application/json"]["schema"]
        page = _resolve(document, answer["$ref"])
        if operation.listing:
            assert set(page["required"]) >= {"data", "has_more"}, where
            assert _resolve(document, page["properties"]["data"]["items"]["$ref"])
        # And its errors are problem+json of the Problem schema
        for status in ("400", "401", "403", "404", "409", "422"):
            problem = spec["responses"][status]["content"][PROBLEM]["schema"]
            assert problem["$ref"] == "#/components/schemas/Problem", (where, status)
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) >= {"type", "title", "status", "detail"}


def test_every_collection_that_can_be_created_can_be_read_and_listed():
    # Given the route table, and the top-level collections whose POST creates (answers 201)
    routes = {(operation.method, operation.path) for operation in OPERATIONS}
    creates = [operation.path for operation in OPERATIONS
               if operation.method == "POST" and operation.status == 201 and operation.path.count("/") == 2]
    # Then each POST /v1/<collection> has GET /v1/<collection> and GET /v1/<collection>/{id or code}
    assert "/v1/customers" in creates
    for path in creates:
        assert ("GET", path) in routes, path
        assert any(method == "GET" and route.startswith(path + "/{") and route.count("/") == path.count("/") + 1
                   for method, route in routes), path


# --- Idempotency-Key ---------------------------------------------------------------------------

def test_a_repeat_with_the_same_key_and_body_answers_the_first_response_and_records_nothing(admin, ledger):
    # Given a customer created with an Idempotency-Key
    first = admin.post("/v1/customers", json=customer("acme"), headers={"Idempotency-Key": "create-acme"})
    assert first.status_code == 201, first.text
    recorded = ledger.events_recorded()
    # When the same request is sent again with the same key
    repeat = admin.post("/v1/customers", json=customer("acme"), headers={"Idempotency-Key": "create-acme"})
    # Then it answers the first response, status and body, and the store did not grow
    assert repeat.status_code == 201
    assert repeat.json() == first.json()
    assert ledger.events_recorded() == recorded
    assert [c["external_id"] for c in admin.get("/v1/customers").json()["data"]] == ["acme"]
    # Given the tenant renamed "Acme Ltd" under a key, then renamed "Acme Group" without one
    renamed = admin.patch("/v1/tenant", json={"name": "Acme Ltd"}, headers={"Idempotency-Key": "rename-1"})
    assert renamed.status_code == 200, renamed.text
    assert admin.patch("/v1/tenant", json={"name": "Acme Group"}).status_code == 200
    recorded = ledger.events_recorded()
    # When the first rename is retried with its key
    retried = admin.patch("/v1/tenant", json={"name": "Acme Ltd"}, headers={"Idempotency-Key": "rename-1"})
    # Then it answers the first response without applying it again: the later rename stands
    assert retried.status_code == 200
    assert retried.json() == renamed.json()
    assert admin.get("/v1/tenant").json()["name"] == "Acme Group"
    assert ledger.events_recorded() == recorded


def test_the_same_key_with_another_body_or_path_is_a_422_and_records_nothing(admin, ledger):
    # Given a meter created under key "k-1"
    first = admin.post("/v1/meters", json=meter("tokens"), headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201, first.text
    recorded = ledger.events_recorded()
    # When "k-1" is sent with another body, or to another path
    other_body = admin.post("/v1/meters", json=meter("images"), headers={"Idempotency-Key": "k-1"})
    other_path = admin.post("/v1/customers", json=customer("acme"), headers={"Idempotency-Key": "k-1"})
    # Then both are 422 naming the key, nothing was created, and the first response still replays
    assert_problem(other_body, 422, "Idempotency-Key")
    assert_problem(other_path, 422, "Idempotency-Key")
    assert ledger.events_recorded() == recorded
    assert_problem(admin.get("/v1/meters/images"), 404)
    assert admin.post("/v1/meters", json=meter("tokens"), headers={"Idempotency-Key": "k-1"}).json() == first.json()


def test_a_repeat_while_the_first_request_is_still_running_is_a_409(ledger, base_url):
    # Given a request under key "k-1" that has claimed its key and not yet answered
    tenant_id, secret = open_tenant(ledger)
    body = b'{"code":"tokens","name":"Tokens","event_name":"llm.call","aggregation":"count"}'
    idempotency = Idempotency(ledger.database)
    assert idempotency.claim(tenant_id, "k-1", fingerprint("POST", "/v1/meters", body), secret) is None
    recorded = ledger.events_recorded()
    # When the same request is sent again
    with client(base_url, secret) as admin:
        repeat = admin.post("/v1/meters", content=body,
                            headers={"Idempotency-Key": "k-1", "Content-Type": "application/json"})
        # Then it is a 409 and nothing was created
        assert_problem(repeat, 409)
        assert ledger.events_recorded() == recorded
        assert_problem(admin.get("/v1/meters/tokens"), 404)
        # And once the first has answered, a repeat gets the first's answer
        idempotency.finish(tenant_id, "k-1", 201, b'{"code":"tokens"}', secret)
        replay = admin.post("/v1/meters", content=body,
                            headers={"Idempotency-Key": "k-1", "Content-Type": "application/json"})
        assert (replay.status_code, replay.json()) == (201, {"code": "tokens"})


def test_a_refused_first_request_is_replayed_as_the_same_refusal_even_after_its_cause_is_gone(admin, ledger):
    # Given customer "acme" exists, and a second "acme" was refused with 409 under key "k-1"
    assert admin.post("/v1/customers", json=customer("acme")).status_code == 201
    first = admin.post("/v1/customers", json=customer("acme"), headers={"Idempotency-Key": "k-1"})
    assert_problem(first, 409)
    recorded = ledger.events_recorded()
    # When it is retried with the same key
    repeat = admin.post("/v1/customers", json=customer("acme"), headers={"Idempotency-Key": "k-1"})
    # Then it is the same 409 with the same body, and nothing was recorded
    assert_problem(repeat, 409)
    assert repeat.json() == first.json()
    assert ledger.events_recorded() == recorded
    # Given a metered feature refused (422) under key "k-2" because its meter did not exist yet
    feature = {"code": "tokens", "name": "Tokens", "type": "metered", "meter_code": "tokens"}
    refused = admin.post("/v1/features", json=feature, headers={"Idempotency-Key": "k-2"})
    assert_problem(refused, 422, "meter_code")
    # And the meter has been created since
    assert admin.post("/v1/meters", json=meter("tokens")).status_code == 201
    recorded = ledger.events_recorded()
    # When the feature is retried with "k-2"
    retried = admin.post("/v1/features", json=feature, headers={"Idempotency-Key": "k-2"})
    # Then the first answer is replayed: the same 422, and no feature
    assert_problem(retried, 422, "meter_code")
    assert retried.json() == refused.json()
    assert ledger.events_recorded() == recorded
    assert_problem(admin.get("/v1/features/tokens"), 404)
    # And with a fresh key the request runs again and succeeds
    assert admin.post("/v1/features", json=feature, headers={"Idempotency-Key": "k-3"}).status_code == 201


# --- pagination --------------------------------------------------------------------------------

def test_a_list_gives_20_items_by_default_and_1_to_100_on_request_and_refuses_other_limits(ledger, base_url):
    # Given 101 meters, m000 to m100, defined in that order
    tenant_id, secret = open_tenant(ledger)
    for number in range(101):
        spec = MeterSpec(code=f"m{number:03}", name="Meter", event_name="llm.call", aggregation="count")
        ledger.catalogue.define_meter(SETUP, UUID(tenant_id), spec)
    ledger.runner.catch_up()
    with client(base_url, secret) as admin:
        # When meters are listed without a limit
        default = admin.get("/v1/meters")
        # Then the first 20 come, in creation order, with more to come
        assert codes(default) == [f"m{n:03}" for n in range(20)]
        assert default.json()["has_more"] is True
        # When 100 are asked for: the first 100, with one more to come
        largest = admin.get("/v1/meters", params={"limit": 100})
        assert codes(largest) == [f"m{n:03}" for n in range(100)]
        assert largest.json()["has_more"] is True
        # And after the 100th comes the last one, with nothing more
        rest = admin.get("/v1/meters", params={"limit": 100, "starting_after": "m099"})
        assert codes(rest) == ["m100"]
        assert rest.json()["has_more"] is False
        # When the limit is out of range or not a whole number (a superscript two is a digit to Python)
        # Then it is a 422 naming `limit`
        for limit in ("0", "101", "abc", "-1", "1.5", "", "²"):
            assert_problem(admin.get("/v1/meters", params={"limit": limit}), 422, "limit")
        # And the smallest limit gives one item
        assert codes(admin.get("/v1/meters", params={"limit": "1"})) == ["m000"]


def test_starting_after_continues_after_that_item_and_has_more_is_exact_at_the_edges(admin):
    # Given meters a, b and c, created in that order
    for code in ("a", "b", "c"):
        assert admin.post("/v1/meters", json=meter(code)).status_code == 201

    def page(**params: Any) -> tuple[list[str], bool]:
        response = admin.get("/v1/meters", params=params)
        return codes(response), response.json()["has_more"]

    # Then a page exactly as long as what is left has no more
    assert page(limit=3) == (["a", "b", "c"], False)
    assert page(limit=2) == (["a", "b"], True)
    # And starting_after=<code> continues after that item
    assert page(limit=2, starting_after="b") == (["c"], False)
    assert page(limit=1, starting_after="a") == (["b"], True)
    assert page(limit=1, starting_after="b") == (["c"], False)
    # And after the last item the page is empty
    assert page(starting_after="c") == ([], False)
    # And a starting_after that names nothing is a 404 naming it
    assert_problem(admin.get("/v1/meters", params={"starting_after": "zzz"}), 404, "starting_after")


def test_api_keys_are_listed_after_a_key_named_by_its_public_id(admin):
    # Given the admin key and two more keys, in that order
    finance = admin.post("/v1/api-keys", json={"role": "finance"}).json()
    readonly = admin.post("/v1/api-keys", json={"role": "readonly"}).json()
    # When keys are listed after the finance key, by the id the API gave it
    response = admin.get("/v1/api-keys", params={"starting_after": finance["id"]})
    # Then the readonly key comes next, and last
    assert response.status_code == 200, response.text
    assert [key["id"] for key in response.json()["data"]] == [readonly["id"]]
    assert response.json()["has_more"] is False
    # And an id that names no key of this tenant is a 404
    assert_problem(admin.get("/v1/api-keys", params={"starting_after": "key_" + "0" * 32}), 404, "starting_after")


# --- decimal strings ---------------------------------------------------------------------------

def test_a_json_number_in_an_amount_field_is_a_422_naming_the_field(admin, ledger):
    # Given a USD plan and a meter
    assert admin.post("/v1/plans", json={"code": "pro", "name": "Pro", "currency": "USD",
                                         "interval": "month"}).status_code == 201
    assert admin.post("/v1/meters", json=meter("tokens")).status_code == 201
    recorded = ledger.events_recorded()
    unit = {"code": "credits", "name": "Credits", "currency": "USD", "conversion_rate": 0.01}
    per_unit = {"type": "per_unit", "currency": "USD", "meter_code": "tokens", "unit_amount": 1}
    graduated = {"type": "graduated", "currency": "USD", "meter_code": "tokens",
                 "tiers": [{"up_to": "10", "unit_amount": "1"}, {"up_to": None, "unit_amount": 0.5}]}
    # When amounts are sent as JSON numbers
    # Then each is a 422 whose first error names the field, down to the tier
    assert_problem(admin.post("/v1/pricing-units", json=unit), 422, "conversion_rate")
    assert_problem(admin.post("/v1/plans/pro/versions", json={"prices": [per_unit]}), 422, "prices[0].unit_amount")
    assert_problem(admin.post("/v1/plans/pro/versions", json={"prices": [graduated]}), 422,
                   "prices[0].tiers[1].unit_amount")
    assert_problem(admin.post("/v1/customers", json={**customer("acme"), "tax_rate": 0.2}), 422, "tax_rate")
    # And nothing was recorded
    assert ledger.events_recorded() == recorded


def test_amounts_come_back_as_the_decimal_strings_sent(admin):
    # Given a USD plan and a meter
    assert admin.post("/v1/plans", json={"code": "pro", "name": "Pro", "currency": "USD",
                                         "interval": "month"}).status_code == 201
    assert admin.post("/v1/meters", json=meter("tokens")).status_code == 201
    # When a pricing unit and a version are created with sub-cent and trailing-zero amounts
    unit = admin.post("/v1/pricing-units", json={"code": "credits", "name": "Credits", "currency": "USD",
                                                 "conversion_rate": "0.000002"})
    prices = [
        {"type": "flat", "currency": "USD", "amount": "12.50", "pay_in": "advance"},
        {"type": "graduated", "currency": "USD", "meter_code": "tokens",
         "tiers": [{"up_to": "0.1", "unit_amount": "0.000002", "flat_amount": "1.00"},
                   {"up_to": None, "unit_amount": "0.0000010"}]},
    ]
    version = admin.post("/v1/plans/pro/versions", json={"prices": prices, "minimum_commitment": "100.00"})
    # Then they answer the same strings, and so do reads
    assert unit.status_code == 201, unit.text
    assert unit.json()["conversion_rate"] == "0.000002"
    assert admin.get("/v1/pricing-units/credits").json()["conversion_rate"] == "0.000002"
    assert version.status_code == 201, version.text
    for answer in (version.json(), admin.get("/v1/plans/pro/versions/1").json()):
        assert answer["prices"][0]["amount"] == "12.50"
        assert answer["prices"][1]["tiers"] == [
            {"up_to": "0.1", "unit_amount": "0.000002", "flat_amount": "1.00"},
            {"up_to": None, "unit_amount": "0.0000010", "flat_amount": "0"},
        ]
        assert answer["minimum_commitment"] == "100.00"


def test_a_sub_micro_token_price_comes_back_in_plain_decimal_notation(admin):
    # Given a pricing unit worth 0.000000000002 USD (a sub-cent token price, within MAX_PLACES)
    unit = admin.post("/v1/pricing-units", json={"code": "tokens", "name": "Tokens", "currency": "USD",
                                                 "conversion_rate": "0.000000000002"})
    # Then it answers the same string, not scientific notation
    assert unit.status_code == 201, unit.text
    assert unit.json()["conversion_rate"] == "0.000000000002"


# --- errors ------------------------------------------------------------------------------------

def test_malformed_json_is_a_400_problem_even_after_a_field_of_the_wrong_type(admin, ledger):
    recorded = ledger.events_recorded()
    # When bodies are cut short or are not JSON, one of them after a number where a code belongs
    for body in (b'{"code": "tokens",', b'{"code": 5,', b"[", b"tokens"):
        response = admin.post("/v1/meters", content=body, headers={"Content-Type": "application/json"})
        # Then each is a 400 problem, not a 422 about the field
        assert_problem(response, 400)
    # And nothing was recorded
    assert ledger.events_recorded() == recorded


def test_an_unknown_or_missing_field_is_a_422_naming_it(admin):
    # Given a USD plan "pro"
    assert admin.post("/v1/plans", json={"code": "pro", "name": "Pro", "currency": "USD",
                                         "interval": "month"}).status_code == 201
    # When a meter is sent with a field the API does not know
    response = admin.post("/v1/meters", json={**meter("tokens"), "colour": "blue"})
    # Then it is a 422 naming that field, and the meter does not exist
    assert_problem(response, 422, "colour")
    assert_problem(admin.get("/v1/meters/tokens"), 404)
    # When a customer is sent without its currency, and a flat price without its amount
    no_currency = admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme"})
    no_amount = admin.post("/v1/plans/pro/versions", json={"prices": [{"type": "flat", "currency": "USD"}]})
    # Then each is a 422 naming the missing field, down to the price
    assert_problem(no_currency, 422, "currency")
    assert_problem(no_amount, 422, "prices[0].amount")


def test_every_error_is_a_problem_json_document(admin, base_url):
    # Given a meter "tokens" and a readonly key
    assert admin.post("/v1/meters", json=meter("tokens")).status_code == 201
    readonly = admin.post("/v1/api-keys", json={"role": "readonly"}).json()["key"]
    with client(base_url, None) as anonymous, client(base_url, readonly) as reader:
        # When each kind of refusal is provoked
        # Then each answers problem+json with type, title, status and detail
        assert_problem(admin.post("/v1/meters", content=b"[", headers={"Content-Type": "application/json"}), 400)
        assert_problem(anonymous.get("/v1/meters"), 401)
        assert_problem(reader.post("/v1/meters", json=meter("images")), 403)
        assert_problem(admin.get("/v1/meters/images"), 404)
        assert_problem(admin.get("/v1/no-such-collection"), 404)
        assert_problem(admin.put("/v1/meters", json=meter("images")), 405)
        assert_problem(admin.post("/v1/meters", json=meter("tokens")), 409)
        assert_problem(admin.post("/v1/meters", json={**meter("images"), "aggregation": "median"}), 422, "aggregation")
        assert_problem(admin.post("/v1/meters", content=b" " * (1024 * 1024 + 1),
                                  headers={"Content-Type": "application/json"}), 413)


def test_a_refused_request_changes_nothing(admin, ledger, base_url):
    # Given a meter "tokens", a customer "acme" and a readonly key
    assert admin.post("/v1/meters", json=meter("tokens")).status_code == 201
    assert admin.post("/v1/customers", json=customer("acme")).status_code == 201
    readonly = admin.post("/v1/api-keys", json={"role": "readonly"}).json()["key"]
    recorded = ledger.events_recorded()
    with client(base_url, readonly) as reader:
        refusals = [
            (422, admin.post("/v1/meters", json={**meter("images"), "aggregation": "median"})),
            (422, admin.post("/v1/customers", json={**customer("beta"), "parent_external_id": "nobody"})),
            (409, admin.post("/v1/meters", json={**meter("tokens"), "name": "Renamed"})),
            (409, admin.post("/v1/customers", json={**customer("acme"), "name": "Renamed"})),
            (404, admin.patch("/v1/customers/nobody", json={"name": "Renamed"})),
            (404, admin.post("/v1/plans/nothing/versions", json={"prices": []})),
            (403, reader.post("/v1/meters", json=meter("images"))),
            (403, reader.patch("/v1/customers/acme", json={"name": "Renamed"})),
            (403, reader.patch("/v1/tenant", json={"name": "Renamed"})),
        ]
    # When each refusal is answered
    for status, response in refusals:
        assert_problem(response, status)
    # Then the store did not grow, and what exists is as it was
    assert ledger.events_recorded() == recorded
    assert codes(admin.get("/v1/meters")) == ["tokens"]
    assert admin.get("/v1/meters/tokens").json()["name"] == "Meter tokens"
    assert [c["external_id"] for c in admin.get("/v1/customers").json()["data"]] == ["acme"]
    assert admin.get("/v1/customers/acme").json()["name"] == "Customer acme"
    assert admin.get("/v1/tenant").json()["name"] == "Acme"


# --- times -------------------------------------------------------------------------------------

def test_times_are_rfc_3339_in_utc(admin):
    # When a meter, a customer and a key are created, and the tenant is read
    answers = [
        admin.post("/v1/meters", json=meter("tokens")).json(),
        admin.post("/v1/customers", json=customer("acme")).json(),
        admin.post("/v1/api-keys", json={"role": "finance"}).json(),
        admin.get("/v1/tenant").json(),
    ]
    # Then every created_at and updated_at is RFC 3339 with a UTC offset
    stamps = [answer[name] for answer in answers for name in ("created_at", "updated_at") if name in answer]
    assert len(stamps) == 6
    for stamp in stamps:
        assert RFC3339_UTC.match(stamp), stamp
        assert datetime.fromisoformat(stamp).utcoffset() == timedelta(0), stamp


def test_an_internal_error_is_a_500_problem_and_frees_its_idempotency_key(admin, ledger, monkeypatch):
    # Given a defect that makes defining a meter blow up
    def defect(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ledger.catalogue, "define_meter", defect)
    body = {"code": "tokens", "name": "Tokens", "event_name": "llm.call", "aggregation": "count"}
    # When a meter is created under an Idempotency-Key
    broken = admin.post("/v1/meters", json=body, headers={"Idempotency-Key": "k-500"})
    # Then the answer is a 500 problem that tells nothing of the defect
    assert_problem(broken, 500)
    assert "a bug" not in broken.text
    # And once the defect is gone, the retry under the same key runs rather than replaying the 500
    monkeypatch.undo()
    retried = admin.post("/v1/meters", json=body, headers={"Idempotency-Key": "k-500"})
    assert retried.status_code == 201, retried.text

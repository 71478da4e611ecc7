"""Customers over HTTP (API.md "Customers and contracts", first bullet): registered and addressed by
the caller's external_id, changed by PATCH, arranged in a parent hierarchy without cycles. Each
test runs on SQLite and PostgreSQL and checks the stored events as well as the documents."""

from typing import Any
from uuid import UUID

import httpx
from conftest import SETUP, client, created, open_tenant, refused

from api.ledger import Ledger
from domain.customer import Customer, CustomerChanges

ACME_HQ = {"external_id": "acme-hq", "name": "Acme Holdings", "currency": "EUR"}
ACME_EU = {
    "external_id": "acme-eu", "name": "Acme Europe GmbH", "email": "billing@acme.eu", "currency": "EUR",
    "tax_rate": "0.20", "parent_external_id": "acme-hq", "invoice_to_parent": True,
    "metadata": {"region": "eu", "crm_id": "0012"},
}


def stored_events(ledger: Ledger, customer: dict[str, Any]) -> list[Any]:
    aggregate_id = UUID(hex=customer["id"].removeprefix("cus_"))
    return [ledger.customers.mapper.to_domain_event(e) for e in ledger.customers.recorder.select_events(aggregate_id)]


def register(admin: httpx.Client, external_id: str, **fields: Any) -> dict[str, Any]:
    return created(admin.post("/v1/customers", json={"external_id": external_id, "name": external_id.title(),
                                                     "currency": "USD", **fields}))


def test_a_customer_is_registered_with_its_tax_rate_email_metadata_and_parent(admin, ledger):
    # Given a parent company
    hq = created(admin.post("/v1/customers", json=ACME_HQ))
    # When its European subsidiary is registered, invoiced to the parent, taxed at 20 %
    eu = created(admin.post("/v1/customers", json=ACME_EU))
    # Then it answers every field as given, with a server id beside the caller's external_id
    assert {k: eu[k] for k in ACME_EU} == ACME_EU and eu["id"].startswith("cus_")
    assert admin.get("/v1/customers/acme-eu").json() == eu
    # And the parent's optional fields default: no email, no parent, the tenant's tax rate, no metadata
    assert (hq["email"], hq["parent_external_id"], hq["invoice_to_parent"], hq["tax_rate"], hq["metadata"]) == (
        None, None, False, None, {})
    # And the store holds one Customer.Registered with the exact tax rate, by the admin key
    [registered] = stored_events(ledger, eu)
    assert isinstance(registered, Customer.Registered)
    assert (registered.external_id, registered.currency) == ("acme-eu", "EUR")
    assert registered.details.parent_external_id == "acme-hq"
    assert str(registered.details.tax_rate) == "0.20" and registered.details.invoice_to_parent is True
    assert registered.details.metadata == ACME_EU["metadata"] and registered.actor.startswith("key_")


REFUSED_CUSTOMERS = {
    "a tax rate of 1 (rates are fractions)": ({"tax_rate": "1"}, "tax_rate"),
    "a tax rate of 20 (a percent)": ({"tax_rate": "20"}, "tax_rate"),
    "a negative tax rate": ({"tax_rate": "-0.01"}, "tax_rate"),
    "a tax rate as a JSON number": ({"tax_rate": 0.2}, "tax_rate"),
    "invoice_to_parent without a parent": ({"invoice_to_parent": True}, "invoice_to_parent"),
    "an unknown parent": ({"parent_external_id": "nobody"}, "parent_external_id"),
    "its own parent": ({"parent_external_id": "acme-us"}, "parent_external_id"),
    "invoiced to a parent billing in another currency": (
        {"currency": "USD", "parent_external_id": "acme-hq", "invoice_to_parent": True}, "invoice_to_parent"),
    "an unknown currency": ({"currency": "EURO"}, "currency"),
    "a lowercase currency": ({"currency": "usd"}, "currency"),
    "a malformed email": ({"email": "billing at acme"}, "email"),
    "an external_id with spaces": ({"external_id": "acme us"}, "external_id"),
    "no name": ({"name": ""}, "name"),
    "an unknown field": ({"vat_number": "DE123"}, "vat_number"),
}


def test_a_customer_that_breaks_a_rule_is_refused_naming_the_field_and_records_nothing(admin, ledger):
    # Given a tenant with one customer
    created(admin.post("/v1/customers", json=ACME_HQ))
    before = ledger.events_recorded()
    for rule, (change, field) in REFUSED_CUSTOMERS.items():
        # When a customer breaking one rule is registered
        response = admin.post("/v1/customers", json={**ACME_HQ, "external_id": "acme-us", **change})
        # Then it is a 422 naming the field
        assert field in refused(response), (rule, response.text)
    # And nothing is recorded
    assert ledger.events_recorded() == before
    assert admin.get("/v1/customers/acme-us").status_code == 404


def test_an_external_id_already_taken_is_a_conflict_and_records_nothing(admin, ledger):
    # Given Acme HQ
    first = created(admin.post("/v1/customers", json=ACME_HQ))
    before = ledger.events_recorded()
    # When another customer is registered with the same external_id
    response = admin.post("/v1/customers", json={**ACME_HQ, "name": "Another Acme", "currency": "GBP"})
    # Then it is a 409, nothing is recorded, and the first is unchanged
    refused(response, 409)
    assert ledger.events_recorded() == before
    assert admin.get("/v1/customers/acme-hq").json() == first


def test_a_patch_changes_only_the_fields_given_and_null_clears_the_email(admin, ledger):
    # Given Acme Europe, a subsidiary with an email, a tax rate and metadata
    created(admin.post("/v1/customers", json=ACME_HQ))
    before = created(admin.post("/v1/customers", json=ACME_EU))
    # When its name changes and its email is cleared
    response = admin.patch("/v1/customers/acme-eu", json={"name": "Acme Europe SE", "email": None})
    # Then those two change and every other field stays as it was
    assert response.status_code == 200, response.text
    after = response.json()
    assert (after["name"], after["email"]) == ("Acme Europe SE", None)
    unchanged = ("id", "external_id", "currency", "tax_rate", "parent_external_id", "invoice_to_parent", "metadata",
                 "created_at")
    assert {k: after[k] for k in unchanged} == {k: before[k] for k in unchanged}
    assert admin.get("/v1/customers/acme-eu").json() == after
    # And the store holds a DetailsChanged with the whole new details
    registered, changed = stored_events(ledger, after)
    assert isinstance(changed, Customer.DetailsChanged)
    assert changed.details.name == "Acme Europe SE" and changed.details.email is None
    assert changed.details.tax_rate == registered.details.tax_rate


def test_a_patch_clears_the_tax_rate_and_replaces_the_metadata(admin, ledger):
    # Given Acme Europe with its own tax rate and metadata
    created(admin.post("/v1/customers", json=ACME_HQ))
    created(admin.post("/v1/customers", json=ACME_EU))
    # When its tax rate is cleared (the tenant's default applies) and its metadata replaced
    response = admin.patch("/v1/customers/acme-eu", json={"tax_rate": None, "metadata": {"tier": "gold"}})
    # Then both change
    assert response.status_code == 200, response.text
    assert (response.json()["tax_rate"], response.json()["metadata"]) == (None, {"tier": "gold"})
    # When the same PATCH is sent again
    events = ledger.events_recorded()
    again = admin.patch("/v1/customers/acme-eu", json={"tax_rate": None, "metadata": {"tier": "gold"}})
    # Then it answers the same customer and records nothing: nothing changed
    assert again.status_code == 200 and again.json() == response.json()
    assert ledger.events_recorded() == events


REFUSED_CHANGES = {
    "a tax rate of 1": ({"tax_rate": "1.00"}, "tax_rate"),
    "no parent while invoiced to it": ({"parent_external_id": None}, "invoice_to_parent"),
    "an unknown parent": ({"parent_external_id": "nobody"}, "parent_external_id"),
    "its own parent": ({"parent_external_id": "acme-eu"}, "parent_external_id"),
    "a new currency": ({"currency": "USD"}, "currency"),
    "a new external_id": ({"external_id": "acme-europe"}, "external_id"),
    "a null name": ({"name": None}, "name"),
}


def test_a_patch_that_breaks_a_rule_is_refused_naming_the_field_and_records_nothing(admin, ledger):
    # Given Acme Europe, invoiced to Acme HQ (both in EUR), and Acme US, a USD child invoiced on its own
    created(admin.post("/v1/customers", json=ACME_HQ))
    eu = created(admin.post("/v1/customers", json=ACME_EU))
    us = register(admin, "acme-us", parent_external_id="acme-hq")
    before = ledger.events_recorded()
    for rule, (change, field) in REFUSED_CHANGES.items():
        # When a PATCH breaking one rule is sent
        response = admin.patch("/v1/customers/acme-eu", json=change)
        # Then it is a 422 naming the field
        assert field in refused(response), (rule, response.text)
    # When Acme US is to be invoiced to its EUR parent
    response = admin.patch("/v1/customers/acme-us", json={"invoice_to_parent": True})
    # Then it is refused too: one invoice has one currency
    assert refused(response) == ["invoice_to_parent"]
    # And nothing is recorded
    assert ledger.events_recorded() == before
    assert admin.get("/v1/customers/acme-eu").json() == eu and admin.get("/v1/customers/acme-us").json() == us


def test_a_parent_cycle_is_refused_and_records_nothing(admin, ledger):
    # Given A, the parent of B, the parent of C
    register(admin, "a")
    register(admin, "b", parent_external_id="a")
    register(admin, "c", parent_external_id="b")
    before = ledger.events_recorded()
    # When A is made a child of B, or of its grandchild C
    for parent in ("b", "c"):
        response = admin.patch("/v1/customers/a", json={"parent_external_id": parent})
        # Then it is a 422 naming parent_external_id
        assert refused(response) == ["parent_external_id"], response.text
    # And nothing is recorded: A still has no parent and only its registration
    assert ledger.events_recorded() == before
    assert admin.get("/v1/customers/a").json()["parent_external_id"] is None
    assert [type(e) for e in stored_events(ledger, admin.get("/v1/customers/a").json())] == [Customer.Registered]


def test_the_children_of_a_customer_are_listed_and_follow_a_change_of_parent(admin, ledger):
    # Given Acme HQ with two subsidiaries, and an unrelated customer
    register(admin, "hq")
    eu = register(admin, "eu", parent_external_id="hq", invoice_to_parent=True)  # both bill in USD
    us = register(admin, "us", parent_external_id="hq")
    register(admin, "other")
    # When the children of HQ are listed
    children = admin.get("/v1/customers/hq/children").json()
    # Then they are its two subsidiaries, in registration order
    assert children == {"data": [eu, us], "has_more": False}
    assert admin.get("/v1/customers/hq/children", params={"limit": 1}).json() == {"data": [eu], "has_more": True}
    assert admin.get("/v1/customers/eu/children").json() == {"data": [], "has_more": False}
    # When US moves under EU
    moved = admin.patch("/v1/customers/us", json={"parent_external_id": "eu"}).json()
    # Then HQ has one child left and EU has US
    assert [c["external_id"] for c in admin.get("/v1/customers/hq/children").json()["data"]] == ["eu"]
    assert admin.get("/v1/customers/eu/children").json()["data"] == [moved]
    # And an unknown customer has no children to list
    refused(admin.get("/v1/customers/nobody/children"), 404)


def test_customers_are_listed_in_registration_order_and_read_by_external_id(admin):
    # Given three customers, one known by an email-like external_id
    customers = [register(admin, name) for name in ("alpha", "bravo", "jane+billing@charlie.test")]
    # When they are listed, at once and a page at a time
    # Then they come in registration order, paged after an external_id
    assert admin.get("/v1/customers").json() == {"data": customers, "has_more": False}
    assert admin.get("/v1/customers", params={"limit": 2}).json() == {"data": customers[:2], "has_more": True}
    assert admin.get("/v1/customers", params={"starting_after": "bravo"}).json() == {
        "data": customers[2:], "has_more": False}
    assert admin.get("/v1/customers/jane+billing@charlie.test").json() == customers[2]
    # And an unknown customer is a 404 to read or change
    refused(admin.get("/v1/customers/nobody"), 404)
    refused(admin.patch("/v1/customers/nobody", json={"name": "Nobody"}), 404)


def test_another_tenants_customers_are_not_found_and_cannot_be_parents(admin, ledger, base_url):
    # Given Acme HQ, a customer of one tenant
    created(admin.post("/v1/customers", json=ACME_HQ))
    _, secret = open_tenant(ledger, "Globex")
    with client(base_url, secret) as other:
        # When another tenant reads, changes or lists it, or names it as a parent
        # Then it does not exist for them
        refused(other.get("/v1/customers/acme-hq"), 404)
        refused(other.patch("/v1/customers/acme-hq", json={"name": "Mine"}), 404)
        assert other.get("/v1/customers").json() == {"data": [], "has_more": False}
        assert "parent_external_id" in refused(other.post("/v1/customers", json=ACME_EU))
        # And they may use the same external_id for their own customer
        created(other.post("/v1/customers", json=ACME_HQ))
    assert admin.get("/v1/customers/acme-hq").json()["name"] == "Acme Holdings"


def test_two_concurrent_parent_changes_cannot_close_a_loop(admin, ledger, monkeypatch):
    # Given customers a and b, neither with a parent
    register(admin, "a")
    register(admin, "b")
    customers = ledger.customers
    read_hierarchy = customers._hierarchy_changed
    raced = []

    def interleaved(tenant: UUID, child: str, parent: str | None):  # noqa: ANN202
        hierarchy = read_hierarchy(tenant, child, parent)
        if not raced:  # while "a -> b" is between its check and its save, "b -> a" runs whole
            raced.append(child)
            customers.change(SETUP, tenant, "b", CustomerChanges(parent_external_id="a"))
        return hierarchy

    monkeypatch.setattr(customers, "_hierarchy_changed", interleaved)
    recorded = ledger.events_recorded()
    # When "a -> b" is sent while "b -> a" lands in between its cycle check and its save
    response = admin.patch("/v1/customers/a", json={"parent_external_id": "b"})
    # Then the later one is refused with a 409 and only "b -> a" was recorded: no loop exists
    assert refused(response, 409) == []
    assert raced == ["a"]
    assert admin.get("/v1/customers/a").json()["parent_external_id"] is None
    assert admin.get("/v1/customers/b").json()["parent_external_id"] == "a"
    assert ledger.events_recorded() == recorded + 3  # b changed; the hierarchy started and recorded it


def test_children_are_paged_only_after_one_of_the_children(admin):
    # Given hq with children x and y, and z outside the family
    register(admin, "hq")
    register(admin, "x", parent_external_id="hq")
    register(admin, "y", parent_external_id="hq")
    register(admin, "z")
    # When the children are paged after x, and after z
    after_x = admin.get("/v1/customers/hq/children", params={"starting_after": "x"})
    after_z = admin.get("/v1/customers/hq/children", params={"starting_after": "z"})
    # Then after x comes y; z is not a child, so paging after it is a 404
    assert [c["external_id"] for c in after_x.json()["data"]] == ["y"]
    assert refused(after_z, 404) == ["starting_after"]

"""The domain's own guarantees: who acted is on every event, versions are numbered per plan and
never change, aggregates replay to the state they were in, and the documents can be rebuilt from
the events alone. Pure domain on the in-memory store, except where the store or HTTP is the point."""

from decimal import Decimal
from functools import reduce
from typing import Any
from uuid import UUID

import msgspec
import pytest
from conftest import SETUP, client, open_tenant
from hypothesis import given, settings
from hypothesis import strategies as st

from api.ledger import Ledger
from domain.aggregate import Actor, acting
from domain.api_key import ApiKey, secret_hash
from domain.catalogue import Catalogue, VersionRace
from domain.customer import Customer, CustomerChanges, CustomerDetails, CustomerSpec
from domain.customers import Customers
from domain.errors import Conflict
from domain.feature import Feature, FeatureSpec
from domain.meter import Meter, MeterSpec
from domain.plan import Plan, PlanSpec
from domain.plan_version import PlanVersion, PlanVersionSpec
from domain.price import Entitlement, FlatPrice, GraduatedPrice, PerUnitPrice, Tier
from domain.pricing_unit import PricingUnit, PricingUnitSpec
from domain.tenant import Tenant, TenantChanges, TenantSettings

IN_MEMORY = {"PERSISTENCE_MODULE": "eventsourcing.popo"}
ALICE = Actor("key_alice", "idem-1")
TENANT = UUID("00000000-0000-4000-8000-000000000001")

API_CALLS = MeterSpec(code="api_calls", name="API calls", event_name="api.call", aggregation="count")
PRO = PlanSpec(code="pro", name="Pro", currency="USD", interval="month")
TEAM = PlanSpec(code="team", name="Team", currency="USD", interval="year")


def flat(amount: str) -> PlanVersionSpec:
    return PlanVersionSpec(prices=(FlatPrice(currency="USD", amount=Decimal(amount)),))


def state(aggregate: Any) -> dict[str, Any]:
    """What an aggregate is: every attribute, with decimals compared exactly (0.10 is not 0.1)."""
    return {name: msgspec.json.encode(value, enc_hook=str) if isinstance(value, msgspec.Struct) else value
            for name, value in vars(aggregate).items()}


def recorded(ledger: Ledger, start: int) -> list[Any]:
    """The domain events in the store from position `start`, in order (the log's sections hold 10:
    read the recorder rather than `notification_log.select`)."""
    notifications = ledger.tenants.recorder.select_notifications(start=start, limit=100)
    return [ledger.tenants.mapper.to_domain_event(notification) for notification in notifications]


def replayed(events: list[Any]) -> Any:
    return reduce(lambda aggregate, event: event.mutate(aggregate), events, None)


@pytest.fixture
def catalogue() -> Catalogue:
    return Catalogue(env=IN_MEMORY)


# --- Who acted --------------------------------------------------------------------------------

def test_every_event_records_the_api_key_that_acted_and_the_requests_idempotency_key(ledger, base_url):
    # Given a tenant opened by the operator, and its admin key
    _, secret = open_tenant(ledger)
    key_id = f"key_{ApiKey.create_id(secret_hash(secret)).hex}"
    before = ledger.events_recorded()
    with client(base_url, secret) as admin:
        # When the admin key defines a meter, a feature, a plan and a version, registers and changes a
        # customer and changes the tenant, each request with its own Idempotency-Key
        requests = [
            ("POST", "/v1/meters", {"code": "api_calls", "name": "API calls", "event_name": "api.call",
                                    "aggregation": "count"}),
            ("POST", "/v1/features", {"code": "sso", "name": "SSO", "type": "boolean"}),
            ("POST", "/v1/pricing-units", {"code": "credits", "name": "Credits", "currency": "USD",
                                           "conversion_rate": "0.01"}),
            ("POST", "/v1/plans", {"code": "pro", "name": "Pro", "currency": "USD", "interval": "month"}),
            ("POST", "/v1/plans/pro/versions", {"prices": [{"type": "flat", "currency": "USD", "amount": "9.00"}],
                                                "entitlements": [{"feature_code": "sso", "enabled": True}]}),
            ("POST", "/v1/customers", {"external_id": "acme", "name": "Acme", "currency": "USD"}),
            ("PATCH", "/v1/customers/acme", {"email": "billing@acme.test"}),
            ("PATCH", "/v1/tenant", {"invoice_prefix": "ACME-"}),
            ("POST", "/v1/api-keys", {"role": "readonly"}),
        ]
        for number, (method, path, body) in enumerate(requests):
            response = admin.request(method, path, json=body, headers={"Idempotency-Key": f"request-{number}"})
            assert response.status_code in (200, 201), response.text
        # And one more request without an Idempotency-Key
        assert admin.patch("/v1/customers/acme", json={"name": "Acme Inc"}).status_code == 200
        # And the first request is sent again with its key (a retry: answered, not recorded again)
        method, path, body = requests[0]
        retry = admin.request(method, path, json=body, headers={"Idempotency-Key": "request-0"})
        assert retry.status_code == 201 and retry.headers["Idempotent-Replayed"] == "true"
    # Then the store holds one event per change (two for a version: the plan's count and the version)
    events = recorded(ledger, start=before + 1)
    assert [type(e) for e in events] == [
        Meter.Defined, Feature.Defined, PricingUnit.Defined, Plan.Defined, Plan.VersionPublished,
        PlanVersion.Published, Customer.Registered, Customer.DetailsChanged, Tenant.SettingsChanged,
        ApiKey.Issued, Customer.DetailsChanged,
    ]
    # And each records the API key that acted and the Idempotency-Key of its request, if any
    assert {e.actor for e in events} == {key_id}
    assert [e.idempotency_key for e in events] == [
        "request-0", "request-1", "request-2", "request-3", "request-4", "request-4", "request-5", "request-6",
        "request-7", "request-8", None,
    ]
    # And the tenant and its first key were recorded as the operator's, with no Idempotency-Key
    setup = recorded(ledger, start=1)[:before]
    assert [type(e) for e in setup][-2:] == [Tenant.Opened, ApiKey.Issued]
    assert {(e.actor, e.idempotency_key) for e in setup[-2:]} == {(SETUP.key_id, None)}


def test_a_command_outside_acting_fails_loudly_and_records_nothing():
    # Given a plan and a customer, created as Alice
    with acting(ALICE):
        plan = Plan(tenant_id=TENANT, spec=PRO)
        customer = Customer(tenant_id=TENANT, external_id="acme", currency="USD",
                            details=CustomerDetails(name="Acme"))
    plan.collect_events(), customer.collect_events()
    # When commands run with no one acting
    # Then each is an AssertionError, naming `acting`, and nothing is recorded or changed
    with pytest.raises(AssertionError, match="acting"):
        Meter(tenant_id=TENANT, spec=API_CALLS)
    with pytest.raises(AssertionError, match="acting"):
        plan.publish_version()
    with pytest.raises(AssertionError, match="acting"):
        customer.change(CustomerDetails(name="Acme Inc"))
    assert plan.collect_events() == [] and plan.latest_version == 0
    assert customer.collect_events() == [] and customer.details.name == "Acme"


def test_acting_ends_with_its_block_and_nests():
    # Given Alice acting, and the operator acting inside her block
    with acting(ALICE):
        with acting(SETUP):
            meter = Meter(tenant_id=TENANT, spec=API_CALLS)
        plan = Plan(tenant_id=TENANT, spec=PRO)
    # Then each event names whoever acted at that moment
    [defined] = meter.collect_events()
    [plan_defined] = plan.collect_events()
    assert (defined.actor, defined.idempotency_key) == ("system:test", None)
    assert (plan_defined.actor, plan_defined.idempotency_key) == ("key_alice", "idem-1")
    # And after the block no one acts
    with pytest.raises(AssertionError):
        Meter(tenant_id=TENANT, spec=API_CALLS)


# --- Plan versions ----------------------------------------------------------------------------

def test_versions_are_numbered_per_plan(catalogue):
    # Given two plans
    catalogue.define_plan(ALICE, TENANT, PRO)
    catalogue.define_plan(ALICE, TENANT, TEAM)
    # When Pro gets three versions and Team two, interleaved
    numbers = [(code, catalogue.publish_plan_version(ALICE, TENANT, code, flat("1.00")).number)
               for code in ("pro", "team", "pro", "team", "pro")]
    # Then each plan counts its own from 1
    assert numbers == [("pro", 1), ("team", 1), ("pro", 2), ("team", 2), ("pro", 3)]
    assert catalogue.plan(TENANT, "pro").latest_version == 3 and catalogue.plan(TENANT, "team").latest_version == 2
    # And a version's id is derived from its plan and number alone
    pro = catalogue.plan(TENANT, "pro")
    assert catalogue.repository.get(PlanVersion.create_id(pro.id, 2)).number == 2
    assert PlanVersion.create_id(pro.id, 1) != PlanVersion.create_id(catalogue.plan(TENANT, "team").id, 1)


def test_two_publishers_of_the_same_number_collide_and_the_second_records_nothing(catalogue, monkeypatch):
    # Given Pro at version 1, and a publisher still holding Pro as it was before version 1
    catalogue.define_plan(ALICE, TENANT, PRO)
    stale = catalogue.plan(TENANT, "pro")
    first = catalogue.publish_plan_version(ALICE, TENANT, "pro", flat("10.00"))
    recorded = catalogue.recorder.max_notification_id()
    # When that publisher publishes: it too picks number 1, whose id is already taken
    monkeypatch.setattr(catalogue, "plan", lambda tenant_id, code: stale)
    with pytest.raises(VersionRace) as race:
        catalogue.publish_plan_version(ALICE, TENANT, "pro", flat("20.00"))
    # Then it is a version race (a conflict: 409), and nothing is recorded
    assert isinstance(race.value, Conflict)
    assert catalogue.recorder.max_notification_id() == recorded
    monkeypatch.undo()
    version_1 = catalogue.repository.get(PlanVersion.create_id(first.plan_id, 1))
    assert version_1.spec == flat("10.00") and catalogue.plan(TENANT, "pro").latest_version == 1


def test_a_plan_version_is_one_event_and_has_no_command(catalogue):
    # Given Pro
    catalogue.define_plan(ALICE, TENANT, PRO)
    # When a version is published
    version = catalogue.publish_plan_version(ALICE, TENANT, "pro", flat("10.00"))
    # Then its aggregate has exactly one event, Published, and nothing on it can record another
    [published] = catalogue.recorder.select_events(version.id)
    assert isinstance(catalogue.mapper.to_domain_event(published), PlanVersion.Published)
    commands = [name for name, member in vars(PlanVersion).items()
                if callable(member) and not isinstance(member, type | staticmethod) and not name.startswith("__")]
    assert commands == []
    assert [type(e) for e in catalogue.repository.get(version.id).collect_events()] == []


# --- Replay -----------------------------------------------------------------------------------

def test_catalogue_aggregates_replay_to_their_live_state(catalogue):
    # Given one aggregate of each catalogue kind, with exact decimals and nested values
    specs = {
        Meter: MeterSpec(code="tokens", name="Tokens", event_name="llm.call", aggregation="sum", field="tokens",
                         filters={"model": ["a", "b"]}, group_by=("model",)),
        Feature: FeatureSpec(code="sso", name="SSO", type="boolean"),
        PricingUnit: PricingUnitSpec(code="credits", name="Credits", currency="USD",
                                     conversion_rate=Decimal("0.010")),
    }
    with acting(ALICE):
        live = [kind(tenant_id=TENANT, spec=spec) for kind, spec in specs.items()]
        plan = Plan(tenant_id=TENANT, spec=PRO)
        number = plan.publish_version()
        version = PlanVersion(plan_id=plan.id, tenant_id=TENANT, plan_code="pro", number=number, spec=PlanVersionSpec(
            prices=(GraduatedPrice(meter_code="tokens", currency="USD", tiers=(
                Tier(up_to=Decimal("0.1"), unit_amount=Decimal("10.00")),
                Tier(up_to=None, unit_amount=Decimal("1.000"), flat_amount=Decimal("0.50")))),
                PerUnitPrice(meter_code="tokens", pricing_unit="credits", unit_amount=Decimal("0.000002"))),
            entitlements=(Entitlement(feature_code="sso", enabled=True),),
            minimum_commitment=Decimal("100.00"), trial_days=14))
    live += [plan, version]
    for aggregate in live:
        events = aggregate.collect_events()
        # When its events are reduced from nothing
        # Then the result is the live aggregate
        assert state(replayed(events)) == state(aggregate)
        # And stored and loaded back (through the transcoder), it is the same again
        catalogue.events.put(events)
    for aggregate in live:
        assert state(catalogue.repository.get(aggregate.id)) == state(aggregate)


@given(st.lists(st.fixed_dictionaries({}, optional={
    "name": st.sampled_from(["Acme", "Acme Inc", "ACME"]),
    "email": st.sampled_from([None, "a@acme.test", "b@acme.test"]),
    "tax_rate": st.sampled_from([None, Decimal("0.20"), Decimal("0.2"), Decimal("0.075")]),
    "metadata": st.dictionaries(st.sampled_from(["tier", "crm"]), st.sampled_from(["gold", "1"]), max_size=2),
}), max_size=8))
@settings(max_examples=40, deadline=None)
def test_replaying_a_customer_rebuilds_the_same_details(changes):
    # Given a customer registered as Alice
    with acting(ALICE):
        customer = Customer(tenant_id=TENANT, external_id="acme", currency="USD", details=CustomerDetails(name="Acme"))
        # When any sequence of changes is made
        for change in changes:
            customer.change(CustomerChanges(**change).applied_to(customer.details))
    events = customer.collect_events()
    # Then a change that changes nothing records nothing, and replay gives the same customer
    assert len(events) <= 1 + len(changes)
    assert all(before.details != after.details for before, after in zip(events, events[1:]))
    assert state(replayed(events)) == state(customer)
    assert str(replayed(events).details.tax_rate) == str(customer.details.tax_rate)


def test_tenant_and_key_replay_to_their_live_state():
    # Given a tenant whose settings changed, and a key revoked and reinstated
    with acting(ALICE):
        tenant = Tenant(settings=TenantSettings(name="Acme"))
        tenant.change_settings(TenantChanges(default_tax_rate=Decimal("0.19"), invoice_prefix="AC-"))
        key = ApiKey(tenant_id=tenant.id, role="admin", customer=None, prefix="tly_a_abcdef", secret_hash="0" * 64)
        key.revoke()
        key.reinstate()
    # Then each replays from its events to the same state
    for aggregate in (tenant, key):
        assert state(replayed(aggregate.collect_events())) == state(aggregate)


def test_customers_registered_and_changed_in_the_store_load_as_they_were():
    # Given customers registered and changed through the application, on the in-memory store
    customers = Customers(env=IN_MEMORY)
    customers.register(ALICE, TENANT, CustomerSpec(external_id="hq", name="HQ", currency="USD"))
    customers.register(ALICE, TENANT, CustomerSpec(external_id="eu", name="EU", currency="USD",
                                                   tax_rate=Decimal("0.20"), parent_external_id="hq"))
    live = customers.change(ALICE, TENANT, "eu", CustomerChanges(invoice_to_parent=True, metadata={"crm": "7"}))
    # When it is loaded again
    loaded = customers.customer(TENANT, "eu")
    # Then it is the customer as it was changed
    assert state(loaded) == state(live)
    assert [type(e) for e in map(customers.mapper.to_domain_event, customers.recorder.select_events(live.id))] == [
        Customer.Registered, Customer.DetailsChanged]


# --- Documents rebuilt from zero --------------------------------------------------------------

def documents_table(ledger: Ledger) -> list[tuple]:
    with ledger.database.transaction() as cursor:
        rows = cursor.execute(
            "SELECT collection, id, tenant_id, code, parent, position, body FROM tally_documents "
            "ORDER BY collection, id"
        ).all()
    return [tuple(row) for row in rows]


HISTORY = [  # a tenant's catalogue, versions, customers and keys, changed after they were made
    ("POST", "/v1/meters", {"code": "gpu", "name": "GPU", "event_name": "gpu.used", "aggregation": "sum",
                            "field": "hours", "filters": {"region": ["eu"]}, "group_by": ["model"]}),
    ("POST", "/v1/meters", {"code": "calls", "name": "Calls", "event_name": "api.call", "aggregation": "count"}),
    ("POST", "/v1/features", {"code": "api", "name": "API", "type": "metered", "meter_code": "calls"}),
    ("POST", "/v1/pricing-units", {"code": "credits", "name": "Credits", "currency": "USD",
                                   "conversion_rate": "0.010"}),
    ("POST", "/v1/plans", {"code": "pro", "name": "Pro", "currency": "USD", "interval": "month"}),
    *[("POST", "/v1/plans/pro/versions", {
        "prices": [{"type": "graduated", "meter_code": "gpu", "currency": "USD", "tiers": [
            {"up_to": "0.1", "unit_amount": "1.000"}, {"up_to": None, "unit_amount": amount}]}],
        "entitlements": [{"feature_code": "api", "limit": "1000", "soft_limit": "1200"}],
        "minimum_commitment": "50.00"}) for amount in ("10.00", "12.50")],
    ("POST", "/v1/customers", {"external_id": "hq", "name": "HQ", "currency": "USD"}),
    ("POST", "/v1/customers", {"external_id": "eu", "name": "EU", "currency": "USD", "tax_rate": "0.20",
                               "parent_external_id": "hq", "metadata": {"crm": "7"}}),
    ("PATCH", "/v1/customers/eu", {"invoice_to_parent": True, "email": "eu@acme.test"}),
    ("PATCH", "/v1/tenant", {"default_tax_rate": "0.19"}),
]
READS = ("/v1/meters", "/v1/plans/pro", "/v1/plans/pro/versions", "/v1/customers", "/v1/tenant", "/v1/api-keys")


def test_the_documents_rebuilt_from_zero_equal_the_live_ones_byte_for_byte(ledger, base_url):
    # Given a tenant with a catalogue, versions, customers and a revoked key, changed after they were made
    _, secret = open_tenant(ledger)
    with client(base_url, secret) as admin:
        for method, path, body in HISTORY:
            response = admin.request(method, path, json=body)
            assert response.status_code in (200, 201), response.text
        readonly = admin.post("/v1/api-keys", json={"role": "readonly"}).json()
        assert admin.delete(f"/v1/api-keys/{readonly['id']}").status_code == 200
        live_answers = [admin.get(path).content for path in READS]
        live = documents_table(ledger)
        # When every document is deleted and the runner starts again from position 0
        with ledger.database.transaction(write=True) as cursor:
            cursor.execute("DELETE FROM tally_documents")
            cursor.execute("UPDATE tally_positions SET position = 0")
        assert documents_table(ledger) == []
        reached = ledger.runner.catch_up()
        # Then every row is rebuilt exactly, body, position and all, and the API answers the same bytes
        assert reached == ledger.events_recorded()
        assert documents_table(ledger) == live
        assert len(live) == 12  # tenant, 2 keys, 2 meters, feature, unit, plan, 2 versions, 2 customers
        assert [admin.get(path).content for path in READS] == live_answers

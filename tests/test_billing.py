"""The billing clock and issued invoices, on both stores: drafts once per period, finalize after the
grace period with gapless numbers, late usage, void and pay, and recomputation byte for byte."""

import io
import threading
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

import msgspec
import pytest
from conftest import SETUP, assert_problem, created
from pypdf import PdfReader

from api.clock import LOCK, BillingClock
from api.ledger import Ledger
from domain.errors import Conflict
from domain.money import encode_hook
from projections import documents
from projections.documents import Documents
from projections.views import private_id

FEE = {"type": "flat", "currency": "USD", "amount": "30.00", "pay_in": "advance"}
TOKENS = {"type": "per_unit", "meter_code": "tokens", "currency": "USD", "unit_amount": "0.01"}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture
def acme(admin):
    """A monthly plan ($30 in advance, $0.01 a token), customer acme subscribed from Jan 1 2026,
    invoice prefix ACME-, 24 hours' grace."""
    assert admin.patch("/v1/tenant", json={"invoice_prefix": "ACME-"}).status_code == 200
    created(admin.post("/v1/meters", json={"code": "tokens", "name": "Tokens", "event_name": "llm",
                                           "aggregation": "sum", "field": "tokens"}))
    created(admin.post("/v1/plans", json={"code": "pro", "name": "Pro", "currency": "USD", "interval": "month"}))
    created(admin.post("/v1/plans/pro/versions", json={"prices": [FEE, TOKENS]}))
    created(admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD"}))
    created(admin.post("/v1/subscriptions", json={"customer": "acme", "plan_code": "pro",
                                                  "start_at": "2026-01-01T00:00:00Z", "billing_anchor": "calendar"}))
    return admin


def use(admin, event_id: str, when: str, tokens: int) -> None:
    answer = admin.post("/v1/events", json={"event_id": event_id, "customer": "acme", "event_name": "llm",
                                            "timestamp": when, "properties": {"tokens": tokens}})
    assert answer.json().get("accepted") == 1, answer.text


def invoices(admin, **query) -> dict[tuple[str, str], dict]:
    found = admin.get("/v1/invoices", params={"customer": "acme", "limit": 100, **query}).json()["data"]
    return {(i["kind"], i["period_start"][:10]): i for i in found}


def test_the_clock_drafts_each_period_once_and_finalizes_after_the_grace_period(acme, ledger):
    # Given January's usage, including a late event that arrives during the grace period
    use(acme, "jan-1", "2026-01-10T00:00:00Z", 1000)
    # When the clock runs on Feb 1 at 12:00, twice
    changed = ledger.close_periods(at("2026-02-01T12:00:00"))
    assert ledger.close_periods(at("2026-02-01T12:00:00")) == 0
    # Then January's and February's advance invoices are final (numbered in order), January's closing a draft
    found = invoices(acme)
    assert changed == 5  # 2 advance drafted and finalized, 1 closing drafted
    assert [(k, found[k]["status"], found[k]["number"]) for k in sorted(found)] == [
        (("advance", "2026-01-01"), "finalized", "ACME-000001"),
        (("advance", "2026-02-01"), "finalized", "ACME-000002"),
        (("closing", "2026-01-01"), "draft", None),
    ]
    draft_url = f"/v1/invoices/{found['closing', '2026-01-01']['id']}"
    assert acme.get(draft_url).json()["lines"][0]["amount"] == "10.00"
    # When late January usage arrives within the grace period, then the grace period passes
    use(acme, "jan-late", "2026-01-31T23:00:00Z", 500)
    assert acme.get(draft_url).json()["total"] == "15.00"
    ledger.close_periods(at("2026-02-02T00:00:00"))
    # Then the draft is finalized with the next number and what it billed then, whatever comes later
    final = acme.get(draft_url).json()
    assert (final["status"], final["number"], final["total"]) == ("finalized", "ACME-000003", "15.00")
    too_late = acme.post("/v1/events", json={"event_id": "jan-too-late", "customer": "acme", "event_name": "llm",
                                             "timestamp": "2026-01-31T23:30:00Z", "properties": {"tokens": 9999}})
    assert_problem(too_late, 422, "timestamp")
    assert acme.get(draft_url).json() == final
    assert list(invoices(acme, status="draft")) == []


def test_a_finalized_invoice_is_what_recomputing_it_from_the_store_gives_byte_for_byte(acme, ledger):
    use(acme, "jan-1", "2026-01-10T00:00:00Z", 1234)
    ledger.close_periods(at("2026-02-03T00:00:00"))
    closing = invoices(acme)["closing", "2026-01-01"]
    issued = ledger.invoicing.invoice(UUID(_tenant(ledger, closing)), _id(closing))
    subscription = ledger.subscriptions.subscription(issued.tenant_id, issued.subscription_id)
    recomputed = ledger._computed(subscription, subscription.period_at(issued.period_start), "closing", "finalized")
    recomputed = msgspec.structs.replace(recomputed, id=closing["id"], number=issued.content.number)
    assert msgspec.json.encode(recomputed, enc_hook=encode_hook) == msgspec.json.encode(issued.content,
                                                                                        enc_hook=encode_hook)
    assert issued.content.total == Decimal("12.34")  # January's usage: the $30 fee was on the advance invoice


def _id(summary: dict) -> UUID:
    found = private_id("invoices", summary["id"])
    assert found is not None
    return found


def _tenant(ledger, summary: dict) -> str:
    with ledger.database.transaction() as cursor:
        row = cursor.execute("SELECT tenant_id FROM tally_documents WHERE collection = 'invoices' AND id = ?",
                             (str(_id(summary)),)).one()
    return row[0]


def test_concurrent_finalizes_take_one_number_each_with_no_gap(acme, ledger):
    # Given three months of closing drafts (a 90-day grace keeps them drafts)
    assert acme.patch("/v1/tenant", json={"grace_period_hours": 2160}).status_code == 200
    ledger.close_periods(at("2026-04-01T00:00:00"))
    pending = list(invoices(acme, status="draft").values())
    drafts, tenant = [_id(i) for i in pending], UUID(_tenant(ledger, pending[0]))
    assert len(drafts) == 3
    # When six threads finalize them at once, each draft twice
    outcomes: list[str] = []

    def finalize(invoice_id: UUID) -> None:
        try:
            ledger.command(ledger.finalize, SETUP, tenant, invoice_id)
            outcomes.append("finalized")
        except Conflict:
            outcomes.append("refused")

    threads = [threading.Thread(target=finalize, args=(d,)) for d in drafts + drafts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Then each draft was finalized once, and the numbers run on without a gap or a repeat
    assert (outcomes.count("finalized"), outcomes.count("refused")) == (3, 3)
    numbers = sorted(i["number"] for i in invoices(acme).values() if i["number"])
    assert numbers == [f"ACME-{n:06d}" for n in range(1, len(numbers) + 1)]
    assert all(i["status"] == "finalized" for i in invoices(acme).values())


def test_void_and_pay_follow_the_invoice_s_status(acme, ledger):
    ledger.close_periods(at("2026-01-15T00:00:00"))
    advance = invoices(acme)["advance", "2026-01-01"]
    url = f"/v1/invoices/{advance['id']}"
    # A payment above what is due is refused; a part, then the rest, pays it
    before = ledger.events_recorded()
    assert_problem(acme.post(f"{url}/pay", json={"amount": "30.01"}), 422, "amount")
    assert ledger.events_recorded() == before
    assert acme.post(f"{url}/pay", json={"amount": "10.00"}).json()["status"] == "finalized"
    assert acme.post(f"{url}/pay", json={}).json()["status"] == "paid"
    assert invoices(acme)["advance", "2026-01-01"]["paid"] == "30.00"
    # A paid invoice cannot be voided or paid again
    assert_problem(acme.post(f"{url}/void", json={}), 409)
    assert_problem(acme.post(f"{url}/pay", json={}), 409)
    # A draft can be voided once, and then cannot be finalized
    ledger.close_periods(at("2026-02-01T01:00:00"))
    draft = invoices(acme)["closing", "2026-01-01"]
    voided = acme.post(f"/v1/invoices/{draft['id']}/void", json={"reason": "billed elsewhere"})
    assert voided.json()["status"] == "void"
    assert_problem(acme.post(f"/v1/invoices/{draft['id']}/void", json={}), 409)
    assert_problem(acme.post(f"/v1/invoices/{draft['id']}/finalize"), 409)
    assert_problem(acme.get("/v1/invoices/inv_0"), 404)
    assert_problem(acme.get("/v1/invoices", params={"status": "lost"}), 422)


def test_the_invoice_pdf_shows_the_tenant_s_legal_details_every_line_and_the_totals(acme, ledger):
    # Given the tenant's legal details and a finalized January closing invoice
    assert acme.patch("/v1/tenant", json={"legal_name": "Acme Billing GmbH", "address": "1 Main St, Berlin",
                                          "tax_id": "DE123456789"}).status_code == 200
    use(acme, "jan-1", "2026-01-10T00:00:00Z", 1234)
    ledger.close_periods(at("2026-02-03T00:00:00"))
    closing = invoices(acme)["closing", "2026-01-01"]
    # When its PDF is fetched
    answer = acme.get(f"/v1/invoices/{closing['id']}/pdf")
    # Then it is a PDF whose text holds the legal details, the number, each line and the totals
    assert (answer.status_code, answer.headers["content-type"]) == (200, "application/pdf")
    text = " ".join(page.extract_text() for page in PdfReader(io.BytesIO(answer.content)).pages)
    invoice = acme.get(f"/v1/invoices/{closing['id']}").json()
    for expected in ["Acme Billing GmbH", "1 Main St, Berlin", "DE123456789", invoice["number"],
                     *(line["description"] for line in invoice["lines"]), "12.34", invoice["total"]]:
        assert expected in text, expected


def test_one_billing_clock_ticks_at_a_time_and_a_tick_is_idempotent(acme, ledger):
    # Given two clocks on the same store, stopped at Feb 1 12:00
    first = BillingClock(ledger, 0, now=lambda: at("2026-02-01T12:00:00"))
    second = BillingClock(ledger, 0, now=lambda: at("2026-02-01T12:00:00"))
    # When the second ticks while the first holds the lock
    with ledger.database.exclusive(LOCK) as mine:
        assert mine
        assert second.tick() is None
    # Then once the lock is free, a tick drafts what is due, and the next finds nothing to do
    assert first.tick() == 5
    assert second.tick() == 0


def test_two_clocks_racing_without_the_lock_still_draft_and_finalize_each_invoice_once(acme, ledger, database_url):
    # Given five customers on the plan (the clock drafts and finalizes them together) and a second
    # ledger on the same store, as a second server whose clock ignores the lock would be
    for n in range(4):
        created(acme.post("/v1/customers", json={"external_id": f"c{n}", "name": f"C{n}", "currency": "USD"}))
        created(acme.post("/v1/subscriptions", json={"customer": f"c{n}", "plan_code": "pro",
                                                     "start_at": "2026-01-01T00:00:00Z", "billing_anchor": "calendar"}))
    other = Ledger(database_url)
    try:
        # When both close Jan and Feb at the same moment, three times over
        totals: list[int] = []

        def tick(clock: Ledger) -> None:
            totals.append(clock.close_periods(at("2026-03-05T00:00:00")))

        for _ in range(3):
            threads = [threading.Thread(target=tick, args=(clock,)) for clock in (ledger, other, ledger, other)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
    finally:
        other.close()
    # Then every step was taken once: 5 customers x (3 advance + 2 closing) drafted and finalized
    assert sum(totals) == 5 * 5 * 2
    found = acme.get("/v1/invoices", params={"limit": 100}).json()["data"]
    assert len(found) == 25 and {i["status"] for i in found} == {"finalized"}
    numbers = sorted(i["number"] for i in found)
    assert numbers == [f"ACME-{n:06d}" for n in range(1, 26)]


def test_late_usage_within_grace_is_an_adjustment_on_the_next_invoice_and_after_it_is_refused(acme, ledger):
    # Given January billed and finalized by hand on Feb 1 at 13:00, inside its 24 hours' grace
    use(acme, "jan-1", "2026-01-10T00:00:00Z", 1000)
    ledger.subscriptions.clock = lambda: at("2026-02-01T13:00:00")
    ledger.close_periods(at("2026-02-01T13:00:00"))
    january = invoices(acme)["closing", "2026-01-01"]
    final = acme.post(f"/v1/invoices/{january['id']}/finalize").json()
    assert (final["number"], final["total"]) == ("ACME-000003", "10.00")
    # When January usage arrives within the grace period
    use(acme, "jan-late", "2026-01-31T20:00:00Z", 250)
    # Then January's invoice stays as finalized, and February's upcoming invoice carries the difference
    assert acme.get(f"/v1/invoices/{january['id']}").json() == final
    february = acme.get("/v1/customers/acme/upcoming-invoice").json()
    late = [line for line in february["lines"] if line["description"].startswith("Late usage: ")]
    assert [(line["quantity"], line["amount"], line["period_start"]) for line in late] == [
        ("250", "2.50", "2026-01-01T00:00:00Z")]
    # When the grace period is over, January usage is refused with the reason, and February's is taken
    ledger.subscriptions.clock = lambda: at("2026-02-02T00:00:01")
    refused = acme.post("/v1/events/batch", json={"events": [
        {"event_id": "jan-too-late", "customer": "acme", "event_name": "llm", "timestamp": "2026-01-31T21:00:00Z",
         "properties": {"tokens": 1}},
        {"event_id": "feb-1", "customer": "acme", "event_name": "llm", "timestamp": "2026-02-01T21:00:00Z",
         "properties": {"tokens": 1}}]}).json()
    assert (refused["accepted"], [r["index"] for r in refused["rejected"]]) == (1, [0])
    error = refused["rejected"][0]["errors"][0]
    assert error["field"] == "timestamp" and "ACME-000003" in error["message"], error
    one = acme.post("/v1/events", json={"event_id": "jan-too-late", "customer": "acme", "event_name": "llm",
                                        "timestamp": "2026-01-31T21:00:00Z", "properties": {"tokens": 1}})
    assert_problem(one, 422, "timestamp")


def _tenant_of(ledger) -> UUID:
    with ledger.database.transaction() as cursor:
        return UUID(cursor.execute("SELECT tenant_id FROM tally_documents WHERE collection = 'customers'").one()[0])


def _refused(admin, event_id: str, when: str) -> bool:
    """Whether a usage event at `when` is refused as falling in a closed period (else it is accepted)."""
    event = {"event_id": event_id, "customer": "acme", "event_name": "llm", "timestamp": when,
             "properties": {"tokens": 1}}
    answer = admin.post("/v1/events/batch", json={"events": [event]})
    assert answer.status_code == 202, answer.text
    return bool(answer.json()["rejected"])


def test_usage_is_refused_up_to_the_latest_closed_period_a_voided_one_reopens_and_an_older_store_keeps_refusing(
        acme, ledger):
    # Given January and February closed and finalized, both grace periods over (Mar 2 01:00)
    ledger.subscriptions.clock = lambda: at("2026-03-02T01:00:00")
    ledger.close_periods(at("2026-02-02T01:00:00"))
    ledger.close_periods(at("2026-03-02T01:00:00"))
    closing = {start: found for (kind, start), found in invoices(acme).items() if kind == "closing"}
    assert {start: found["status"] for start, found in closing.items()} == {
        "2026-01-01": "finalized", "2026-02-01": "finalized"}
    # Then usage up to February's end is refused, and March's is taken
    assert (_refused(acme, "jan", "2026-01-15T00:00:00Z"), _refused(acme, "feb", "2026-02-15T00:00:00Z"),
            _refused(acme, "mar", "2026-03-01T12:00:00Z")) == (True, True, False)
    elsewhere = Documents(ledger.database)  # another server's, keeping the closed periods it read
    tenant = str(_tenant_of(ledger))
    assert elsewhere.closed_periods(tenant, {"acme"})["acme"][2] == closing["2026-02-01"]["number"]
    # When February's closing invoice is voided: February is open again, January stays closed, in every server
    voided = acme.post(f"/v1/invoices/{closing['2026-02-01']['id']}/void", json={"reason": "wrong plan"})
    assert voided.status_code == 200, voided.text
    assert (_refused(acme, "jan-2", "2026-01-15T00:00:00Z"), _refused(acme, "feb-2", "2026-02-15T00:00:00Z")) == (
        True, False)
    assert elsewhere.closed_periods(tenant, {"acme"})["acme"][2] == closing["2026-01-01"]["number"]
    # And a longer grace period counts at once: January's has not ended by Mar 2 with 1,000 hours
    assert acme.patch("/v1/tenant", json={"grace_period_hours": 1000}).status_code == 200
    assert not _refused(acme, "jan-4", "2026-01-15T00:00:00Z")
    assert acme.patch("/v1/tenant", json={"grace_period_hours": 24}).status_code == 200
    # And a store from before the closed periods were kept apart fills them from its invoices when opened
    with ledger.database.transaction(write=True) as cursor:
        cursor.execute("DROP TABLE tally_closed_periods")
    documents.migrate(ledger.database)
    assert (_refused(acme, "jan-3", "2026-01-15T00:00:00Z"), _refused(acme, "feb-3", "2026-02-15T00:00:00Z")) == (
        True, False)


def test_credit_notes_by_lines_or_amount_never_take_an_invoice_below_zero(acme, ledger):
    # Given January's closing invoice: 1,000 tokens = $10.00, with 20 % tax: total $12.00
    assert acme.patch("/v1/tenant", json={"default_tax_rate": "0.2"}).status_code == 200
    use(acme, "jan-1", "2026-01-10T00:00:00Z", 1000)
    ledger.close_periods(at("2026-02-03T00:00:00"))
    january = invoices(acme)["closing", "2026-01-01"]
    assert acme.get(f"/v1/invoices/{january['id']}").json()["total"] == "12.00"
    before = ledger.events_recorded()
    # When $3.33 of line 0 is credited: tax 0.666 rounds half-up to 0.67, the note is 4.00
    note = acme.post("/v1/credit-notes", json={"invoice_id": january["id"], "lines": [
        {"line_index": 0, "amount": "3.33"}], "reason": "outage"})
    assert note.status_code == 201, note.text
    assert {k: note.json()[k] for k in ("number", "subtotal", "tax", "total")} == {
        "number": "ACME-000002-CN1", "subtotal": "3.33", "tax": "0.67", "total": "4.00"}
    # Then more than is left of the line, or of the invoice, is refused and records nothing
    ledger_before = ledger.events_recorded()
    assert_problem(acme.post("/v1/credit-notes", json={"invoice_id": january["id"], "lines": [
        {"line_index": 0, "amount": "6.68"}], "reason": "x"}), 422, "lines[0].amount")
    assert_problem(acme.post("/v1/credit-notes", json={"invoice_id": january["id"], "amount": "8.01",
                                                       "reason": "x"}), 422, "amount")
    assert_problem(acme.post("/v1/credit-notes", json={"invoice_id": january["id"], "lines": [
        {"line_index": 9, "amount": "1.00"}], "reason": "x"}), 422, "lines[0].line_index")
    assert_problem(acme.post("/v1/credit-notes", json={"invoice_id": january["id"], "amount": "1.00",
                                                       "lines": [], "reason": "x"}), 422, "lines")
    assert ledger.events_recorded() == ledger_before
    # And what is left can be credited by amount, tax inside it, to exactly zero
    rest = acme.post("/v1/credit-notes", json={"invoice_id": january["id"], "amount": "8.00", "reason": "refund"})
    assert {k: rest.json()[k] for k in ("number", "subtotal", "tax", "total")} == {
        "number": "ACME-000002-CN2", "subtotal": "6.67", "tax": "1.33", "total": "8.00"}
    assert acme.get(f"/v1/invoices/{january['id']}").json()["credited"] == "12.00"
    assert_problem(acme.post("/v1/credit-notes", json={"invoice_id": january["id"], "amount": "0.01",
                                                       "reason": "x"}), 422, "amount")
    # And a draft cannot be credited
    ledger.close_periods(at("2026-03-01T01:00:00"))
    february = invoices(acme)["closing", "2026-02-01"]
    assert_problem(acme.post("/v1/credit-notes", json={"invoice_id": february["id"], "amount": "1.00",
                                                       "reason": "x"}), 409)
    assert ledger.events_recorded() > before


def test_time_travel_answers_an_invoice_as_it_stood_from_the_events(acme, ledger):
    # Given January's usage arriving in two steps, the draft finalized, then paid
    use(acme, "jan-1", "2026-01-10T00:00:00Z", 1000)
    ledger.close_periods(at("2026-02-01T12:00:00"))
    january = invoices(acme)["closing", "2026-01-01"]
    url = f"/v1/customers/acme/invoices/{january['id']}"
    after_first = datetime.now(UTC)
    use(acme, "jan-2", "2026-01-20T00:00:00Z", 500)
    after_second = datetime.now(UTC)
    ledger.close_periods(at("2026-02-02T01:00:00"))
    after_final = datetime.now(UTC)
    assert acme.post(f"/v1/invoices/{january['id']}/pay", json={}).status_code == 200

    def then(moment: datetime) -> dict:
        answer = acme.get(url, params={"as_of": moment.isoformat()})
        assert answer.status_code == 200, answer.text
        return answer.json()

    # Then each instant answers what was true then: the draft with the usage recorded by then,
    # the finalized invoice, then the paid one
    assert (then(after_first)["status"], then(after_first)["total"]) == ("draft", "10.00")
    assert (then(after_second)["status"], then(after_second)["total"]) == ("draft", "15.00")
    assert (then(after_final)["status"], then(after_final)["number"], then(after_final)["paid"]) == (
        "finalized", "ACME-000003", "0")
    assert then(datetime.now(UTC))["status"] == "paid"
    # And before it was drafted, it did not exist; a time with no offset is refused
    assert_problem(acme.get(url, params={"as_of": "2020-01-01T00:00:00Z"}), 404)
    assert_problem(acme.get(url, params={"as_of": "2026-02-01T00:00:00"}), 422, "as_of")
    assert_problem(acme.get(f"/v1/customers/ghost/invoices/{january['id']}",
                            params={"as_of": datetime.now(UTC).isoformat()}), 404)


def test_concurrent_voids_have_one_effect(acme, ledger):
    # Given a closing draft
    ledger.close_periods(at("2026-02-01T01:00:00"))
    draft = invoices(acme)["closing", "2026-01-01"]
    tenant, invoice_id = UUID(_tenant(ledger, draft)), _id(draft)
    before = ledger.events_recorded()
    outcomes: list[str] = []

    def void() -> None:
        try:
            ledger.command(ledger.invoicing.void, SETUP, tenant, invoice_id, "duplicate")
            outcomes.append("voided")
        except Conflict:
            outcomes.append("refused")

    # When six threads void it at once
    threads = [threading.Thread(target=void) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Then one voided it, the others were refused, and one event was recorded
    assert sorted(outcomes) == ["refused"] * 5 + ["voided"]
    assert ledger.events_recorded() == before + 1
    assert acme.get(f"/v1/invoices/{draft['id']}").json()["status"] == "void"


def test_a_plan_without_an_advance_fee_has_no_advance_invoices(admin, ledger):
    created(admin.post("/v1/meters", json={"code": "tokens", "name": "Tokens", "event_name": "llm",
                                           "aggregation": "sum", "field": "tokens"}))
    created(admin.post("/v1/plans", json={"code": "metered", "name": "Metered", "currency": "USD",
                                          "interval": "month"}))
    created(admin.post("/v1/plans/metered/versions", json={"prices": [TOKENS]}))
    created(admin.post("/v1/customers", json={"external_id": "acme", "name": "Acme", "currency": "USD"}))
    created(admin.post("/v1/subscriptions", json={"customer": "acme", "plan_code": "metered",
                                                  "start_at": "2026-01-01T00:00:00Z", "billing_anchor": "calendar"}))
    ledger.close_periods(at("2026-03-05T00:00:00"))
    assert sorted(invoices(admin)) == [("closing", "2026-01-01"), ("closing", "2026-02-01")]
    assert [i["number"] for i in invoices(admin).values()] == ["INV-000001", "INV-000002"]


def test_a_tick_skips_what_is_not_due_yet_and_sees_a_cancellation_at_once(acme, ledger):
    # Given a tick on Jan 15 (January's advance invoice final; nothing else due until Feb 1)
    ledger.subscriptions.clock = lambda: at("2026-01-15T00:00:00")
    assert ledger.close_periods(at("2026-01-15T00:00:00")) == 2
    assert ledger.close_periods(at("2026-01-15T01:00:00")) == 0
    # When the subscription is cancelled now (Jan 15), the next tick closes it without waiting for Feb 1
    subscription = invoices(acme)["advance", "2026-01-01"]["subscription"]
    assert acme.post(f"/v1/subscriptions/{subscription}/cancel", json={"at": "now"}).status_code == 200
    assert ledger.close_periods(at("2026-01-15T06:00:00")) == 1  # the closing draft, final on Jan 16
    # And a shorter grace period is seen at once too
    assert acme.patch("/v1/tenant", json={"grace_period_hours": 0}).status_code == 200
    assert ledger.close_periods(at("2026-01-15T06:00:00")) == 1  # finalized
    assert invoices(acme)["closing", "2026-01-01"]["status"] == "finalized"

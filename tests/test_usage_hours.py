"""Usage reports from kept hour states (projections/usage_hours.py): the same answers as from the
events, whatever is kept, applied or late; on both stores."""

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

import msgspec
import pytest

from api.ledger import Ledger
from domain.aggregate import Actor
from domain.billing import IssuedInvoice
from domain.customer import CustomerSpec
from domain.meter import MeterSpec
from domain.money import encode_hook
from domain.plan import PlanSpec
from domain.plan_version import PlanVersionSpec
from domain.price import PercentagePrice, PerUnitPrice
from domain.subscription import SubscriptionSpec
from domain.tenant import TenantSettings
from domain.usage import UsageEvent
from projections import usage_hours, usage_readings
from projections.usage import report
from projections.usage_counters import UsageCounters
from projections.usage_log import Entry, microseconds

SETUP = Actor("test:setup")
DAY0 = datetime(2026, 11, 1, tzinfo=UTC)
RECORDED = datetime(2026, 11, 20, tzinfo=UTC)
NOW = datetime(2026, 12, 1, tzinfo=UTC)
METERS = {  # every aggregation kept hour by hour, with filters and group_by
    "calls": dict(aggregation="count"),
    "eu_calls": dict(aggregation="count", filters={"region": ["eu"]}, group_by=("model",)),
    "tokens": dict(aggregation="sum", field="tokens", group_by=("model", "region")),
    "peak": dict(aggregation="max", field="tokens", group_by=("model",)),
    "users": dict(aggregation="unique_count", field="user", group_by=("region",)),
    "last": dict(aggregation="latest", field="tokens", filters={"model": ["m1", "m2"]}),
}


@pytest.fixture
def metered(ledger: Ledger, monkeypatch) -> UUID:
    """A tenant with METERS, the ledger's clock stopped after the days the tests use (whole hours
    are kept once they have ended), and hours kept however few events a report reads."""
    ledger.subscriptions.clock = lambda: NOW
    monkeypatch.setattr(usage_hours, "KEEP_FROM", 0)
    tenant = ledger.command(ledger.tenants.open_tenant, SETUP, TenantSettings(name="Hours")).id
    for code, spec in METERS.items():
        ledger.catalogue.define_meter(SETUP, tenant, MeterSpec(code=code, name=code, event_name="llm", **spec))
    return tenant


def events(count: int, seed: int, days: int = 3, prefix: str = "e") -> list[UsageEvent]:
    """Events over `days` days from DAY0, some with a property missing or not a number."""
    rng = random.Random(seed)
    found = []
    for n in range(count):
        properties = {"tokens": rng.choice([rng.randint(1, 500), f"{rng.randint(1, 99)}.5", "n/a"]),
                      "model": rng.choice(["m1", "m2", "m3"]), "user": f"u{rng.randint(1, 40)}"}
        if rng.random() < 0.8:
            properties["region"] = rng.choice(["eu", "us"])
        found.append(UsageEvent(event_id=f"{prefix}{n}", customer="acme", event_name="llm",
                                timestamp=DAY0 + timedelta(seconds=rng.randint(0, days * 86_400 - 1)),
                                properties=properties))
    return found


def append(ledger: Ledger, tenant: UUID, batch: list[UsageEvent]) -> None:
    ledger.usage.append(str(tenant), batch, RECORDED)


def from_events(ledger: Ledger, tenant: UUID, code: str, start: datetime, end: datetime, window, group_by):
    """The report as computed from every event (the read model and the tail), no hours kept."""
    meter = ledger.catalogue.meter(tenant, code).spec
    return report(ledger._usage_reader(str(tenant), "acme", meter), "acme", meter, start, end, window, group_by)


encode = msgspec.json.Encoder(enc_hook=encode_hook).encode


def kept(ledger: Ledger) -> int:
    with ledger.database.transaction() as cursor:
        return cursor.execute("SELECT COUNT(*) FROM tally_usage_hours").one()[0]


RANGES = [  # (start, end, window): whole days, odd minutes, a range inside one hour, a partial day
    (DAY0, DAY0 + timedelta(days=3), "day"),
    (DAY0 + timedelta(minutes=17), DAY0 + timedelta(days=2, hours=5, minutes=3), "hour"),
    (DAY0 + timedelta(hours=30, minutes=5), DAY0 + timedelta(hours=30, minutes=55), None),
    (DAY0 - timedelta(hours=2), DAY0 + timedelta(hours=20, seconds=1), None),
]


@pytest.mark.parametrize("code", list(METERS))
def test_a_report_from_kept_hours_equals_the_report_from_the_events(ledger, metered, code):
    # Given 1,500 events over three days, two thirds applied by the read model, the rest in the log's tail
    append(ledger, metered, events(1_000, seed=7))
    ledger.usage_runner.catch_up()
    append(ledger, metered, events(500, seed=8, prefix="t"))
    group_bys = [(), *((name,) for name in METERS[code].get("group_by", ()))]
    for start, end, window in RANGES:
        for group_by in group_bys:
            expected = from_events(ledger, metered, code, start, end, window, group_by)
            # When the report is read twice: once from the events (keeping its whole hours), then from them
            first = ledger.usage_report(metered, "acme", code, start, end, window, group_by)
            again = ledger.usage_report(metered, "acme", code, start, end, window, group_by)
            # Then both equal the report from the events, to the last character
            assert encode(first) == encode(expected), (start, end, window, group_by)
            assert encode(again) == encode(expected), (start, end, window, group_by)
    # And once the tail is applied too, the same from hours kept
    ledger.usage_runner.catch_up()
    for start, end, window in RANGES:
        assert ledger.usage_report(metered, "acme", code, start, end, window, ()) == \
            from_events(ledger, metered, code, start, end, window, ())
    assert kept(ledger) > 0
    for start, end, window in RANGES:
        assert ledger.usage_report(metered, "acme", code, start, end, window, ()) == \
            from_events(ledger, metered, code, start, end, window, ())


def test_the_second_report_reads_only_the_hours_it_did_not_keep(ledger, metered, monkeypatch):
    # Given two days of events, applied, and a report of them read once
    append(ledger, metered, events(2_000, seed=3, days=2))
    ledger.usage_runner.catch_up()
    start, end = DAY0 + timedelta(minutes=30), DAY0 + timedelta(days=2)
    first = ledger.usage_report(metered, "acme", "tokens", start, end, "hour", ("model",))
    read: list[tuple[int, int]] = []
    rows = usage_hours._rows
    monkeypatch.setattr(usage_hours, "_rows", lambda cursor, key, ranges: read.extend(ranges) or rows(cursor, key,
                                                                                                         ranges))
    # When it is read again
    again = ledger.usage_report(metered, "acme", "tokens", start, end, "hour", ("model",))
    # Then it is the same, and only the partial first hour was read from the events
    assert again == first
    assert read == [(microseconds(start), microseconds(DAY0 + timedelta(hours=1)))]


def test_late_events_and_voids_in_kept_hours_count_applied_or_not(ledger, metered):
    # Given a day of events, applied, and its hours kept by a report
    append(ledger, metered, events(300, seed=11, days=1))
    ledger.usage_runner.catch_up()
    day = (DAY0, DAY0 + timedelta(days=1), "hour")
    before = ledger.usage_report(metered, "acme", "tokens", *day, ())
    assert kept(ledger) > 0
    # When a late event lands in a kept hour: first in the log's tail, then applied
    late = UsageEvent(event_id="late", customer="acme", event_name="llm", timestamp=DAY0 + timedelta(hours=5),
                      properties={"tokens": 1_000, "model": "m1", "region": "eu"})
    append(ledger, metered, [late])
    tail = ledger.usage_report(metered, "acme", "tokens", *day, ())
    ledger.usage_runner.catch_up()
    applied = ledger.usage_report(metered, "acme", "tokens", *day, ())
    # Then it counts either way, in its hour
    for found in (tail, applied):
        assert found.total == before.total + 1_000
        assert found.buckets[5].value == before.buckets[5].value + 1_000
        assert found == from_events(ledger, metered, "tokens", *day, ())
    # And a void of it drops it again, in the tail and applied
    ledger.usage.void(str(metered), "acme", ["late"], "test", RECORDED)
    assert ledger.usage_report(metered, "acme", "tokens", *day, ()) == before
    ledger.usage_runner.catch_up()
    assert ledger.usage_report(metered, "acme", "tokens", *day, ()) == before


def kept_hours(ledger: Ledger, tenant: UUID, code: str) -> set[int]:
    """The hours (microseconds) kept for the meter."""
    signature = usage_hours.signature(ledger.catalogue.meter(tenant, code).spec)
    with ledger.database.transaction() as cursor:
        spans = cursor.execute("SELECT start_us, end_us FROM tally_usage_hours WHERE meter = ?", (signature,)).all()
    return {hour for start, end in spans for hour in range(start, end, usage_hours.HOUR)}


@pytest.mark.parametrize("customer", ["acme", "globex"])
def test_hours_are_kept_but_those_the_read_model_changed_for_their_customer_after_they_were_read(
        ledger, metered, monkeypatch, customer):
    # Given a day of acme's events, applied
    append(ledger, metered, events(200, seed=5, days=1))
    ledger.usage_runner.catch_up()
    day = (DAY0, DAY0 + timedelta(days=1), None)
    # When a report of acme's day, once it has read its events and the tail, sees the runner apply an event of
    # 03:00: acme's (late), or globex's (as under any steady ingest)
    event = UsageEvent(event_id="race", customer=customer, event_name="llm", timestamp=DAY0 + timedelta(hours=3),
                       properties={"tokens": 7, "model": "m1"})
    tail = ledger.usage.tail

    def meanwhile(*args):
        found = tail(*args)
        append(ledger, metered, [event])
        ledger.usage_runner.catch_up()
        return found

    monkeypatch.setattr(ledger.usage, "tail", meanwhile)
    ledger.usage_report(metered, "acme", "tokens", *day, ())  # reads without the event
    monkeypatch.setattr(ledger.usage, "tail", tail)
    # Then every hour of the day is kept but acme's 03:00, and the day read again is what the events give
    hour = microseconds(DAY0)
    assert kept_hours(ledger, metered, "tokens") == {
        hour + n * usage_hours.HOUR for n in range(24) if (n, customer) != (3, "acme")}
    assert ledger.usage_report(metered, "acme", "tokens", *day, ()) == \
        from_events(ledger, metered, "tokens", *day, ())
    assert len(kept_hours(ledger, metered, "tokens")) == 24


def test_a_busy_customer_s_ended_hours_are_kept_for_its_meters_without_a_report(ledger, metered, monkeypatch):
    # Given acme's 05:00 hour busy (60 events; busy from 50 here), a few more of its events that day, and
    # globex's few, applied by the runner
    monkeypatch.setattr(usage_readings, "BUSY", 50)
    monkeypatch.setattr(usage_readings, "_busy", usage_readings.Busy())
    busy = [UsageEvent(event_id=f"b{n}", customer="acme", event_name="llm",
                       timestamp=DAY0 + timedelta(hours=5, seconds=50 * n),
                       properties={"tokens": n, "model": f"m{n % 3}", "region": "eu", "user": f"u{n % 7}"})
            for n in range(60)]
    others = [UsageEvent(event_id=f"g{n}", customer="globex", event_name="llm", timestamp=DAY0 + timedelta(hours=n),
                         properties={"tokens": 1}) for n in range(5)]
    append(ledger, metered, busy + events(30, seed=8, days=1) + others)
    ledger.usage_runner.catch_up()
    ledger.runner.catch_up()  # the meters' documents, which the keeper reads
    # When the keeper runs before 05:00 has ended (nothing), then after (acme's), then again (nothing left)
    ledger.subscriptions.clock = lambda: DAY0 + timedelta(hours=5, minutes=30)
    assert ledger.keep_busy_hours() == 0
    ledger.subscriptions.clock = lambda: NOW
    assert ledger.keep_busy_hours() == 1
    assert ledger.keep_busy_hours() == 0
    # Then acme's hours are kept for every meter (hour by hour, from the busy hour's day to the last hour ended),
    # none of globex's, and each report from them is what the events give
    with ledger.database.transaction() as cursor:
        assert cursor.execute("SELECT DISTINCT customer FROM tally_usage_hours").all() == [("acme",)]
    every = set(range(microseconds(DAY0), microseconds(NOW), usage_hours.HOUR))
    day = (DAY0, DAY0 + timedelta(days=1), "hour")
    for code in METERS:
        assert kept_hours(ledger, metered, code) == every, code
        assert encode(ledger.usage_report(metered, "acme", code, *day, ("model",) if code == "tokens" else ())) == \
            encode(from_events(ledger, metered, code, *day, ("model",) if code == "tokens" else ())), code


def test_the_worker_s_writes_drop_the_kept_hours_they_touch(ledger, metered):
    # Given kept hours of a day, and the partition the customer's events go to on Kafka
    append(ledger, metered, events(100, seed=2, days=1))
    ledger.usage_runner.catch_up()
    ledger.usage_report(metered, "acme", "calls", DAY0, DAY0 + timedelta(days=1), None, ())
    with ledger.database.transaction() as cursor:
        spans = cursor.execute("SELECT start_us, end_us FROM tally_usage_hours").all()
    assert spans == [(microseconds(DAY0), microseconds(DAY0 + timedelta(days=1)))]
    partition = usage_readings.partition_of(str(metered), "acme")
    # When the Faust worker applies an event at 7:00 of that day
    at = microseconds(DAY0 + timedelta(hours=7))
    entry = Entry(10_000, str(metered), "acme", "kafka-1", "llm", at, at, "{}", "event")
    with ledger.database.transaction(write=True) as cursor:
        usage_readings.apply_partition(cursor, partition, [entry])
    # Then the day's span is gone (the next report reads the events)
    assert kept(ledger) == 0


def test_verify_names_a_kept_hour_the_events_do_not_give_and_a_replay_repairs_it(ledger, metered):
    from ops.replay import replay
    from ops.verify import verify
    # Given a day's hours kept by a report, and verify finding nothing
    append(ledger, metered, events(400, seed=13, days=1))
    ledger.usage_runner.catch_up()
    day = (DAY0, DAY0 + timedelta(days=1), "hour", ("model",))
    honest = ledger.usage_report(metered, "acme", "tokens", *day)
    assert kept(ledger) > 0 and list(verify(ledger)) == []
    # When a kept sum is changed behind Tally's back
    with ledger.database.transaction(write=True) as cursor:
        body = cursor.execute("SELECT hours FROM tally_usage_hours").one()[0]
        hour, states = usage_hours._kept.decode(body)[2]
        group, (count, total, *rest) = states[0]
        changed = [[h, s] for h, s in usage_hours._kept.decode(body)]
        changed[2][1][0] = (group, (count, str(int(total.split(".")[0]) + 1), *rest))
        cursor.execute("UPDATE tally_usage_hours SET hours = ?", (usage_hours._encode(changed).decode(),))
    # Then verify names that hour of that meter and group, and the report shows the change
    found = list(verify(ledger))
    assert [(d.model, d.key.rsplit("/", 2)[1:]) for d in found] == [("usage_hours", ["tokens", str(hour)])], found
    assert group[0] in found[0].detail
    assert ledger.usage_report(metered, "acme", "tokens", *day) != honest
    # And a replay of the usage model from scratch repairs it
    replay(ledger, ["usage"], from_scratch=True)
    assert kept(ledger) == 0
    assert ledger.usage_report(metered, "acme", "tokens", *day) == honest
    assert kept(ledger) > 0 and list(verify(ledger)) == []
    # And values kept for no meter of the tenant are named too
    with ledger.database.transaction(write=True) as cursor:
        cursor.execute("INSERT INTO tally_usage_hours SELECT tenant_id, customer, event_name, start_us, 'nothing', "
                       "end_us, hours FROM tally_usage_hours")
    assert [d.detail for d in verify(ledger)] == ["tally_usage_hours: kept for a meter the tenant does not have"]


def test_only_hours_that_have_ended_are_kept(ledger, metered):
    # Given events all day, and the clock at 05:30 of that day
    append(ledger, metered, events(300, seed=17, days=1))
    ledger.usage_runner.catch_up()
    ledger.subscriptions.clock = lambda: DAY0 + timedelta(hours=5, minutes=30)
    # When the whole day is reported
    ledger.usage_report(metered, "acme", "calls", DAY0, DAY0 + timedelta(days=1), "hour", ())
    # Then the five hours that ended are kept, not the current one nor those to come
    with ledger.database.transaction() as cursor:
        spans = cursor.execute("SELECT start_us, end_us FROM tally_usage_hours").all()
    assert spans == [(microseconds(DAY0), microseconds(DAY0 + timedelta(hours=5)))]


def test_a_report_of_few_events_keeps_nothing(ledger, metered, monkeypatch):
    # Given a day with KEEP_FROM - 1 events, and another with KEEP_FROM
    monkeypatch.setattr(usage_hours, "KEEP_FROM", 50)
    append(ledger, metered, events(49, seed=19, days=1))
    append(ledger, metered, [msgspec.structs.replace(e, timestamp=e.timestamp + timedelta(days=1))
                             for e in events(50, seed=23, days=1, prefix="x")])
    ledger.usage_runner.catch_up()
    # When each day is reported
    ledger.usage_report(metered, "acme", "calls", DAY0, DAY0 + timedelta(days=1), None, ())
    assert kept(ledger) == 0
    ledger.usage_report(metered, "acme", "calls", DAY0 + timedelta(days=1), DAY0 + timedelta(days=2), None, ())
    # Then only the day whose report read 50 events is kept (reading 49 again costs less than keeping them)
    with ledger.database.transaction() as cursor:
        assert cursor.execute("SELECT start_us FROM tally_usage_hours").all() == [
            (microseconds(DAY0 + timedelta(days=1)),)]


def test_a_maximum_among_equal_values_is_written_as_the_first_of_them_was(ledger, metered):
    # Given equal token counts written three ways in two hours, and an earlier one still in the log's tail
    def at(minutes: int, tokens: object, event_id: str, model: str = "m1") -> UsageEvent:
        return UsageEvent(event_id=event_id, customer="acme", event_name="llm",
                          timestamp=DAY0 + timedelta(minutes=minutes), properties={"tokens": tokens, "model": model})
    append(ledger, metered, [at(80, 7, "b", "m2"), at(130, "7.00", "c"), at(70, "7.0", "a")])
    ledger.usage_runner.catch_up()
    day = (DAY0, DAY0 + timedelta(days=1))
    queries = [(window, group_by) for window in (None, "hour") for group_by in ((), ("model",))]
    for window, group_by in queries:
        # When the maximum is read from the events and then from the hours kept, by model or not
        first = ledger.usage_report(metered, "acme", "peak", *day, window, group_by)
        again = ledger.usage_report(metered, "acme", "peak", *day, window, group_by)
        # Then it is written as the earliest of the equal values is, as from the events
        assert encode(first) == encode(again) == encode(from_events(ledger, metered, "peak", *day, window, group_by))
        assert str(first.total) == "7.0"
    append(ledger, metered, [at(65, "7.000", "late", "m2")])
    for window, group_by in queries:
        assert encode(ledger.usage_report(metered, "acme", "peak", *day, window, group_by)) == \
            encode(from_events(ledger, metered, "peak", *day, window, group_by))
    assert str(ledger.usage_report(metered, "acme", "peak", *day, None, ()).total) == "7.000"


def test_an_invoice_takes_its_quantities_from_kept_hours_and_bills_what_the_events_give(ledger, metered,
                                                                                        monkeypatch):
    # Given acme on a plan pricing tokens (sum), calls (count) and a percentage of tokens, from Nov 1,
    # three days of its usage, and November's hours kept by usage reports
    ledger.customers.register(SETUP, metered, CustomerSpec(external_id="acme", name="Acme", currency="USD"))
    ledger.catalogue.define_plan(SETUP, metered, PlanSpec(code="pro", name="Pro", currency="USD", interval="month"))
    ledger.catalogue.publish_plan_version(SETUP, metered, "pro", PlanVersionSpec(prices=(
        PerUnitPrice(meter_code="tokens", currency="USD", unit_amount=Decimal("0.001")),
        PerUnitPrice(meter_code="calls", currency="USD", unit_amount=Decimal("0.01")),
        PercentagePrice(meter_code="tokens", currency="USD", rate=Decimal("2.5")))))
    subscription = ledger.subscriptions.start(SETUP, metered, SubscriptionSpec(
        customer="acme", plan_code="pro", start_at=DAY0, billing_anchor="calendar"))
    ledger.runner.catch_up()
    append(ledger, metered, events(600, seed=29))
    ledger.usage_runner.catch_up()
    month = (DAY0, datetime(2026, 12, 1, tzinfo=UTC), "day", ())
    for code in ("tokens", "calls"):
        ledger.usage_report(metered, "acme", code, *month)
    read: list[tuple[int, int]] = []
    rows, segments, hourly = usage_hours._rows, usage_hours.segments, []
    monkeypatch.setattr(usage_hours, "_rows", lambda cursor, key, ranges: read.extend(ranges) or rows(cursor, key,
                                                                                                         ranges))
    monkeypatch.setattr(usage_hours, "segments", lambda *args: hourly.append(args[4].code) or segments(*args))
    # When November is billed and its closing invoice finalized
    ledger.close_periods(datetime(2026, 12, 3, tzinfo=UTC))
    invoice_id = IssuedInvoice.create_id(subscription.id, "closing", DAY0)
    recorded, again = ledger.recomputed(invoice_id)
    # Then its quantities came from the kept hours (no hour of November read from its events) and it
    # bills exactly what its events give (computed again from them, as `tally audit verify` does)
    assert {"tokens", "calls"} <= set(hourly) and [line for line in read if line[1] > line[0]] == []
    assert encode(recorded) == encode(again)
    quantities = {(line.meter_code, str(line.quantity)) for line in recorded.lines if line.meter_code}
    assert {("calls", str(from_events(ledger, metered, "calls", *month).total)),
            ("tokens", str(from_events(ledger, metered, "tokens", *month).total))} < quantities  # and the percentage


@pytest.mark.parametrize("code", list(METERS))
def test_an_entitlement_counter_begins_from_kept_hours_and_counts_what_the_events_give(ledger, metered, monkeypatch,
                                                                                        code):
    # Given three days of events, applied, their hours kept by a report
    append(ledger, metered, events(300, seed=21))
    ledger.usage_runner.catch_up()
    ledger.usage_report(metered, "acme", code, DAY0, DAY0 + timedelta(days=3), None, ())
    assert kept_hours(ledger, metered, code)
    # When a counter of an odd window begins (a check after a restart), its reads of events noted
    start, end = DAY0 + timedelta(minutes=17), DAY0 + timedelta(days=2, hours=5, minutes=3)
    read, rows = [], usage_hours._rows
    monkeypatch.setattr(usage_hours, "_rows", lambda cursor, key, ranges: read.extend(ranges) or rows(cursor, key,
                                                                                                        ranges))
    meter = ledger.catalogue.meter(metered, code).spec
    used = ledger.counters.used(str(metered), "acme", meter, microseconds(start), microseconds(end))
    # Then it counts what the events give, having read the events of the window's partial hours only
    assert used == from_events(ledger, metered, code, start, end, None, ()).total
    assert sum(high - low for low, high in read) < 2 * usage_hours.HOUR


@pytest.mark.parametrize("code", ["calls", "tokens"])
def test_a_counter_counting_from_an_earlier_position_reads_a_kept_hour_holding_a_later_entry_from_its_events(
        ledger, metered, code):
    # Given a day of events, applied; then a late event of 03:00 applied, and the day's hours kept after it
    append(ledger, metered, events(200, seed=22, days=1))
    ledger.usage_runner.catch_up()
    day = (DAY0, DAY0 + timedelta(days=1))
    before = from_events(ledger, metered, code, *day, None, ()).total
    earlier = ledger.usage.last_position()
    append(ledger, metered, [UsageEvent(event_id="late", customer="acme", event_name="llm",
                                        timestamp=DAY0 + timedelta(hours=3), properties={"tokens": 7, "model": "m1"})])
    ledger.usage_runner.catch_up()
    ledger.usage_report(metered, "acme", code, *day, None, ())
    assert microseconds(DAY0 + timedelta(hours=3)) in kept_hours(ledger, metered, code)
    # When a counter of the day begins counting the customer's entries up to the position before the late one
    # (another process's counters, behind), then catches up
    counters = UsageCounters(ledger.usage, ledger._window_readings)
    counters._position = earlier
    meter, window = ledger.catalogue.meter(metered, code).spec, (microseconds(day[0]), microseconds(day[1]))
    first = counters.used(str(metered), "acme", meter, *window, last=earlier)
    # Then it counted the day as of that position (03:00 from its events, not from its kept state), and the late
    # event once when it came to it
    assert first == before
    assert counters.used(str(metered), "acme", meter, *window) == from_events(ledger, metered, code, *day, None,
                                                                                ()).total

"""Usage totals (issue 3, second part): the six aggregations, filters, group_by, hour/day buckets,
half-open boundaries and late events — pure first, then over HTTP on both stores."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from conftest import assert_problem, client, created

from domain.meter import MeterSpec
from domain.metering import Reading, aggregate
from domain.usage import UsageEvent
from projections import usage_readings
from projections.usage_log import microseconds

HOUR = 3_600_000_000


def meter(aggregation: str, field: str | None = "value", **extra: object) -> MeterSpec:
    return MeterSpec(code="m", name="M", event_name="e", aggregation=aggregation, field=field, **extra)


def readings(*rows: tuple[int, object]) -> list[Reading]:
    """(hour, value) pairs as readings, positions in the order given."""
    return [Reading(int(hour * HOUR), position, {"value": value}) for position, (hour, value) in enumerate(rows)]


@pytest.mark.parametrize(("aggregation", "expected"), [
    ("count", "4"), ("sum", "18.5"), ("max", "10"), ("unique_count", "3"), ("latest", "2.5"),
])
def test_each_aggregation_reads_the_events_inside_the_period(aggregation, expected):
    # Given four events inside the period (one value twice) and one after it
    rows = readings((1, 3), (2, "10"), (3, 3), (4, Decimal("-0.5")), (30, 99))
    rows[3] = Reading(rows[3].timestamp_us, 3, {"value": "2.5"})
    # When the meter is read over [0h, 24h)
    # Then each aggregation gives its value
    assert aggregate(meter(aggregation, None if aggregation == "count" else "value"), rows, 0, 24 * HOUR) == \
        Decimal(expected)


def test_latest_is_the_last_by_event_time_and_ties_go_to_the_later_record():
    # Given an event at 5h recorded before one at 3h, and two at 6h recorded in order
    rows = [Reading(5 * HOUR, 0, {"value": 1}), Reading(3 * HOUR, 1, {"value": 2}),
            Reading(6 * HOUR, 2, {"value": 7}), Reading(6 * HOUR, 3, {"value": 8})]
    # Then latest is the later record at 6h
    assert aggregate(meter("latest"), rows, 0, 24 * HOUR) == 8


def test_weighted_sum_is_the_time_weighted_average_level_with_the_level_carried_in():
    # Given 10 seats held since before the period, 20 from 6h, 0 from 18h, over a 24-hour period
    rows = readings((6, 20), (18, 0))
    # When read with the carried level 10
    value = aggregate(meter("weighted_sum"), rows, 0, 24 * HOUR, Decimal(10))
    # Then it is (10 x 6 + 20 x 12 + 0 x 6) / 24 = 12.5
    assert value == Decimal("12.5")


def test_values_that_are_not_numbers_are_left_out_of_numeric_aggregations():
    rows = readings((1, "abc"), (2, True), (3, None), (4, "7"))
    assert aggregate(meter("sum"), rows, 0, 24 * HOUR) == 7
    assert aggregate(meter("count", None), rows, 0, 24 * HOUR) == 4


# --- over HTTP ------------------------------------------------------------------------------------

def usage_event(event_id: str, at: str, customer: str = "acme", **properties: object) -> dict:
    return {"event_id": event_id, "customer": customer, "event_name": "llm.call", "timestamp": at,
            "properties": properties}


@pytest.fixture
def metered(admin):
    """acme and globex, and a `tokens` meter: the sum of tokens of llm.call events, by model, EU only."""
    created(admin.post("/v1/meters", json={
        "code": "tokens", "name": "Tokens", "event_name": "llm.call", "aggregation": "sum", "field": "tokens",
        "filters": {"region": ["eu"]}, "group_by": ["model"]}))
    for external_id in ("acme", "globex"):
        created(admin.post("/v1/customers", json={"external_id": external_id, "name": external_id,
                                                  "currency": "USD"}))
    return admin


def usage(http, **params: str):
    return http.get("/v1/customers/acme/usage", params={"meter_code": "tokens", **params})


DAY = {"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"}


def test_totals_are_half_open_filtered_and_bucketed_by_hour(metered):
    # Given events at the start of the day, inside it, outside the region, and exactly at its end
    events = [usage_event("a", "2026-11-01T00:00:00Z", tokens=100, model="m1", region="eu"),
              usage_event("b", "2026-11-01T01:30:00Z", tokens="0.5", model="m1", region="eu"),
              usage_event("c", "2026-11-01T01:45:00Z", tokens=1000, model="m1", region="us"),
              usage_event("d", "2026-11-02T00:00:00Z", tokens=7, model="m1", region="eu")]
    assert metered.post("/v1/events/batch", json={"events": events}).json()["accepted"] == 4
    # When the day is read by hour
    answer = usage(metered, window="hour", **DAY)
    # Then the start counts, the end does not, the US event is filtered out
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["meter_code"], body["from"], body["to"], body["total"]) == (
        "tokens", "2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z", "100.5")
    assert len(body["buckets"]) == 24
    assert [(b["start"], b["value"]) for b in body["buckets"][:3]] == [
        ("2026-11-01T00:00:00Z", "100"), ("2026-11-01T01:00:00Z", "0.5"), ("2026-11-01T02:00:00Z", "0")]


def test_a_late_event_lands_in_its_own_hour_and_counts_at_once(metered):
    # Given usage read at 10:00-11:00
    metered.post("/v1/events", json=usage_event("now", "2026-11-01T10:15:00Z", tokens=5, model="m1", region="eu"))
    # When an event of 02:10 arrives late
    metered.post("/v1/events", json=usage_event("late", "2026-11-01T02:10:00Z", tokens=3, model="m1", region="eu"))
    # Then the very next read has it, in the 02:00 bucket
    buckets = usage(metered, window="hour", **DAY).json()["buckets"]
    assert buckets[2]["value"] == "3" and buckets[10]["value"] == "5"


def test_usage_is_grouped_by_the_meters_properties(metered):
    events = [usage_event("a", "2026-11-01T03:00:00Z", tokens=10, model="m1", region="eu"),
              usage_event("b", "2026-11-01T04:00:00Z", tokens=20, model="m2", region="eu"),
              usage_event("c", "2026-11-01T05:00:00Z", tokens=30, model="m1", region="eu")]
    metered.post("/v1/events/batch", json={"events": events})
    # When grouped by model over the day
    body = usage(metered, group_by="model", **DAY).json()
    # Then one bucket per model, and the total of all
    assert body["total"] == "60"
    assert sorted((b["group"]["model"], b["value"]) for b in body["buckets"]) == [("m1", "40"), ("m2", "20")]


def test_bad_usage_queries_are_refused_naming_the_parameter(metered):
    assert_problem(usage(metered, to=DAY["to"]), 422, "from")
    assert_problem(usage(metered, **{"from": DAY["to"], "to": DAY["from"]}), 422, "to")
    assert_problem(usage(metered, group_by="region", **DAY), 422, "group_by")
    assert_problem(usage(metered, window="minute", **DAY), 422, "window")
    assert_problem(usage(metered, **{"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
                         window="hour"), 422, "window")
    assert_problem(metered.get("/v1/customers/acme/usage", params={"meter_code": "nope", **DAY}), 404)
    assert_problem(metered.get("/v1/customers/nobody/usage", params={"meter_code": "tokens", **DAY}), 404)


def test_a_portal_key_reads_its_own_customers_usage_only(metered, base_url):
    # Given a portal key bound to acme
    secret = created(metered.post("/v1/api-keys", json={"role": "portal", "customer": "acme"}))["key"]
    with client(base_url, secret) as portal:
        # Then it reads acme's usage, and globex's is a 404
        assert usage(portal, **DAY).status_code == 200
        other = portal.get("/v1/customers/globex/usage", params={"meter_code": "tokens", **DAY})
        assert_problem(other, 404)


def test_usage_times_answer_in_utc(metered):
    body = usage(metered, **{"from": "2026-11-01T02:00:00+02:00", "to": "2026-11-01T03:00:00+02:00"}).json()
    assert body["from"] == "2026-11-01T00:00:00Z" and body["to"] == "2026-11-01T01:00:00Z"
    assert datetime.fromisoformat(body["buckets"][0]["end"]) == datetime(2026, 11, 1, 1, tzinfo=UTC)


def test_a_voided_event_drops_out_of_the_totals_and_the_void_is_kept(metered, ledger):
    # Given two events counted in the day
    events = [usage_event("a", "2026-11-01T03:00:00Z", tokens=10, model="m1", region="eu"),
              usage_event("b", "2026-11-01T04:00:00Z", tokens=20, model="m1", region="eu")]
    metered.post("/v1/events/batch", json={"events": events})
    assert usage(metered, **DAY).json()["total"] == "30"
    # When "b" is voided, with an id never sent, and then voided again
    first = metered.post("/v1/events/void", json={"customer": "acme", "event_ids": ["b", "zzz"]})
    again = metered.post("/v1/events/void", json={"customer": "acme", "event_ids": ["b"]})
    # Then "b" no longer counts, the unknown id is named, and the second void changes nothing
    assert first.json() == {"voided": 1, "already_voided": 0, "not_found": ["zzz"]}
    assert again.json() == {"voided": 0, "already_voided": 1, "not_found": []}
    assert usage(metered, **DAY).json()["total"] == "10"
    # And the void is kept with who made it; the event itself is still in the log, and re-sending it
    # is a duplicate (an event id counts once, ever)
    with ledger.usage.database.transaction() as cursor:
        voids = cursor.execute("SELECT event_id, actor FROM tally_usage WHERE kind = 'void'").all()
    assert [(event_id, actor.startswith("key_")) for event_id, actor in voids] == [("b", True)]
    assert metered.post("/v1/events", json=events[1]).json() == {"accepted": 0, "duplicates": 1}
    assert usage(metered, **DAY).json()["total"] == "10"


def test_groups_seen_only_before_the_range_do_not_show_in_a_sum(metered):
    # Given m3 used only the day before, and m1 used in the day
    metered.post("/v1/events/batch", json={"events": [
        usage_event("old", "2026-10-31T12:00:00Z", tokens=9, model="m3", region="eu"),
        usage_event("new", "2026-11-01T12:00:00Z", tokens=4, model="m1", region="eu")]})
    # When the day is read by model
    body = usage(metered, group_by="model", **DAY).json()
    # Then only m1 has a bucket
    assert [(b["group"]["model"], b["value"]) for b in body["buckets"]] == [("m1", "4")]


# --- the read model ---------------------------------------------------------------------------------

def test_the_read_model_drops_voided_events_hour_by_hour_and_gives_the_newest_events_before_a_range(
        ledger, monkeypatch):
    # Given events over three hours, recorded out of time order within each hour, applied to the read model
    monkeypatch.setattr(usage_readings, "BEFORE_LIMIT", 4)
    monkeypatch.setattr(usage_readings, "VOIDS_A_STATEMENT", 2)
    base, now = datetime(2026, 11, 1, tzinfo=UTC), datetime.now(UTC)
    minutes = [50, 10, 40, 20, 30, 70, 65, 130, 125, 5, 15]  # event i's time; its log position follows i
    ledger.usage.append("t", [UsageEvent(event_id=f"e{i}", customer="acme", event_name="llm.call",
                                         timestamp=base + timedelta(minutes=m), properties={"n": i})
                              for i, m in enumerate(minutes)], now)
    ledger.usage_runner.catch_up()
    # When four of the first hour's events and one of the third hour's are voided, and the voids applied
    assert ledger.usage.void("t", "acme", ["e0", "e1", "e2", "e3", "e8"], "key_x", now) == (5, [])
    ledger.usage_runner.catch_up()
    # Then the read model holds the others, each under its hour
    with ledger.database.transaction() as cursor:
        rows = cursor.execute("SELECT event_id, hour_us FROM tally_usage_readings").all()
    start = microseconds(base)
    assert sorted(map(tuple, rows)) == [("e10", start), ("e4", start), ("e5", start + HOUR), ("e6", start + HOUR),
                                        ("e7", start + 2 * HOUR), ("e9", start)]
    # And the newest four before 02:10 are the newest by time (the read model keeps an hour's by position)
    inside, before = usage_readings.fresh(ledger.database, ledger.usage, "t", "acme", ["llm.call"],
                                          start + 130 * 60_000_000, start + 3 * HOUR, None)["llm.call"]
    assert [r.event_id for r in inside] == ["e7"]
    assert [r.event_id for r in before] == ["e5", "e6", "e4", "e10"]

"""Usage ingestion over HTTP (issue 3, first part): durable, de-duplicated by (tenant, customer,
event_id) forever, a bad event rejected alone. Each test runs on SQLite and PostgreSQL."""

import os
import signal
from datetime import UTC, datetime, timedelta

import msgspec
from conftest import assert_problem, client, open_tenant

from api import usage
from api.ledger import Ledger


def event(event_id: str, customer: str = "acme", **properties: object) -> dict:
    return {"event_id": event_id, "customer": customer, "event_name": "llm.call",
            "timestamp": "2026-11-01T12:00:00Z", "properties": properties or {"tokens": 100}}


def stored(ledger: Ledger) -> list[tuple]:
    with ledger.usage.database.transaction() as cursor:
        return cursor.execute(
            "SELECT tenant_id, customer, event_id, timestamp_us, properties FROM tally_usage ORDER BY position"
        ).all()


def test_an_event_is_acknowledged_once_and_a_retry_is_a_duplicate(admin, ledger):
    # Given an event for acme
    # When it is sent, and sent again
    first = admin.post("/v1/events", json=event("e-1"))
    again = admin.post("/v1/events", json=event("e-1"))
    # Then the first is accepted, the retry is a duplicate, and the log holds it once
    assert (first.status_code, first.json()) == (202, {"accepted": 1, "duplicates": 0})
    assert (again.status_code, again.json()) == (202, {"accepted": 0, "duplicates": 1})
    assert ledger.usage.size() == 1


def test_a_bad_event_in_a_batch_is_rejected_alone_and_the_rest_lands(admin, ledger):
    # Given a batch: a good event, one with no customer, the first one again, and another good one
    bad = event("e-2")
    del bad["customer"]
    batch = {"events": [event("e-1"), bad, event("e-1"), event("e-3")]}
    # When it is sent
    answer = admin.post("/v1/events/batch", json=batch)
    # Then two land, the repeat counts as a duplicate, and the bad one is rejected naming its field
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"accepted": 2, "duplicates": 1, "rejected": [
        {"index": 1, "errors": [{"field": "customer", "message": "Object missing required field `customer`"}]}]}
    assert [row[2] for row in stored(ledger)] == ["e-1", "e-3"]


def test_a_retried_batch_reports_every_event_as_a_duplicate_and_changes_nothing(admin, ledger):
    # Given a batch of 500 events that was accepted
    batch = {"events": [event(f"e-{n}", customer=f"c-{n % 7}") for n in range(500)]}
    assert admin.post("/v1/events/batch", json=batch).json()["accepted"] == 500
    before = stored(ledger)
    # When the client retries it (it never saw the answer)
    retry = admin.post("/v1/events/batch", json=batch)
    # Then every event is a duplicate and the log is as it was
    assert retry.json() == {"accepted": 0, "duplicates": 500, "rejected": []}
    assert stored(ledger) == before


def test_the_same_event_id_counts_separately_per_customer_and_per_tenant(ledger, base_url, admin):
    # Given acme and globex of one tenant, and a second tenant
    _, other_secret = open_tenant(ledger, "Other")
    # When each sends event "e-1"
    answers = [admin.post("/v1/events", json=event("e-1", "acme")),
               admin.post("/v1/events", json=event("e-1", "globex"))]
    with client(base_url, other_secret) as other:
        answers.append(other.post("/v1/events", json=event("e-1", "acme")))
    # Then all three are accepted: the key is (tenant, customer, event_id)
    assert [a.json()["accepted"] for a in answers] == [1, 1, 1]
    assert ledger.usage.size() == 3


def test_an_event_more_than_five_minutes_ahead_is_refused(admin, ledger):
    # Given one event 4 minutes ahead (clock skew) and one 6 minutes ahead
    now = datetime.now(UTC)
    near, far = event("near"), event("far")
    near["timestamp"] = (now + timedelta(minutes=4)).isoformat()
    far["timestamp"] = (now + timedelta(minutes=6)).isoformat()
    # When each is sent alone and both in a batch
    alone = admin.post("/v1/events", json=far)
    batch = admin.post("/v1/events/batch", json={"events": [near, far]})
    # Then the far one is refused naming the timestamp, the near one lands
    assert_problem(alone, 422, "timestamp")
    assert batch.json()["accepted"] == 1
    assert [r["index"] for r in batch.json()["rejected"]] == [1]
    assert batch.json()["rejected"][0]["errors"][0]["field"] == "timestamp"
    assert [row[2] for row in stored(ledger)] == ["near"]


def test_times_need_an_offset_and_are_kept_in_utc(admin, ledger):
    # Given an event at 14:00 in UTC+02:00, and one with no offset
    local = event("local")
    local["timestamp"] = "2026-11-01T14:00:00+02:00"
    naive = event("naive")
    naive["timestamp"] = "2026-11-01T14:00:00"
    # When both are sent
    assert admin.post("/v1/events", json=local).status_code == 202
    refused = admin.post("/v1/events", json=naive)
    # Then the one with no offset is a 422, and the other is kept as 12:00 UTC, to the microsecond
    assert_problem(refused, 422, "timestamp")
    noon = datetime(2026, 11, 1, 12, tzinfo=UTC)
    assert stored(ledger)[0][3] == int(noon.timestamp()) * 1_000_000


def test_numbers_in_properties_are_kept_exactly_never_through_float(admin, ledger):
    # Given properties with a decimal fraction, a big integer and a numeric string
    sent = event("e-1", cost=0.1, tokens=12345678901234567890, price="0.000002", model="gpt")
    # When sent as raw JSON text
    body = msgspec.json.encode(sent).replace(b'"cost":0.1', b'"cost":0.10')
    assert admin.post("/v1/events", content=body, headers={"Content-Type": "application/json"}).status_code == 202
    # Then the stored properties read back exactly
    properties = msgspec.json.decode(stored(ledger)[0][4])
    assert properties == {"cost": "0.10", "tokens": 12345678901234567890, "price": "0.000002", "model": "gpt"}


def test_a_property_must_be_a_single_value(admin, ledger):
    # When an event carries an object as a property
    refused = admin.post("/v1/events", json=event("e-1", nested={"a": 1}))
    # Then it is a 422 naming the property, and nothing is kept
    assert_problem(refused, 422, "properties.nested")
    assert ledger.usage.size() == 0


def test_batches_over_their_limits_are_413_and_malformed_json_is_400(admin, ledger):
    # When a batch of 10,001 events, a body over 16 MiB, and a cut-short body are sent
    too_many = admin.post("/v1/events/batch", json={"events": [event(f"e-{n}") for n in range(10_001)]})
    too_big = admin.post("/v1/events/batch", content=b'{"events": [' + b" " * (16 * 1024 * 1024) + b"]}",
                         headers={"Content-Type": "application/json"})
    malformed = admin.post("/v1/events/batch", content=b'{"events": [{"event_id": "e-1",',
                           headers={"Content-Type": "application/json"})
    # Then they are refused whole and nothing lands
    assert_problem(too_many, 413)
    assert_problem(too_big, 413)
    assert_problem(malformed, 400)
    assert ledger.usage.size() == 0


def test_acknowledged_events_are_durable_for_another_process(admin, database_url, ledger):
    # Given a batch acknowledged with 202
    assert admin.post("/v1/events/batch", json={"events": [event(f"e-{n}") for n in range(50)]}).status_code == 202
    # When the store is opened afresh (as a restarted server would)
    reopened = Ledger(database_url)
    try:
        # Then every acknowledged event is there
        assert reopened.usage.size() == 50
    finally:
        reopened.close()


def test_a_batch_is_decoded_apart_and_a_dead_decoding_process_loses_nothing(admin, ledger, monkeypatch, caplog):
    def send(round_: str) -> tuple[int, dict]:
        answer = admin.post("/v1/events/batch", json={"events": [event(f"{round_}-{n}") for n in range(20)]})
        return answer.status_code, answer.json()

    full = (202, {"accepted": 20, "duplicates": 0, "rejected": []})
    # Given a batch acknowledged: decoded in the serving process's decoding process
    assert send("a") == full
    pool = usage._decoding._pool
    assert pool is not None and len(pool._processes) == 1  # type: ignore[attr-defined]
    decoder = next(iter(pool._processes.values()))  # type: ignore[attr-defined]
    assert decoder.pid != os.getpid() and decoder.is_alive()
    # When that process is killed outright, and batches keep coming
    monkeypatch.setattr(usage, "RETRY_SECONDS", 3600)
    os.kill(decoder.pid, signal.SIGKILL)
    decoder.join(10)
    # Then each is acknowledged in full, decoded in the serving process meanwhile, and the loss is logged
    assert [send("b"), send("c")] == [full, full]
    assert usage._decoding._pool is None
    assert any("decoding process is gone" in record.getMessage() for record in caplog.records)
    # and once the retry time has come, the next batch starts a new decoding process
    usage._decoding._retry_at = 0.0
    assert send("d") == full
    assert usage._decoding._pool is not None and usage._decoding._pool is not pool
    # and the log holds every event once
    assert sorted(row[2] for row in stored(ledger)) == sorted(f"{r}-{n}" for r in "abcd" for n in range(20))


def test_a_commit_whose_position_cannot_be_published_is_not_acknowledged_and_ingest_goes_on(admin, ledger,
                                                                                           monkeypatch):
    """The group is durable, but a check might not count it yet: its callers are told it failed (a
    retry finds the events duplicates), and the writer takes the next group."""
    published = ledger.usage._published

    def failing(last: int) -> None:
        raise OSError("the positions board is not writable")

    monkeypatch.setattr(ledger.usage, "_published", failing)
    batch = {"events": [event("e-1"), event("e-2")]}
    assert admin.post("/v1/events/batch", json=batch).status_code == 500
    monkeypatch.setattr(ledger.usage, "_published", published)
    assert admin.post("/v1/events/batch", json=batch).json() == {"accepted": 0, "duplicates": 2, "rejected": []}
    assert admin.post("/v1/events", json=event("e-3")).json() == {"accepted": 1, "duplicates": 0}


def test_events_of_a_customer_not_yet_known_are_kept(admin, ledger):
    # Given no customer "later" exists
    assert admin.get("/v1/customers/later").status_code == 404
    # When usage arrives for it
    answer = admin.post("/v1/events", json=event("e-1", customer="later"))
    # Then it is kept (it counts once the customer exists)
    assert answer.json() == {"accepted": 1, "duplicates": 0}
    assert [row[1] for row in stored(ledger)] == ["later"]

"""The usage log's key (projections/usage_log.py): a 64-bit integer made from (tenant, customer, event_id,
kind), unique in the store, on both stores. Two different events may share a key; neither may be lost, and
a retry of either must still be a duplicate. A log from before the key is re-keyed when opened."""

import uuid
from datetime import UTC, datetime

from domain.usage import UsageEvent
from projections import usage_log
from projections.board import Board
from projections.recent import Recent
from projections.store import Database
from projections.usage_log import UsageLog, bucket_of, usage_key

NOW = datetime(2026, 3, 1, tzinfo=UTC)
ULID_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def _event(event_id: str, customer: str = "acme", tokens: int = 1) -> UsageEvent:
    return UsageEvent(event_id=event_id, customer=customer, event_name="llm", timestamp=NOW,
                      properties={"tokens": tokens})


def _log(url: str, folder) -> UsageLog:
    """The log as a server opens it: on the embedded store, with the board and the ring."""
    database = Database(url)
    if database.postgres:
        return UsageLog(database)
    return UsageLog(database, Board(folder / "positions"), Recent(folder / "recent"))


def _rows(log: UsageLog) -> list[tuple]:
    """The log's rows in order: customer, event id, kind, and whether it went in without a key."""
    with log.database.transaction() as cursor:
        return cursor.execute("SELECT customer, event_id, kind, key IS NULL FROM tally_usage ORDER BY position").all()


def _uuid7(millis: int) -> str:
    return str(uuid.UUID(int=millis << 80 | 0x7 << 76 | 0b10 << 62 | uuid.uuid4().int & ((1 << 62) - 1)))


def _ulid(millis: int) -> str:
    return "".join(ULID_ALPHABET[millis >> shift & 31] for shift in range(45, -1, -5)) + "0" * 16


def test_the_key_is_the_stored_format_and_does_not_change():
    # These values are in every log, on both stores: a change here would let a retried event in twice
    assert usage_key("t", "acme", "req-1", "event") == 3242796831332589220
    assert usage_key("t", "acme", "req-1", "void") != usage_key("t", "acme", "req-1", "event")
    assert usage_key("t", "acme", "01890a5d-ac96-774b-bcce-b302099a8057", "event") == 651436091956236238
    assert bucket_of("t", "acme") == 206


def test_time_ordered_ids_keep_their_order_in_the_key_and_others_spread_over_it():
    millis = int(NOW.timestamp() * 1000)
    for make in (_uuid7, _ulid):
        keys = [usage_key("t", f"c{n % 7}", make(millis + n), "event") for n in range(1000)]
        assert keys == sorted(keys) and len(set(keys)) == 1000  # later ids, higher keys, whoever the customer
    random_keys = [usage_key("t", "acme", str(uuid.uuid4()), "event") for _ in range(1000)]
    assert min(random_keys) < -(1 << 61) and max(random_keys) > 1 << 61


def test_events_sharing_a_key_are_each_recorded_once_and_voided_once(database_url, tmp_path, monkeypatch):
    # Given a key that every event of a customer shares (a stand-in for the rare 64-bit collision)
    monkeypatch.setattr(usage_log, "usage_key", lambda tenant, customer, event_id, kind: hash((customer, kind)))
    log = _log(database_url, tmp_path)
    try:
        # When three different events come in one batch, with a repeat of the first
        assert log.append("t", [_event("a"), _event("b"), _event("c"), _event("a", tokens=9)], NOW) == 3
        # Then each is recorded once, in order: the first with the key, the others without
        assert _rows(log) == [("acme", "a", "event", 0), ("acme", "b", "event", 1), ("acme", "c", "event", 1)]
        # And a retry changes nothing, while a new event goes in
        assert log.append("t", [_event("c"), _event("b"), _event("d"), _event("a")], NOW) == 1
        assert log.append("t", [_event("a", customer="other")], NOW) == 1  # another customer: its own key
        # And a void finds the events with and without a key, once
        assert log.void("t", "acme", ["b", "a", "zz"], "admin", NOW) == (2, ["zz"])
        assert log.void("t", "acme", ["a", "b"], "admin", NOW) == (0, [])
        assert [(e.customer, e.event_id, e.kind) for e in log.entries(0, 100)] == [
            ("acme", "a", "event"), ("acme", "b", "event"), ("acme", "c", "event"), ("acme", "d", "event"),
            ("other", "a", "event"), ("acme", "a", "void"), ("acme", "b", "void")]
        with log.database.transaction() as cursor:
            assert cursor.execute("SELECT COUNT(*) FROM tally_usage WHERE key IS NULL").one() == (4,)
        # And (embedded) the ring took no group whose rows did not take their positions in order
        if log.recent is not None:
            records = list(log.recent.records(0, log.published()))
            assert [log.recent.rows(payload)[0][1] for _, _, _, payload in records] == ["other"]
    finally:
        log.close()


OLD_TABLE = """CREATE TABLE tally_usage (
    position BIGSERIAL PRIMARY KEY, tenant_id TEXT NOT NULL, customer TEXT NOT NULL,
    event_id TEXT NOT NULL, event_name TEXT NOT NULL, timestamp_us BIGINT NOT NULL,
    recorded_us BIGINT NOT NULL, properties TEXT NOT NULL, kind TEXT NOT NULL DEFAULT 'event',
    actor TEXT, UNIQUE (tenant_id, customer, event_id, kind))"""


def _old_log(url: str, rows: list[tuple[str, str]]) -> None:
    """A log written by an earlier Tally (unique by its text columns): these (event id, kind) rows of
    customer acme, then the third deleted (a gap in the positions)."""
    database = Database(url)
    database.migrate([OLD_TABLE])
    with database.transaction(write=True) as cursor:
        for event_id, kind in rows:
            cursor.execute("INSERT INTO tally_usage (tenant_id, customer, event_id, event_name, timestamp_us, "
                           "recorded_us, properties, kind) VALUES ('t', 'acme', ?, 'llm', 0, 0, "
                           "'{\"tokens\":\"1\"}', ?)", (event_id, kind))
        cursor.execute("DELETE FROM tally_usage WHERE position = 3")
    database.close()


def test_a_log_from_before_the_key_is_re_keyed_with_its_positions_and_still_refuses_its_events(database_url,
                                                                                               tmp_path):
    # Given a log written by an earlier Tally (unique by its text columns), with a void and a gap
    _old_log(database_url, [("a", "event"), ("b", "event"), ("gone", "event"), ("c", "event"), ("a", "void")])
    # When it is opened
    log = _log(database_url, tmp_path)
    try:
        # Then its rows keep their positions and get their keys
        assert [(e.position, e.event_id, e.kind) for e in log.entries(0, 100)] == [
            (1, "a", "event"), (2, "b", "event"), (4, "c", "event"), (5, "a", "void")]
        assert {row[3] for row in _rows(log)} == {0}
        with log.database.transaction() as cursor:
            assert cursor.execute("SELECT key, bucket FROM tally_usage WHERE position = 2").one() == (
                usage_key("t", "acme", "b", "event"), bucket_of("t", "acme"))
        # And its events are still refused, voids too, and new ones go on after its last position
        assert log.append("t", [_event("a"), _event("b"), _event("e")], NOW) == 1
        assert log.void("t", "acme", ["a", "b"], "admin", NOW) == (1, [])
        assert [(e.event_id, e.kind) for e in log.entries(5, 100)] == [("e", "event"), ("b", "void")]
    finally:
        log.close()


def test_old_rows_sharing_a_key_are_all_kept_when_re_keyed(database_url, tmp_path, monkeypatch):
    _old_log(database_url, [("a", "event"), ("b", "event"), ("gone", "event"), ("d", "event")])
    monkeypatch.setattr(usage_log, "usage_key", lambda tenant, customer, event_id, kind: 42)
    log = _log(database_url, tmp_path)
    try:
        assert _rows(log) == [("acme", "a", "event", 0), ("acme", "b", "event", 1), ("acme", "d", "event", 1)]
        assert log.append("t", [_event("b"), _event("a"), _event("c")], NOW) == 1
    finally:
        log.close()

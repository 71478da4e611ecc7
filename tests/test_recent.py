"""The ring of recent usage entries (projections/recent.py): whoever commits usage rows on the embedded
store copies them there, and every process's entitlement counters read them from memory. A reader
must get each committed record whole, in position order, and never a record whose rows are not in the
log: one rolled back, one still pending, one overwritten while it was read."""

import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

import pytest

from domain.usage import UsageEvent
from projections import recent as ring
from projections.board import Board
from projections.recent import Recent
from projections.store import Database
from projections.usage_log import UsageLog

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def _events(prefix: str, count: int) -> list[UsageEvent]:
    return [UsageEvent(event_id=f"{prefix}-{n}", customer=f"c-{n % 3}", event_name="llm", timestamp=NOW,
                       properties={"tokens": n}) for n in range(count)]


def _log(folder: Path) -> UsageLog:
    """A usage log as a serving process opens it: the store, the board and the ring, by path."""
    return UsageLog(Database(f"sqlite:///{folder / 'usage.sqlite'}"), Board(folder / "positions"),
                    Recent(folder / "recent"))


def _read_all(recent: Recent, published: int, start: int = 0) -> list[tuple[int, int, list | None]]:
    return [(first, last, None if payload is None else recent.rows(payload))
            for _, first, last, payload in recent.records(start, published)]


def test_two_writers_groups_are_read_back_whole_and_in_order_as_the_log_holds_them(tmp_path):
    one, other = _log(tmp_path), _log(tmp_path)  # two serving processes' logs on one store
    try:
        assert one.append("t", _events("a", 5), NOW) == 5
        assert other.append("t", _events("b", 3), NOW) == 3
        assert one.append("t", _events("a", 7), NOW) == 2  # five duplicates: no record, readers read the log
        assert other.append("t", _events("c", 4), NOW) == 4
        records = _read_all(one.recent, one.published())
        # (the duplicates took positions too: SQLite's AUTOINCREMENT counts an insert that did nothing)
        assert [(first, last) for first, last, _ in records] == [(1, 5), (6, 8), (16, 19)]
        with one.database.transaction() as cursor:
            logged = {row[0]: tuple(row[1:]) for row in cursor.execute(
                "SELECT position, tenant_id, customer, event_id, event_name, timestamp_us, recorded_us, properties, "
                "key, bucket FROM tally_usage").all()}
        for first, _, rows in records:
            assert rows is not None
            assert [logged[first + n] for n in range(len(rows))] == [tuple(row) for row in rows]
    finally:
        one.close()
        other.close()


def test_a_pending_record_stops_readers_and_the_next_writer_settles_it_committed_or_dead(tmp_path):
    recent = Recent(tmp_path / "recent")
    rows = [("t", "c", f"e-{n}", "llm", 0, 0, "{}", n, 0) for n in range(3)]
    # a writer appended positions 1-3 and committed, but has not marked them yet
    recent.append(1, rows)
    assert recent.pending() == 1
    assert _read_all(recent, published=3) == []  # even once published (the board's sync): not taken yet
    recent.settle(3)  # the next writer finds the log ending at 3: they are there
    assert recent.pending() is None
    assert [(first, last) for first, last, _ in _read_all(recent, 3)] == [(1, 3)]
    # a writer appended positions 4-6 and its commit failed: the next finds the log still ending at 3
    recent.append(4, rows)
    recent.settle(3)
    at = recent.append(4, rows[:2])  # and takes positions 4 and 5 itself
    recent.commit(at)
    assert [(first, last, found is None) for first, last, found in _read_all(recent, 5)] == [
        (1, 3, False), (4, 6, True), (4, 5, False)]  # the dead one is given without rows


def test_the_board_s_sync_does_not_publish_the_rows_of_a_pending_record(tmp_path):
    log = _log(tmp_path)
    try:
        log.append("t", _events("a", 4), NOW)
        with log.database.transaction(write=True) as cursor:  # a writer in the middle of its group
            log.recent.append(log._begin(cursor) + 1, [("t", "c", "x", "llm", 0, 0, "{}", 1, 0)])
            cursor.execute("INSERT INTO tally_usage (tenant_id, customer, event_id, event_name, timestamp_us, "
                           "recorded_us, properties, bucket) VALUES ('t', 'c', 'x', 'llm', 0, 0, '{}', 0)")
        assert (log.last_position(), log.settled()) == (5, 4)  # committed, not marked: not yet
        log.append("t", _events("b", 1), NOW)  # the next writer settles it
        assert log.settled() == log.last_position() == 6
        assert [(first, last) for first, last, _ in _read_all(log.recent, 6)] == [(1, 4), (5, 5), (6, 6)]
    finally:
        log.close()


def _store_reads(log: UsageLog, monkeypatch) -> list[int]:
    """Counts the transactions `log` opens on its store (one for each read of it)."""
    reads, opened = [], log.database.transaction
    monkeypatch.setattr(log.database, "transaction", lambda *args, **kwargs: reads.append(1) or opened(*args, **kwargs))
    return reads


def test_the_usage_runner_s_entries_come_from_the_ring_as_far_as_it_holds_them_in_order_then_from_the_log(
        tmp_path, monkeypatch):
    """The usage runner opens the log with the ring (projections/drivers/inprocess.py `follow`): it
    reads each committed group from memory, and what has no record there (a void, a group with
    duplicates, what came before it opened the ring) from the store, entry for entry the same."""
    writer = _log(tmp_path)
    writer.append("t", _events("early", 2), NOW)  # before the runner opened the ring
    runner = UsageLog(writer.database, recent=Recent(tmp_path / "recent"))
    unringed = UsageLog(writer.database)
    try:
        assert writer.append("t", _events("a", 5), NOW) == 5  # positions 3-7
        assert writer.append("t", _events("b", 3), NOW) == 3  # 8-10
        assert writer.append("t", _events("a", 7), NOW) == 2  # duplicates: no record
        assert writer.void("t", "c-1", ["a-1"], "k", NOW) == (1, [])  # no record
        assert writer.append("t", _events("c", 4), NOW) == 4  # a record again
        last = writer.last_position()
        everything = unringed.entries(0, 100)
        assert [entry.position for entry in everything][-4:] == list(range(last - 3, last + 1))
        reads = _store_reads(runner, monkeypatch)
        # as the runner asks, from where it applied to: nothing read from the store while the ring has them
        assert runner.entries(2, 3) == everything[2:5] and not reads  # as many as asked, part of a record
        assert runner.entries(5, 5) == everything[5:10] and not reads  # the rest of it, and the next
        assert runner.entries(10, 100) == everything[10:] and len(reads) == 1  # a gap: the store has them
        # fewer than asked for only at the log's end: the store is asked for more
        assert runner.entries(last - 3, 100) == everything[-3:] and len(reads) == 2
        assert runner.entries(0, 100) == everything and len(reads) == 3  # before it opened the ring
        for after in range(last + 1):  # however far it has applied, and whatever it asks for
            for limit in (1, 2, 6, 100):
                assert runner.entries(after, limit) == [e for e in everything if e.position > after][:limit]
    finally:
        writer.close()


@pytest.fixture
def small_ring(monkeypatch):
    """A ring of 64 KiB, records of at most 8 KiB: it wraps every few dozen records."""
    monkeypatch.setattr(ring, "SIZE", 64 * 1024)
    monkeypatch.setattr(ring, "MAX_RECORD", 8 * 1024)


def _rows_at(first: int, count: int) -> list[tuple]:
    """Rows whose content says their position: a reader can tell a record mixed with another."""
    return [("t", f"c-{position}", f"e-{position}", "llm", position, position, "{}" * (position % 7), position, 0)
            for position in range(first, first + count)]


def test_a_reader_keeping_up_reads_every_record_across_the_end_of_the_ring_and_one_far_behind_is_told(
        tmp_path, small_ring):
    recent, read_to, position = Recent(tmp_path / "recent"), 0, 1
    for count in [1, 17, 40, 3, 60, 25] * 20:  # ~2,000 rows, 120 records: the ring wraps many times
        recent.commit(recent.append(position, _rows_at(position, count)))
        position += count
        for read_to, first, last, payload in recent.records(read_to, position - 1):
            assert payload is not None and recent.rows(payload) == _rows_at(first, last - first + 1)
    assert read_to == recent.head()
    with pytest.raises(LookupError):  # from the start: overwritten long ago
        list(recent.records(0, position))
    assert recent.append(position, _rows_at(position, 400)) is None  # longer than a record may be


def _write(path: str, rounds: int) -> None:
    ring.SIZE, ring.MAX_RECORD = 64 * 1024, 8 * 1024
    recent, position = Recent(Path(path)), 1
    for n in range(rounds):
        count = 1 + n * 7919 % 50
        recent.commit(recent.append(position, _rows_at(position, count)))
        position += count


def test_a_reader_in_another_process_never_takes_a_record_half_written_or_overwritten(tmp_path, small_ring):
    """A writer process fills a small ring as fast as it can; a reader process behind it gets every
    record it takes exactly as written, or is told it fell behind (and starts again at the head)."""
    path = tmp_path / "recent"
    recent = Recent(path)
    writer = multiprocessing.get_context("spawn").Process(target=_write, args=(str(path), 300_000))
    writer.start()
    taken = behind = start = 0
    try:
        while writer.is_alive() or start < recent.head():
            try:
                for start, first, last, payload in recent.records(start, 1 << 62):
                    assert payload is not None
                    assert recent.rows(payload) == _rows_at(first, last - first + 1)
                    taken += 1
            except LookupError:
                behind += 1
                start = recent.head()
    finally:
        writer.join(60)
    assert writer.exitcode == 0
    assert taken > 1_000, (taken, behind)


def test_a_ring_left_by_a_version_with_another_size_begins_afresh(tmp_path, monkeypatch):
    recent = Recent(tmp_path / "recent")
    recent.append(1, _rows_at(1, 10))  # left pending
    head = recent.head()
    recent.close()
    again = Recent(tmp_path / "recent")  # the same size: kept
    assert (again.head(), again.pending()) == (head, 1)
    again.close()
    monkeypatch.setattr(ring, "SIZE", 64 * 1024)
    smaller = Recent(tmp_path / "recent")  # its records are not where this size would look for them
    assert (smaller.head(), smaller.pending()) == (0, None)
    smaller.close()


def test_the_ring_s_blocks_are_taken_on_the_disk_when_it_is_opened(tmp_path):
    """A write to a page of a mapped file the full disk cannot hold kills the process (SIGBUS): the
    blocks are taken when the ring is opened, where a full disk stops the server with an error."""
    Recent(tmp_path / "recent").close()
    assert (tmp_path / "recent").stat().st_blocks * 512 >= ring.SIZE

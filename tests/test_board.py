"""The positions board (projections/board.py): on the embedded store, the processes share in memory
how far the documents have applied the notification log and where the usage log ends, so a check
reads them without a query. (PostgreSQL reads them from the database: it has no board.) And the
wake-up the usage log's writer sends the usage runner's process after each commit."""

import multiprocessing
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from api.ledger import Ledger
from domain.aggregate import Actor
from domain.tenant import TenantSettings
from domain.usage import UsageEvent
from projections.background import Wake
from projections.board import Board
from projections.drivers.inprocess import NAME

NOW = datetime(2026, 3, 1, tzinfo=UTC)
WRITERS, EACH = 3, 200_000  # enough writes that a reader meets many half done


def _publish(path: str, first: int, start: "multiprocessing.synchronize.Event") -> None:
    board = Board(Path(path))
    start.wait()
    for position in range(first, WRITERS * EACH, WRITERS):  # interleaved with the other writers'
        board.publish("usage", position)
    board.close()


def _read(path: str, start: "multiprocessing.synchronize.Event", out: "multiprocessing.Queue") -> None:
    board, seen, backwards = Board(Path(path)), 0, 0
    start.wait()
    deadline = time.monotonic() + 60
    while seen < WRITERS * EACH - 1 and time.monotonic() < deadline:
        value = board.get("usage")
        backwards += value < seen
        seen = max(seen, value)
    out.put((seen, backwards))
    board.close()


def test_concurrent_publishes_keep_the_greatest_position_and_a_reader_never_sees_one_go_back(tmp_path):
    # Given three processes publishing interleaved positions as fast as they can, and one reading
    context = multiprocessing.get_context("spawn")
    path, start, out = str(tmp_path / "board"), context.Event(), context.Queue()
    processes = [context.Process(target=_publish, args=(path, first, start)) for first in range(WRITERS)]
    processes.append(context.Process(target=_read, args=(path, start, out)))
    for process in processes:
        process.start()
    start.set()
    for process in processes:
        process.join(60)
    # Then the reader saw the greatest position published, and never a smaller one after a greater
    assert out.get(timeout=5) == (WRITERS * EACH - 1, 0)
    assert [process.exitcode for process in processes] == [0] * (WRITERS + 1)
    board = Board(Path(path))
    assert board.get("usage") == WRITERS * EACH - 1
    board.publish("usage", 5)  # a slower writer's older position is not kept
    assert board.get("usage") == WRITERS * EACH - 1
    board.close()


def _event(n: int) -> UsageEvent:
    return UsageEvent(event_id=f"e-{n}", customer="acme", event_name="llm", timestamp=NOW, properties={"tokens": n})


def test_a_value_a_writer_left_half_written_as_it_died_is_repaired_by_the_next_publish(tmp_path):
    # Given a value a writer left half written as it died (its position, 9, was committed)
    board = Board(tmp_path / "board")
    board.publish("usage", 5)
    board._words[board._offsets["usage"]] = 9
    # Then a read calls it damaged
    with pytest.raises(RuntimeError, match="damaged"):
        board.get("usage")
    # When another writer publishes an older position (in a thread: a publish that waited for its own
    # lock would hang)
    publishing = threading.Thread(target=board.publish, args=("usage", 7), daemon=True)
    publishing.start()
    publishing.join(10)
    # Then the value is whole again, at the greatest committed position
    assert not publishing.is_alive()
    assert board.get("usage") == 9
    board.close()


def test_a_reader_waits_for_a_write_a_descheduled_writer_left_half_done(tmp_path):
    # Given a board, and a writer that wrote the first word of a value and was then descheduled
    board, writer = Board(tmp_path / "board"), Board(tmp_path / "board")
    board.publish("usage", 5)
    halfway = threading.Event()

    def stalled() -> None:
        with writer._locked():
            writer._words[writer._offsets["usage"]] = 9
            halfway.set()
            time.sleep(0.3)  # longer than a reader spins
            writer._words[writer._offsets["usage"] + 1] = 9

    thread = threading.Thread(target=stalled)
    thread.start()
    halfway.wait()
    # When a check reads the value meanwhile
    # Then it waits for the write to end and reads the new value (it used to call the board damaged)
    try:
        assert board.get("usage") == 9
    finally:
        thread.join()
        board.close()
        writer.close()


def test_a_board_left_behind_is_set_to_the_store_s_positions_when_a_ledger_opens(tmp_path):
    # Given a store with events in both logs, and a board that says both went much further
    url = f"sqlite:///{tmp_path / 'events.sqlite'}"
    ledger = Ledger(url)
    tenant = ledger.command(ledger.tenants.open_tenant, Actor("test"), TenantSettings(name="Acme")).id
    ledger.usage.append(str(tenant), [_event(n) for n in range(5)], NOW)
    board_path = Path(f"{ledger.database.path}-positions")
    ledger.close()
    stale = Board(board_path)
    stale.publish("usage", 10**9)
    stale.publish(NAME, 10**9)
    stale.close()
    # When a ledger opens the store
    ledger = Ledger(url)
    try:
        # Then the board holds the store's own positions, and moves on with each commit
        assert ledger.board is not None
        assert ledger.board.get("usage") == ledger.usage.last_position() == 5
        assert ledger.board.get(NAME) == ledger.runner.stored() > 0
        ledger.usage.append(str(tenant), [_event(5)], NOW)
        assert ledger.usage.published() == 6
        ledger.command(ledger.tenants.issue_key, Actor("test"), tenant, "admin")
        assert ledger.board.get(NAME) == ledger.runner.stored() == ledger.tenants.recorder.max_notification_id()
    finally:
        ledger.close()


def test_a_commit_never_published_is_found_by_the_sync_and_a_rebuild_sets_the_documents_back(tmp_path):
    # Given a ledger whose board syncs every 10 ms
    ledger = Ledger(f"sqlite:///{tmp_path / 'events.sqlite'}")
    try:
        assert ledger.board is not None
        tenant = ledger.command(ledger.tenants.open_tenant, Actor("test"), TenantSettings(name="Acme")).id
        ledger.usage.append(str(tenant), [_event(0)], NOW)
        ledger.board.start(0.01)
        # When a writer commits an entry and dies before publishing it (written here behind the log's back)
        with ledger.usage.database.transaction(write=True) as cursor:
            cursor.execute("INSERT INTO tally_usage (tenant_id, customer, event_id, event_name, timestamp_us, "
                           "recorded_us, properties, bucket) VALUES (?, 'acme', 'lost', 'llm', 0, 0, '{}', 0)",
                           (str(tenant),))
        # Then the board has its position soon after
        deadline = time.monotonic() + 5
        while ledger.usage.published() != 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ledger.usage.published() == ledger.usage.last_position() == 2
        # And a rebuild of the documents sets their position back, then forward with the rebuild
        applied = ledger.runner.stored()
        ledger.board.stop()
        ledger.runner.clear([NAME])
        assert ledger.board.get(NAME) == 0
        ledger.runner.catch_up()
        assert ledger.board.get(NAME) == ledger.runner.stored() == applied
    finally:
        ledger.close()


def _woken(wake: Wake, go: "multiprocessing.synchronize.Event", out: "multiprocessing.Queue") -> None:
    go.wait()
    out.put((wake.wait(30), wake.wait(0.2)))  # the wake-ups sent before, then none left
    out.put(wake.wait(30))  # the next one


def test_a_wake_up_never_blocks_its_sender_and_the_waiter_takes_all_those_sent_at_once():
    context = multiprocessing.get_context("spawn")
    wake, go, out = Wake(), context.Event(), context.Queue()
    waiter = context.Process(target=_woken, args=(wake, go, out))
    waiter.start()
    try:
        # far more than a pipe holds, while nobody reads: a sender that blocked would never finish
        sender = threading.Thread(target=lambda: [wake.set() for _ in range(200_000)], daemon=True)
        sender.start()
        sender.join(60)
        assert not sender.is_alive()
        go.set()
        assert out.get(timeout=60) == (True, False)
        wake.set()
        assert out.get(timeout=60) is True
    finally:
        waiter.join(10)
        if waiter.is_alive():
            waiter.kill()

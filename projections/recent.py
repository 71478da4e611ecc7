"""The usage log's latest entries, shared in memory by the processes of one embedded store.

A check must count every event acknowledged before it. The entitlement counters used to read a batch
another serving process just committed from the log itself; under load such a read from the event
loop takes milliseconds (the query gives up the GIL, and taking it back waits for the threads that
hold it and for a core). So whoever commits usage rows also copies them here, in a ring of records
in a file mapped into memory, and the counters of every process read them from memory.

What keeps it true:
- only the holder of the log's write lock (SQLite admits one writer at a time) appends, inside its
  transaction, so records come in position order. A record is pending until its writer marks it
  committed, after its commit and before it publishes the position (projections/board.py). The next
  writer settles a record left pending (its writer died, or failed to commit): holding the lock, it
  knows where the log ends, so whether that record's rows are there (committed) or not (dead).
  A reader takes committed records up to the published position, passes dead ones over and stops at
  a pending one;
- a record is written before the head moves past it; the head is one aligned 8-byte word, written
  and read whole;
- a reader far behind, whose records the ring has since overwritten, finds out (the head is more
  than a ring away) and reads the log instead. So does a reader that meets a gap: positions written
  without a record (a void, a group with duplicates, a writer on PostgreSQL: there is no ring).
"""

import fcntl
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec

SIZE = 32 * 1024 * 1024  # the ring of records (~200,000 rows)
MAX_RECORD = 4 * 1024 * 1024  # a longer group (~25,000 rows) is not copied here (readers read it from the log)
_HEAD = 64  # before the ring, 8-byte words: the head; where the latest record begins; the ring's format
_HEADER = 32  # a record's: state, length of its rows, first and last position (8-byte words)
PENDING, COMMITTED, WRAP, DEAD = 0, 1, 2, 3
_rows = msgspec.msgpack.Encoder()
# a usage log row (projections/usage_log.py `Row`), with its key and bucket
Row = tuple[str, str, str, str, int, int, str, int, int]
_decode_rows = msgspec.msgpack.Decoder(list[Row])


class Recent:
    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # processes opening it together: one begins it
            os.posix_fallocate(fd, 0, _HEAD + SIZE)  # its blocks taken now, as the board's (projections/board.py)
            self._memory = mmap.mmap(fd, _HEAD + SIZE)
            self._words = memoryview(self._memory).cast("q")
            if self._words[2] != _format():  # new, or left by a version with another layout or size: begun afresh
                self._words[0] = self._words[1] = 0
                self._words[2] = _format()
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)  # (mmap keeps a copy of the descriptor: closing it would not)
            os.close(fd)

    def head(self) -> int:
        """Bytes ever appended (where the next record goes, modulo SIZE)."""
        return self._words[0]

    def append(self, first: int, rows: list) -> int | None:
        """Write the rows at positions `first`, `first + 1`, ... as a pending record (the caller holds
        the log's write lock, and settled the latest record); returns where it is, for `commit`, or
        None when it is too long."""
        head, payload = self.head(), _rows.encode(rows)
        length = _span(len(payload))
        if length > MAX_RECORD:
            return None
        at = head % SIZE
        if at + length > SIZE:  # no room before the end: the rest of it is skipped, the record goes first
            if SIZE - at >= _HEADER:
                self._set(at, WRAP, 0, 0, 0)
            head += SIZE - at
            at = 0
        self._words[1] = head  # the latest record, for the next writer to settle
        self._set(at, PENDING, len(payload), first, first + len(rows) - 1)
        self._memory[_HEAD + at + _HEADER:_HEAD + at + _HEADER + len(payload)] = payload
        self._words[0] = head + length  # after the record: a reader never meets it half written
        return at

    def commit(self, at: int) -> None:
        """The record at `at` was committed: readers may take it."""
        self._words[(_HEAD + at) // 8] = COMMITTED

    def records(self, start: int, published: int) -> Iterator[tuple[int, int, int, bytes | None]]:
        """From stream offset `start`: (offset of the next record, first and last position, its rows
        for `rows`) for each record up to the published position; rows None for a dead one. Stops at
        a record pending; raises LookupError when `start` was overwritten (a reader far behind)."""
        while True:
            head = self._unchanged(start)
            if start >= head:
                return
            at = start % SIZE
            word = (_HEAD + at) // 8
            state = self._words[word] if SIZE - at >= _HEADER else WRAP
            if state == WRAP:
                start += SIZE - at
                continue
            length, first, last = self._words[word + 1], self._words[word + 2], self._words[word + 3]
            if state != DEAD and (last > published or state == PENDING):
                return
            payload = bytes(self._memory[_HEAD + at + _HEADER:_HEAD + at + _HEADER + length]) \
                if state == COMMITTED else None
            self._unchanged(start)  # not overwritten while read
            start += _span(length)
            yield start, first, last, payload

    @staticmethod
    def rows(payload: bytes) -> list[Row]:
        return _decode_rows.decode(payload)

    def settle(self, end: int) -> None:
        """Mark the latest record, if still pending, committed or dead: the caller, holding the log's
        write lock (so that record's writer is done), found the log ending at `end`."""
        word = self._pending()
        if word is not None:
            self._words[word] = COMMITTED if self._words[word + 3] <= end else DEAD

    def pending(self) -> int | None:
        """The first position of the latest record if it is still pending (its writer between its
        commit and its mark, or gone): a position the board's sync does not publish yet."""
        word = self._pending()
        return None if word is None else self._words[word + 2]

    def _pending(self) -> int | None:
        """The word where the latest record begins, if it is still pending."""
        latest = self._words[1]
        if not 0 < self.head() - latest < SIZE - 2 * MAX_RECORD:  # none written yet, or overwritten since
            return None
        word = (_HEAD + latest % SIZE) // 8
        return word if self._words[word] == PENDING else None

    def _unchanged(self, start: int) -> int:
        """The head, if what was written from `start` on is still there (a write moves at most two
        records' length past the head: a record and the end of the ring it skips)."""
        head = self.head()
        if head - start > SIZE - 2 * MAX_RECORD:
            raise LookupError(start)
        return head

    def close(self) -> None:
        self._words.release()
        self._memory.close()

    def _set(self, at: int, state: int, length: int, first: int, last: int) -> None:
        word = (_HEAD + at) // 8
        self._words[word], self._words[word + 1], self._words[word + 2], self._words[word + 3] = \
            state, length, first, last


class Reader:
    """One reader's place in the ring, for readers that follow the log's positions in order."""

    def __init__(self, recent: Recent) -> None:
        self.recent, self._at = recent, recent.head()  # the records before it are not read

    def after(self, position: int, published: int) -> Iterator[tuple[int, int, bytes]]:
        """The records of the positions after `position`, in order, up to the published position, as
        (first and last position, rows for `Recent.rows`; the first record's may begin before
        `position + 1`). Stops at a gap (positions written without a record, or before this reader
        began: the log has them), and when the reader was far behind (overwritten: on from the head)."""
        try:
            for after, first, last, payload in self.recent.records(self._at, published):
                if payload is not None and last > position:  # (None: dead, its positions written again)
                    if first > position + 1:
                        return
                    yield first, last, payload
                    position = last
                self._at = after
        except LookupError:
            self._at = self.recent.head()


def _span(length: int) -> int:
    """The bytes a record of rows `length` long takes (its header; its rows, to 8 bytes)."""
    return _HEADER + (length + 7) // 8 * 8


def _format() -> int:
    """This layout (3: rows with their key and bucket) and this size, in the ring's header: a ring left
    by another is begun afresh (SIZE read at the call: tests shrink it)."""
    return (3 << 48) | SIZE

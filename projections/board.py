"""Positions shared in memory by the processes of one embedded store.

A check must count everything acknowledged before it: so, before each answer, it used to ask the
database how far the documents have applied the notification log and where the usage log ends (three
small queries a check, measured at a third of its CPU in `tally serve`). On the embedded store every
writer is a process of this machine, so each one publishes those positions here, in a small file
mapped into memory, right after its commit and before it acknowledges anything; a check reads them
from memory.

What keeps it true:
- a publish keeps the greater value (a slower writer never takes it back);
- `sync` sets each value to the database's own, under the same lock (so it is never below a value
  published: a publish follows its commit). It runs when a process opens the board (a board left by
  an older store, or a writer that died between its commit and its publish, is put right) and then
  in the background (`start`), for a position set back (a rebuild) or a writer that never
  published (one that died before it could);
- a value is written as two 8-byte words, each copied whole, under the lock; a read that finds them
  different (it met a write half done) reads again, and after a while waits for the lock (the writer
  was descheduled halfway). Different under the lock, they are damage.

PostgreSQL servers may run on several machines: there the positions are read from the database.
"""

import fcntl
import mmap
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from projections.background import Repeating

SLOTS = ("documents", "usage")  # the notification position the documents applied; the usage log's last
SYNC_SECONDS = 0.05
# reads meeting a write half done before waiting for the writer's lock: a write is two stores, but its
# writer may be descheduled between them (on a busy machine, for milliseconds)
_SPINS = 1_000
_SIZE = 4096


class Board:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._lock = threading.Lock()  # flock excludes other processes, not this one's threads
        with self._locked():
            # its blocks taken on the disk now: a write to a page of a file mapped into memory that the full
            # disk cannot hold would kill the process (SIGBUS), where a store's write only fails
            os.posix_fallocate(self._fd, 0, _SIZE)
        self._memory = mmap.mmap(self._fd, _SIZE)
        # 8-byte words, each read and written by one aligned copy (so never seen half written); not
        # `struct.pack_into`, which zeroes the bytes before it fills them
        self._words = memoryview(self._memory).cast("q")
        self._offsets = {name: 2 * index for index, name in enumerate(SLOTS)}  # a value is two words
        self._sources: Mapping[str, Callable[[], int]] = {}
        self._syncer = Repeating("positions-board", self.sync)

    def get(self, name: str) -> int:
        first = self._offsets[name]
        for _ in range(_SPINS):
            value, again = self._words[first], self._words[first + 1]
            if value == again:
                return value
        with self._locked():  # a writer stopped halfway (descheduled, on a busy machine): wait for it
            value, again = self._words[first], self._words[first + 1]
        if value == again:
            return value
        raise RuntimeError(f"the positions board {self.path} is damaged (`sync` writes it afresh)")

    def publish(self, name: str, position: int) -> None:
        """`position` is committed: raise the value to it (never lower it)."""
        with self._locked():  # so no write is half done, unless its writer died halfway (after its commit)
            first = self._offsets[name]
            value, again = self._words[first], self._words[first + 1]
            if position > value or value != again:  # a value left half written is repaired
                self._write(name, max(position, value, again))

    def follow(self, sources: Mapping[str, Callable[[], int]]) -> None:
        """Read each value from the database (`sources[name]()`, the truth) now, and at every `sync`."""
        self._sources = sources
        self.sync()

    def sync(self) -> None:
        with self._locked():
            for name, read in self._sources.items():
                self._write(name, read())

    def start(self, every: float = SYNC_SECONDS) -> None:
        """Sync in a background thread too, until `stop`."""
        self._syncer.start(every)

    def stop(self) -> None:
        self._syncer.stop()

    def close(self) -> None:
        self.stop()
        self._words.release()
        self._memory.close()
        os.close(self._fd)

    def _write(self, name: str, position: int) -> None:
        first = self._offsets[name]
        self._words[first] = position
        self._words[first + 1] = position

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

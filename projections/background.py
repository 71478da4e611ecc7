"""Work done beside the requests: a thread repeating a task, a helper process that ends with the
process that started it, and a wake-up for a helper process that never blocks who sends it."""

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("tally.projections")


class Repeating:
    """`work()` in a daemon thread every `every` seconds, from `start` until `stop`; a failure (the
    store away for a moment) is logged and retried a second later."""

    def __init__(self, name: str, work: Callable[[], None]) -> None:
        self.name, self.work = name, work
        self._stopped, self._thread = threading.Event(), None

    def start(self, every: float) -> None:
        def run() -> None:
            while not self._stopped.wait(every):
                try:
                    self.work()
                except Exception:
                    log.exception("%s failed; retrying", self.name)
                    self._stopped.wait(1)

        if self._thread is None:
            self._stopped.clear()
            self._thread = threading.Thread(target=run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


def end_with(parent: int, end: Callable[[], None] = lambda: os._exit(0)) -> None:
    """Call `end` (default: exit at once) when process `parent` is gone, from a daemon thread: a
    process it started is not stopped by the kernel when it is killed outright (SIGKILL)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        end()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class Wake:
    """One process wakes another, which waits with a timeout. `set` writes a byte to a pipe that
    never blocks (a full pipe already wakes the waiter), so the sender never waits for the waiter to
    be scheduled. (A `multiprocessing.Event`'s `set` does: measured, the usage writer waited for the
    niced usage runner to wake after 10 % of its commits, 3-6 ms each, holding up their answers.)
    Picklable to a process started with `spawn` (the pipe's ends go with it)."""

    def __init__(self) -> None:
        self._reader, self._writer = multiprocessing.get_context("spawn").Pipe(duplex=False)
        for end in (self._reader, self._writer):  # a flag of the pipe's ends themselves: it goes with them
            os.set_blocking(end.fileno(), False)

    def set(self) -> None:
        # full: the waiter has wake-ups enough to read; broken: no waiter left (never while this holds the reader)
        with contextlib.suppress(BlockingIOError, BrokenPipeError):
            os.write(self._writer.fileno(), b"\0")

    def wait(self, timeout: float) -> bool:
        """Whether a `set` came since the last `wait` (or comes within `timeout` seconds); the
        wake-ups sent so far are taken."""
        if not self._reader.poll(timeout):
            return False
        with contextlib.suppress(BlockingIOError):
            while os.read(self._reader.fileno(), 65_536):
                pass
        return True

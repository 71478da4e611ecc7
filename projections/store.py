"""The read-model store: SQLite (its own file, beside the event store) or PostgreSQL.

On SQLite the read models live in `views.sqlite`, not in the event store's file, so a projection
writing never holds the lock the command path needs. The cost: a command and its read-model rows
commit in two transactions; the rows carry the event position they reflect, and a runner resumes
from there, so a crash between the two is repaired by the next catch-up (nothing is lost).

SQL is written once with `?` placeholders; on PostgreSQL they become `%s`.
"""

import fcntl
import sqlite3
import threading
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from operator import itemgetter
from pathlib import Path
from typing import Any

import msgspec
import psycopg
from psycopg_pool import ConnectionPool

SCHEMA = (  # the documents, their positions, and kept Idempotency-Key answers
    """CREATE TABLE IF NOT EXISTS tally_documents (
        collection TEXT NOT NULL, id TEXT NOT NULL, tenant_id TEXT NOT NULL, code TEXT NOT NULL,
        parent TEXT, position BIGINT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (collection, id))""",
    "CREATE UNIQUE INDEX IF NOT EXISTS tally_documents_code ON tally_documents (collection, tenant_id, code)",
    "CREATE INDEX IF NOT EXISTS tally_documents_lookup ON tally_documents (collection, code)",
    "CREATE INDEX IF NOT EXISTS tally_documents_order ON tally_documents (collection, tenant_id, position)",
    # a parent's documents (a customer's subscriptions, invoices, wallets): read without scanning the tenant's
    "CREATE INDEX IF NOT EXISTS tally_documents_parent ON tally_documents (collection, tenant_id, parent)",
    "CREATE TABLE IF NOT EXISTS tally_positions (name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS tally_idempotency (
        tenant_id TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, status INTEGER,
        body BYTEA, created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (tenant_id, key))""",
)
_json_rows = msgspec.json.Decoder(list[tuple])


class Cursor:
    """One transaction's cursor, with `?` placeholders on both databases."""

    def __init__(self, raw: Any, postgres: bool) -> None:
        self.raw, self.postgres = raw, postgres

    def execute(self, sql: str, params: Sequence[Any] = ()) -> "Cursor":
        self.raw.execute(sql.replace("?", "%s") if self.postgres else sql, params)
        return self

    def create(self, statement: str) -> None:
        """Run a schema statement: SQLite spells BYTEA as BLOB and BIGSERIAL keys as AUTOINCREMENT, and
        only SQLite has tables WITHOUT ROWID (a PostgreSQL table is that already)."""
        if self.postgres:
            self.execute(statement.replace(") WITHOUT ROWID", ")"))
        else:
            self.execute(statement.replace("BYTEA", "BLOB").replace(
                "BIGSERIAL PRIMARY KEY", "INTEGER PRIMARY KEY AUTOINCREMENT"))

    def execute_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run `sql` for each row; the number of rows it changed in all."""
        if self.postgres:
            self.raw.executemany(sql.replace("?", "%s"), rows, returning=False)
            return self.raw.rowcount
        before = self.raw.connection.total_changes
        self.raw.executemany(sql, rows)
        return self.raw.connection.total_changes - before

    def insert_new(self, table: str, columns: str, key: str, rows: Sequence[Sequence[Any]]) -> None:
        """Insert the rows whose `key` is not there yet. On PostgreSQL the rows are COPYed straight
        into the table (`copy_new`); when one was there, into a temporary twin of the table, then
        inserted in one statement (either is many times faster than one INSERT a row)."""
        if not self.postgres:
            marks = ", ".join("?" * len(columns.split(",")))
            self.execute_many(f"INSERT INTO {table} ({columns}) VALUES ({marks}) ON CONFLICT ({key}) DO NOTHING", rows)
            return
        if self.copy_new(table, columns, rows):
            return
        stage = f"{table}_stage"
        self.raw.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table}) ON COMMIT DELETE ROWS")
        self.copy(stage, columns, rows)
        self.raw.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage} ON CONFLICT ({key}) DO NOTHING")

    def copy(self, table: str, columns: str, rows: Iterable[Sequence[Any]]) -> None:
        """PostgreSQL: COPY the rows into the table."""
        with self.raw.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def copy_new(self, table: str, columns: str, rows: Iterable[Sequence[Any]]) -> bool:
        """PostgreSQL: COPY the rows straight into the table if none breaks a unique key, and say
        whether they went in. When one does, nothing is written (a savepoint undoes the COPY; the
        transaction goes on). Measured: 3 µs of the database's CPU a row less than through a staging
        table and INSERT ... ON CONFLICT, which the caller then uses."""
        try:
            with self.raw.connection.transaction():
                self.copy(table, columns, rows)
        except psycopg.errors.UniqueViolation:
            return False
        return True

    def one(self) -> tuple | None:
        return self.raw.fetchone()

    def all(self) -> list[tuple]:
        return self.raw.fetchall()

    @property
    def rowcount(self) -> int:
        return self.raw.rowcount


class Database:
    """Transactions over the read-model store. `transaction(write=True)` serialises writers."""

    def __init__(self, url: str, durable: bool = True) -> None:
        """`durable=False`: on SQLite, commits are not synced one by one (synchronous=NORMAL: still
        atomic and safe across a crash of the process; only an OS crash may drop the last ones). For
        read models that record their position with their rows and are rebuilt from the log."""
        self.url, self.durable = url, durable
        self.postgres = url.startswith(("postgresql://", "postgres://"))
        self.local = threading.local()
        if self.postgres:
            self.pool = ConnectionPool(url, min_size=1, max_size=8, open=True, kwargs={"autocommit": False})
        else:
            self.path = url.removeprefix("sqlite:///")
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)

    def migrate(self, statements: Sequence[str]) -> None:
        """Create what is missing (`Cursor.create`)."""
        with self.transaction(write=True) as cursor:
            for statement in statements:
                cursor.create(statement)

    def _sqlite(self) -> sqlite3.Connection:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL" if self.durable else "PRAGMA synchronous=NORMAL")
            self.local.connection = connection
        return connection

    def tune(self, cache_mib: int, checkpoint_pages: int) -> None:
        """SQLite, this thread's connection: a page cache of `cache_mib`, and a WAL checkpoint every
        `checkpoint_pages` (for a writer whose rows land all over a big index)."""
        if not self.postgres:
            self._sqlite().execute(f"PRAGMA cache_size = -{cache_mib * 1024}")
            self._sqlite().execute(f"PRAGMA wal_autocheckpoint = {checkpoint_pages}")

    @contextmanager
    def relaxed(self, cache_mib: int = 256) -> Iterator[None]:
        """For this thread's transactions in the block, commits that do not wait for the disk (a
        rebuild: a crash loses its last batches, never consistency, and it resumes from what was
        kept) and, on SQLite, a bigger page cache."""
        self.local.relaxed = True
        if not self.postgres:
            connection = self._sqlite()
            before = [(name, connection.execute(f"PRAGMA {name}").fetchone()[0])
                      for name in ("synchronous", "cache_size")]
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(f"PRAGMA cache_size = -{cache_mib * 1024}")
        try:
            yield
        finally:
            self.local.relaxed = False
            if not self.postgres:
                for name, value in before:  # as they were
                    connection.execute(f"PRAGMA {name} = {value}")

    @contextmanager
    def transaction(self, write: bool = False, snapshot: bool = False) -> Iterator[Cursor]:
        """A transaction; with `snapshot`, every read in it sees the store as of its first (SQLite's
        transactions always do; PostgreSQL's then run at REPEATABLE READ)."""
        if self.postgres:
            with self.pool.connection() as connection, connection.transaction():
                if snapshot:
                    connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                if getattr(self.local, "relaxed", False):
                    connection.execute("SET LOCAL synchronous_commit = off")
                yield Cursor(connection.cursor(), postgres=True)
            return
        connection = self._sqlite()
        connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield Cursor(connection.cursor(), postgres=False)
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def stream(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple]:
        """The rows of one read, a batch at a time (a server-side cursor on PostgreSQL): for reads too
        big to hold in memory at once."""
        if self.postgres:
            with self.pool.connection() as connection, connection.transaction():
                with connection.cursor(name="tally_stream") as cursor:
                    cursor.itersize = 10_000
                    cursor.execute(sql.replace("?", "%s"), params)
                    yield from cursor
            return
        connection = sqlite3.connect(self.path, isolation_level=None, timeout=30)  # its own snapshot
        try:
            connection.execute("BEGIN")
            yield from connection.execute(sql, params)
        finally:
            connection.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """The rows of one read. On SQLite without BEGIN and COMMIT around it (a statement is its own
        snapshot): for reads on the hot path, where those two calls cost more than the read."""
        if self.postgres:
            with self.transaction() as cursor:
                return cursor.execute(sql, params).all()
        return self._sqlite().execute(sql, params).fetchall()

    def query_rows(self, columns: str, source: str, params: Sequence[Any] = ()) -> list[tuple]:
        """The rows of `SELECT {columns} {source}` (one read, as `query`), in the order of the first
        column (the position: `source` orders by it; its values are distinct). On SQLite they come as
        one JSON text decoded at once: the statement steps once. sqlite3 gives the GIL up at every
        step, so a thread reading a thousand rows row by row waits for it a thousand times, a switch
        interval each while the event loop runs (measured: 2,000 rows in 286 ms against 8 ms beside
        a busy thread). Columns are integers or text."""
        if self.postgres:
            return self.query(f"SELECT {columns} {source}", params)
        found = self._sqlite().execute(f"SELECT json_group_array(json_array({columns})) FROM "
                                       f"(SELECT {columns} {source})", params).fetchone()[0]
        rows = _json_rows.decode(found)
        rows.sort(key=itemgetter(0))  # SQLite keeps the inner order in practice, but does not promise it
        return rows

    @contextmanager
    def serialized(self, name: str) -> Iterator[None]:
        """Hold `name`'s lock for the block, waiting for it: on PostgreSQL an advisory lock (for what
        must not run in two processes at once, such as creating tables: concurrent CREATE ... IF NOT
        EXISTS can fail there); SQLite serialises its writers itself."""
        if not self.postgres:
            yield
            return
        with self._advisory(name, wait=True):
            yield

    @contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """Whether this process got `name`'s lock (held until the block ends): a PostgreSQL advisory
        lock, or on SQLite an exclusive lock on a file beside the store. Never waits."""
        if self.postgres:
            with self._advisory(name, wait=False) as got:
                yield got
            return
        with open(f"{self.path}.{name}.lock", "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def _advisory(self, name: str, wait: bool) -> Iterator[bool]:
        """A PostgreSQL session advisory lock on `name`, held for the block: waited for, or only tried."""
        with self.pool.connection() as connection:
            connection.autocommit = True
            key = zlib.crc32(name.encode())
            if wait:
                connection.execute("SELECT pg_advisory_lock(%s)", (key,))
                got = True
            else:
                got = bool(connection.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0])
            try:
                yield got
            finally:
                if got:
                    connection.execute("SELECT pg_advisory_unlock(%s)", (key,))
                connection.autocommit = False

    def close(self) -> None:
        if self.postgres:
            self.pool.close()


def lock_position(cursor: Cursor, name: str) -> int:
    """The position `name` has applied, locked until the transaction ends (one runner at a time)."""
    cursor.execute("INSERT INTO tally_positions (name, position) VALUES (?, 0) ON CONFLICT (name) DO NOTHING", (name,))
    suffix = " FOR UPDATE" if cursor.postgres else ""
    row = cursor.execute("SELECT position FROM tally_positions WHERE name = ?" + suffix, (name,)).one()
    assert row is not None
    return int(row[0])


def save_position(cursor: Cursor, name: str, position: int) -> None:
    cursor.execute("UPDATE tally_positions SET position = ? WHERE name = ?", (position, name))


def positions(database: Database, names: Sequence[str]) -> list[int]:
    """The position each of `names` has applied (0: none yet), in one read, without locking."""
    found = dict(database.query(f"SELECT name, position FROM tally_positions WHERE name IN "  # noqa: S608
                                f"({','.join('?' * len(names))})", list(names)))
    return [int(found.get(name, 0)) for name in names]


def advance_position(database: Database, name: str, position: int) -> None:
    """Move `name` on to `position`, never back (a slower writer's older position is not kept)."""
    with database.transaction(write=True) as cursor:
        if position > lock_position(cursor, name):
            save_position(cursor, name, position)


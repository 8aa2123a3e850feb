"""The embedded default store: one SQLite file in WAL mode, one writer connection with group commit.

Appends from every session made during one turn of the event loop are collected; at the end of
the turn the loop writes them in one transaction and commits once, and once that commit is on
the disk (one fsync for the whole batch) wakes each caller. While the loop serves requests, new
appends collect, so batches grow with load and durability costs little per call. Reads run on a
small pool of threads, each with its own connection (WAL lets them read a consistent snapshot
while the writer writes).

The commit runs on the loop's own thread, but the loop does not wait for the disk: with
`synchronous=FULL` (the default) SQLite commits at `NORMAL` (the WAL written, not yet fsynced) and
a small helper process, the syncer, fsyncs the WAL file on request; each caller is answered only
after an fsync that began after its batch's commit, so every acknowledged call is on the disk, as
with FULL. While an fsync runs the loop serves on, and the appends that come meanwhile wait for it,
then go in one commit and one fsync: one of each in flight at a time, so batches grow while the
disk works. (A concurrent reader may see a committed event before its fsync, as it could see one
before its reply; SQLite syncs checkpoints itself at NORMAL.) Measured side by side at 64
concurrent rollouts (6 rounds each): the syncer took throughput from 0.82x the ceiling's to 0.90x
and p99 from 1.63x to 1.43x against the loop waiting for each fsync, CPU per call 1.41x to 1.38x
(the syncer's counted); holding the next commit until the fsync in flight is done then took CPU per
call from 1.46x to 1.30x and throughput from 0.79x to 0.84x in another run. The syncer runs as a
batch process (Linux's SCHED_BATCH): waking it never preempts the server on its core, it runs when
a core is free or at the next tick. So an fsync's round trip is longer (at 64 concurrent, p50 3.6
ms against 1.8-2.7 ms, p99 13-15 against 6-8 ms) and batches grow (17.5 appends against 11.7):
fewer commits and fsyncs per call, and fewer context switches on the server's core. Side by side at
64 concurrent that took our CPU per call from 313 to 284 µs and from 298 to 279 µs in two runs of 6
rounds, throughput 2,956 -> 2,926 and 3,100 -> 3,009 calls/s (within the noise), the calls' p99
36.0 -> 37.3 and 33.4 -> 35.6 ms. At 4,096 concurrent the syncer once measured worse than SQLite's
own fsync on the loop (1.40x the ceiling's CPU per call against 1.20x), and big batches went back
to SQLite. With the garbage collector tuned (`collector.rare_gc`; at 4,096 it had cost 77 µs per call)
the difference is gone: the syncer for every batch measured 3,150 against 3,271 calls/s at 4,096
and 3,216 against 3,088 at 1,024, CPU per call 254 against 263 and 251 against 269 µs (2 rounds
each), so every batch now goes to the syncer.

A thread did worse than a process: a writer thread cost about 60 µs of CPU per call and a third
of the throughput in GIL hand-offs with the loop; handing only the COMMIT, or only the fsync, to
a thread cost 30 to 57 µs of CPU per call more than waiting on the loop (tools/bench.py). A
commit that crosses SQLite's checkpoint threshold copies the WAL into the database file on the
loop (about 6 ms, some 18 times in 22,000 calls); checkpointing on a thread of its own, once a
second, was worse: under steady appends a concurrent checkpoint never catches up, the WAL never
restarts and keeps growing, and commits cost twice the CPU.

Because the loop itself commits, the writer waits at most `busy_timeout` (100 ms by default) for
a lock another process holds on the file (another server sharing it), rather than the loop, and
every session with it, waiting longer. A batch that finds the file still locked is not failed: it
is tried again every `LOCK_RETRY` seconds, the loop serving meanwhile, until `lock_wait` (5 s by
default) has passed since its first try, and the appends that come meanwhile join it; only then is
each of its calls a 503. Else a server forking a long session (100 copies of 1,000 events: one
transaction of about a second) made some calls of every other server on the file 503s (18 in
33,000 at 256 concurrent rollouts), which NeMo Gym's agent hands to the model as tool outputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeVar

from .errors import ConfigError, Conflict, EnvError, LogCorrupt, StoreError, StoreUnavailable
from .events import FORKED, SEEDED, Event, decode_event
from .store import SessionInfo, Store

__all__ = ["INSERT_EVENT", "SCHEMA", "SQLITE_FILES", "SqliteStore", "table_columns"]

R = TypeVar("R")

_EVENTS_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS events_by_session ON events (session, seq);"
SCHEMA = f"""
-- Events in the order they were committed, so a batch fills the table's last pages instead of one
-- page per session it touches (a third less CPU per commit); the unique index finds a session's
-- events and refuses a seq taken twice.
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    session TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    at REAL NOT NULL,
    hash TEXT NOT NULL,
    body BLOB NOT NULL
);
{_EVENTS_INDEX}
-- An insert-only index of the sessions (when each was seeded or forked), to list them without reading bodies.
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_env ON sessions (env, created_at);
CREATE INDEX IF NOT EXISTS sessions_by_time ON sessions (created_at);
-- Derived data, outside the hash chain: a session's folded state after some seq, so a cold rebuild
-- folds only the events after it. Checked against the fold by `esenv replay`; never trusted alone.
CREATE TABLE IF NOT EXISTS snapshots (
    session TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (session, seq)
) WITHOUT ROWID;
"""

#: The columns each of the log's tables must have (an existing table without them is another program's).
_COLUMNS: Final = {
    "events": {"session", "seq", "kind", "at", "hash", "body"},
    "sessions": {"id", "env", "created_at"},
    "snapshots": {"session", "seq", "body"},
}
#: A SQLite database file and the files SQLite keeps beside it, by suffix: the log is all of them.
SQLITE_FILES: Final = ("", "-wal", "-shm", "-journal")
INSERT_EVENT = "INSERT INTO events (session, seq, kind, at, hash, body) VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_SNAPSHOT = "INSERT OR REPLACE INTO snapshots (session, seq, body) VALUES (?, ?, ?)"
_INSERT_SESSION = "INSERT INTO sessions (id, env, created_at) VALUES (?, ?, ?)"
_SESSION_INFO = """
SELECT s.id, s.env, s.created_at, e.seq, e.kind, e.at
FROM sessions s JOIN events e
  ON e.session = s.id AND e.seq = (SELECT max(seq) FROM events WHERE session = s.id)
"""
_UNAVAILABLE = ("disk is full", "readonly", "read-only", "locked", "disk i/o error", "unable to open")

#: How long a batch that found the file locked waits before it is tried again (see the docstring).
LOCK_RETRY: Final = 0.01

# One caller's append: the logs it writes (one session's, or several sessions' all or nothing).
_Append = tuple[Sequence[tuple[str, Sequence[Event]]], "asyncio.Future[None]"]
# A committed batch whose fsync is in flight: its appends, each caller's outcome, and a future
# done when the fsync is.
_InFlight = tuple[list[_Append], list["EnvError | None"], "asyncio.Future[None]"]

# The syncer: for each burst of requests on stdin, one fsync of the WAL file, then one reply byte
# per request: "." once durable, "!" if the fsync failed (then it exits: a file whose fsync failed
# is not trusted again), "g" if the log's files are not the server's any more: deleted (SQLite goes
# on writing to a deleted file, lost when the server exits) or, at its start, others at those
# paths (argv: the WAL, the database, and the identity, device:inode, each had when the store
# opened). It exits when stdin closes, so it never outlives the server; Ctrl-C, which a terminal sends
# to the server's whole process group, and SIGTERM, which a service manager may send the whole group
# (systemd's default), it ignores: the server drains, fsyncing its last batches, then closes its stdin.
_SYNCER = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
try:  # on Linux: waking it does not preempt the server (see the module docstring)
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
except (AttributeError, OSError):
    pass
try:
    files = [os.open(path, os.O_RDONLY) for path in sys.argv[1:3]]
    ours = [f"{s.st_dev}:{s.st_ino}" for s in map(os.fstat, files)] == sys.argv[3:5]
except FileNotFoundError:
    files, ours = [], False
while requests := len(os.read(0, 65536)):
    if not ours:
        os.write(1, b"g" * requests)
        break
    try:
        os.fsync(files[0])
    except OSError:
        os.write(1, b"!" * requests)
        break
    if not all(os.fstat(f).st_nlink for f in files):
        os.write(1, b"g" * requests)
        break
    os.write(1, b"." * requests)
"""
_GONE = (
    "the event log's files were deleted or replaced under the server: nothing more can be recorded "
    "there; restart the server"
)
# After a failed fsync the system may already have dropped the pages it could not write, and a later
# fsync then succeeds without them: a retry would be acknowledged on a log that lost the call. So a
# failed fsync is final, like a deleted log, until a restart (PostgreSQL took the same lesson).
_FSYNC_FAILED = (
    "an fsync of the event log failed: the system may have dropped writes it had accepted, so nothing "
    "more is recorded or acknowledged; restart the server (then `esenv replay` checks the log)"
)


def table_columns(conn: sqlite3.Connection, path: str) -> dict[str, set[str]]:
    """The columns each of the log's tables has (none: the table is not there). A table of ours
    with other columns is another program's: ConfigError, the file is not an event log."""
    columns: dict[str, set[str]] = {}
    for table, needed in _COLUMNS.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if have and not needed <= have:
            raise ConfigError(
                f"{path!r} is not an event log: its table {table!r} has columns "
                f"{', '.join(sorted(have))}, not {', '.join(sorted(needed))}"
            )
        columns[table] = have
    return columns


def _decoded(session: str, rows: list[tuple[int, bytes, str]]) -> list[Event]:
    """The events stored as `rows` (seq, body, hash) of `session`'s log.

    LogCorrupt, if one is not an event, names the session and the seq of the first such row.
    """
    try:
        return [decode_event(body, hash) for _, body, hash in rows]
    except LogCorrupt as e:
        seq = next(seq for seq, body, hash in rows if not _decodes(body, hash))
        raise LogCorrupt(e.reason, session, seq) from e


def _decodes(body: bytes, hash: str) -> bool:
    try:
        decode_event(body, hash)
    except LogCorrupt:
        return False
    return True


def _translate(e: Exception, session: str) -> EnvError:
    """A driver error as one of ours, naming the session."""
    if isinstance(e, sqlite3.IntegrityError):
        return Conflict(
            f"session {session!r}: an event with that seq (or that session id) is already in the log"
        )
    message = str(e).lower()
    if isinstance(e, sqlite3.OperationalError) and any(word in message for word in _UNAVAILABLE):
        return StoreUnavailable(f"the event store cannot write now ({e}); nothing was written, try again")
    return StoreError(f"the event store failed ({type(e).__name__}: {e}); nothing was written")


def _busy(e: Exception) -> bool:
    """Whether `e` is SQLite's "database is locked": another connection holds the lock it needs."""
    return isinstance(e, sqlite3.OperationalError) and e.sqlite_errorcode == sqlite3.SQLITE_BUSY


def _open_failure(e: sqlite3.Error, path: str, doing: str) -> EnvError:
    """Why a log cannot be opened: the system refuses it now (locked, no room, an I/O error), or
    the path is not one (a ConfigError: a mistake in the command)."""
    if any(word in str(e).lower() for word in _UNAVAILABLE):
        return StoreUnavailable(f"cannot {doing} {path!r} now: {e}")
    return ConfigError(f"cannot {doing} {path!r}: {e}")


def _settle(batch: list[_Append], outcomes: list[EnvError | None]) -> None:
    """Answer each caller of a batch: done, or its error."""
    for (_, done), error in zip(batch, outcomes, strict=True):
        if done.done():  # the caller was cancelled; its events are committed all the same
            continue
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)


def _not_durable(outcomes: list[EnvError | None], cause: Exception) -> list[EnvError | None]:
    """The outcomes of a committed batch whose fsync did not happen: each success becomes a 503."""
    lost = StoreUnavailable(
        f"the event log could not be flushed to the disk ({cause}); the call may or may not be "
        "recorded: retry it with the same Idempotency-Key"
    )
    return [lost if error is None else error for error in outcomes]


class SqliteStore(Store):
    """The SQLite event store. Open it with `await SqliteStore.open(path)` inside a running loop."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        readers: int = 4,
        busy_timeout: float = 0.1,
        lock_wait: float = 5.0,
    ) -> None:
        self.path = str(path)
        self.busy_timeout = busy_timeout
        #: How long, in all, a batch may wait for a lock another process holds on the file; then 503s.
        self.lock_wait = lock_wait
        #: When the batch waiting for the file's lock first found it taken, and its next try.
        self._locked_since: float | None = None
        self._lock_retry: asyncio.TimerHandle | None = None
        if self.path != ":memory:" and not Path(self.path).resolve().parent.is_dir():
            raise ConfigError(f"cannot create the database {self.path!r}: its folder does not exist")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ConfigError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.synchronous = synchronous.upper()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="esenv-read")
        self._pending: list[_Append] = []
        self._snapshots: list[tuple[str, int, bytes]] = []
        self._closed = False
        self._syncs = self.synchronous == "FULL" and self.path != ":memory:"
        self._syncer: subprocess.Popen[bytes] | None = None
        self._syncer_loop: asyncio.AbstractEventLoop | None = None
        self._in_flight: _InFlight | None = None
        self._writer = self._connect()
        # The WAL is where SQLite keeps it: beside the file the path resolves to (a symlink followed).
        database = self._writer.execute("PRAGMA database_list").fetchone()[2]
        self._wal = database + "-wal"
        self._files: list[str] = []  # for the syncer: the WAL and the database, and who they are
        #: Why nothing more can be written or read (the log's files were deleted, an fsync failed), if so.
        self._gone: str | None = None
        if self._syncs:
            self._writer.execute("PRAGMA synchronous=NORMAL")  # the syncer makes each commit durable
        try:
            # A table of ours that another program made (other columns) is refused, the file untouched.
            try:
                have = table_columns(self._writer, self.path)
            except ConfigError:
                self._writer.close()
                raise
            # A log in the earlier layout, keyed by (session, seq), needs no second index for that.
            legacy = bool(have["events"]) and "id" not in have["events"]
            # In one transaction: a schema that fails half-way leaves nothing behind.
            schema = SCHEMA.replace(_EVENTS_INDEX, "") if legacy else SCHEMA
            self._writer.executescript(f"BEGIN IMMEDIATE;\n{schema}\nCOMMIT;")
            if self._syncs:  # the WAL exists now: the schema's transaction opened it
                stats = [os.stat(path) for path in (self._wal, database)]
                self._files = [self._wal, database, *(f"{s.st_dev}:{s.st_ino}" for s in stats)]
        except sqlite3.Error as e:
            if self._writer.in_transaction:
                self._writer.execute("ROLLBACK")
            self._writer.close()
            raise _open_failure(e, self.path, "make the event log in") from e

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=self.busy_timeout
            )
        except sqlite3.Error as e:
            raise _open_failure(e, self.path, "open the database") from e
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
        except sqlite3.Error as e:  # a log another process holds locked, say: this connection is done
            conn.close()
            raise _open_failure(e, self.path, "open the database") from e
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    # -- writing --------------------------------------------------------------------------------

    async def append(self, session: str, events: Sequence[Event]) -> None:
        """Add the events to this turn's batch and wait until the batch is committed."""
        await self._enqueue(((session, events),))

    async def append_many(self, logs: Sequence[tuple[str, Sequence[Event]]]) -> None:
        """Append to several sessions in one transaction: all of them are written, or none."""
        await self._enqueue(logs)

    async def sync(self) -> None:
        """Return once everything committed so far is on the disk: an empty append, answered after
        the fsync that follows it (with --sync FULL; at NORMAL, once committed)."""
        await self._enqueue(())

    def _enqueue(self, logs: Sequence[tuple[str, Sequence[Event]]]) -> asyncio.Future[None]:
        """Add `logs` to this turn's batch; the future is done once the batch is committed."""
        if self._closed or self._gone is not None:
            raise StoreUnavailable(self._gone or "the event store is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((logs, done))
        return done

    def save_snapshot(self, session: str, seq: int, body: bytes) -> None:
        """Keep a snapshot with the next batch (best effort: a lost one only means a longer fold)."""
        if self._closed:
            return
        if not self._pending and not self._snapshots:
            asyncio.get_running_loop().call_soon(self._flush)
        self._snapshots.append((session, seq, body))

    def _flush(self) -> None:
        """Commit everything appended since the last flush, then settle each caller's future.

        While a batch's fsync is in flight, appends wait for it (`_synced` then commits them): one
        commit and one fsync at a time, each covering all that collected meanwhile.
        """
        if self._in_flight is not None:
            if self._syncer_loop is asyncio.get_running_loop():
                return
            self._drop_syncer()  # its fsync was asked on a loop that is gone (asyncio.run twice)
        if self._lock_retry is not None:
            return  # a batch waits for the file's lock: its next try takes all that is pending
        batch, self._pending = self._pending, []
        if self._snapshots:
            snapshots, self._snapshots = self._snapshots, []
            try:
                self._writer.execute("BEGIN IMMEDIATE")
                self._writer.executemany(_INSERT_SNAPSHOT, snapshots)
                self._writer.execute("COMMIT")
            except sqlite3.Error:
                # Derived data: without it the next rebuild only folds a little further.
                if self._writer.in_transaction:
                    self._writer.execute("ROLLBACK")
        if not batch:
            return
        if self._gone is not None:
            _settle(batch, [StoreUnavailable(self._gone)] * len(batch))
            return
        try:
            self._write(self._writer, batch)
            outcomes: list[EnvError | None] = [None] * len(batch)
            self._locked_since = None
        except Exception as e:
            if _busy(e):  # another process holds the file: nothing in the batch is at fault
                if self._wait_for_lock(batch):
                    return
                outcomes = [_translate(e, "")] * len(batch)  # held too long: each call a 503
            else:
                # Something in the batch failed: find out which, one transaction per caller.
                self._locked_since = None
                outcomes = [self._write_alone(item) for item in batch]
        if self._syncs and None in outcomes:
            try:
                self._request_sync()
            except OSError as e:
                self._drop_syncer()
                outcomes = _not_durable(outcomes, e)
            else:
                self._in_flight = (batch, outcomes, asyncio.get_running_loop().create_future())
                return
        _settle(batch, outcomes)

    def _write_alone(self, item: _Append) -> EnvError | None:
        """Write one caller's append in a transaction of its own: None, or why it failed."""
        try:
            self._write(self._writer, [item])
        except Exception as e:
            return _translate(e, item[0][0][0] if item[0] else "")  # () is a sync
        return None

    def _wait_for_lock(self, batch: list[_Append]) -> bool:
        """True if `batch`, refused because another process holds the file locked, may wait for
        it longer: it goes back in front of the pending appends, tried again with them shortly."""
        loop = asyncio.get_running_loop()
        if self._locked_since is None:
            self._locked_since = loop.time()
        if loop.time() - self._locked_since >= self.lock_wait:
            self._locked_since = None  # waited long enough: its calls are 503s, the next batch waits anew
            return False
        self._pending[:0] = batch
        self._lock_retry = loop.call_later(LOCK_RETRY, self._retry_locked)
        return True

    def _retry_locked(self) -> None:
        self._lock_retry = None
        self._flush()

    # -- durability: the syncer ----------------------------------------------------------------

    def _request_sync(self) -> None:
        """Ask the syncer (started if need be) for an fsync of the WAL; `_synced` gets the reply."""
        loop = asyncio.get_running_loop()
        if self._syncer is not None and self._syncer_loop is not loop:
            self._drop_syncer()  # its replies go to a loop that is gone (a store used across asyncio.run)
        if self._syncer is None:
            syncer = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _SYNCER, *self._files],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                bufsize=0,
            )
            assert syncer.stdin is not None and syncer.stdout is not None
            os.set_blocking(syncer.stdout.fileno(), False)
            loop.add_reader(syncer.stdout.fileno(), self._synced)
            self._syncer, self._syncer_loop = syncer, loop
        assert self._syncer.stdin is not None
        self._syncer.stdin.write(b"s")

    def _synced(self) -> None:
        """The syncer replied: answer the batch its fsync covered, then commit what came meanwhile."""
        assert self._syncer is not None and self._syncer.stdout is not None
        try:
            replies = os.read(self._syncer.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        except OSError:
            replies = b""
        if replies and b"!" not in replies and b"g" not in replies:
            self._finish_sync(None)
        elif replies:  # its files deleted, or its fsync failed: nothing written from now on is kept
            self._gone = _GONE if b"g" in replies else _FSYNC_FAILED
            self._drop_syncer(OSError(self._gone))
        else:  # the syncer itself died: no fsync failed, a new one covers the pages written meanwhile
            self._drop_syncer(OSError("the syncer stopped"))

    def _finish_sync(self, failure: Exception | None) -> None:
        """Answer the batch whose fsync ended (a 503 each if it failed); commit the next one."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            batch, outcomes, synced = in_flight
            with contextlib.suppress(RuntimeError):  # callers on an event loop that is closed: none left
                _settle(batch, outcomes if failure is None else _not_durable(outcomes, failure))
                synced.set_result(None)
        if self._pending or self._snapshots:
            self._flush()

    def _drop_syncer(self, failure: Exception | None = None) -> None:
        """Stop the syncer; the batch still waiting on it fails (committed, not known durable)."""
        syncer, self._syncer = self._syncer, None
        if syncer is not None:
            assert syncer.stdin is not None and syncer.stdout is not None
            if self._syncer_loop is not None and not self._syncer_loop.is_closed():
                self._syncer_loop.remove_reader(syncer.stdout.fileno())
            syncer.stdin.close()
            try:
                syncer.wait(timeout=5)
            except subprocess.TimeoutExpired:
                syncer.kill()
                syncer.wait()
            syncer.stdout.close()
        if self._in_flight is not None:
            self._finish_sync(failure or OSError("the syncer stopped"))

    @staticmethod
    def _write(conn: sqlite3.Connection, batch: list[_Append]) -> None:
        rows = []
        sessions = []
        for logs, _ in batch:
            for session, events in logs:
                first = events[0] if events else None
                if first is not None and first.seq == 1 and first.kind == SEEDED:
                    # The append that holds a session's seeded event creates it: a seed, or a fork (its
                    # parent's events, copied, then its own `forked` event, the last `forked` one). A
                    # fork is indexed at the time it was made, not at its parent's.
                    forked = next((ev for ev in reversed(events) if ev.kind == FORKED), None)
                    created = forked.at if forked is not None else first.at
                    sessions.append((session, first.data["env"], created))
                for ev in events:
                    rows.append((session, ev.seq, ev.kind, ev.at, ev.hash, ev.body))
        try:
            conn.execute("BEGIN IMMEDIATE")
            if sessions:
                conn.executemany(_INSERT_SESSION, sessions)
            conn.executemany(INSERT_EVENT, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- reading --------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], R]) -> R:
        if self._closed or self._gone is not None:
            raise StoreUnavailable(self._gone or "the event store is closed")

        def call() -> R:
            try:
                return fn(self._reader())
            except sqlite3.Error as e:
                raise _translate(e, "") from e

        return await asyncio.get_running_loop().run_in_executor(self._readers, call)

    async def read(self, session: str, upto: int | None = None) -> list[Event]:
        """The session's events in seq order, up to `upto`."""
        return await self._run(lambda conn: self.read_sync(conn, session, upto))

    async def read_for_rebuild(self, session: str) -> tuple[list[Event], bytes | None]:
        """What a rebuild needs: the latest snapshot (or None) and the events to fold with it.

        With a snapshot at seq k: the seeded event, then events k, k+1 … (k for its hash); without
        one, the whole log.
        """

        def read(conn: sqlite3.Connection) -> tuple[list[Event], bytes | None]:
            latest = conn.execute(
                "SELECT seq, body FROM snapshots WHERE session = ? ORDER BY seq DESC LIMIT 1", (session,)
            ).fetchone()
            if latest is None:
                return self.read_sync(conn, session), None
            rows = conn.execute(
                "SELECT seq, body, hash FROM events WHERE session = ? AND (seq = 1 OR seq >= ?) ORDER BY seq",
                (session, latest[0]),
            ).fetchall()
            return _decoded(session, rows), latest[1]

        return await self._run(read)

    @staticmethod
    def snapshots_sync(conn: sqlite3.Connection, session: str) -> dict[int, bytes]:
        """A session's snapshots by seq, read on a given connection (for replay's check)."""
        rows = conn.execute("SELECT seq, body FROM snapshots WHERE session = ?", (session,))
        return {seq: body for seq, body in rows}

    @staticmethod
    def read_sync(conn: sqlite3.Connection, session: str, upto: int | None = None) -> list[Event]:
        """Read a session's events on a given connection (for tools that work outside a loop)."""
        rows = conn.execute(
            "SELECT seq, body, hash FROM events WHERE session = ? AND seq <= ? ORDER BY seq",
            (session, upto if upto is not None else 2**62),
        ).fetchall()
        return _decoded(session, rows)

    async def info(self, session: str) -> SessionInfo | None:
        """The summary of one session."""
        rows = await self._run(
            lambda conn: conn.execute(_SESSION_INFO + " WHERE s.id = ?", (session,)).fetchall()
        )
        return SessionInfo(*rows[0]) if rows else None

    async def sessions(self, env: str | None = None, limit: int = 1000, offset: int = 0) -> list[SessionInfo]:
        """Sessions in creation order."""
        return await self._run(lambda conn: self.sessions_sync(conn, env, limit, offset))

    @staticmethod
    def sessions_sync(
        conn: sqlite3.Connection, env: str | None = None, limit: int = 1000, offset: int = 0
    ) -> list[SessionInfo]:
        """Sessions in creation order, read on a given connection (for `esenv sessions`)."""
        where, params = (" WHERE s.env = ?", [env]) if env else ("", [])
        sql = _SESSION_INFO + where + " ORDER BY s.created_at, s.id LIMIT ? OFFSET ?"
        return [SessionInfo(*row) for row in conn.execute(sql, [*params, limit, offset])]

    async def close(self) -> None:
        """Commit everything appended so far, then close every connection."""
        if self._closed:
            return
        self._closed = True
        self._flush()
        # The last fsyncs (each commits what waited on it), and a batch waiting for the file's lock.
        while self._in_flight is not None or self._lock_retry is not None:
            if self._in_flight is not None:
                await asyncio.wait([self._in_flight[2]])
            else:
                await asyncio.sleep(LOCK_RETRY)
        self._drop_syncer()  # its stdin closed, it exits
        self._readers.shutdown(wait=True)
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

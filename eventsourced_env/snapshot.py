"""A consistent, read-only view of an event log file, session by session, for export and stats.

A `Snapshot` opens the SQLite file on its own read-only connection and starts one read
transaction: in WAL mode that pins the log as it was at the first read, so a server that keeps
appending changes nothing of what the snapshot sees, and the snapshot can never write to the log
(SQLite may create the empty `-wal` and `-shm` files that WAL readers share, if they are missing;
on read-only storage, where it cannot, a log whose WAL is empty is read as an immutable file).
Sessions are read one at a time (a cursor over the `sessions` index, then that session's events),
so memory holds one session's events, never the log.

A session's summary (status, counts, reward…) is read off its events, not folded through an
environment: the export and stats need no environment code. Sits on top, next to `server` and
`cli`; imports `events`, `sqlite_store` and `errors`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import orjson

from .errors import ConfigError, EnvError, StoreUnavailable
from .events import CLOSED, FORKED, SEEDED, TOOL_CALLED, TOOL_REJECTED, VERIFIED, Event
from .sqlite_store import SqliteStore, table_columns
from .store import SessionInfo

__all__ = [
    "STATUSES",
    "Filters",
    "SessionLog",
    "SessionSummary",
    "Snapshot",
    "parse_time",
]

#: SQLite's words for a file the system will not let us read now (as against one that is not a log).
_REFUSED = ("locked", "disk i/o error", "unable to open", "busy")

STATUSES: Final = ("open", "verified", "closed")


def parse_time(text: str) -> float:
    """An ISO 8601 date or datetime as seconds since the epoch; a time without an offset is UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{text!r} is not an ISO date or datetime (e.g. 2025-06-01 or 2025-06-01T12:30:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


@dataclass(frozen=True, slots=True)
class Filters:
    """Which sessions to read. Every filter given must hold; none given means every session.

    `since`/`until` bound the session's creation time (when it was seeded, or forked): `since`
    is inclusive, `until` exclusive. `status` is one of `STATUSES` (see `SessionSummary.status`);
    `verified_only` keeps sessions with at least one verified event, closed or not.
    """

    env: str | None = None
    sessions: Sequence[str] = ()
    since: float | None = None
    until: float | None = None
    status: str | None = None
    verified_only: bool = False

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise ConfigError(f"status must be one of {', '.join(STATUSES)}, not {self.status!r}")

    def _where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.env is not None:
            clauses.append("env = ?")
            params.append(self.env)
        if self.sessions:
            # One JSON parameter instead of one `?` per id: no limit on how many ids are named.
            clauses.append("id IN (SELECT value FROM json_each(?))")
            params.append(orjson.dumps(list(self.sessions)).decode())
        if self.since is not None:
            clauses.append("created_at >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("created_at < ?")
            params.append(self.until)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def admits(self, summary: SessionSummary) -> bool:
        """Whether a session passes the filters that depend on its events (status, verified)."""
        if self.status is not None and summary.status != self.status:
            return False
        return not (self.verified_only and summary.verified_at is None)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _reward(value: Any) -> float | None:
    """A recorded reward; None where a log written before rewards had to be finite holds null."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass(slots=True)
class SessionSummary:
    """One session as its events describe it.

    `status` is `closed` if the log has a `closed` event, else `verified` if it has a `verified`
    event, else `open`. The reward, its components and the verifier version are the latest
    verified event's. `task_index`/`rollout_index` are the seed row's `_ng_task_index` and
    `_ng_rollout_index` when they are integers; `parent` is the session it was forked from: the
    latest `forked` event's (a fork of a fork also holds the copied `forked` event of its parent).
    """

    id: str
    env: str
    created_at: float
    updated_at: float
    env_version: str | None = None
    seed: int | None = None
    row: dict[str, Any] | None = None
    task_index: int | None = None
    rollout_index: int | None = None
    parent: str | None = None
    events: int = 0
    calls: int = 0
    rejected: int = 0
    closed: bool = False
    reward: float | None = None
    #: Why the latest verification could not score (`{"kind": "judge", "error": ...}`): its 0 is no sample.
    failure: dict[str, Any] | None = None
    reward_components: dict[str, float] = field(default_factory=dict)
    verifier_version: str | None = None
    response: Any = None
    verified_at: float | None = None

    @property
    def status(self) -> str:
        """`closed`, `verified` or `open` (see the class docstring)."""
        if self.closed:
            return "closed"
        return "verified" if self.verified_at is not None else "open"

    @classmethod
    def of(cls, id: str, env: str, created_at: float, events: list[Event]) -> SessionSummary:
        """Read a session's summary off its events."""
        summary = cls(id, env, created_at, events[-1].at if events else created_at, events=len(events))
        for event in events:
            data = event.data
            if event.kind == SEEDED:
                row = data.get("row")
                summary.env_version = data.get("env_version")
                summary.seed = _int_or_none(data.get("seed"))
                if isinstance(row, dict):
                    summary.row = row
                    summary.task_index = _int_or_none(row.get("_ng_task_index"))
                    summary.rollout_index = _int_or_none(row.get("_ng_rollout_index"))
            elif event.kind == TOOL_CALLED:
                summary.calls += 1
            elif event.kind == TOOL_REJECTED:
                summary.rejected += 1
            elif event.kind == VERIFIED:
                summary.reward = _reward(data.get("reward"))
                failure = data.get("failure")
                summary.failure = failure if isinstance(failure, dict) else None
                summary.reward_components = data.get("components") or {}
                summary.verifier_version = data.get("verifier_version")
                summary.response = data.get("response")
                summary.verified_at = event.at
            elif event.kind == FORKED:
                summary.parent = data.get("parent")
            elif event.kind == CLOSED:
                summary.closed = True
        return summary


@dataclass(frozen=True, slots=True)
class SessionLog:
    """A session's summary and its events, in seq order."""

    summary: SessionSummary
    events: list[Event]


class Snapshot:
    """One read transaction over an event log file, on a read-only connection of its own."""

    #: Seconds to wait for a lock another process holds on the file before giving up.
    busy_timeout: float = 5.0

    def __init__(self, db: str | Path) -> None:
        self.path = Path(db)
        if not self.path.is_file():
            raise ConfigError(f"no event log at {str(db)!r} (give --db PATH, or set ESENV_DB)")
        self._snapshotted: set[str] | None = None
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            self._conn = self._begin(uri)
        except sqlite3.OperationalError as e:
            if "unable to open" not in str(e).lower() or not self._wal_is_empty():
                raise self._refused(e) from e
            # Read-only storage (an archived log): SQLite cannot make the shared-memory file a WAL
            # reader needs beside it. With no WAL to read, nobody writing (nobody can) and every
            # event in the file itself, the file is read as it stands.
            try:
                self._conn = self._begin(uri + "&immutable=1")
            except sqlite3.Error as again:
                raise self._refused(again) from again
        except sqlite3.Error as e:
            raise self._refused(e) from e

    def _begin(self, uri: str) -> sqlite3.Connection:
        """A read-only connection to `uri`, its read transaction begun and the tables checked."""
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=self.busy_timeout)
        except sqlite3.Error as e:
            raise ConfigError(f"cannot open the event log {str(self.path)!r}: {e}") from e
        try:
            conn.execute("BEGIN")
            # The first read pins the WAL snapshot; every later read in this transaction sees it.
            conn.execute("SELECT count(*) FROM events WHERE session = ''").fetchone()
            conn.execute("SELECT count(*) FROM sessions WHERE id = ''").fetchone()
            # An `events` or `sessions` table of another program's (other columns) is no log either.
            table_columns(conn, str(self.path))
        except BaseException:
            conn.close()
            raise
        return conn

    def _wal_is_empty(self) -> bool:
        """Whether the log's WAL holds nothing (no file, or an empty one): all its events are in the file."""
        try:
            # Beside the file the path resolves to, as SQLite keeps it (the log was opened resolved).
            return Path(f"{self.path.resolve()}-wal").stat().st_size == 0
        except FileNotFoundError:
            return True

    def _refused(self, e: sqlite3.Error) -> EnvError:
        db = str(self.path)
        if isinstance(e, sqlite3.OperationalError) and any(w in str(e).lower() for w in _REFUSED):
            # The file may well be a log: the system will not let us read it now.
            return StoreUnavailable(f"cannot read the event log {db!r} now: {e}")
        return ConfigError(f"{db!r} is not an event log: {e}")

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """End the read transaction and close the connection."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        self._conn.close()

    def snapshots(self, session: str) -> dict[int, bytes]:
        """The session's stored state snapshots by seq (derived data, for replay to check)."""
        if self._snapshotted is None:  # few sessions have any: one query, not one per session
            has_table = self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'snapshots'"
            ).fetchone()
            # A log from before state snapshots has no table of them, and so none to check.
            rows = self._conn.execute("SELECT DISTINCT session FROM snapshots") if has_table else []
            self._snapshotted = {s for (s,) in rows}
        if session not in self._snapshotted:
            return {}
        return SqliteStore.snapshots_sync(self._conn, session)

    def events(self, session: str) -> list[Event]:
        """One session's events in seq order (none if the log has no such session)."""
        return SqliteStore.read_sync(self._conn, session)

    def infos(self, env: str | None = None, limit: int = 1000) -> list[SessionInfo]:
        """A summary of each session (its last event), oldest first; only `env`'s if given."""
        return SqliteStore.sessions_sync(self._conn, env, limit)

    def ids(self, filters: Filters) -> list[str]:
        """The ids of the sessions that pass the filters on the session index, oldest first.

        Like `count()`, before the filters that depend on events (status, verified).
        """
        where, params = filters._where()
        sql = "SELECT id FROM sessions" + where + " ORDER BY created_at, id"
        return [id for (id,) in self._conn.execute(sql, params)]

    def require(self, sessions: Sequence[str]) -> None:
        """Raise ConfigError naming the sessions of `sessions` the log does not have: a session id
        given on the command line that is not there is a mistake in the command, not an empty result."""
        named = list(dict.fromkeys(sessions))
        known = set(self.ids(Filters(sessions=named))) if named else set()
        missing = [session for session in named if session not in known]
        if missing:
            listed = ", ".join(map(repr, missing[:5])) + (
                f" and {len(missing) - 5} more" if missing[5:] else ""
            )
            raise ConfigError(
                f"no session{'s' if missing[1:] else ''} {listed} in the event log {str(self.path)!r}"
            )

    def count(self, filters: Filters) -> int:
        """How many sessions pass the filters on the session index (before status filters)."""
        where, params = filters._where()
        row = self._conn.execute("SELECT count(*) FROM sessions" + where, params).fetchone()
        return int(row[0])

    def sessions(
        self, filters: Filters, progress: Callable[[int], None] | None = None
    ) -> Iterator[SessionLog]:
        """The sessions that pass `filters`, oldest first, each with its events.

        `progress(1)` is called once per session read, kept or not (as many as `count()`).
        """
        where, params = filters._where()
        cursor = self._conn.execute(
            "SELECT id, env, created_at FROM sessions" + where + " ORDER BY created_at, id", params
        )
        for id, env, created_at in cursor:
            events = self.events(id)
            if progress is not None:
                progress(1)
            summary = SessionSummary.of(id, env, created_at, events)
            if filters.admits(summary):
                yield SessionLog(summary, events)

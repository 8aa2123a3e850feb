"""The event store interface: what any backend (SQLite now, PostgreSQL later) must do.

A store keeps one append-only log per session, keyed by (session, seq). It never updates or
deletes an event. Depends only on `events`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from .events import Event

__all__ = ["SessionInfo", "Store"]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session as the store sees it: its environment, when it was created (seeded, or forked), and
    its last event."""

    id: str
    env: str
    created_at: float
    last_seq: int
    last_kind: str
    updated_at: float

    def to_json(self) -> dict[str, object]:
        """The summary as JSON (for `GET /sessions` and `esenv sessions --json`)."""
        return {
            "id": self.id,
            "env": self.env,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "events": self.last_seq,
            "last_kind": self.last_kind,
        }


class Store(ABC):
    """An append-only, per-session event log.

    Session ids are 1 to 128 characters of ASCII letters, digits and `_ . : -`
    (`sessions.SESSION_ID_PATTERN`): the server never writes, reads or asks about another.
    """

    @abstractmethod
    async def append(self, session: str, events: Sequence[Event]) -> None:
        """Durably append `events` to `session`'s log; returns only once they are committed.

        The events' seqs must be the log's next ones: a seq already taken (seq 1 of an existing
        session too) raises `Conflict` and nothing of the call is written. Faults raise
        `StoreUnavailable` (try later) or `StoreError`, never another exception (the server answers
        one with a 500); an append that may have been written all the same (a commit whose outcome
        is unknown) is a `StoreUnavailable`: a retry under the same idempotency key finds it.

        A session's first append creates it: its `seeded` event (seq 1, `data["env"]` its
        environment), or a fork's: its parent's first events copied, then its own `forked` event
        (the fork's creation time). Keep each event's `body` and `hash`: `read` gives back events
        equal to these (`events.decode_event(body, hash)` rebuilds one).
        """

    async def append_many(self, logs: Sequence[tuple[str, Sequence[Event]]]) -> None:
        """Append to several sessions (the forks of one request), all or nothing if the backend can
        (one transaction); this default appends them one after the other, so a fault part way
        leaves the first ones written."""
        for session, events in logs:
            await self.append(session, events)

    async def sync(self) -> None:
        """Return once everything committed so far is durable (what a retried call waits for).

        This default does nothing: a store whose `append` returns only once its events are durable
        has nothing more to wait for. One that can commit and then fail to make durable (the SQLite
        store's fsync, done apart) waits here for its next one.
        """
        return None

    @abstractmethod
    async def read(self, session: str, upto: int | None = None) -> list[Event]:
        """The session's events in seq order (up to and including seq `upto`); empty if unknown."""

    @abstractmethod
    def save_snapshot(self, session: str, seq: int, body: bytes) -> None:
        """Keep a snapshot of the session's state after `seq` (derived data: best effort, not awaited).

        `body` is opaque (the server's JSON); `read_for_rebuild` gives the latest back. It is called
        after the call it follows is committed: an error it raises is logged and ignored (the call
        is answered all the same), so a backend may as well drop a snapshot it cannot keep.
        """

    @abstractmethod
    async def read_for_rebuild(self, session: str) -> tuple[list[Event], bytes | None]:
        """The latest snapshot (or None) and the events to fold with it, in seq order: seq 1, then
        from the snapshot's seq on (without one, the whole log); `([], None)` if unknown."""

    @abstractmethod
    async def info(self, session: str) -> SessionInfo | None:
        """The summary of one session, or None if the store has no such session."""

    @abstractmethod
    async def sessions(self, env: str | None = None, limit: int = 1000, offset: int = 0) -> list[SessionInfo]:
        """Sessions in creation order (`SessionInfo.created_at`: a fork's is its `forked` event's
        time), optionally of one environment (None: all; never ""), paged."""

    @abstractmethod
    async def close(self) -> None:
        """Flush every pending append and release the backend's resources."""

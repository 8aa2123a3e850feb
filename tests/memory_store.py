"""A plain in-memory `Store`, written from the interface's docstrings only: a second backend for the
tests, to check that the server relies on nothing but the documented contract."""

from __future__ import annotations

from collections.abc import Sequence

from eventsourced_env import Conflict, Event, SessionInfo, Store


class MemoryStore(Store):
    """Every session's events in a list; `append_many` is all or nothing (checked, then written)."""

    def __init__(self) -> None:
        self.logs: dict[str, list[Event]] = {}
        self.created: dict[str, tuple[str, float]] = {}  # session -> (env, created_at)
        self.snapshots: dict[str, dict[int, bytes]] = {}
        self.asked: list[str] = []  # every session id a read was asked about
        self.closed = False

    def _check(self, session: str, events: Sequence[Event]) -> None:
        have = len(self.logs.get(session, ()))
        for i, event in enumerate(events):
            if event.seq != have + 1 + i:
                raise Conflict(f"session {session!r}: seq {event.seq} is not the log's next ({have + 1 + i})")

    def _write(self, session: str, events: Sequence[Event]) -> None:
        if not events:
            return
        if session not in self.logs:  # seeded, or forked: its `forked` event (the last) dates it
            forked = [e for e in events if e.kind == "forked"]
            self.created[session] = (events[0].data["env"], (forked[-1] if forked else events[0]).at)
        self.logs.setdefault(session, []).extend(events)

    async def append(self, session: str, events: Sequence[Event]) -> None:
        self._check(session, events)
        self._write(session, events)

    async def append_many(self, logs: Sequence[tuple[str, Sequence[Event]]]) -> None:
        for session, events in logs:
            self._check(session, events)
        for session, events in logs:
            self._write(session, events)

    async def read(self, session: str, upto: int | None = None) -> list[Event]:
        self.asked.append(session)
        return [e for e in self.logs.get(session, ()) if upto is None or e.seq <= upto]

    def save_snapshot(self, session: str, seq: int, body: bytes) -> None:
        self.snapshots.setdefault(session, {})[seq] = body

    async def read_for_rebuild(self, session: str) -> tuple[list[Event], bytes | None]:
        self.asked.append(session)
        log = self.logs.get(session, [])
        snapshots = self.snapshots.get(session)
        if not snapshots or not log:
            return list(log), None
        seq = max(snapshots)
        return [e for e in log if e.seq == 1 or e.seq >= seq], snapshots[seq]

    def _info(self, session: str) -> SessionInfo:
        env, created_at = self.created[session]
        last = self.logs[session][-1]
        return SessionInfo(session, env, created_at, last.seq, last.kind, last.at)

    async def info(self, session: str) -> SessionInfo | None:
        self.asked.append(session)
        return self._info(session) if session in self.logs else None

    async def sessions(self, env: str | None = None, limit: int = 1000, offset: int = 0) -> list[SessionInfo]:
        ids = sorted(self.created, key=lambda s: (self.created[s][1], s))
        ids = [s for s in ids if env is None or self.created[s][0] == env]
        return [self._info(s) for s in ids[offset : offset + limit]]

    async def close(self) -> None:
        self.closed = True

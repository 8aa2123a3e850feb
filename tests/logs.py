"""Event logs for the export and stats tests: a small fixed one, a large synthetic one, a raw reader."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from environments.counter import env as counter_env
from eventsourced_env import ArgumentsInvalid, ToolNotFound
from eventsourced_env.events import Event, decode_event, make_event
from eventsourced_env.sessions import Sessions
from eventsourced_env.sqlite_store import INSERT_EVENT, SCHEMA, SqliteStore
from tests.conftest import row


def build_fixed_log(db: Path) -> dict[str, str]:
    """Six counter sessions in three task groups, each event at a fixed time; returns {"s1": id, …}.

    s1 (task 0): seed 100, increment 2 at 101, verify 103 (reward 1)
    s2 (task 0): seed 200, increment 1 at 202, verify 203 (0)
    s3 (task 0): seed 300, a rejected call at 300.5, increment 1 at 304, verify 305 (0), close 306
    s4 (task 1): seed 400, increment 3 at 401, get value 401.5, verify 402 (1)
    s5 (task 1): seed 500, increment 1 at 504, verify 505 (0)
    s6 (task 2): seed 600, an unknown tool at 602 (rejected); never verified
    """

    async def build() -> dict[str, str]:
        now = [0.0]
        store = SqliteStore(db)
        sessions = Sessions(counter_env, store, clock=lambda: now[0])
        ids: dict[str, str] = {}

        def at(t: float) -> Sessions:
            now[0] = t
            return sessions

        async def rollout(name: str, t: float, task: int, rollout: int, expected: int) -> str:
            row_ = row(expected=expected, _ng_task_index=task, _ng_rollout_index=rollout)
            ids[name] = await at(t).seed(row_)
            return ids[name]

        s = await rollout("s1", 100, 0, 0, 2)
        await at(101).call(s, "increment_counter", {"count": 2})
        await at(103).verify(s, {"output": [], "id": "r1"})
        s = await rollout("s2", 200, 0, 1, 2)
        await at(202).call(s, "increment_counter", {"count": 1})
        await at(203).verify(s, {"output": [], "id": "r2"})
        s = await rollout("s3", 300, 0, 2, 2)
        with contextlib.suppress(ArgumentsInvalid):
            await at(300.5).call(s, "increment_counter", {"count": "x"})
        await at(304).call(s, "increment_counter", {"count": 1})
        await at(305).verify(s, {"output": [], "id": "r3"})
        await at(306).close(s)
        s = await rollout("s4", 400, 1, 0, 3)
        await at(401).call(s, "increment_counter", {"count": 3})
        await at(401.5).call(s, "get_counter_value", {})
        await at(402).verify(s, {"output": [], "id": "r4"})
        s = await rollout("s5", 500, 1, 1, 3)
        await at(504).call(s, "increment_counter", {"count": 1})
        await at(505).verify(s, {"output": [], "id": "r5"})
        s = await rollout("s6", 600, 2, 0, 3)
        with contextlib.suppress(ToolNotFound):
            await at(602).call(s, "nonesuch", {})
        await store.close()
        return ids

    return asyncio.run(build())


def build_big_log(db: Path, sessions: int, calls: int) -> int:
    """`sessions` counter sessions of seed + `calls` tool calls + verify, written straight to SQLite."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    conn.execute("BEGIN")
    for i in range(sessions):
        session = f"big-{i:08d}"
        at = 1_750_000_000.0 + i
        seeded = make_event(
            "", 1, "seeded", at, {"env": "counter", "env_version": "1", "seed": i, "row": row(expected=calls)}
        )
        events = [seeded]
        for seq in range(2, calls + 2):
            data = {"tool": "increment_counter", "args": {"count": 1}, "observation": {"success": True}}
            events.append(make_event(events[-1].hash, seq, "tool_called", at + seq * 0.01, data))
        verified = {
            "reward": 1.0,
            "components": {},
            "details": {},
            "verifier_version": "1+x",
            "response": {"output": []},
        }
        events.append(make_event(events[-1].hash, calls + 2, "verified", at + 0.5, verified))
        conn.execute("INSERT INTO sessions VALUES (?, ?, ?)", (session, "counter", at))
        conn.executemany(
            INSERT_EVENT,
            [(session, e.seq, e.kind, e.at, e.hash, e.body) for e in events],
        )
    conn.execute("COMMIT")
    conn.close()
    return sessions * (calls + 2)


def read_log(db: Path) -> dict[str, tuple[str, list[Event]]]:
    """Every session's environment and events, read straight from the SQLite file, oldest first."""
    conn = sqlite3.connect(db)
    logs: dict[str, tuple[str, list[Event]]] = {}
    for session, env in conn.execute("SELECT id, env FROM sessions ORDER BY created_at, id"):
        events = conn.execute("SELECT body, hash FROM events WHERE session = ? ORDER BY seq", (session,))
        logs[session] = (env, [decode_event(body, hash_) for body, hash_ in events])
    conn.close()
    return logs


def lifted(columns: dict[str, Any]) -> dict[str, Any]:
    """An event's data rebuilt from an exported row's lifted columns and `extra` (all already parsed)."""
    data = {
        k: columns[k] for k in ("tool", "args", "observation", "error", "reward") if columns[k] is not None
    }
    return {**data, **(columns["extra"] or {})}


def delete_log(db: Path) -> None:
    """Delete a log's files, as an operator's `rm` would."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink()

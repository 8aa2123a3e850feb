"""The issue's reference prototype, rebuilt: what durable event logging costs when it does nothing else.

Issue 6 sets its targets from "a 100-line event-sourced prototype (pydantic validation, hash
chain, SQLite group commit, durable before reply)" measured on another machine. This is that
prototype, so `tools/bench.py --prototype` can measure it side by side with ours and the ceiling
on this one: the same protocol subset as `tools/ceiling_server.py` (seed_session,
increment_counter, get_counter_value, verify; the session in a cookie on every reply), plus

- pydantic validation of the seed row and of each call's arguments;
- every call an event `{"seq", "kind", "at", "prev", "data"}` (orjson), chained by SHA-256;
- group commit: the events appended during one turn of the event loop go into one SQLite
  transaction at the end of the turn (WAL, `synchronous=FULL`: one fsync per batch);
- each reply sent only after its event's batch is committed.

What it skips that ours does: a store interface, per-session ordering beyond the single thread,
folding state from the log (a restart loses every session), idempotency keys, rejected calls as
events, snapshots, a session index, errors as JSON, every route but these four. Prints its URL on
stdout when ready, like `esenv serve`.

    python tools/prototype_server.py --port 0 [--db FILE]   # a temporary file by default
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import secrets
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel

from eventsourced_env.server import serve

COOKIE = "esenv_session"


class Row(BaseModel):
    """A counter row."""

    initial_count: int = 0
    expected_count: int | None = None


class Increment(BaseModel):
    """The arguments of increment_counter."""

    count: int


class Log:
    """An append-only SQLite log with group commit: one transaction per turn of the event loop."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS events"
            " (id INTEGER PRIMARY KEY, session TEXT, seq INTEGER, hash TEXT, body BLOB)"
        )
        self.conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS by_session ON events (session, seq)")
        self.pending: list[tuple[tuple[str, int, str, bytes], asyncio.Future[None]]] = []

    async def append(self, session: str, seq: int, kind: str, prev: str, data: Any) -> str:
        """Append one event and wait until it is committed; its hash."""
        body = orjson.dumps({"seq": seq, "kind": kind, "at": time.time(), "prev": prev, "data": data})
        digest = hashlib.sha256(body).hexdigest()
        loop = asyncio.get_running_loop()
        if not self.pending:
            loop.call_soon(self.commit)
        done = loop.create_future()
        self.pending.append(((session, seq, digest, body), done))
        await done
        return digest

    def commit(self) -> None:
        """Write this turn's batch in one transaction (an fsync), then wake its callers."""
        batch, self.pending = self.pending, []
        self.conn.execute("BEGIN")
        self.conn.executemany(
            "INSERT INTO events (session, seq, hash, body) VALUES (?, ?, ?, ?)", [r for r, _ in batch]
        )
        self.conn.execute("COMMIT")
        for _, done in batch:
            done.set_result(None)


class Session:
    """A live session: its counter, its target, and where its log stands."""

    __slots__ = ("count", "expected", "hash", "seq")

    def __init__(self, count: int, expected: int | None) -> None:
        self.count, self.expected, self.seq, self.hash = count, expected, 0, ""

    async def record(self, log: Log, session: str, kind: str, data: Any) -> None:
        """Append the session's next event (durably)."""
        self.seq += 1
        self.hash = await log.append(session, self.seq, kind, self.hash, data)


def create_app(log: Log) -> web.Application:
    """The prototype app, logging to `log`."""
    sessions: dict[str, Session] = {}

    def reply(data: Any, session: str) -> web.Response:
        response = web.Response(body=orjson.dumps(data), content_type="application/json")
        response.headers.add("Set-Cookie", f"{COOKIE}={session}; HttpOnly; Path=/; SameSite=Lax")
        return response

    def incoming(request: web.Request) -> tuple[str, Session]:
        for part in request.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and value in sessions:
                return value, sessions[value]
        raise web.HTTPNotFound(text="unknown session")

    async def seed_session(request: web.Request) -> web.Response:
        row = Row.model_validate_json(await request.read())
        session = secrets.token_urlsafe(16)
        state = sessions[session] = Session(row.initial_count, row.expected_count)
        await state.record(log, session, "seeded", {"row": row.model_dump()})
        return reply({"session_id": session}, session)

    async def increment_counter(request: web.Request) -> web.Response:
        session, state = incoming(request)
        args = Increment.model_validate_json(await request.read())
        observation = {"success": True}
        data = {"tool": "increment_counter", "args": args.model_dump(), "observation": observation}
        await state.record(log, session, "tool_called", data)
        state.count += args.count
        return reply(observation, session)

    async def get_counter_value(request: web.Request) -> web.Response:
        session, state = incoming(request)
        await request.read()
        observation = {"count": state.count}
        data = {"tool": "get_counter_value", "args": {}, "observation": observation}
        await state.record(log, session, "tool_called", data)
        return reply(observation, session)

    async def verify(request: web.Request) -> web.Response:
        session, state = incoming(request)
        body = orjson.loads(await request.read())
        body["reward"] = 1.0 if state.count == state.expected else 0.0
        await state.record(log, session, "verified", {"reward": body["reward"]})
        return reply(body, session)

    app = web.Application()
    for handler in (seed_session, increment_counter, get_counter_value, verify):
        app.router.add_post("/" + handler.__name__, handler)
    return app


def main(argv: list[str] | None = None) -> None:
    """Command line: serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--db", type=Path, default=None, help="The log file (default: a temporary one).")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="esenv-prototype-") as tmp:
        log = Log(args.db or Path(tmp) / "log.db")
        asyncio.run(
            serve(
                create_app(log), host=args.host, port=args.port, announce=lambda url: print(url, flush=True)
            )
        )
    sys.exit(0)


if __name__ == "__main__":
    main()

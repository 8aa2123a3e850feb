"""The `Store` contract, run against every backend: SQLite and the in-memory one of the tests.

A new backend is checked by adding a factory for it to `BACKENDS` (README: "Writing a store
backend"). Then the server is driven over the in-memory store, to check that it relies on nothing
but this contract.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import DummyCookieJar

from environments.counter import env as counter_env
from eventsourced_env import Conflict, SqliteStore, Store
from eventsourced_env.events import Event, make_event
from eventsourced_env.server import HEADER, SESSIONS, create_app
from tests.conftest import ClientFactory, row
from tests.memory_store import MemoryStore

#: Each backend: a fresh, empty store in a given (empty) folder.
BACKENDS: dict[str, Callable[[Path], Store]] = {
    "sqlite": lambda folder: SqliteStore(folder / "log.db"),
    "memory": lambda folder: MemoryStore(),
}


@pytest.fixture(params=sorted(BACKENDS))
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    store = BACKENDS[request.param](tmp_path)
    yield store
    await store.close()


def log(n: int, env: str = "counter", at: float = 100.0) -> list[Event]:
    """A log of n events: seeded, then tool calls, one second apart."""
    events = [make_event("", 1, "seeded", at, {"env": env, "env_version": "1", "seed": 1, "row": {}})]
    for seq in range(2, n + 1):
        data = {"tool": "t", "args": {}, "observation": seq}
        events.append(make_event(events[-1].hash, seq, "tool_called", at + seq, data))
    return events


def fork_of(parent: list[Event], at: int, when: float) -> list[Event]:
    """What a fork appends to create itself: the parent's first `at` events, then its `forked` event."""
    return [*parent[:at], make_event(parent[at - 1].hash, at + 1, "forked", when, {"parent": "p", "at": at})]


async def test_events_come_back_as_they_were_appended_in_seq_order(backend: Store) -> None:
    events = log(5)
    await backend.append("s1", events[:1])
    await backend.append("s1", events[1:])
    back = await backend.read("s1")
    assert back == events  # every field, the stored bytes and the hash included
    assert [e.body for e in back] == [e.body for e in events]
    assert await backend.read("s1", upto=2) == events[:2]
    assert await backend.read("s1", upto=99) == events


async def test_an_unknown_session_reads_as_empty(backend: Store) -> None:
    assert await backend.read("nobody") == []
    assert await backend.read_for_rebuild("nobody") == ([], None)
    assert await backend.info("nobody") is None


async def test_a_taken_seq_is_a_conflict_and_nothing_of_the_call_is_written(backend: Store) -> None:
    events = log(3)
    await backend.append("s1", events[:2])
    clash = make_event(events[0].hash, 2, "tool_called", 5.0, {"tool": "other"})
    with pytest.raises(Conflict):
        await backend.append("s1", [events[2], clash])
    with pytest.raises(Conflict):
        await backend.append("s1", log(1))  # seeding a session id again
    assert await backend.read("s1") == events[:2]


async def test_append_many_writes_every_log(backend: Store) -> None:
    parent = log(3)
    await backend.append("p", parent)
    await backend.append_many([("f1", fork_of(parent, 2, 500.0)), ("f2", fork_of(parent, 3, 501.0))])
    assert [e.seq for e in await backend.read("f1")] == [1, 2, 3]
    assert [e.seq for e in await backend.read("f2")] == [1, 2, 3, 4]


async def test_append_many_is_all_or_nothing(backend: Store) -> None:
    # Both backends here do it in one go; one that cannot (the default `append_many`) skips this.
    parent = log(3)
    await backend.append("p", parent)
    await backend.append("taken", log(1))
    with pytest.raises(Conflict):
        await backend.append_many([("f1", fork_of(parent, 2, 500.0)), ("taken", log(1))])
    assert await backend.read("f1") == []


async def test_a_summary_says_the_env_the_creation_and_the_last_event(backend: Store) -> None:
    parent = log(4, env="counter", at=100.0)
    await backend.append("p", parent[:2])
    await backend.append("p", parent[2:])
    await backend.append("q", log(1, env="other", at=200.0))
    # A fork was created when it was forked (its `forked` event), not when its parent was seeded.
    await backend.append_many([("f", fork_of(parent, 2, 300.0))])
    info = await backend.info("p")
    assert info is not None
    assert (info.id, info.env, info.created_at) == ("p", "counter", 100.0)
    assert (info.last_seq, info.last_kind, info.updated_at) == (4, "tool_called", parent[-1].at)
    fork = await backend.info("f")
    assert fork is not None
    assert (fork.env, fork.created_at, fork.last_seq, fork.last_kind) == ("counter", 300.0, 3, "forked")
    assert [s.id for s in await backend.sessions()] == ["p", "q", "f"]  # in creation order
    assert [s.id for s in await backend.sessions(env="counter")] == ["p", "f"]
    assert [s.id for s in await backend.sessions(limit=1, offset=1)] == ["q"]
    assert [s.id for s in await backend.sessions(offset=3)] == []


async def test_a_rebuild_reads_the_latest_snapshot_with_seq_1_and_the_events_from_its_seq(
    backend: Store,
) -> None:
    events = log(8)
    await backend.append("s1", events)
    assert await backend.read_for_rebuild("s1") == (events, None)
    backend.save_snapshot("s1", 3, b'{"three": 3}')
    backend.save_snapshot("s1", 6, b'{"six": 6}')
    await backend.sync()  # a snapshot may be kept with the next write; sync is one
    back, snapshot = await backend.read_for_rebuild("s1")
    assert snapshot == b'{"six": 6}'
    assert back == [events[0], *events[5:]]


async def test_sync_returns_and_a_closed_store_keeps_what_was_appended(tmp_path: Path) -> None:
    # For a store that persists: what was appended before `close` is read back by a new one.
    store = SqliteStore(tmp_path / "log.db")
    await store.append("s1", log(3))
    await store.sync()
    await store.close()
    again = SqliteStore(tmp_path / "log.db")
    assert await again.read("s1") == log(3)
    await again.close()


# -- the server over the in-memory store ----------------------------------------------------------


async def test_the_server_runs_on_a_store_written_from_the_interface(aiohttp_client: ClientFactory) -> None:
    # A cache of one session and a snapshot every 2 events: nearly every call rebuilds from the store.
    store = MemoryStore()
    app = create_app(counter_env, store, cache_size=1, snapshot_every=2)
    client = await aiohttp_client(app, cookie_jar=DummyCookieJar())

    async def post(path: str, body: Any, session: str | None = None, key: str | None = None) -> Any:
        headers = {HEADER: session} if session else {}
        if key:
            headers["Idempotency-Key"] = key
        resp = await client.post(path, data=orjson.dumps(body), headers=headers)
        return resp.status, await resp.json()

    async def get(path: str) -> Any:
        resp = await client.get(path)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    status, body = await post("/seed_session", row(initial=1, expected=4))
    sid = body["session_id"]
    _, other = await post("/seed_session", row(initial=0, expected=0))
    assert await post("/increment_counter", {"count": 1}, sid, key="k") == (200, {"success": True})
    assert (await post("/increment_counter", {"count": "x"}, sid))[0] == 422  # recorded, refused
    await post("/get_counter_value", {}, other["session_id"])  # evicts sid
    assert await post("/increment_counter", {"count": 1}, sid, key="k") == (200, {"success": True})
    assert await post("/increment_counter", {"count": 2}, sid) == (200, {"success": True})
    assert (await get(f"/sessions/{sid}/state")) == {"seq": 4, "state": {"count": 4}}
    assert (await get(f"/sessions/{sid}/state?at=2")) == {"seq": 2, "state": {"count": 2}}
    assert sorted(store.snapshots[sid]) == [2, 4]

    _, forked = await post(f"/sessions/{sid}/fork", {"at": 3, "count": 2})
    first, second = forked["sessions"]
    assert (await get(f"/sessions/{first}/state")) == {"seq": 4, "state": {"count": 2}}
    # The fork carries its parent's idempotency keys: the retry is answered, not applied again.
    assert await post("/increment_counter", {"count": 1}, second, key="k") == (200, {"success": True})
    assert await post("/get_counter_value", {}, second) == (200, {"count": 2})

    status, verified = await post("/verify", {"response": {"output": []}}, sid)
    assert (status, verified["reward"]) == (200, 1.0)
    assert (await post("/close_session", {}, sid))[1]["already_closed"] is False
    assert (await post("/increment_counter", {"count": 1}, sid))[1]["error"] == "session_closed"

    listed = await get("/sessions")
    assert [s["id"] for s in listed] == [sid, other["session_id"], first, second]
    assert listed[0]["last_kind"] == "closed" and listed[2]["created_at"] >= listed[1]["created_at"]
    assert [e["seq"] for e in await get(f"/sessions/{first}/events?upto=2")] == [1, 2]
    assert (await get(f"/sessions/{first}"))["events"] == 4
    assert app[SESSIONS].live <= 1
    await client.close()
    await asyncio.sleep(0)
    assert store.closed


async def test_an_empty_env_filter_lists_every_session_on_every_backend(
    backend: Store, aiohttp_client: ClientFactory
) -> None:
    # `GET /sessions?env=` (a form's empty field): SQLite's store read "" as no filter, a backend
    # taking `env` as the docstring says ("optionally of one environment") as an env named "".
    client = await aiohttp_client(create_app(counter_env, backend), cookie_jar=DummyCookieJar())
    await client.post("/seed_session", data=orjson.dumps(row()))
    for query in ("", "?env=", "?env=counter"):
        resp = await client.get("/sessions" + query)
        assert resp.status == 200
        assert len(await resp.json()) == 1, query

"""Reliability and access rules: bad input, store faults, session lifecycle, idempotent retries, tokens."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import DummyCookieJar
from aiohttp.test_utils import TestClient

from environments.counter import env as counter_env
from eventsourced_env import Sessions, SqliteStore
from eventsourced_env.cli import main
from eventsourced_env.errors import (
    ConfigError,
    Conflict,
    InvalidRequest,
    SessionClosed,
    SessionLimit,
    TooManySessions,
)
from eventsourced_env.replay import check_log
from eventsourced_env.server import HEADER, IDEMPOTENCY_HEADER, SESSIONS, check_exposure, create_app
from tests.conftest import ClientFactory, row
from tests.test_server import Agent

DEEP = b"[" * 5000 + b"]" * 5000


async def events_of(client: TestClient[Any, Any], session: str) -> list[dict[str, Any]]:
    return [e.to_json() for e in await client.app[SESSIONS].store.read(session)]


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "recorded"),
    [
        ("/increment_counter", b"{bad json", 400, "bad_request", None),
        ("/increment_counter", DEEP, 400, "bad_request", None),
        ("/increment_counter", b'{"count": "\xff\xfe"}', 400, "bad_request", None),
        ("/increment_counter", b'{"count": 1e400}', 400, "bad_request", None),
        ("/increment_counter", b"[1, 2]", 422, "arguments_invalid", "tool_rejected"),
        ("/increment_counter", b'"just a string"', 422, "arguments_invalid", "tool_rejected"),
        ("/increment_counter", b'{"count": "three"}', 422, "arguments_invalid", "tool_rejected"),
        ("/increment_counter", b"{}", 422, "arguments_invalid", "tool_rejected"),
        ("/increment_counter", b'{"count": 1, "extra": true}', 422, "arguments_invalid", "tool_rejected"),
        (
            "/increment_counter",
            b'{"count": 123456789012345678901234567890}',  # read exactly: too big to record at all
            422,
            "unrecordable",
            None,
        ),
        ("/no_such_tool", b"{}", 404, "tool_not_found", "tool_rejected"),
        ("/verify", b"[]", 400, "bad_request", None),
        ("/seed_session", b'{"initial_count": []}', 422, "task_invalid", None),
        ("/sessions/x/fork", b'{"count": "many"}', 400, "bad_request", None),
    ],
)
async def test_bad_input_gets_a_clear_error_and_writes_only_a_rejection(
    client: TestClient[Any, Any], path: str, body: bytes, status: int, code: str, recorded: str | None
) -> None:
    agent = Agent(client)
    await agent.post("/seed_session", row(initial=1))
    sid = agent.cookie
    before = await events_of(client, sid)
    resp = await client.post(path, data=body, headers={HEADER: sid})
    assert resp.status == status
    reply = await resp.json()
    assert reply["error"] == code and reply["detail"]
    after = await events_of(client, sid)
    assert after[: len(before)] == before
    assert [e["kind"] for e in after[len(before) :]] == ([recorded] if recorded else [])
    # The server is still up and the session unharmed.
    resp = await client.post("/get_counter_value", data=b"{}", headers={HEADER: sid})
    assert await resp.json() == {"count": 1}


async def test_values_too_big_to_record_are_refused_not_crashed(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    await agent.post("/seed_session", row(initial=0))
    big = 18_446_744_073_709_551_615  # the largest integer JSON's 64 bits can carry
    assert (await agent.post("/increment_counter", {"count": big}))[:2] == (200, {"success": True})
    assert (await agent.post("/increment_counter", {"count": big}))[0] == 200
    status, reply, _ = await agent.post("/get_counter_value", {})
    assert (status, reply["error"]) == (422, "unrecordable")
    events = await client.app[SESSIONS].store.read(agent.cookie)
    assert [e.kind for e in events] == ["seeded", "tool_called", "tool_called", "tool_rejected"]
    assert check_log(counter_env, agent.cookie or "", events) is None


async def test_forged_sessions_are_404_and_create_nothing(client: TestClient[Any, Any]) -> None:
    for forged in ("AAAAAAAAAAAAAAAAAAAAAA", "../../etc/passwd", "x" * 300, "'; DROP TABLE events; --"):
        resp = await client.post("/increment_counter", data=b'{"count": 1}', headers={HEADER: forged})
        assert resp.status == 404 and (await resp.json())["error"] == "session_not_found"
    assert await client.app[SESSIONS].store.sessions() == []


def test_session_ids_are_unguessable() -> None:
    async def seed_many() -> list[str]:
        store = SqliteStore(":memory:")
        sessions = Sessions(counter_env, store)
        ids = [await sessions.seed(row()) for _ in range(500)]
        await store.close()
        return ids

    ids = asyncio.run(seed_many())
    assert len(set(ids)) == 500
    # 11 hex digits of milliseconds (ids sort by creation), then 16 random bytes in URL-safe base64.
    assert all(len(i) == 33 and int(i[:11], 16) > 0 for i in ids)
    assert len({i[11:] for i in ids}) == 500


# -- store faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "heal", "match"),
    [
        ("PRAGMA max_page_count = {pages}", "PRAGMA max_page_count = 1073741823", "full"),
        ("PRAGMA query_only = ON", "PRAGMA query_only = OFF", "readonly"),
    ],
)
async def test_store_faults_are_503_write_nothing_and_heal(
    client: TestClient[Any, Any], fault: str, heal: str, match: str
) -> None:
    agent = Agent(client)
    await agent.post("/seed_session", row(initial=0, padding="x" * 5000))
    sid = agent.cookie
    store = client.app[SESSIONS].store
    writer = store._connections[0]
    writer.execute(fault.format(pages=writer.execute("PRAGMA page_count").fetchone()[0]))
    big = "y" * 20_000
    status, reply, _ = await Agent(client).post("/seed_session", row(initial=5, padding=big))
    assert (status, reply["error"]) == (503, "store_unavailable") and match in reply["detail"]
    agent.cookie = sid
    status, reply, _ = await agent.post("/increment_counter", {"count": 1, "pad": big})
    assert (status, reply["error"]) == (503, "store_unavailable")  # not even the rejection could be written
    assert [e.kind for e in await store.read(sid)] == ["seeded"]
    writer.execute(heal)
    assert (await agent.post("/increment_counter", {"count": 4}))[:2] == (200, {"success": True})
    assert (await agent.post("/get_counter_value", {}))[1] == {"count": 4}


async def test_a_locked_database_is_503_and_service_resumes(
    aiohttp_client: ClientFactory, db_path: Path
) -> None:
    client = await aiohttp_client(
        create_app(counter_env, SqliteStore(db_path, busy_timeout=0.2, lock_wait=0.5)),
        cookie_jar=DummyCookieJar(),
    )
    agent = Agent(client)
    await agent.post("/seed_session", row(initial=0))
    other = sqlite3.connect(db_path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock, past lock_wait
    status, reply, _ = await agent.post("/increment_counter", {"count": 2})
    assert (status, reply["error"]) == (503, "store_unavailable") and "locked" in reply["detail"]
    other.execute("ROLLBACK")
    other.close()
    assert (await agent.post("/increment_counter", {"count": 3}))[0] == 200
    assert (await agent.post("/get_counter_value", {}))[1] == {"count": 3}


async def test_a_lock_another_server_holds_for_a_while_delays_calls_but_fails_none(
    aiohttp_client: ClientFactory, db_path: Path
) -> None:
    # Another server on the file holds its write lock for 0.6 s (a fork of 100 copies of a
    # 1,000-event session takes about a second): the calls made meanwhile wait for it, where each
    # batch that found the lock taken for longer than busy_timeout (0.1 s) was a 503, which NeMo
    # Gym's agent hands to the model as the tool's output.
    client = await aiohttp_client(create_app(counter_env, SqliteStore(db_path)), cookie_jar=DummyCookieJar())
    agents = [Agent(client) for _ in range(8)]
    for agent in agents:
        await agent.post("/seed_session", row(initial=0))
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        asyncio.get_running_loop().call_later(0.6, other.execute, "ROLLBACK")
        started = time.monotonic()
        replies = await asyncio.gather(*(a.post("/increment_counter", {"count": 2}) for a in agents))
        assert [r[:2] for r in replies] == [(200, {"success": True})] * 8
        assert time.monotonic() - started >= 0.5  # they waited for the lock
        for agent in agents:
            assert (await agent.post("/get_counter_value", {}))[1] == {"count": 2}  # applied once
    finally:
        other.close()


# -- lifecycle and caps ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_idle_sessions_leave_memory_and_come_back_from_the_log(store: SqliteStore) -> None:
    clock = Clock()
    sessions = Sessions(counter_env, store, idle_ttl=60, clock=clock)
    old = await sessions.seed(row(initial=1))
    clock.now += 50
    fresh = await sessions.seed(row(initial=2))
    clock.now += 20
    assert sessions.evict_idle() == 1
    assert sessions.live == 1
    assert await sessions.call(old, "get_counter_value", {}) == {"count": 1}  # rebuilt from the log
    assert await sessions.call(fresh, "get_counter_value", {}) == {"count": 2}
    assert sessions.live == 2


async def test_caps_on_events_and_live_sessions(store: SqliteStore) -> None:
    clock = Clock()
    sessions = Sessions(counter_env, store, max_events=3, max_live=2, idle_ttl=10, clock=clock)
    a = await sessions.seed(row(initial=0, expected=2))
    await sessions.call(a, "increment_counter", {"count": 1})
    await sessions.call(a, "increment_counter", {"count": 1})
    with pytest.raises(SessionLimit, match="cap of 3 events"):
        await sessions.call(a, "increment_counter", {"count": 1})
    assert (await sessions.verify(a, {})).reward == 1.0  # verifying a full session still works
    await sessions.seed(row())
    with pytest.raises(TooManySessions, match=r"cap of 2 live sessions.*unused for 10 s leave memory"):
        await sessions.seed(row())
    clock.now += 11
    await sessions.seed(row())  # the idle ones made room
    assert sessions.live == 1


async def test_the_live_sessions_cap_holds_for_sessions_started_at_once(store: SqliteStore) -> None:
    # Each seed checked the cap, then awaited its append: seeds arriving together (a batch of
    # rollouts starting) all passed the check before any was counted, 50 sessions under a cap of 5.
    sessions = Sessions(counter_env, store, max_live=3)
    seeds = await asyncio.gather(*(sessions.seed(row()) for _ in range(10)), return_exceptions=True)
    assert sum(isinstance(s, str) for s in seeds) == 3
    assert all(isinstance(s, TooManySessions) for s in seeds if not isinstance(s, str))
    assert sessions.live == 3
    # Forks count the same way, and a refused one gives its slots back.
    sessions = Sessions(counter_env, store, max_live=4)
    parent = seeds[0]
    assert isinstance(parent, str)
    forks = await asyncio.gather(*(sessions.fork(parent, count=2) for _ in range(3)), return_exceptions=True)
    assert sum(isinstance(f, list) for f in forks) == 2
    assert sum(isinstance(f, TooManySessions) for f in forks) == 1
    assert sessions.live == 4
    # More forks at once than the cap allows in all is no 503 "retry later": no retry would pass.
    with pytest.raises(InvalidRequest, match="5 sessions at once exceed this server's cap of 4"):
        await Sessions(counter_env, store, max_live=4).fork(parent, count=5)


async def test_the_live_sessions_cap_without_an_idle_ttl_says_only_closing_makes_room(
    store: SqliteStore,
) -> None:
    # Without --idle-ttl, a session nobody closes (NeMo Gym's agent closes none) never leaves memory
    # (short of --cache-size): the 503 said "retry later" to a training run that would retry forever.
    sessions = Sessions(counter_env, store, max_live=1)
    done = await sessions.seed(row())
    await sessions.verify(done, {})
    for _ in range(2):
        with pytest.raises(TooManySessions, match=r"retry later \(only closed sessions .* no --idle-ttl"):
            await sessions.seed(row())
    await sessions.close(done)
    await sessions.seed(row())


async def test_a_retried_seed_of_a_live_session_is_answered_at_the_cap(store: SqliteStore) -> None:
    # Its session is live already: the retry (a reply lost) adds nothing, so the cap does not refuse it.
    sessions = Sessions(counter_env, store, max_live=1)
    chosen = row(_ng_session_id="rollout-1")
    assert await sessions.seed(chosen) == "rollout-1"
    assert await sessions.seed(chosen) == "rollout-1"
    with pytest.raises(TooManySessions):
        await sessions.seed(row())
    assert sessions.live == 1


async def test_a_closed_session_called_again_takes_no_live_slot(store: SqliteStore) -> None:
    # A late call on a closed session (409) rebuilt it into memory, where it stayed: the live
    # sessions' cap filled with sessions nobody can use, and new rollouts got 503s.
    sessions = Sessions(counter_env, store, max_live=2)
    done = await sessions.seed(row())
    await sessions.close(done)
    await sessions.seed(row())
    for _ in range(3):
        with pytest.raises(SessionClosed):
            await sessions.call(done, "get_counter_value", {})
    assert (await sessions.state_at(done))[1] == {"count": 0}
    assert sessions.live == 1
    await sessions.seed(row())  # room for it


async def test_caps_over_http(aiohttp_client: ClientFactory, db_path: Path) -> None:
    app = create_app(counter_env, SqliteStore(db_path), max_events=2, max_live=1)
    client = await aiohttp_client(app, cookie_jar=DummyCookieJar())
    agent = Agent(client)
    await agent.post("/seed_session", row())
    assert (await agent.post("/increment_counter", {"count": 1}))[0] == 200
    status, reply, _ = await agent.post("/increment_counter", {"count": 1})
    assert (status, reply["error"]) == (409, "session_limit")
    status, reply, _ = await Agent(client).post("/seed_session", row())
    assert (status, reply["error"]) == (503, "too_many_sessions")


# -- idempotent retries ---------------------------------------------------------------------------


async def test_a_retried_call_with_its_idempotency_key_is_applied_once(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    await agent.post("/seed_session", row(initial=0))
    sid = agent.cookie or ""
    headers = {HEADER: sid, IDEMPOTENCY_HEADER: "call-1"}
    for _ in range(3):
        resp = await client.post("/increment_counter", data=b'{"count": 5}', headers=headers)
        assert (resp.status, await resp.json()) == (200, {"success": True})
    bad = {HEADER: sid, IDEMPOTENCY_HEADER: "call-2"}
    for _ in range(2):
        resp = await client.post("/increment_counter", data=b'{"count": "five"}', headers=bad)
        assert resp.status == 422 and (await resp.json())["error"] == "arguments_invalid"
    resp = await client.post("/increment_counter", data=b'{"count": 6}', headers=headers)
    assert resp.status == 409 and "call-1" in (await resp.json())["detail"]
    assert [e["kind"] for e in await events_of(client, sid)] == ["seeded", "tool_called", "tool_rejected"]
    assert (await agent.post("/get_counter_value", {}))[1] == {"count": 5}


async def test_idempotency_keys_survive_a_restart(db_path: Path) -> None:
    store = SqliteStore(db_path)
    sid = await Sessions(counter_env, store).seed(row(initial=0))
    await Sessions(counter_env, store).call(sid, "increment_counter", {"count": 2}, key="k")
    restarted = Sessions(counter_env, store)
    assert await restarted.call(sid, "increment_counter", {"count": 2}, key="k") == {"success": True}
    with pytest.raises(Conflict):
        await restarted.call(sid, "get_counter_value", {}, key="k")
    assert await restarted.call(sid, "get_counter_value", {}) == {"count": 2}
    await store.close()


# -- access control -------------------------------------------------------------------------------


async def test_with_a_token_other_sessions_need_it(aiohttp_client: ClientFactory, db_path: Path) -> None:
    app = create_app(counter_env, SqliteStore(db_path), token="s3cret")
    client = await aiohttp_client(app, cookie_jar=DummyCookieJar())
    mine, theirs = Agent(client), Agent(client)
    await mine.post("/seed_session", row(initial=1))
    await theirs.post("/seed_session", row(initial=2))
    own = {HEADER: mine.cookie or ""}
    good = {"Authorization": "Bearer s3cret"}
    for path in ("/sessions", f"/sessions/{theirs.cookie}", f"/sessions/{theirs.cookie}/events"):
        for headers in ({}, own, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            resp = await client.get(path, headers=headers)
            assert resp.status == 401 and (await resp.json())["error"] == "unauthorized", (path, headers)
        assert (await client.get(path, headers=good)).status == 200
    for path in (
        f"/sessions/{mine.cookie}",
        f"/sessions/{mine.cookie}/events",
        f"/sessions/{mine.cookie}/state",
    ):
        assert (await client.get(path, headers=own)).status == 200
    assert (await client.post(f"/sessions/{mine.cookie}/fork", headers=own)).status == 401
    assert (await client.post(f"/sessions/{mine.cookie}/fork", headers=good)).status == 200
    # Tool calls only ever touch the caller's own session.
    assert (await mine.post("/get_counter_value", {}))[1] == {"count": 1}
    assert (await theirs.post("/get_counter_value", {}))[1] == {"count": 2}


@pytest.mark.parametrize("given", [b"Bearer \xff\xfe", b"Bearer s3cr\xc3\xa9t", b"\xff s3cret"])
async def test_a_token_that_is_not_ascii_is_a_401(
    aiohttp_client: ClientFactory, db_path: Path, given: bytes
) -> None:
    """An Authorization header that is not UTF-8 reached the comparison as text with surrogates,
    whose `.encode()` raised: a 500 where a wrong token is a 401."""
    client = await aiohttp_client(create_app(counter_env, SqliteStore(db_path), token="s3cret"))
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(b"GET /sessions HTTP/1.1\r\nHost: x\r\nAuthorization: " + given + b"\r\n\r\n")
    await writer.drain()
    head = await reader.readline()
    writer.close()
    assert head.startswith(b"HTTP/1.1 401"), head


def test_listening_beyond_loopback_needs_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    for host in ("127.0.0.1", "127.5.5.5", "::1", "localhost"):
        check_exposure(host, None, False)
    for host in ("0.0.0.0", "10.1.2.3", "example.org", "::"):
        with pytest.raises(ConfigError, match="without a token"):
            check_exposure(host, None, False)
        check_exposure(host, "tok", False)
        check_exposure(host, None, True)
    assert main(["serve", "counter", "--host", "0.0.0.0"]) == 2
    assert "--insecure" in capsys.readouterr().err

"""End to end: the real server process, driven over HTTP exactly as NeMo Gym's agent drives it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from eventsourced_env.cli import main
from eventsourced_env.events import decode_event, first_broken_link
from tests.logs import delete_log
from tests.serverproc import ServerProcess
from tools.loadgen import AgentClient, counter_row, run


def stored_logs(db: Path) -> dict[str, list[Any]]:
    """Every session's events, read straight from the SQLite file."""
    conn = sqlite3.connect(db)
    logs: dict[str, list[Any]] = {}
    for session, body, hash_ in conn.execute("SELECT session, body, hash FROM events ORDER BY session, seq"):
        logs.setdefault(session, []).append(decode_event(body, hash_))
    conn.close()
    return logs


@pytest.mark.parametrize(("rollouts", "concurrency"), [(200, 200), (2000, 64)])
async def test_concurrent_rollouts_survive_sigkill_and_continue(
    tmp_path: Path, rollouts: int, concurrency: int
) -> None:
    db = tmp_path / "e2e.db"
    with ServerProcess("counter", db) as server:
        results = await run(server.url, rollouts=rollouts, concurrency=concurrency, increments=5)
        assert [r.errors for r in results if r.errors] == []
        assert all(r.reward == 1.0 for r in results)
        server.kill()

    logs = stored_logs(db)
    assert len(logs) == rollouts
    for events in logs.values():
        assert first_broken_link(events) is None
        assert [e.seq for e in events] == list(range(1, 9))
        assert [e.kind for e in events] == ["seeded"] + ["tool_called"] * 6 + ["verified"]
    assert main(["replay", "--db", str(db)]) == 0  # every observation reproduces from the log

    with ServerProcess("counter", db) as server:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            for r in results[:300]:
                session = r.cookie.split("=", 1)[1]
                async with http.get(f"{server.url}/sessions/{session}/state") as resp:
                    assert (await resp.json())["state"] == {"count": r.expected}
            # A rollout continues with its old cookie after the restart.
            client = AgentClient(http, server.url, cookie=results[0].cookie)
            assert await client.post("/increment_counter", {"count": 1}) == (200, {"success": True})
            assert await client.post("/get_counter_value", {}) == (200, {"count": results[0].expected + 1})
            assert client.cookie == results[0].cookie
        assert server.stop() == 0


async def test_sigkill_under_load_loses_no_acknowledged_call(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    acknowledged: dict[str, int] = {}  # session -> sum of acknowledged increments
    with ServerProcess("counter", db) as server:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:

            async def rollout(i: int) -> None:
                client = AgentClient(http, server.url)
                status, body = await client.post("/seed_session", counter_row(i, 0, 0, 10_000))
                assert status == 200
                acknowledged[body["session_id"]] = 0
                for step in range(1, 1000):
                    try:
                        status, _ = await client.post("/increment_counter", {"count": step})
                    except aiohttp.ClientError:
                        return
                    if status == 200:
                        acknowledged[body["session_id"]] += step

            tasks = [asyncio.ensure_future(rollout(i)) for i in range(32)]
            while sum(1 for v in acknowledged.values() if v > 20) < 32:  # noqa: ASYNC110 - polls client-side tallies
                await asyncio.sleep(0.05)
            server.kill()
            await asyncio.gather(*tasks)

    logs = stored_logs(db)
    assert set(logs) == set(acknowledged)
    with ServerProcess("counter", db) as server:
        async with aiohttp.ClientSession() as http:
            for session, total in acknowledged.items():
                events = logs[session]
                assert first_broken_link(events) is None
                steps = [e.data["args"]["count"] for e in events if e.kind == "tool_called"]
                assert steps == list(range(1, len(steps) + 1))
                logged = sum(steps)
                # Every acknowledged call is in the log; the only extra may be the one in flight at the kill.
                assert total in (logged, logged - steps[-1])
                async with http.get(f"{server.url}/sessions/{session}/state") as resp:
                    assert (await resp.json())["state"] == {"count": logged}


async def test_a_log_deleted_under_the_server_acknowledges_nothing_more(tmp_path: Path) -> None:
    # SQLite goes on writing to the deleted file, which is gone when the server exits: what it
    # acknowledged after the deletion was lost. Now every write (and a retry) is a 503 naming why.
    db = tmp_path / "deleted.db"
    with ServerProcess("counter", db) as server:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            client = AgentClient(http, server.url)
            assert (await client.post("/seed_session", counter_row(0, 0, 0, 3)))[0] == 200
            assert await client.post("/increment_counter", {"count": 1}) == (200, {"success": True})
            delete_log(db)
            key = {"Idempotency-Key": "k1"}
            for _ in range(2):  # the call, then its retry
                status, body = await client.post("/increment_counter", {"count": 1}, key)
                assert status == 503 and body["error"] == "store_unavailable", body
                assert "deleted or replaced" in body["detail"]
            fresh = AgentClient(http, server.url)
            status, body = await fresh.post("/seed_session", counter_row(1, 0, 0, 3))
            assert status == 503 and "restart" in body["detail"], body
        assert server.stop() == 0


async def test_more_connections_than_the_shells_open_files_limit_still_get_their_calls_recorded(
    tmp_path: Path,
) -> None:
    # A shell's soft limit (1,024 on many systems; 64 here) is far below thousands of rollouts'
    # connections: the server could not start its syncer and answered every write with a 503.
    with ServerProcess("counter", tmp_path / "many.db", open_files=64) as server:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1), cookie_jar=aiohttp.DummyCookieJar()
        ) as http:
            client = AgentClient(http, server.url)
            async with http.get(server.url) as resp:
                assert resp.status == 200  # this connection is accepted and kept
            host, port = server.url.removeprefix("http://").split(":")
            others = [await asyncio.open_connection(host, int(port)) for _ in range(100)]
            await asyncio.sleep(0.5)  # the server accepts them
            status, body = await client.post("/seed_session", counter_row(0, 0, 0, 1))
            assert status == 200, body
            assert await client.post("/increment_counter", {"count": 1}) == (200, {"success": True})
            for _, writer in others:
                writer.close()
        assert server.stop() == 0


async def test_two_servers_sharing_one_log_answer_rollouts_routed_between_them(tmp_path: Path) -> None:
    # README: several servers may share one log file. Each call of a rollout goes to the server
    # the previous one did not (so each finds its fold stale), every increment is retried with its
    # Idempotency-Key on the other server, and each named seed reaches both at once.
    db = tmp_path / "shared.db"
    with ServerProcess("counter", db) as a, ServerProcess("counter", db, "--sync", "NORMAL") as b:
        urls = [a.url, b.url]
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:

            async def rollout(i: int) -> None:
                row = counter_row(i, 0, i, i + 6) | {"_ng_session_id": f"rollout-{i}"}
                seeds = await asyncio.gather(
                    *(AgentClient(http, url).post("/seed_session", row) for url in urls)
                )
                assert [status for status, _ in seeds] == [200, 200]
                client = AgentClient(http, urls[i % 2], cookie=f"esenv_session=rollout-{i}")
                for k, count in enumerate((1, 2, 3)):
                    for turn in range(2):  # the call, then its retry on the other server
                        client.base = urls[(i + k + turn) % 2]
                        reply = await client.post(
                            "/increment_counter", {"count": count}, {"Idempotency-Key": f"k{k}"}
                        )
                        assert reply == (200, {"success": True})
                client.base = urls[(i + 1) % 2]
                assert await client.post("/get_counter_value", {}) == (200, {"count": i + 6})
                client.base = urls[i % 2]
                status, reply = await client.post("/verify", row | {"response": {"output": []}})
                assert (status, reply["reward"]) == (200, 1.0)
                client.base = urls[(i + 1) % 2]
                assert (await client.post("/close_session", {}))[0] == 200

            await asyncio.gather(*(rollout(i) for i in range(60)))
        b.kill()
    logs = stored_logs(db)
    assert len(logs) == 60
    for events in logs.values():
        assert first_broken_link(events) is None
        assert [e.kind for e in events] == ["seeded"] + ["tool_called"] * 4 + ["verified", "closed"]
    assert main(["replay", "--db", str(db)]) == 0

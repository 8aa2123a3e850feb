from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import DummyCookieJar, web
from aiohttp.test_utils import TestClient

from environments.counter import env as counter_env
from eventsourced_env import (
    Args,
    Context,
    Environment,
    Event,
    SessionInfo,
    SqliteStore,
    State,
    StoreError,
    Task,
)
from eventsourced_env.server import COOKIE, HEADER, SESSIONS, create_app
from tests.conftest import ClientFactory, row
from tests.memory_store import MemoryStore


class Empty(Args):
    pass


class Agent:
    """Talks to the test server like NeMo Gym's agent: only the last reply's Set-Cookie is kept."""

    def __init__(self, client: TestClient[Any, Any]) -> None:
        self.client = client
        self.cookie: str | None = None

    async def post(self, path: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any, Any]:
        headers = {"Cookie": f"{COOKIE}={self.cookie}"} if self.cookie else {}
        data = raw if raw is not None else orjson.dumps(body if body is not None else {})
        resp = await self.client.post(path, data=data, headers=headers)
        morsel = resp.cookies.get(COOKIE)
        self.cookie = morsel.value if morsel else None
        return resp.status, await resp.json(), resp


async def test_a_rollout_the_nemo_gym_way(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    status, body, _ = await agent.post("/seed_session", row(initial=3, expected=6))
    assert status == 200 and agent.cookie == body["session_id"]
    assert (await agent.post("/increment_counter", {"count": 3}))[:2] == (200, {"success": True})
    assert (await agent.post("/get_counter_value", {}))[:2] == (200, {"count": 6})
    verify_body = {**row(initial=3, expected=6), "response": {"output": [], "id": "r"}}
    status, reply, _ = await agent.post("/verify", verify_body)
    assert status == 200
    assert reply == {**verify_body, "reward": 1.0}


async def test_every_reply_carries_the_session_even_errors(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    await agent.post("/seed_session", row(initial=1, expected=1))
    sid = agent.cookie
    for path, body, raw, status in [
        ("/increment_counter", {"count": "x"}, None, 422),
        ("/no_such_tool", {}, None, 404),
        ("/increment_counter", None, b"{not json", 400),
        ("/verify", None, b"[1]", 400),
        ("/get_counter_value", {}, None, 200),
    ]:
        got, body_, resp = await agent.post(path, body, raw=raw)
        assert got == status, (path, body_)
        assert agent.cookie == sid, path
        assert resp.headers[HEADER] == sid
        if status != 200:
            assert set(body_) >= {"error", "detail"} and body_["detail"]
    assert (await agent.post("/verify", {"response": {}}))[1]["reward"] == 1.0


async def test_errors_are_clear_json_with_the_right_status(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    status, body, resp = await agent.post("/increment_counter", {"count": 1})
    assert (status, body["error"]) == (404, "session_not_found")
    assert "seed_session" in body["detail"]
    assert COOKIE not in resp.cookies
    status, body, _ = await agent.post("/seed_session", {"initial_count": "many"})
    assert (status, body["error"]) == (422, "task_invalid")
    # Field by field, as for arguments, and without pydantic's help-page links in the message.
    assert body["errors"] == [
        {
            "loc": ["initial_count"],
            "msg": "Input should be a valid integer, unable to parse string as an integer",
            "type": "int_parsing",
        }
    ]
    assert body["detail"] == (
        "seed row does not fit 'counter''s task: initial_count: "
        "Input should be a valid integer, unable to parse string as an integer"
    )
    status, body, _ = await agent.post("/seed_session", raw=b'"a string"')
    assert (status, body["error"]) == (400, "bad_request")
    resp = await client.get("/nowhere/at/all")
    assert resp.status == 404 and (await resp.json())["error"] == "not_found"
    resp = await client.get("/increment_counter")
    assert resp.status == 405 and (await resp.json())["error"] == "method_not_allowed"
    status, body, _ = await agent.post("/increment_counter", raw=b'{"count": 1' + b"]" * 0)
    assert status == 400
    assert await client.app[SESSIONS].store.sessions() == []


async def test_invalid_arguments_are_422_and_recorded(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    await agent.post("/seed_session", row())
    status, body, _ = await agent.post("/increment_counter", {"count": 1, "by": 2})
    assert status == 422 and body["error"] == "arguments_invalid"
    assert body["errors"] == [
        {"loc": ["by"], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
    ]
    events = await (await client.get(f"/sessions/{agent.cookie}/events")).json()
    assert [e["kind"] for e in events] == ["seeded", "tool_rejected"]


async def test_session_header_works_without_cookies(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/seed_session", data=orjson.dumps(row(initial=5)))
    sid = resp.headers[HEADER]
    resp = await client.post("/get_counter_value", data=b"{}", headers={HEADER: sid})
    assert await resp.json() == {"count": 5}
    assert resp.headers[HEADER] == sid


async def test_observability_prefix_is_stripped(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    status, _, _ = await agent.post("/ng-rollout/r-17/seed_session", row(initial=2))
    assert status == 200
    assert (await agent.post("/ng-rollout/r-17/get_counter_value", {}))[1] == {"count": 2}
    assert await (await client.get("/ng-rollout/r-17/")).json() == {"status": "ok"}


async def test_liveness_tools_and_reverify_mode(client: TestClient[Any, Any]) -> None:
    assert await (await client.get("/")).json() == {"status": "ok"}
    tools = await (await client.get("/tools")).json()
    assert [t["name"] for t in tools] == ["increment_counter", "get_counter_value"]
    assert await (await client.get("/reverify_mode")).json() == "stateless"


async def test_reading_sessions_events_and_state(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    await agent.post("/seed_session", row(initial=1))
    sid = agent.cookie
    await agent.post("/increment_counter", {"count": 4})
    listing = await (await client.get("/sessions")).json()
    assert [(s["id"], s["events"], s["last_kind"]) for s in listing] == [(sid, 2, "tool_called")]
    for query in ("limit=-1", "offset=-5"):
        resp = await client.get(f"/sessions?{query}")
        assert (resp.status, (await resp.json())["error"]) == (400, "bad_request")
    info = await (await client.get(f"/sessions/{sid}")).json()
    assert info["env"] == "counter"
    events = await (await client.get(f"/sessions/{sid}/events")).json()
    assert [e["seq"] for e in events] == [1, 2] and events[1]["prev"] == events[0]["hash"]
    assert await (await client.get(f"/sessions/{sid}/state?at=1")).json() == {"seq": 1, "state": {"count": 1}}
    assert await (await client.get(f"/sessions/{sid}/state")).json() == {"seq": 2, "state": {"count": 5}}
    resp = await client.get(f"/sessions/{sid}/state?at=x")
    assert resp.status == 400
    assert [e["seq"] for e in await (await client.get(f"/sessions/{sid}/events?upto=1")).json()] == [1]
    for upto in ("0", "-1"):  # no such prefix: a bad request, not an "unknown session"
        resp = await client.get(f"/sessions/{sid}/events?upto={upto}")
        body = await resp.json()
        assert (resp.status, body["error"]) == (400, "bad_request")
        assert body["detail"] == f"upto must be a seq of 1 or more, not {upto}"
    resp = await client.get("/sessions/unknown/events")
    assert resp.status == 404 and (await resp.json())["error"] == "session_not_found"


async def test_close_session(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    await agent.post("/seed_session", row())
    status, body, _ = await agent.post("/close_session")
    assert status == 200 and body["closed"] is True
    status, body, _ = await agent.post("/get_counter_value", {})
    assert (status, body["error"]) == (409, "session_closed")


async def test_reseeding_with_another_row_is_409(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    assert (await agent.post("/seed_session", row(_ng_session_id="fixed")))[0] == 200
    assert (await agent.post("/seed_session", row(_ng_session_id="fixed")))[0] == 200
    status, body, _ = await agent.post("/seed_session", row(initial=7, _ng_session_id="fixed"))
    assert (status, body["error"]) == (409, "conflict")


async def test_aggregate_metrics(client: TestClient[Any, Any]) -> None:
    rows = [
        {"_ng_task_index": 0, "reward": 1.0, "solved": True},
        {"_ng_task_index": 0, "reward": 0.0, "solved": False},
        {"_ng_task_index": 1, "reward": 1.0, "solved": True},
    ]
    resp = await client.post("/aggregate_metrics", data=orjson.dumps({"verify_responses": rows}))
    body = await resp.json()
    assert body["key_metrics"]["mean/reward"] == pytest.approx(2 / 3)
    assert body["agent_metrics"]["std/reward"] == pytest.approx(0.57735, abs=1e-4)
    assert [g["_ng_task_index"] for g in body["group_level_metrics"]] == [0, 1]
    assert body["group_level_metrics"][0]["mean/solved"] == 0.5
    resp = await client.post("/aggregate_metrics", data=b'{"verify_responses": 3}')
    assert resp.status == 400


async def test_body_over_the_limit_is_413(aiohttp_client: ClientFactory, db_path: Path) -> None:
    client = await aiohttp_client(
        create_app(counter_env, SqliteStore(db_path), max_body=1024), cookie_jar=DummyCookieJar()
    )
    resp = await client.post("/seed_session", data=orjson.dumps(row(padding="x" * 2000)))
    assert resp.status == 413
    assert (await resp.json())["error"] == "payload_too_large"


async def test_a_crashing_tool_is_500_json_and_appends_nothing(
    aiohttp_client: ClientFactory, db_path: Path
) -> None:
    env: Environment[Any, Any] = Environment("crashy", version="1", task=Task)
    env.initial(lambda task, ctx: State())

    @env.tool
    def boom(state: State, args: Empty, ctx: Context) -> tuple[State, Any]:
        """Always fails."""
        raise ZeroDivisionError("division by zero")

    env.verifier(lambda state, task, response: 0.0)
    client = await aiohttp_client(create_app(env, SqliteStore(db_path)), cookie_jar=DummyCookieJar())
    agent = Agent(client)
    await agent.post("/seed_session", {})
    status, body, _ = await agent.post("/boom", {})
    assert status == 500
    assert body == {
        "error": "tool_failed",
        "detail": "tool 'boom' failed: ZeroDivisionError: division by zero",
    }
    events = await (await client.get(f"/sessions/{agent.cookie}/events")).json()
    assert [e["kind"] for e in events] == ["seeded"]


async def test_a_session_id_no_session_can_have_is_a_404_without_asking_the_store(
    aiohttp_client: ClientFactory,
) -> None:
    # Ids are 1-128 of [A-Za-z0-9_.:-]. A backend need not hold others: PostgreSQL's text refuses
    # NUL, a VARCHAR(128) a longer one. Such a store's error (a 500) must not answer a read of one.
    class Strict(MemoryStore):
        def _refuse(self, session: str) -> None:
            if "\x00" in session or len(session) > 128:
                raise StoreError(f"cannot hold the session id {session[:20]!r}")

        async def read(self, session: str, upto: int | None = None) -> list[Event]:
            self._refuse(session)
            return await super().read(session, upto)

        async def info(self, session: str) -> SessionInfo | None:
            self._refuse(session)
            return await super().info(session)

    store = Strict()
    client = await aiohttp_client(create_app(counter_env, store), cookie_jar=DummyCookieJar())
    for bad in ["%00", "a" * 129, "%C3%A9", "a%20b"]:
        for method, path in [
            ("GET", f"/sessions/{bad}"),
            ("GET", f"/sessions/{bad}/events"),
            ("GET", f"/sessions/{bad}/events?upto=1"),
            ("GET", f"/sessions/{bad}/state?at=1"),
            ("GET", f"/sessions/{bad}/state"),
            ("POST", f"/sessions/{bad}/fork"),
        ]:
            resp = await client.request(method, path, data=b"{}")
            assert resp.status == 404, (method, path, await resp.text())
            assert (await resp.json())["error"] == "session_not_found"
    assert store.asked == []


async def test_the_folded_sessions_are_let_go_when_the_app_stops(db_path: Path) -> None:
    # Left to the end of the process, 10,000 cached workplace sessions (1 GB) kept a stopped server
    # in the collector's passes for 26 s after SIGTERM (past a 30 s grace period, nearly); dropped
    # at cleanup, reference counting frees them as they go (3-5 s).
    app = create_app(counter_env, SqliteStore(db_path))
    runner = web.AppRunner(app)
    await runner.setup()
    sessions = app[SESSIONS]
    for _ in range(3):
        await sessions.seed(row())
    assert sessions.live == 3
    await runner.cleanup()
    assert sessions.live == 0

"""Forking sessions, and `/verify` without a session (NeMo Gym's `gym eval reverify`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from environments.counter import env as counter_env
from eventsourced_env import Conflict, Context, Sessions, SqliteStore, ToolFailed
from eventsourced_env import sessions as sessions_module
from eventsourced_env.conformance import trajectory_response
from eventsourced_env.replay import check_log
from eventsourced_env.server import COOKIE, HEADER, SESSIONS
from tests.conftest import row
from tests.test_conformance import Draw, Draws, dice
from tests.test_server import Agent


async def play(
    agent: Agent, body: dict[str, Any], calls: list[tuple[str, Any]]
) -> list[tuple[str, Any, Any]]:
    """Seed, make the calls, return (tool, args, observation) as the agent saw them."""
    await agent.post("/seed_session", body)
    seen = []
    for tool, args in calls:
        _, observation, _ = await agent.post(f"/{tool}", args)
        seen.append((tool, args, observation))
    return seen


async def test_stateless_verify_gives_the_live_reward(client: TestClient[Any, Any]) -> None:
    for increments, expected_reward in (([1, 2], 1.0), ([1, 1], 0.0)):
        agent = Agent(client)
        base = row(initial=0, expected=3)
        calls = [("increment_counter", {"count": n}) for n in increments] + [("get_counter_value", {})]
        calls.insert(1, ("increment_counter", {"count": "two"}))  # rejected live: 422, recorded
        seen = await play(agent, base, calls)
        body = {**base, "response": trajectory_response(seen)}
        _, live, _ = await agent.post("/verify", body)
        assert live["reward"] == expected_reward

        resp = await client.post("/verify", data=orjson.dumps(body))  # no cookie, no header
        assert resp.status == 200
        assert COOKIE not in resp.cookies and HEADER not in resp.headers
        stateless = await resp.json()
        assert stateless["reward"] == live["reward"]
        assert stateless["stateless_replay"] == {"clean": True, "calls": 4, "divergence": None}
        assert "_ng_failure_class" not in stateless  # a clean replay is a sample like any other
        assert stateless["response"] == body["response"]
    # Nothing was written for the stateless verifications: only the two live sessions exist.
    assert len(await client.app[SESSIONS].store.sessions()) == 2


async def test_stateless_verify_names_where_a_trajectory_diverges(client: TestClient[Any, Any]) -> None:
    base = row(initial=5, expected=6)
    seen = [("increment_counter", {"count": 1}, {"success": True}), ("get_counter_value", {}, {"count": 99})]
    resp = await client.post("/verify", data=orjson.dumps({**base, "response": trajectory_response(seen)}))
    reply = await resp.json()
    assert reply["stateless_replay"]["clean"] is False
    assert reply["stateless_replay"]["divergence"] == {
        "call_id": "call_1",
        "tool": "get_counter_value",
        "recorded": '{"count":99}',
        "replayed": {"count": 6},
    }
    # The replayed state scores 1.0, but the record says the tools answered otherwise: the reply
    # scores 0 and carries NeMo Gym's failure class, which files the row with the failures.
    assert reply["stateless_replay"]["reward"] == 1.0
    assert reply["reward"] == 0.0
    assert reply["_ng_failure_class"] == "replay_failed"
    assert reply["_ng_failure_replay_error"] == (
        'call call_1 (get_counter_value) diverged: recorded {"count":99}, replayed {"count":6}'
    )


async def test_a_verify_that_lost_its_session_is_set_aside_not_scored_as_a_success(
    client: TestClient[Any, Any],
) -> None:
    # A client that dropped its cookie after seeding: its calls get 404s, which the model sees as
    # the tool outputs. Its /verify, sent without a session, replays the same calls successfully.
    agent = Agent(client)
    base = row(initial=0, expected=2)
    await agent.post("/seed_session", base)
    resp = await client.post("/increment_counter", data=orjson.dumps({"count": 2}))  # no cookie
    assert resp.status == 404
    lost = await resp.text()
    seen = [("increment_counter", {"count": 2}, orjson.loads(lost))]
    body = {**base, "response": trajectory_response(seen)}
    reply = await (await client.post("/verify", data=orjson.dumps(body))).json()
    assert reply["stateless_replay"]["divergence"]["recorded"] == lost
    assert (reply["reward"], reply["stateless_replay"]["reward"]) == (0.0, 1.0)
    assert reply["_ng_failure_class"] == "replay_failed"


async def test_stateless_seqs_skip_the_calls_the_server_never_saw(db_path: Path) -> None:
    # A call whose arguments the agent could not parse never reached the server, so it took no seq:
    # the replay must not give it one either, or every random draw after it comes out different.
    env = dice()
    store = SqliteStore(db_path)
    try:
        sessions = Sessions(env, store)
        seeded = {"session_seed": 7}
        sid = await sessions.seed(seeded)
        first = await sessions.call(sid, "draw", {"times": 2})
        second = await sessions.call(sid, "draw", {"times": 2})
        seen = [("draw", {"times": 2}, first), ("draw", {"times": 2}, second)]
        response = trajectory_response(seen)
        unparsable = {**response["output"][0], "call_id": "call_x", "arguments": "{not json"}
        response["output"].insert(0, unparsable)
        result, report = sessions.verify_stateless({**seeded, "response": response})
        assert report["clean"] is True, report
        assert result.reward == 1.0 and result.failure is None
    finally:
        await store.close()


def crash(state: Draws, args: Draw, ctx: Context) -> tuple[Draws, Any]:
    """A tool with a bug: it always raises."""
    raise RuntimeError("boom")


async def test_stateless_seqs_skip_the_calls_that_crashed(db_path: Path) -> None:
    # A call whose tool crashed got a 500 and was not recorded, so it took no seq live (the agent
    # hands the 500's body to the model and goes on): the replay must not give it one either.
    env = dice()
    env.tool(crash)
    store = SqliteStore(db_path)
    try:
        sessions = Sessions(env, store)
        seeded = {"session_seed": 7}
        sid = await sessions.seed(seeded)
        first = await sessions.call(sid, "draw", {"times": 2})
        with pytest.raises(ToolFailed) as failed:
            await sessions.call(sid, "crash", {})
        second = await sessions.call(sid, "draw", {"times": 2})
        seen = [
            ("draw", {"times": 2}, first),
            ("crash", {}, failed.value.to_json()),
            ("draw", {"times": 2}, second),
        ]
        result, report = sessions.verify_stateless({**seeded, "response": trajectory_response(seen)})
        assert report["clean"] is True, report
        assert result.reward == 1.0 and result.failure is None
    finally:
        await store.close()


async def test_stateless_verify_skips_unparsable_arguments_and_refuses_bad_rows(
    client: TestClient[Any, Any],
) -> None:
    response = trajectory_response([("increment_counter", {"count": 1}, {"success": True})])
    response["output"][0]["arguments"] = "{not json"
    reply = await (
        await client.post("/verify", data=orjson.dumps({**row(1, 1), "response": response}))
    ).json()
    assert reply["reward"] == 1.0 and reply["stateless_replay"]["clean"] is True
    resp = await client.post("/verify", data=orjson.dumps({"initial_count": "x", "response": {}}))
    assert resp.status == 422 and (await resp.json())["error"] == "task_invalid"


async def test_fork_copies_a_prefix_and_branches_independently(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    await play(agent, row(initial=0), [("increment_counter", {"count": n}) for n in (1, 2, 3)])
    parent = agent.cookie
    resp = await client.post(f"/sessions/{parent}/fork", data=b'{"at": 2, "count": 2}')
    assert resp.status == 200
    body = await resp.json()
    first, second = body["sessions"]
    assert body["parent"] == parent
    assert resp.cookies[COOKIE].value == first == resp.headers[HEADER]

    parent_events = await (await client.get(f"/sessions/{parent}/events")).json()
    fork_events = await (await client.get(f"/sessions/{first}/events")).json()
    assert fork_events[:2] == parent_events[:2]
    assert fork_events[2]["kind"] == "forked" and fork_events[2]["data"] == {"parent": parent, "at": 2}
    assert fork_events[2]["prev"] == parent_events[1]["hash"]

    for session, n in ((first, 10), (second, 100)):
        reply = await client.post(
            "/increment_counter", data=orjson.dumps({"count": n}), headers={HEADER: session}
        )
        assert reply.status == 200
    for session, count in ((parent, 6), (first, 11), (second, 101)):
        state = await (await client.get(f"/sessions/{session}/state")).json()
        assert state["state"] == {"count": count}
    store = client.app[SESSIONS].store
    env = client.app[SESSIONS].env
    for session in (parent, first, second):
        assert check_log(env, session, await store.read(session)) is None
    assert len(await (await client.get(f"/sessions/{parent}/events")).json()) == 4


async def test_fork_defaults_to_the_whole_log_and_one_copy(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    await play(agent, row(initial=7), [("increment_counter", {"count": 1})])
    for body in (b"", b'{"at": null, "count": null}'):  # null means the default (found by the fuzzer)
        resp = await client.post(f"/sessions/{agent.cookie}/fork", data=body)
        [fork] = (await resp.json())["sessions"]
        assert await (await client.get(f"/sessions/{fork}/state")).json() == {"seq": 3, "state": {"count": 8}}


async def test_fork_errors_are_clear(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    await play(agent, row(), [("increment_counter", {"count": 1})])
    parent = agent.cookie
    for body, status, code in [
        (b'{"at": 9}', 409, "conflict"),
        (b'{"at": 0}', 422, "invalid_request"),
        (b'{"count": 1000}', 422, "invalid_request"),
        (b'{"count": 0}', 422, "invalid_request"),
        (b'{"at": "two"}', 400, "bad_request"),
        (b"[]", 400, "bad_request"),
    ]:
        resp = await client.post(f"/sessions/{parent}/fork", data=body)
        assert (resp.status, (await resp.json())["error"]) == (status, code), body
    resp = await client.post("/sessions/nobody/fork")
    assert resp.status == 404
    await agent.post("/close_session")
    resp = await client.post(f"/sessions/{parent}/fork")
    assert (resp.status, (await resp.json())["error"]) == (409, "conflict")
    resp = await client.post(f"/sessions/{parent}/fork", data=b'{"at": 2}')
    assert resp.status == 200  # before the close is fine
    assert len(await client.app[SESSIONS].store.sessions()) == 2


async def test_a_fork_that_fails_part_way_writes_none_of_its_sessions(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full disk (here: an id already taken) on the third of five forks answered "nothing was
    # written", yet the first two were in the log, their ids never told to the client.
    sessions = Sessions(counter_env, store)
    parent = await sessions.seed(row())
    taken = await sessions.seed(row())
    ids = iter(["fork-1", "fork-2", taken, "fork-4", "fork-5"])
    monkeypatch.setattr(sessions_module, "_new_session_id", lambda: next(ids))
    with pytest.raises(Conflict):
        await sessions.fork(parent, count=5)
    assert sorted(info.id for info in await store.sessions()) == sorted([parent, taken])
    assert sessions.live == 2
    monkeypatch.setattr(sessions_module, "_new_session_id", iter(["fork-6", "fork-7"]).__next__)
    assert await sessions.fork(parent, count=2) == ["fork-6", "fork-7"]  # and forking still works

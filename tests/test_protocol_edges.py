"""What a QA pass over NeMo Gym's protocol found: a model reaching protocol routes through a tool
name, stateless re-verification of trajectories as the agent really sends them, odd headers, a
client that hangs up mid-body, and integers past 64 bits in tool arguments."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from eventsourced_env.conformance import trajectory_response
from eventsourced_env.server import HEADER, IDEMPOTENCY_HEADER, SESSIONS
from tests.conftest import row
from tests.serverproc import ServerProcess
from tests.test_server import Agent


async def test_a_model_cannot_seed_its_way_to_a_reward(client: TestClient[Any, Any]) -> None:
    """NeMo Gym's agent posts every call to `/{name}` and keeps the reply's cookie: a "tool" named
    seed_session must not swap the rollout's session for one of a task the model made up."""
    agent = Agent(client)
    await agent.post("/seed_session", row(initial=0, expected=3))
    rollout = agent.cookie
    status, reply, _ = await agent.post("/seed_session", {"initial_count": 0, "expected_count": 0})
    assert (status, reply["error"]) == (409, "conflict") and "seed_session" in reply["detail"]
    assert agent.cookie == rollout  # the agent goes on with its own session
    status, reply, _ = await agent.post("/verify", {**row(initial=0, expected=3), "response": {"output": []}})
    assert (status, reply["reward"]) == (200, 0.0)
    assert len(await client.app[SESSIONS].store.sessions()) == 1  # nothing else was seeded
    # After its close, a seed without the cookie (or with one the log does not know) goes through.
    await agent.post("/close_session", {})
    assert (await Agent(client).post("/seed_session", row()))[0] == 200
    stale = Agent(client)
    stale.cookie = "no-such-session"
    assert (await stale.post("/seed_session", row()))[0] == 200
    # Re-seeding a chosen id with its own cookie stays idempotent.
    chosen = Agent(client)
    first = await chosen.post("/seed_session", row(_ng_session_id="mine"))
    assert (await chosen.post("/seed_session", row(_ng_session_id="mine")))[:2] == first[:2]


async def test_a_model_cannot_close_then_seed_its_way_to_a_reward(client: TestClient[Any, Any]) -> None:
    """A "tool" named close_session, then one named seed_session: the seed carried the closed
    session's cookie and went through, so the agent's final /verify scored the model on a task it
    made up (1.0 where its own rollout scored 0.0). A seed carrying any session the log knows is refused."""
    agent = Agent(client)
    await agent.post("/seed_session", row(initial=0, expected=3))
    rollout = agent.cookie
    assert (await agent.post("/close_session", {}))[0] == 200
    status, reply, _ = await agent.post("/seed_session", {"initial_count": 5, "expected_count": 5})
    assert (status, reply["error"]) == (409, "conflict") and "closed" in reply["detail"]
    assert agent.cookie == rollout
    status, reply, _ = await agent.post("/verify", {**row(initial=0, expected=3), "response": {"output": []}})
    assert (status, reply["error"]) == (409, "session_closed")  # its own, closed: no reward to take
    assert len(await client.app[SESSIONS].store.sessions()) == 1


@pytest.mark.parametrize("close_first", [False, True])
async def test_a_model_cannot_fork_its_way_back(client: TestClient[Any, Any], close_first: bool) -> None:
    """NeMo Gym's agent posts to `/{name}` as it is, slashes and all, so a "tool" named
    `sessions/<id>/fork` reaches the fork route, and on a server without a token nothing stopped it:
    the model learns its id (a refused seed's detail, a close's reply), forks its session at an
    earlier seq (undoing its mistakes, or a card it peeked at), the agent keeps the fork's cookie,
    and the final /verify scores the fork. A fork that carries a session the log knows is refused."""
    agent = Agent(client)
    await agent.post("/seed_session", row(initial=0, expected=3))
    rollout = agent.cookie
    await agent.post("/increment_counter", {"count": 3})
    await agent.post("/increment_counter", {"count": 5})  # a mistake
    if close_first:
        assert (await agent.post("/close_session", {}))[1]["session_id"] == rollout
    status, reply, _ = await agent.post(f"/sessions/{rollout}/fork", {"at": 2})
    assert (status, reply["error"]) == (409, "conflict") and "fork" in reply["detail"]
    assert agent.cookie == rollout
    status, reply, _ = await agent.post("/verify", {**row(initial=0, expected=3), "response": {"output": []}})
    assert status == 409 if close_first else reply["reward"] == 0.0
    assert len(await client.app[SESSIONS].store.sessions()) == 1
    # From outside a rollout (no session carried), forking works as before.
    assert (await client.post(f"/sessions/{rollout}/fork", data=b'{"at": 2}')).status == 200


def _call(call_id: Any, name: str, arguments: str) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}


def _output(call_id: Any, output: Any) -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": orjson.dumps(output).decode()}


async def _stateless(client: TestClient[Any, Any], output: list[dict[str, Any]]) -> tuple[int, Any]:
    body = {**row(initial=0, expected=3), "response": {"output": output}}
    resp = await client.post("/verify", data=orjson.dumps(body))  # no cookie: NeMo Gym's reverify
    return resp.status, await resp.json()


@pytest.mark.parametrize("arguments", ["null", "{}", "[]", "0", "false", '""'])
async def test_stateless_verify_calls_with_no_body_where_the_agent_sent_none(
    client: TestClient[Any, Any], arguments: str
) -> None:
    """The agent sends no body for falsy arguments (`if kwargs.get("json")`); the server reads `{}`."""
    agent = Agent(client)
    await agent.post("/seed_session", row(initial=0, expected=3))
    await agent.post("/increment_counter", {"count": 3})
    status, observed, _ = await agent.post("/get_counter_value", raw=b"")  # as the agent sent it
    assert (status, observed) == (200, {"count": 3})
    output = [
        _call("a", "increment_counter", '{"count": 3}'),
        _output("a", {"success": True}),
        _call("b", "get_counter_value", arguments),
        _output("b", observed),
    ]
    status, reply = await _stateless(client, output)
    assert status == 200 and reply["stateless_replay"]["clean"] and reply["reward"] == 1.0


async def test_stateless_verify_pairs_repeated_call_ids_in_order(client: TestClient[Any, Any]) -> None:
    output = [
        _call("c", "increment_counter", '{"count": 3}'),
        _output("c", {"success": True}),
        _call("c", "get_counter_value", "{}"),
        _output("c", {"count": 3}),
    ]
    status, reply = await _stateless(client, output)
    assert status == 200 and reply["stateless_replay"]["clean"] and reply["reward"] == 1.0
    forged = [*output[:3], _output("c", {"count": 4})]  # the second output is still compared
    assert (await _stateless(client, forged))[1]["stateless_replay"]["clean"] is False


async def test_stateless_verify_does_not_replay_a_call_the_agent_never_sent(
    client: TestClient[Any, Any],
) -> None:
    """NeMo Gym's agent answers every call it sends with a function_call_output, but stops before
    sending the calls of a turn cut short by max_output_tokens: those are in the
    trajectory without an output, and live they never ran. Stateless /verify replayed them, so a
    rollout that scored 0 live re-verified to 1.0; now a call without an output takes no seq."""
    agent = Agent(client)
    await agent.post("/seed_session", row(initial=0, expected=3))
    status, reply, _ = await agent.post("/verify", {**row(initial=0, expected=3), "response": {"output": []}})
    assert reply["reward"] == 0.0  # live: no call reached the server
    status, reply = await _stateless(client, [_call("a", "increment_counter", '{"count": 3}')])
    assert status == 200 and reply["reward"] == 0.0 and reply["stateless_replay"]["clean"]
    assert reply["stateless_replay"]["calls"] == 0  # the calls replayed: none reached the server
    # A later call that was answered is still replayed, at the seq it took live.
    status, reply = await _stateless(
        client,
        [
            _call("a", "increment_counter", '{"count": 5}'),
            _call("b", "increment_counter", '{"count": 3}'),
            _output("b", {"success": True}),
        ],
    )
    assert status == 200 and reply["reward"] == 1.0 and reply["stateless_replay"]["clean"]
    assert reply["stateless_replay"]["calls"] == 1


@pytest.mark.parametrize("call_id", [[], {"a": 1}, 7, None])
async def test_a_call_id_that_is_not_a_string_is_a_400(client: TestClient[Any, Any], call_id: Any) -> None:
    status, reply = await _stateless(
        client, [_call(call_id, "get_counter_value", "{}"), _output(call_id, "x")]
    )
    assert (status, reply["error"]) == (400, "bad_request") and "call_id" in reply["detail"]


async def _raw(client: TestClient[Any, Any], request: bytes) -> bytes:
    """Send `request` as bytes on a fresh connection; the reply's bytes."""
    assert client.server.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(request)
    await writer.drain()
    reply = await reader.read(65536)
    writer.close()
    return reply


@pytest.mark.parametrize("header", [b"X-Session-Id: \xff\xfe", b"Cookie: esenv_session=\xff\xfe"])
async def test_a_session_id_that_is_not_text_is_unknown(client: TestClient[Any, Any], header: bytes) -> None:
    request = b"POST /get_counter_value HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nContent-Length: 2\r\n\r\n{}"
    head, _, body = (await _raw(client, request)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404") and orjson.loads(body)["error"] == "session_not_found"


async def test_an_idempotency_key_that_is_not_text_is_a_400(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    await agent.post("/seed_session", row())
    request = (
        b"POST /increment_counter HTTP/1.1\r\nHost: x\r\n"
        + f"{HEADER}: {agent.cookie}\r\n{IDEMPOTENCY_HEADER}: ".encode()
        + b'\xff\xfe\r\nContent-Length: 12\r\n\r\n{"count": 1}'
    )
    head, _, body = (await _raw(client, request)).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and IDEMPOTENCY_HEADER in orjson.loads(body)["detail"]
    assert (await agent.post("/get_counter_value", {}))[1] == {"count": 0}  # nothing applied


async def test_a_big_integer_deep_in_a_verify_body_is_echoed_exactly(client: TestClient[Any, Any]) -> None:
    depth = 1000  # past the standard library's default recursion limit, within orjson's 1,024
    raw = (
        b'{"response":{"output":[]},"deep":'
        + b"[" * depth
        + b"1"
        + b"]" * depth
        + b',"big":'
        + b"9" * 30
        + b"}"
    )
    resp = await client.post("/verify", data=raw)
    assert resp.status == 200
    assert b'"big":' + b"9" * 30 in await resp.read()


async def test_a_405_says_which_methods_the_path_takes(client: TestClient[Any, Any]) -> None:
    resp = await client.delete("/verify")
    assert resp.status == 405 and resp.headers["Allow"] == "POST"
    assert (await resp.json())["error"] == "method_not_allowed"


async def test_a_client_that_hangs_up_mid_body_is_no_server_error(db_path: Path) -> None:
    """The real server (aiohttp's test server cancels the handler instead): each hang-up had logged
    an "unexpected error" with its traceback, thousands of them for flaky rollouts."""
    with ServerProcess("counter", db_path) as server:
        host, port = server.url.removeprefix("http://").split(":")

        async def hang_up() -> None:
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(b'POST /increment_counter HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n{"co')
            await writer.drain()
            await asyncio.sleep(0.05)  # the handler is reading the body
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # a reset, as from a client that dies

        await asyncio.gather(*(hang_up() for _ in range(5)))
        await asyncio.sleep(0.3)
        assert server.stop() == 0
        assert server.proc.stderr is not None
        err = server.proc.stderr.read()
    assert "Traceback" not in err and "unexpected error" not in err, err


async def test_an_argument_past_64_bits_is_refused_never_recorded_as_a_float(
    client: TestClient[Any, Any],
) -> None:
    agent = Agent(client)
    await agent.post("/seed_session", row())
    status, reply, _ = await agent.post("/increment_counter", raw=b'{"count": 99999999999999999999999}')
    assert (status, reply["error"]) == (422, "unrecordable") and "increment_counter" in reply["detail"]
    events = await (await client.get(f"/sessions/{agent.cookie}/events")).json()
    assert [e["kind"] for e in events] == ["seeded"]  # nothing recorded, least of all 1e+23
    # A stateless replay of such a call answers as the server did.
    response = trajectory_response([("increment_counter", {"count": 1}, reply)])
    response["output"][0]["arguments"] = '{"count": 99999999999999999999999}'
    resp = await client.post("/verify", data=orjson.dumps({**row(), "response": response}))
    assert (await resp.json())["stateless_replay"]["clean"], await resp.text()


@pytest.mark.parametrize("path", ["/tools", "/reverify_mode", "/sessions", "/ng-rollout/7/sessions"])
async def test_a_post_to_a_read_route_is_a_405_not_a_tool_call(
    client: TestClient[Any, Any], path: str
) -> None:
    agent = Agent(client)
    await agent.post("/seed_session", row())
    status, reply, resp = await agent.post(path, {})
    assert (status, reply["error"], resp.headers["Allow"]) == (405, "method_not_allowed", "GET")
    events = await (await client.get(f"/sessions/{agent.cookie}/events")).json()
    assert [e["kind"] for e in events] == ["seeded"]  # no tool_rejected "sessions" in the log


async def test_a_fork_refuses_keys_it_does_not_take(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    await agent.post("/seed_session", row())
    resp = await client.post(f"/sessions/{agent.cookie}/fork", data=b'{"at": 1, "cout": 5}')
    assert resp.status == 400 and "'cout'" in (await resp.json())["detail"]
    assert len(await client.app[SESSIONS].store.sessions()) == 1


async def test_a_state_at_a_seq_past_the_log_is_no_such_event(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    await agent.post("/seed_session", row())
    resp = await client.get(f"/sessions/{agent.cookie}/state?at=99")
    assert resp.status == 404 and (await resp.json())["error"] == "event_not_found"

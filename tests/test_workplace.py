"""The workplace environment: a deterministic company, its tools, its dataset, verifier and oracle."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import DummyCookieJar

from environments.workplace import WorkplaceTask, env, expected_state, oracle
from environments.workplace.company import generate
from environments.workplace.make_dataset import DATA, SPLITS, build, render
from environments.workplace.make_replays import OUT, recorded
from eventsourced_env import Context, Sessions, SqliteStore, TaskInvalid
from eventsourced_env.server import create_app
from tests.conftest import ClientFactory
from tests.serverproc import ServerProcess
from tools.loadgen import AgentClient


def rows(split: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (DATA / f"{split}.jsonl").read_bytes().splitlines()]


ALL_ROWS = [(split, r) for split, _ in SPLITS for r in rows(split)]
EXAMPLE = rows("example")


def by_category(category: str) -> dict[str, Any]:
    return next(r for _, r in ALL_ROWS if r["category"] == category)


async def play(sessions: Sessions, row: dict[str, Any], calls: list[tuple[str, dict[str, Any]]]) -> str:
    """Seed a session with `row` and make `calls`; its id."""
    session = await sessions.seed(row)
    for name, arguments in calls:
        await sessions.call(session, name, arguments)
    return session


def truth(row: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(c["name"], c["arguments"]) for c in row["ground_truth"]]


# -- the company --------------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_company_and_another_seed_another() -> None:
    fresh = generate.__wrapped__
    assert fresh(7) == fresh(7)
    assert fresh(7).model_dump_json() == fresh(7).model_dump_json()
    assert fresh(7) != fresh(8)
    task = WorkplaceTask(company_seed=7)
    # The session seed and clock play no part: only the company seed does.
    assert env.start(task, Context(1, 1, 0.0)) == env.start(task, Context(2, 1, 9.9e8)) == fresh(7)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 99])
def test_the_company_is_coherent(seed: int) -> None:
    c = generate(seed)
    people, customers = c.people, c.customers
    assert len(people) >= 20 and len(c.emails) >= 20 and len(c.meetings) >= 10 and len(customers) >= 10
    assert len(c.tasks) >= 20
    assert len({p.name for p in people.values()}) == len(people)
    assert all(p.manager_id is None or p.manager_id in people for p in people.values())
    assert [p.id for p in people.values() if p.manager_id is None] == ["P001"]
    assert all(
        m.organizer_id in m.attendee_ids and set(m.attendee_ids) <= set(people) for m in c.meetings.values()
    )
    assert all(t.assignee_id in people for t in c.tasks.values())
    assert all(k.owner_id in people for k in customers.values())
    assert len({e.subject for e in c.emails.values()}) == len(c.emails)
    assert all(e.sent_at < c.now for e in c.emails.values())
    meetings = sorted(c.meetings.values(), key=lambda m: m.start)
    for i, a in enumerate(meetings):
        for b in meetings[i + 1 :]:
            assert not (b.start < a.end and set(a.attendee_ids) & set(b.attendee_ids)), (a, b)


# -- the tools ----------------------------------------------------------------------------------


def test_there_are_at_least_20_tools_in_openai_function_format() -> None:
    schemas = env.tool_schemas()
    assert len(schemas) >= 20
    assert len({s["name"] for s in schemas}) == len(schemas)
    for s in schemas:
        assert set(s) == {"type", "name", "description", "parameters", "strict"}
        assert s["type"] == "function" and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,63}", s["name"])
        assert s["description"] and "\n" not in s["description"]
        params = s["parameters"]
        assert params["type"] == "object" and params["additionalProperties"] is False
        assert set(params.get("required", [])) <= set(params["properties"])
        for field, prop in params["properties"].items():
            assert prop.get("description"), f"{s['name']}.{field} has no description"
        orjson.dumps(s)


def test_tools_do_not_depend_on_the_context() -> None:
    row = by_category("schedule_meeting")
    task = env.parse_task(row)
    states = []
    for seed, at in ((1, 0.0), (2, 1.9e9)):
        state = env.start(task, Context(seed, 1, at))
        for seq, (name, arguments) in enumerate(truth(row), start=2):
            tool = env.tools[name]
            state, _ = env.run_tool(tool, state, tool.validate(arguments), Context(seed, seq, at))
        states.append(state)
    assert states[0] == states[1] == expected_state(task)


BAD_CALLS = [
    ("get_person", {"person_id": "P999"}, "P999"),
    ("read_email", {"email_id": "E999"}, "E999"),
    ("get_meeting", {"meeting_id": "M999"}, "M999"),
    ("get_customer", {"customer_id": "C999"}, "C999"),
    ("get_task", {"task_id": "T999"}, "T999"),
    ("assign_task", {"task_id": "T001", "assignee_id": "P999"}, "P999"),
    ("update_customer", {"customer_id": "C001"}, "nothing to change"),
    ("send_email", {"to": ["nobody@nowhere.example"], "subject": "s", "body": "b"}, "nobody@nowhere"),
    ("find_free_slots", {"person_ids": ["P001"], "date": "2025-02-30", "duration_minutes": 30}, "2025-02-30"),
    ("update_person", {"person_id": "P002", "manager_id": "P002"}, "cycle"),
]


async def test_a_bad_id_or_request_is_a_tool_error_and_changes_nothing(store: SqliteStore) -> None:
    sessions = Sessions(env, store)
    session = await sessions.seed(EXAMPLE[0])
    _, before = await sessions.state_at(session)
    for name, arguments, named in BAD_CALLS:
        observation = await sessions.call(session, name, arguments)
        assert set(observation) == {"error"} and named in observation["error"], (name, observation)
    assert (await sessions.state_at(session)) == (1 + len(BAD_CALLS), before)


def conflicts(c: Any) -> list[tuple[str, dict[str, Any], str]]:
    """Calls that contradict company `c`'s records, and a word each error must contain."""
    done = next(t for t in c.tasks.values() if t.status == "done")
    active = next(k for k in c.customers.values() if k.status == "active")
    theirs = next(m for m in c.meetings.values() if m.organizer_id != c.user_id)
    mine = next(m for m in c.meetings.values() if c.user_id in m.attendee_ids and m.start > c.now)
    past = next(m for m in c.meetings.values() if m.organizer_id == c.user_id and m.start < c.now)
    sent = next(e for e in c.emails.values() if e.folder == "sent")
    clash = {"title": "Clash", "start": mine.start, "duration_minutes": 30, "attendee_ids": [c.user_id]}
    return [
        ("assign_task", {"task_id": done.id, "assignee_id": c.user_id}, "done"),
        ("complete_task", {"task_id": done.id}, "already done"),
        ("update_task", {"task_id": done.id, "priority": "high"}, "reopen"),
        ("delete_customer", {"customer_id": active.id}, "only leads"),
        ("cancel_meeting", {"meeting_id": theirs.id}, "only the organizer"),
        ("reschedule_meeting", {"meeting_id": past.id, "start": "2030-01-07T10:00"}, "before now"),
        ("schedule_meeting", clash, mine.id),
        ("schedule_meeting", {**clash, "start": "2020-01-06T10:00"}, "in the past"),
        ("move_email", {"email_id": sent.id, "folder": "archive"}, "sent folder"),
        (
            "create_task",
            {"title": "x", "project": "Nope", "assignee_id": "P001", "due": "2030-01-01"},
            "Nope",
        ),
    ]


async def test_conflicting_requests_are_tool_errors_over_http_with_status_200(
    aiohttp_client: ClientFactory, db_path: Path
) -> None:
    client = await aiohttp_client(create_app(env, SqliteStore(db_path)), cookie_jar=DummyCookieJar())
    row = EXAMPLE[0]
    seeded = await client.post("/seed_session", json=row)
    headers = {"X-Session-Id": (await seeded.json())["session_id"]}
    state = (await (await client.get(f"/sessions/{headers['X-Session-Id']}/state")).json())["state"]
    calls = conflicts(generate(row["company_seed"]))
    for name, arguments, named in calls:
        resp = await client.post(f"/{name}", json=arguments, headers=headers)
        body = await resp.json()
        assert resp.status == 200 and set(body) == {"error"} and named in body["error"], (name, body)
    after = await (await client.get(f"/sessions/{headers['X-Session-Id']}/state")).json()
    assert after == {"seq": 1 + len(calls), "state": state}


async def test_a_meeting_that_would_end_past_the_year_9999_is_a_tool_error(store: SqliteStore) -> None:
    # '9999-12-31T23:59' matches the pattern and is a real time, but its end is past what datetime
    # holds: this was a 500 (OverflowError) from schedule_meeting and reschedule_meeting.
    sessions = Sessions(env, store)
    session = await sessions.seed(EXAMPLE[0])
    seq, before = await sessions.state_at(session)
    c = generate(EXAMPLE[0]["company_seed"])
    mine = next(m for m in c.meetings.values() if m.organizer_id == c.user_id and m.start > c.now)
    late = "9999-12-31T23:59"
    meeting = {"title": "Late", "start": late, "duration_minutes": 30, "attendee_ids": ["P001"]}
    calls = [
        ("schedule_meeting", meeting),
        ("reschedule_meeting", {"meeting_id": mine.id, "start": late}),
    ]
    for name, arguments in calls:
        observation = await sessions.call(session, name, arguments)
        assert set(observation) == {"error"} and late in observation["error"], (name, observation)
    assert (await sessions.state_at(session)) == (seq + len(calls), before)


async def test_invalid_arguments_are_rejected_with_422_and_recorded(
    aiohttp_client: ClientFactory, db_path: Path
) -> None:
    client = await aiohttp_client(create_app(env, SqliteStore(db_path)), cookie_jar=DummyCookieJar())
    seeded = await client.post("/seed_session", json=EXAMPLE[0])
    sid = (await seeded.json())["session_id"]
    bad = {"title": "t", "start": "tomorrow at 3", "duration_minutes": 30, "attendee_ids": ["P001"]}
    resp = await client.post("/schedule_meeting", json=bad, headers={"X-Session-Id": sid})
    assert resp.status == 422 and (await resp.json())["error"] == "arguments_invalid"
    events = await (await client.get(f"/sessions/{sid}/events")).json()
    assert [e["kind"] for e in events] == ["seeded", "tool_rejected"]


# -- the dataset --------------------------------------------------------------------------------


def test_the_data_files_are_what_the_script_generates() -> None:
    for split, generated in build().items():
        assert (DATA / f"{split}.jsonl").read_bytes() == render(generated), f"rerun make_dataset ({split})"


def test_the_rows_are_nemo_gym_rows_with_our_tools() -> None:
    assert len(ALL_ROWS) >= 60 and 5 <= len(EXAMPLE) <= 10
    seen = set()
    for split, _ in SPLITS:
        data = rows(split)
        assert [r["_ng_task_index"] for r in data] == list(range(len(data)))
        for r in data:
            params = r["responses_create_params"]
            assert [m["role"] for m in params["input"]] == ["system", "user"]
            assert params["tools"] == env.tool_schemas()
            assert r["agent_ref"] == {"type": "responses_api_agents", "name": "workplace_simple_agent"}
            assert r["_ng_rollout_index"] == 0 and r["ground_truth"]
            assert all(call["name"] in env.tools for call in r["ground_truth"])
            # Instructions name people and things, never ids: the agent must find them.
            assert not re.search(r"\b[PEMCT]\d{3}\b", params["input"][1]["content"])
            seen.add((params["input"][0]["content"], params["input"][1]["content"]))
    assert len(seen) == len(ALL_ROWS), "no two rows ask the same of the same assistant"


@pytest.mark.parametrize("split", [s for s, _ in SPLITS])
async def test_every_row_verifies_to_1_when_its_ground_truth_is_applied(
    store: SqliteStore, split: str
) -> None:
    sessions = Sessions(env, store)
    for r in rows(split):
        session = await sessions.seed(r)
        for name, arguments in truth(r):
            observation = await sessions.call(session, name, arguments)
            assert "error" not in observation, (r["category"], name, observation)
        result = await sessions.verify(session, {"output": []})
        assert (result.reward, result.components) == (1.0, {"correctness": 1.0, "collateral_damage": 0.0})
        assert result.details["expected_changes"] >= 1 and not result.details["wrong_or_missing"]


# -- the verifier -------------------------------------------------------------------------------


async def test_doing_nothing_scores_0_with_no_correctness(store: SqliteStore) -> None:
    sessions = Sessions(env, store)
    result = await sessions.verify(await play(sessions, EXAMPLE[0], []), None)
    assert (result.reward, result.components) == (0.0, {"correctness": 0.0, "collateral_damage": 0.0})
    [missing] = result.details["wrong_or_missing"]
    assert missing["found"] == "(unchanged)" and missing["change"].endswith(".assignee_id")


async def test_a_wrong_value_costs_correctness(store: SqliteStore) -> None:
    sessions = Sessions(env, store)
    row = by_category("reassign_task")
    [(name, arguments)] = truth(row)
    wrong = {**arguments, "assignee_id": "P001"}
    result = await sessions.verify(await play(sessions, row, [(name, wrong)]), None)
    assert (result.reward, result.components) == (0.0, {"correctness": 0.0, "collateral_damage": 0.0})
    assert result.details["wrong_or_missing"][0]["found"] == "P001"


async def test_an_extra_change_is_collateral_damage(store: SqliteStore) -> None:
    sessions = Sessions(env, store)
    row = by_category("complete_task")
    c = generate(row["company_seed"])
    done = {a["task_id"] for _, a in truth(row)}
    other = next(t for t in c.tasks.values() if t.status != "done" and t.id not in done)
    priority = "low" if other.priority != "low" else "high"
    calls = [*truth(row), ("update_task", {"task_id": other.id, "priority": priority, "title": "Renamed"})]
    result = await sessions.verify(await play(sessions, row, calls), None)
    assert (result.reward, result.components) == (0.0, {"correctness": 1.0, "collateral_damage": 2.0})
    assert result.details["collateral"] == [
        {"change": f"tasks/{other.id}.title", "found": "Renamed"},
        {"change": f"tasks/{other.id}.priority", "found": priority},
    ]


async def test_half_of_a_multi_step_task_scores_half_correctness(store: SqliteStore) -> None:
    sessions = Sessions(env, store)
    row = next(r for _, r in ALL_ROWS if r["category"] == "raise_priorities" and len(r["ground_truth"]) == 2)
    result = await sessions.verify(await play(sessions, row, truth(row)[:1]), None)
    assert (result.reward, result.components) == (0.0, {"correctness": 0.5, "collateral_damage": 0.0})


async def test_a_created_record_must_match_word_for_word_but_not_by_id(store: SqliteStore) -> None:
    sessions = Sessions(env, store)
    row = by_category("send")
    [(name, arguments)] = truth(row)
    # A stray email first shifts the id of the right one: ids of new records are not compared.
    stray = ("send_email", {**arguments, "body": "Oops, wrong draft."})
    spaced = {**arguments, "body": "  " + arguments["body"].replace(" ", "\n  ")}
    result = await sessions.verify(await play(sessions, row, [stray, (name, spaced)]), None)
    assert (result.reward, result.components) == (0.0, {"correctness": 1.0, "collateral_damage": 1.0})
    assert "Oops" in result.details["collateral"][0]["found"]
    result = await sessions.verify(await play(sessions, row, [stray]), None)
    assert result.components == {"correctness": 0.0, "collateral_damage": 1.0}


async def test_deleting_what_should_be_changed_is_both_wrong_and_collateral(store: SqliteStore) -> None:
    sessions = Sessions(env, store)
    row = by_category("reassign_task")
    [(_, arguments)] = truth(row)
    result = await sessions.verify(
        await play(sessions, row, [("delete_task", {"task_id": arguments["task_id"]})]), None
    )
    assert result.components == {"correctness": 0.0, "collateral_damage": 1.0}
    assert result.details["collateral"] == [{"change": f"tasks/{arguments['task_id']}", "found": "(deleted)"}]


# -- the oracle and the real server -------------------------------------------------------------


def test_the_oracle_yields_the_ground_truth_and_takes_observations() -> None:
    row = by_category("reassign_leaver")
    solver = oracle(row)
    calls = [next(solver)]
    with pytest.raises(StopIteration):
        while True:
            calls.append(solver.send({"ok": True}))
    assert calls == truth(row)


def response_of(calls: list[tuple[str, dict[str, Any], Any]]) -> dict[str, Any]:
    """A Responses-API `response` holding the calls made and their outputs."""
    output: list[dict[str, Any]] = []
    for i, (name, arguments, observation) in enumerate(calls):
        call = {"call_id": f"call_{i}", "name": name, "arguments": orjson.dumps(arguments).decode()}
        output.append({"type": "function_call", "id": f"fc_{i}", "status": "completed", **call})
        output.append(
            {
                "type": "function_call_output",
                "call_id": f"call_{i}",
                "output": orjson.dumps(observation).decode(),
            }
        )
    return {"id": "resp_oracle", "object": "response", "output": output}


async def test_the_oracle_solves_every_example_row_over_http(tmp_path: Path) -> None:
    with ServerProcess("workplace", tmp_path / "e2e.db") as server:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            for row in EXAMPLE:
                client = AgentClient(http, server.url)
                assert (await client.post("/seed_session", row))[0] == 200
                calls: list[tuple[str, dict[str, Any], Any]] = []
                solver = oracle(row)
                with contextlib.suppress(StopIteration):
                    name, arguments = next(solver)
                    while True:
                        status, observation = await client.post(f"/{name}", arguments)
                        assert status == 200 and "error" not in observation, (name, observation)
                        calls.append((name, arguments, observation))
                        name, arguments = solver.send(observation)
                status, reply = await client.post("/verify", {**row, "response": response_of(calls)})
                assert status == 200 and reply["reward"] == 1.0, reply
                assert reply["reward_components"] == {"correctness": 1.0, "collateral_damage": 0.0}
                # Re-verification without the session folds the trajectory itself, to the same score.
                status, again = await AgentClient(http, server.url).post(
                    "/verify", {**row, "response": response_of(calls)}
                )
                assert (status, again["reward"], again["stateless_replay"]["clean"]) == (200, 1.0, True)
        assert server.stop() == 0


def test_the_golden_replays_are_what_the_script_records() -> None:
    for name, log in recorded().items():
        assert (OUT / f"{name}.jsonl").read_bytes() == log, f"rerun make_replays ({name})"


async def test_a_row_whose_ground_truth_names_an_unknown_tool_is_an_invalid_task(store: SqliteStore) -> None:
    sessions = Sessions(env, store)
    row = {**EXAMPLE[0], "ground_truth": [{"name": "fly_to_the_moon", "arguments": {}}]}
    with pytest.raises(TaskInvalid, match="fly_to_the_moon"):
        await sessions.verify(await play(sessions, row, []), None)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        ({"name": "assign_task", "arguments": {"task_id": "T011"}}, "assignee_id"),
        ({"name": "assign_task", "arguments": {"task_id": "T999", "assignee_id": "P001"}}, "T999"),
    ],
    ids=["invalid-arguments", "tool-error"],
)
async def test_a_row_whose_ground_truth_call_fails_is_an_invalid_task(
    store: SqliteStore, call: dict[str, Any], named: str
) -> None:
    # Invalid arguments were a 422 arguments_invalid at /verify, blaming a tool call the agent never
    # made; a call that is a tool error was folded as no change, so doing nothing scored 1.0.
    sessions = Sessions(env, store)
    row = {**EXAMPLE[0], "ground_truth": [call]}
    with pytest.raises(TaskInvalid, match=f"ground_truth.*{named}"):
        await sessions.verify(await play(sessions, row, []), None)

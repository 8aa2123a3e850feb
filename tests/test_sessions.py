from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from eventsourced_env import (
    ArgumentsInvalid,
    Conflict,
    Environment,
    EnvironmentDefinitionError,
    EventNotFound,
    SessionClosed,
    SessionNotFound,
    Sessions,
    SqliteStore,
    StoreUnavailable,
    TaskInvalid,
    ToolNotFound,
    fold,
    sqlite_store,
)
from eventsourced_env.events import Event, first_broken_link
from eventsourced_env.sessions import STALE_TRIES
from tests.conftest import row
from tests.envs_for_tests import lenient_env, seeded_env


class FlakyStore(SqliteStore):
    """A SQLite store whose next append can be made to fail, as a full disk would."""

    fail_next = False

    async def append(self, session: str, events: Sequence[Event]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise StoreUnavailable("disk is full (injected)")
        await super().append(session, events)


async def test_a_session_runs_and_its_log_explains_it(
    store: SqliteStore, counter: Environment[Any, Any]
) -> None:
    sessions = Sessions(counter, store)
    sid = await sessions.seed(row(initial=3, expected=6))
    assert await sessions.call(sid, "increment_counter", {"count": 2}) == {"success": True}
    assert await sessions.call(sid, "increment_counter", {"count": 1}) == {"success": True}
    assert await sessions.call(sid, "get_counter_value", {}) == {"count": 6}
    result = await sessions.verify(sid, {"output": []})
    assert result.reward == 1.0
    events = await store.read(sid)
    assert [e.kind for e in events] == ["seeded", "tool_called", "tool_called", "tool_called", "verified"]
    assert first_broken_link(events) is None
    assert events[0].data["row"]["initial_count"] == 3
    assert events[4].data["verifier_version"] == counter.verifier_version
    assert fold(counter, events).state.count == 6  # type: ignore[attr-defined]


async def test_state_changes_only_after_the_event_is_committed(
    db_path: Any, counter: Environment[Any, Any]
) -> None:
    store = FlakyStore(db_path)
    sessions = Sessions(counter, store)
    sid = await sessions.seed(row(initial=0))
    await sessions.call(sid, "increment_counter", {"count": 5})
    store.fail_next = True
    with pytest.raises(StoreUnavailable):
        await sessions.call(sid, "increment_counter", {"count": 100})
    # The failed call left no trace: neither in the log nor in memory.
    assert await sessions.call(sid, "get_counter_value", {}) == {"count": 5}
    assert [e.seq for e in await store.read(sid)] == [1, 2, 3]
    await store.close()


async def test_calls_of_one_session_are_serialized(
    store: SqliteStore, counter: Environment[Any, Any]
) -> None:
    sessions = Sessions(counter, store)
    sid = await sessions.seed(row(initial=0))
    await asyncio.gather(*(sessions.call(sid, "increment_counter", {"count": i}) for i in range(1, 51)))
    events = await store.read(sid)
    assert [e.seq for e in events] == list(range(1, 52))
    assert first_broken_link(events) is None
    assert await sessions.call(sid, "get_counter_value", {}) == {"count": sum(range(1, 51))}
    assert sessions._locks == {}  # a session's lock is let go once nobody holds or awaits it


async def test_a_waiter_cancelled_after_its_turn_came_hands_the_turn_on() -> None:
    from eventsourced_env.sessions import _SessionLock

    locks: dict[str, _SessionLock] = {}
    lock = locks["s"] = _SessionLock(locks, "s")
    ran: list[str] = []

    async def use(name: str) -> None:
        async with lock:
            ran.append(name)

    await lock.__aenter__()  # held
    second, third = asyncio.ensure_future(use("second")), asyncio.ensure_future(use("third"))
    await asyncio.sleep(0)  # both wait, in that order
    await lock.__aexit__()  # the turn goes to the second...
    second.cancel()  # ...which is cancelled before it runs: the third must get the turn
    with pytest.raises(asyncio.CancelledError):
        await second
    await asyncio.wait_for(third, 5)
    assert ran == ["third"]
    assert locks == {}


async def test_a_cancelled_waiter_lets_go_of_the_session_lock(
    store: SqliteStore, counter: Environment[Any, Any]
) -> None:
    sessions = Sessions(counter, store)
    sid = await sessions.seed(row(initial=0))
    first = asyncio.ensure_future(sessions.call(sid, "increment_counter", {"count": 1}))
    waiter = asyncio.ensure_future(sessions.call(sid, "increment_counter", {"count": 2}))
    await asyncio.sleep(0)  # the first holds the lock (awaiting its commit), the second waits for it
    waiter.cancel()
    assert await first == {"success": True}
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert sessions._locks == {}
    assert await sessions.call(sid, "get_counter_value", {}) == {"count": 1}


async def test_evicted_and_restarted_sessions_rebuild_from_the_log(
    store: SqliteStore, counter: Environment[Any, Any]
) -> None:
    sessions = Sessions(counter, store, cache_size=1)
    ids = [await sessions.seed(row(initial=i)) for i in range(5)]
    for i, sid in enumerate(ids):
        await sessions.call(sid, "increment_counter", {"count": 10 * i})
    for i, sid in enumerate(ids):
        assert await sessions.call(sid, "get_counter_value", {}) == {"count": 11 * i}
    restarted = Sessions(counter, store)
    assert await restarted.call(ids[3], "get_counter_value", {}) == {"count": 33}


async def test_a_log_the_environment_now_refuses_is_not_blamed_on_the_call(store: SqliteStore) -> None:
    # Recorded by an environment that accepted {"amount": "x"}, served now by one that refuses it:
    # the session cannot be rebuilt. That is the server's problem, not the new call's arguments.
    sid = await Sessions(lenient_env, store).seed({})
    await Sessions(lenient_env, store).call(sid, "add", {"amount": "x"})
    with pytest.raises(EnvironmentDefinitionError) as caught:
        await Sessions(seeded_env, store).call(sid, "add", {"amount": 1})
    assert caught.value.detail.startswith(f"session {sid!r} cannot be rebuilt by 'tally': a call its log")
    assert len(await store.read(sid)) == 2  # nothing recorded


async def test_rejected_calls_are_recorded_and_change_nothing(
    store: SqliteStore, counter: Environment[Any, Any]
) -> None:
    sessions = Sessions(counter, store)
    sid = await sessions.seed(row(initial=1))
    with pytest.raises(ArgumentsInvalid):
        await sessions.call(sid, "increment_counter", {"count": "lots"})
    with pytest.raises(ToolNotFound, match="increment_counter, get_counter_value"):
        await sessions.call(sid, "decrement_counter", {"count": 1})
    assert await sessions.call(sid, "get_counter_value", {}) == {"count": 1}
    events = await store.read(sid)
    assert [(e.kind, e.data.get("tool")) for e in events[1:]] == [
        ("tool_rejected", "increment_counter"),
        ("tool_rejected", "decrement_counter"),
        ("tool_called", "get_counter_value"),
    ]
    assert events[1].data["args"] == {"count": "lots"}
    assert "valid integer" in events[1].data["error"]


async def test_no_or_unknown_session_is_not_found(store: SqliteStore, counter: Environment[Any, Any]) -> None:
    sessions = Sessions(counter, store)
    with pytest.raises(SessionNotFound, match="seed_session"):
        await sessions.call(None, "get_counter_value", {})
    with pytest.raises(SessionNotFound, match="unknown session 'forged'"):
        await sessions.call("forged", "get_counter_value", {})
    with pytest.raises(SessionNotFound):
        await sessions.verify(None, {})
    assert await store.sessions() == []


async def test_caller_chosen_ids_reseed_idempotently(
    store: SqliteStore, counter: Environment[Any, Any]
) -> None:
    sessions = Sessions(counter, store)
    first = await sessions.seed(row(initial=2, _ng_session_id="rollout-7"))
    await sessions.call(first, "increment_counter", {"count": 1})
    again = await sessions.seed(row(initial=2, _ng_session_id="rollout-7"))
    assert again == first == "rollout-7"
    assert await sessions.call(first, "get_counter_value", {}) == {"count": 3}
    with pytest.raises(Conflict, match="different row"):
        await sessions.seed(row(initial=9, _ng_session_id="rollout-7"))
    with pytest.raises(TaskInvalid, match="_ng_session_id"):
        await sessions.seed(row(_ng_session_id="bad id; with spaces"))


async def test_session_seed_is_recorded_and_can_be_pinned(
    store: SqliteStore, counter: Environment[Any, Any]
) -> None:
    sessions = Sessions(counter, store)
    pinned = await sessions.seed(row(session_seed=42))
    drawn = await sessions.seed(row())
    assert (await store.read(pinned))[0].data["seed"] == 42
    assert isinstance((await store.read(drawn))[0].data["seed"], int)
    with pytest.raises(TaskInvalid, match="session_seed"):
        await sessions.seed(row(session_seed="x"))
    with pytest.raises(TaskInvalid, match="initial_count"):
        await sessions.seed(row(initial="three"))  # type: ignore[arg-type]


async def test_closed_sessions_refuse_calls_but_keep_their_log(
    store: SqliteStore, counter: Environment[Any, Any]
) -> None:
    sessions = Sessions(counter, store)
    sid = await sessions.seed(row(initial=4))
    assert await sessions.close(sid) is True
    assert await sessions.close(sid) is False
    with pytest.raises(SessionClosed):
        await sessions.call(sid, "get_counter_value", {})
    assert [e.kind for e in await store.read(sid)] == ["seeded", "closed"]
    assert await Sessions(counter, store).close(sid) is False


async def test_state_at_any_seq(store: SqliteStore, counter: Environment[Any, Any]) -> None:
    sessions = Sessions(counter, store)
    sid = await sessions.seed(row(initial=0))
    for n in (1, 2, 3):
        await sessions.call(sid, "increment_counter", {"count": n})
    assert await sessions.state_at(sid, 1) == (1, {"count": 0})
    assert await sessions.state_at(sid, 3) == (3, {"count": 3})
    assert await sessions.state_at(sid) == (4, {"count": 6})
    with pytest.raises(EventNotFound, match="has 4 events"):
        await sessions.state_at(sid, 9)


async def test_a_retry_of_a_call_not_known_durable_waits_for_an_fsync(
    db_path: Any, counter: Environment[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The syncer died with the call committed but not fsynced (a 503: "retry with the same
    # Idempotency-Key"). The retry found the key in the log and answered 200 at once, with no fsync
    # since: acknowledged, not durable. Now it is answered only after an fsync.
    store = SqliteStore(db_path)
    sessions = Sessions(counter, store)
    try:
        sid = await sessions.seed(row(initial=0))
        assert store._syncer is not None
        pid = store._syncer.pid
        os.kill(pid, signal.SIGSTOP)
        call = asyncio.ensure_future(sessions.call(sid, "increment_counter", {"count": 1}, key="k"))
        await asyncio.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(StoreUnavailable, match="may or may not be recorded"):
            await asyncio.wait_for(call, 5)
        slow = (  # a syncer whose every fsync takes half a second
            "import os, time\nwhile n := len(os.read(0, 65536)):\n"
            "    time.sleep(0.5)\n    os.write(1, b'.' * n)\n"
        )
        monkeypatch.setattr(sqlite_store, "_SYNCER", slow)
        retry = asyncio.ensure_future(sessions.call(sid, "increment_counter", {"count": 1}, key="k"))
        await asyncio.sleep(0.25)
        assert not retry.done()  # waiting for the fsync
        assert await asyncio.wait_for(retry, 5) == {"success": True}
        assert [e.seq for e in await store.read(sid)] == [1, 2]  # applied once
    finally:
        await store.close()


async def test_a_server_whose_fold_is_stale_folds_the_other_servers_calls_in_and_applies_its_own(
    db_path: Path, counter: Environment[Any, Any]
) -> None:
    # Two servers sharing one log (DESIGN: "optimistic concurrency: a conflict reloads and retries").
    # B folded the session, then A appended to it: B's next append is at a seq the log has. B now
    # folds A's events in and applies its call on that state, where it answered a 409 before.
    a_store, b_store = SqliteStore(db_path), SqliteStore(db_path)
    try:
        a, b = Sessions(counter, a_store), Sessions(counter, b_store)
        sid = await a.seed(row(initial=0, expected=3))
        assert await b.call(sid, "get_counter_value", {}) == {"count": 0}  # B has it folded
        assert await a.call(sid, "increment_counter", {"count": 1}) == {"success": True}
        assert await b.call(sid, "increment_counter", {"count": 2}, key="k") == {"success": True}
        assert await b.call(sid, "get_counter_value", {}) == {"count": 3}
        assert await a.call(sid, "increment_counter", {"count": 2}, key="k") == {
            "success": True
        }  # B's, by key
        assert (await a.verify(sid, {"output": []})).reward == 1.0  # A's fold is stale now: it catches up
        assert await b.close(sid) is True  # so is B's
        events = await a_store.read(sid)
        assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6, 7]
        assert first_broken_link(events) is None
        assert fold(counter, events).state == (await a._load(sid)).state
    finally:
        await a_store.close()
        await b_store.close()


async def test_a_call_that_keeps_losing_the_race_is_a_409_after_its_tries(
    store: SqliteStore, counter: Environment[Any, Any]
) -> None:
    class AlwaysTaken(SqliteStore):
        appends = 0

        async def append(self, session: str, events: Sequence[Event]) -> None:
            if events[0].seq > 1:
                self.appends += 1
                raise Conflict(f"session {session!r}: an event with that seq is already in the log")
            await super().append(session, events)

    taken = AlwaysTaken(store.path)
    try:
        sessions = Sessions(counter, taken)
        sid = await sessions.seed(row())
        with pytest.raises(Conflict, match="already in the log"):
            await sessions.call(sid, "increment_counter", {"count": 1})
        assert taken.appends == STALE_TRIES
    finally:
        await taken.close()


async def test_a_named_seed_sent_to_two_servers_at_once_is_one_session(
    db_path: Path, counter: Environment[Any, Any]
) -> None:
    # A seed retried on a second server sharing the log (the first one slow to answer): both read
    # the id as unseeded, then both append its seq 1. The one that loses the race answered a 409
    # ("an event with that seq … is already in the log") where the same row is the same session.
    class ReadsEarly(SqliteStore):
        """Its read of seq 1 returns what it found, but only once `go` is set."""

        def __init__(self, path: Path) -> None:
            super().__init__(path)
            self.read_done, self.go = asyncio.Event(), asyncio.Event()

        async def read(self, session: str, upto: int | None = None) -> list[Event]:
            found = await super().read(session, upto)
            if not self.go.is_set():
                self.read_done.set()
                await self.go.wait()
            return found

    a_store, b_store = SqliteStore(db_path), ReadsEarly(db_path)
    try:
        a, b = Sessions(counter, a_store), Sessions(counter, b_store)
        named = row(initial=2, expected=5, _ng_session_id="rollout-9")
        late = asyncio.ensure_future(b.seed(named))
        await b_store.read_done.wait()  # B found no such session
        assert await a.seed(named) == "rollout-9"
        b_store.go.set()
        assert await late == "rollout-9"  # B's seq 1 was refused: A's is the same seed
        assert [e.seq for e in await a_store.read("rollout-9")] == [1]
        assert await b.call("rollout-9", "increment_counter", {"count": 3}) == {"success": True}
        # Another row under that id stays a 409, however the race went.
        other = asyncio.ensure_future(b.seed(row(initial=7, _ng_session_id="rollout-9")))
        with pytest.raises(Conflict, match="already seeded with a different row"):
            await other
    finally:
        await a_store.close()
        await b_store.close()

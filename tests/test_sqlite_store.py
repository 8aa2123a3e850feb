from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from eventsourced_env import ConfigError, Conflict, SqliteStore, Store, StoreUnavailable, sqlite_store
from eventsourced_env.events import Event, first_broken_link, make_event
from eventsourced_env.sqlite_store import INSERT_EVENT
from tests.logs import delete_log


def log(n: int, env: str = "counter", start: float = 100.0) -> list[Event]:
    events = [make_event("", 1, "seeded", start, {"env": env, "env_version": "1", "seed": 1, "row": {}})]
    for seq in range(2, n + 1):
        events.append(make_event(events[-1].hash, seq, "tool_called", start + seq, {"tool": "t", "args": {}}))
    return events


async def test_append_then_read_back_in_order(store: SqliteStore) -> None:
    events = log(5)
    await store.append("s1", events[:1])
    await store.append("s1", events[1:])
    assert await store.read("s1") == events
    assert await store.read("s1", upto=2) == events[:2]
    assert await store.read("nobody") == []


async def test_a_taken_seq_is_a_conflict_and_writes_nothing(store: SqliteStore) -> None:
    events = log(3)
    await store.append("s1", events[:2])
    clash = make_event(events[0].hash, 2, "tool_called", 5.0, {"tool": "other"})
    with pytest.raises(Conflict, match="s1"):
        await store.append("s1", [events[2], clash])  # seq 3 is fine but the batch is one unit
    assert await store.read("s1") == events[:2]


async def test_reseeding_an_id_is_a_conflict(store: SqliteStore) -> None:
    await store.append("s1", log(1))
    with pytest.raises(Conflict):
        await store.append("s1", log(1, env="other"))


async def test_concurrent_appends_are_group_committed_without_loss(store: SqliteStore) -> None:
    logs = {f"s{i}": log(20, start=float(i)) for i in range(50)}

    async def writer(session: str) -> None:
        for event in logs[session]:
            await store.append(session, [event])

    await asyncio.gather(*(writer(s) for s in logs))
    for session, events in logs.items():
        stored = await store.read(session)
        assert stored == events
        assert first_broken_link(stored) is None


async def test_one_bad_append_does_not_fail_the_others_in_its_batch(store: SqliteStore) -> None:
    await store.append("taken", log(1))
    good = [store.append(f"g{i}", log(1)) for i in range(20)]
    results = await asyncio.gather(store.append("taken", log(1)), *good, return_exceptions=True)
    assert isinstance(results[0], Conflict)
    assert results[1:] == [None] * 20
    assert len(await store.sessions()) == 21


async def test_sessions_are_listed_with_their_last_event(store: SqliteStore) -> None:
    await store.append("a", log(3, start=10.0))
    await store.append("b", log(1, env="other", start=20.0))
    infos = await store.sessions()
    assert [(i.id, i.env, i.last_seq, i.last_kind) for i in infos] == [
        ("a", "counter", 3, "tool_called"),
        ("b", "other", 1, "seeded"),
    ]
    assert [i.id for i in await store.sessions(env="other")] == ["b"]
    assert [i.id for i in await store.sessions(limit=1, offset=1)] == ["b"]
    info = await store.info("a")
    assert info is not None and info.created_at == 10.0 and info.updated_at == 13.0
    assert await store.info("zzz") is None


async def test_close_flushes_and_a_reopened_store_has_everything(db_path: Path) -> None:
    store = SqliteStore(db_path)
    events = log(4)
    pending = [asyncio.ensure_future(store.append("s", [e])) for e in events[:1]]
    await asyncio.gather(*pending)
    await store.append("s", events[1:])
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.append("s", log(1))
    again = SqliteStore(db_path)
    try:
        assert await again.read("s") == events
    finally:
        await again.close()


async def test_a_full_disk_is_unavailable_writes_nothing_and_recovers(store: SqliteStore) -> None:
    await store.append("s", log(1))
    writer = store._connections[0]  # the writer's connection, idle between batches
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
    big = make_event((await store.read("s"))[0].hash, 2, "tool_called", 1.0, {"blob": "x" * 100_000})
    with pytest.raises(StoreUnavailable, match="full"):
        await store.append("s", [big])
    assert [e.seq for e in await store.read("s")] == [1]
    writer.execute("PRAGMA max_page_count = 1073741823")
    await store.append("s", [big])
    assert [e.seq for e in await store.read("s")] == [1, 2]


async def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="folder does not exist"):
        SqliteStore(tmp_path / "no" / "such" / "log.db")


async def test_a_log_in_the_earlier_layout_is_still_read_and_appended_to(db_path: Path) -> None:
    # Logs written before events got a rowid were keyed by (session, seq) alone.
    conn = sqlite3.connect(db_path)
    conn.executescript(
        """CREATE TABLE events (session TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL,
               at REAL NOT NULL, hash TEXT NOT NULL, body BLOB NOT NULL, PRIMARY KEY (session, seq)
           ) WITHOUT ROWID;
           CREATE TABLE sessions (id TEXT PRIMARY KEY, env TEXT NOT NULL, created_at REAL NOT NULL);"""
    )
    events = log(3)
    conn.executemany(INSERT_EVENT, [("s", e.seq, e.kind, e.at, e.hash, e.body) for e in events[:2]])
    conn.execute("INSERT INTO sessions VALUES ('s', 'counter', 100.0)")
    conn.commit()
    conn.close()
    store = SqliteStore(db_path)
    try:
        assert await store.read("s") == events[:2]
        await store.append("s", events[2:])
        with pytest.raises(Conflict):
            await store.append("s", events[2:])
        assert await store.read("s") == events
        assert [(i.id, i.last_seq) for i in await store.sessions()] == [("s", 3)]
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(db_path)) as conn:  # its key serves: no second index was built
        assert [row[1] for row in conn.execute("PRAGMA index_list(events)")] == ["sqlite_autoindex_events_1"]


async def test_a_new_log_indexes_its_events_by_session_and_seq(db_path: Path) -> None:
    store = SqliteStore(db_path)
    await store.close()
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        assert [row[1] for row in conn.execute("PRAGMA index_list(events)")] == ["events_by_session"]


# -- durability: the syncer fsyncs the WAL before any caller is answered ---------------------------


def _syncer_pid(store: SqliteStore) -> int:
    assert store._syncer is not None, "started by the first commit"
    return store._syncer.pid


async def test_a_call_is_answered_only_after_the_syncer_fsynced_it(store: SqliteStore) -> None:
    events = log(2)
    await store.append("s1", events[:1])
    pid = _syncer_pid(store)
    os.kill(pid, signal.SIGSTOP)  # an fsync that never ends
    other = log(1, env="other")
    try:
        waiting = asyncio.ensure_future(store.append("s1", events[1:]))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # committed (a reader can see it), but not yet answered
        assert await store.read("s1") == events
        # One fsync in flight at a time: what comes meanwhile waits for it, then commits.
        queued = asyncio.ensure_future(store.append("s2", other))
        await asyncio.sleep(0.3)
        assert not queued.done() and await store.read("s2") == []
    finally:
        os.kill(pid, signal.SIGCONT)
    await asyncio.wait_for(asyncio.gather(waiting, queued), 5)
    assert await store.read("s2") == other


async def test_a_lost_syncer_fails_the_calls_it_held_and_the_next_one_starts_anew(store: SqliteStore) -> None:
    events = log(3)
    await store.append("s1", events[:1])
    pid = _syncer_pid(store)
    os.kill(pid, signal.SIGSTOP)
    waiting = asyncio.ensure_future(store.append("s1", events[1:2]))
    await asyncio.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(StoreUnavailable, match="may or may not be recorded"):
        await asyncio.wait_for(waiting, 5)
    await store.append("s1", events[2:])  # a new syncer
    assert _syncer_pid(store) != pid
    assert await store.read("s1") == events  # the unacknowledged event was committed all the same


async def test_a_failed_fsync_is_a_503_and_final_until_a_restart(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = "import os\nwhile n := len(os.read(0, 65536)):\n    os.write(1, b'!' * n)\n    break\n"
    monkeypatch.setattr(sqlite_store, "_SYNCER", failing)
    store = SqliteStore(db_path)
    try:
        with pytest.raises(StoreUnavailable, match="could not be flushed"):
            await store.append("s1", log(1))
        assert store._syncer is None
        monkeypatch.undo()  # the disk works again: a retry would now be fsynced and answered 200,
        # though the system may have dropped the pages of the failed fsync. So nothing is trusted.
        for attempt in (store.append("s1", log(1)), store.sync(), store.read("s1")):
            with pytest.raises(StoreUnavailable, match=r"fsync of the event log failed.*restart"):
                await attempt
        assert store._syncer is None
    finally:
        monkeypatch.undo()
        await store.close()
    reopened = SqliteStore(db_path)  # a restart trusts the file again (replay checks it)
    try:
        assert await reopened.read("s1") == log(1)
        await reopened.append("s1", log(2)[1:])
    finally:
        await reopened.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_the_syncer_outlasts_a_signal_to_the_process_group(db_path: Path, sig: signal.Signals) -> None:
    # Ctrl-C (a terminal) or SIGTERM (a service manager) may reach the server's whole process group:
    # the syncer must go on fsyncing while the server drains, not die and leave its batch a 503.
    store = SqliteStore(db_path)
    try:
        events = log(2)
        await store.append("s1", events[:1])
        syncer = store._syncer
        assert syncer is not None
        os.kill(syncer.pid, sig)
        await asyncio.sleep(0.2)  # a syncer that dies of it is gone by now
        await store.append("s1", events[1:])
        assert store._syncer is syncer and syncer.poll() is None
    finally:
        await store.close()
    assert syncer.returncode == 0  # it ended when the store closed its stdin


async def test_close_stops_the_syncer_and_normal_or_memory_need_none(db_path: Path, tmp_path: Path) -> None:
    store = SqliteStore(db_path)
    await store.append("s1", log(1))
    syncer = store._syncer
    assert syncer is not None
    await store.close()
    assert syncer.returncode == 0
    for other in (SqliteStore(tmp_path / "normal.db", synchronous="NORMAL"), SqliteStore(":memory:")):
        await other.append("s1", log(1))
        assert other._syncer is None
        await other.close()


def test_a_store_used_from_two_event_loops_gets_a_syncer_on_each(db_path: Path) -> None:
    store = SqliteStore(db_path)
    events = log(2)
    asyncio.run(asyncio.wait_for(store.append("s1", events[:1]), 5))
    first = store._syncer
    # Replies to the first loop's syncer would never be read: this would hang without a new one.
    asyncio.run(asyncio.wait_for(store.append("s1", events[1:]), 5))
    assert first is not None and store._syncer is not first and first.returncode == 0
    asyncio.run(store.close())
    assert asyncio.run(_read_all(db_path)) == events


async def _read_all(db: Path) -> list[Event]:
    store = SqliteStore(db)
    try:
        return await store.read("s1")
    finally:
        await store.close()


async def test_a_big_batch_goes_to_the_syncer_too_which_runs_as_a_batch_process(db_path: Path) -> None:
    store = SqliteStore(db_path)
    try:
        logs = {f"s{i}": log(1, start=float(i)) for i in range(100)}
        await asyncio.gather(*(store.append(s, events) for s, events in logs.items()))  # one batch
        assert store._syncer is not None
        assert store._writer.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: the syncer's fsync
        if hasattr(os, "SCHED_BATCH"):
            assert os.sched_getscheduler(store._syncer.pid) == os.SCHED_BATCH
        for session, events in logs.items():
            assert await store.read(session) == events
    finally:
        await store.close()


async def test_a_log_reached_through_a_symlink_is_fsynced_where_sqlite_writes_it(tmp_path: Path) -> None:
    # SQLite follows the link and keeps its WAL beside the target; the syncer must fsync that file,
    # not "<link>-wal" (missing: every call was a 503; or a stale file: acknowledged, not durable).
    (tmp_path / "volume").mkdir()
    link = tmp_path / "log.db"
    link.symlink_to(tmp_path / "volume" / "target.db")
    (tmp_path / "log.db-wal").write_bytes(b"")  # a stale file where the WAL is not
    store = SqliteStore(link)
    try:
        await store.append("s1", log(2))
        assert store._syncer is not None
        wal, database = store._syncer.args[5:7]
        assert (wal, database) == (
            str(tmp_path / "volume" / "target.db-wal"),
            str(tmp_path / "volume" / "target.db"),
        )
        assert await store.read("s1") == log(2)
    finally:
        await store.close()


@pytest.mark.parametrize(
    "theirs",
    [
        "CREATE TABLE events (x INTEGER, y TEXT)",  # another program's events
        "CREATE TABLE sessions (id INTEGER, y TEXT)",  # another program's sessions
        "CREATE TABLE snapshots (who TEXT)",
    ],
)
def test_a_database_of_another_program_is_refused_and_left_as_it_was(db_path: Path, theirs: str) -> None:
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute(theirs)
    with pytest.raises(ConfigError, match="not an event log"):
        SqliteStore(db_path)
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        assert [sql for (sql,) in conn.execute("SELECT sql FROM sqlite_master")] == [theirs]


@pytest.mark.parametrize("replaced", [False, True])
async def test_a_log_deleted_before_the_first_fsync_is_unavailable_for_good(
    db_path: Path, replaced: bool
) -> None:
    store = SqliteStore(db_path)
    try:
        delete_log(db_path)
        if replaced:  # another log made at the same path: fsyncing it would vouch for nothing of ours
            await SqliteStore(db_path).close()
            with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("CREATE TABLE t (x)")
        for _ in range(2):
            with pytest.raises(StoreUnavailable, match="deleted or replaced"):
                await store.append("s1", log(1))
        with pytest.raises(StoreUnavailable, match="restart the server"):
            await store.read("s1")
    finally:
        await store.close()


def test_a_log_locked_by_another_process_leaves_no_connection_open(db_path: Path) -> None:
    # Refused at its first PRAGMA, the store's connection was left for the collector to close
    # (Python 3.13 warns of it, an error under our filterwarnings, in whichever test collects it).
    with contextlib.closing(sqlite3.connect(db_path, isolation_level=None)) as holder:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN EXCLUSIVE")
        opened: list[sqlite3.Connection] = []
        real_connect = sqlite3.connect

        def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
            opened.append(real_connect(*args, **kwargs))
            return opened[-1]

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sqlite3, "connect", connect)
            with pytest.raises(StoreUnavailable, match="locked"):
                SqliteStore(db_path)
    assert len(opened) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        opened[0].execute("SELECT 1")


def test_a_store_written_before_sync_and_append_many_still_works() -> None:
    # `Store` is public: a backend written against it before these two were added must not be
    # refused as abstract. Their defaults fit a store whose append returns once durable.
    assert Store.__abstractmethods__.isdisjoint({"sync", "append_many"})


async def test_an_append_waiting_for_another_process_lock_is_written_and_close_waits_for_it(
    db_path: Path,
) -> None:
    store = SqliteStore(db_path)
    other = sqlite3.connect(db_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another server on the file, mid-transaction
        pending = asyncio.ensure_future(store.append("s", log(2)))
        await asyncio.sleep(0.3)  # past busy_timeout: it waits on, nothing failed or written
        assert not pending.done()
        closing = asyncio.ensure_future(store.close())  # a server stopping: it writes what waits
        await asyncio.sleep(0.1)
        assert not closing.done()
        other.execute("ROLLBACK")
        await asyncio.wait_for(asyncio.gather(pending, closing), 5)
        assert [e.seq for e in SqliteStore.read_sync(other, "s")] == [1, 2]
    finally:
        other.close()
        await store.close()

"""Smoke tests of the benchmark harness at tiny sizes: it runs, and both servers serve correctly.

No timings are asserted here: speed targets live in `python -m tools.bench`, not in the test suite.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import sqlite3
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import orjson
import pytest

from tools import bench


def test_write_counter_log_replays_and_raw_reads_every_event(tmp_path: Path) -> None:
    db = tmp_path / "log.db"
    sessions = bench.write_counter_log(db, 100, per_session=11)
    assert len(sessions) == 10
    assert bench.replay_fold(db) == bench.replay_fold(db, jobs=1) == bench.raw_read(db) == 100


def test_both_servers_play_rollouts_without_errors(tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as loadgen:
        tallies = bench.bench_http(loadgen, concurrency=4, rounds=2, rollouts=10, increments=2, tmp=tmp_path)
    for name in ("ours", "ceiling"):
        t = tallies[name]
        assert t.errors == []
        assert t.perfect == t.rollouts == 20
        assert t.calls == 20 * 5
        assert t.cpu > 0 and t.loadgen_cpu > 0
        # A round's own CPU time can be zero clock ticks at this size: the ratios made of the rounds
        # are checked on tallies made to measure, below.
        assert len(t.rounds) == 2 and all(rate > 0 and p99 > 0 for rate, p99, _ in t.rounds)


def test_the_prototype_plays_beside_them_and_logs_every_call_chained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as loadgen:
        tallies = bench.bench_http(
            loadgen, concurrency=4, rounds=2, rollouts=10, increments=2, tmp=tmp_path, prototype=True
        )
        bench.print_http(4, tallies)
        db = tmp_path / "prototype.db"
        argv = [sys.executable, "tools/prototype_server.py", "--port", "0", "--db", str(db)]
        server = bench.Server("prototype", argv)
        try:
            r = loadgen.submit(bench.play, server.url, 6, 3, 2, 0).result()
        finally:
            server.stop()
    assert list(tallies) == ["prototype", "ours", "ceiling"]
    t = tallies["prototype"]
    assert t.errors == [] and t.perfect == t.rollouts == 20 and t.calls == 20 * 5 and t.cpu > 0
    out = capsys.readouterr().out
    # The paired rows need a round's CPU time above zero clock ticks: see the test below.
    assert "|     4 | proto/c" in out and "|     4 | ratio" in out
    # Durable before reply: every acknowledged call is in the log, each session's events chained.
    assert r.errors == [] and r.perfect == 6
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        rows = conn.execute("SELECT session, seq, hash, body FROM events ORDER BY session, seq").fetchall()
    assert len(rows) == r.calls == 6 * 5
    prev: dict[str, tuple[int, str]] = {}
    for session, seq, digest, body in rows:
        envelope = orjson.loads(body)
        last_seq, last_hash = prev.get(session, (0, ""))
        assert envelope["seq"] == seq == last_seq + 1
        assert envelope["prev"] == last_hash
        assert hashlib.sha256(body).hexdigest() == digest
        prev[session] = (seq, digest)
    assert sorted(seq for seq, _ in prev.values()) == [5] * 6


def test_each_server_gets_its_ratios_and_paired_rounds_against_the_ceiling(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def tally(*rounds: tuple[float, float, float]) -> bench.Tally:  # (seconds, latency, CPU s) each
        t = bench.Tally()
        for seconds, latency, cpu in rounds:
            t.add(bench.Round(100, seconds, [latency] * 100, [], 10, 10), cpu)
        return t

    tallies = {
        "prototype": tally((2.0, 0.02, 0.02), (1.0, 0.02, 0.01)),
        "ours": tally((4.0, 0.04, 0.04), (2.0, 0.03, 0.03)),
        "ceiling": tally((1.0, 0.01, 0.01), (1.0, 0.01, 0.01)),
    }
    bench.print_http(64, tallies)
    out = capsys.readouterr().out
    # Ours: 0.25x and 0.5x the ceiling's calls/s round by round (median 0.38x), 1/3x of the totals.
    assert "|    64 | ratio     |    0.33x |" in out
    assert "|    64 | paired    | 0.38x (0.25-0.50) | | 3.50x (3.00-4.00) | 3.50x (3.00-4.00) |" in out
    assert "|    64 | proto/c   |    0.67x |" in out
    assert "|    64 | proto pd  | 0.75x (0.50-1.00) | | 2.00x (2.00-2.00) | 1.50x (1.00-2.00) |" in out


def test_main_prints_every_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--concurrency", "2", "--rounds", "2", "--rollouts", "4", "--replay-events", "50"]
    argv += ["--memory-sessions", "5,10", "--cold-events", "30", "--skip-instructions"]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "|     2 | ratio" in out and "|     2 | proto/c" in out
    assert "Replay of 50 events" in out and "with --jobs 1" in out
    assert "RSS after 10 sessions" in out
    assert "Cold rebuild of a 30-event session" in out


@pytest.mark.slow
def test_instructions_per_call_are_counted_for_every_server(tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    servers = ("ours", "prototype", "ceiling")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as loadgen:
        counts = bench.bench_instructions(loadgen, 4, rollouts=8, increments=2, tmp=tmp_path, servers=servers)
    # Serving a call, or making one, takes well over 10k instructions in Python, and well under 100M.
    assert set(counts) == set(servers)
    assert all(10_000 < n < 100_000_000 for pair in counts.values() for n in pair)


def test_replay_costs_replays_every_event_with_each_step_left_out(tmp_path: Path) -> None:
    from tools import replay_costs

    db = tmp_path / "log.db"
    bench.write_counter_log(db, 110, per_session=11)
    assert replay_costs.as_shipped(db) == replay_costs.replay(db) == replay_costs.bare(db) == 110
    for step in replay_costs.STEPS:
        assert replay_costs.replay(db, without=step) == 110
    us = replay_costs.measure(db, repeats=1)
    steps = {f"without {s}" for s in replay_costs.STEPS}
    assert set(us) == {"raw read", "as shipped", "every step", "bare", *steps}
    assert all(v > 0 for v in us.values())


def test_replay_costs_notices_a_divergence(tmp_path: Path) -> None:
    from tools import replay_costs

    db = tmp_path / "log.db"
    bench.write_counter_log(db, 22, per_session=11)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # an observation the counter would not give
        body = conn.execute("SELECT body FROM events WHERE seq = 5 LIMIT 1").fetchone()[0]
        conn.execute("UPDATE events SET body = ? WHERE body = ?", (body.replace(b"true", b"false"), body))
    with pytest.raises(RuntimeError, match="hash chain broken"):
        replay_costs.replay(db)
    with pytest.raises(RuntimeError, match="observation differs"):
        replay_costs.replay(db, without="chain")
    with pytest.raises(RuntimeError, match="hash chain broken"):
        replay_costs.bare(db)


def test_bare_replay_compares_observations(tmp_path: Path) -> None:
    from tools import replay_costs

    db = tmp_path / "log.db"
    bench.write_counter_log(db, 22, per_session=11)
    with (
        contextlib.closing(sqlite3.connect(db)) as conn,
        conn,
    ):  # a session's last event rewritten, its stored hash with it
        row, body = conn.execute("SELECT id, body FROM events WHERE seq = 11 LIMIT 1").fetchone()
        body = body.replace(b"true", b"false")
        conn.execute(
            "UPDATE events SET body = ?, hash = ? WHERE id = ?", (body, hashlib.sha256(body).hexdigest(), row)
        )
    with pytest.raises(RuntimeError, match="observation differs at seq 11"):
        replay_costs.bare(db)

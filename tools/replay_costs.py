"""What each step of a replay costs per event: a one-process replay of a counter log with each step
left out in turn, against the raw read that `tools/bench.py` compares replay with.

    python -m tools.replay_costs                  # a log of 55,000 events, best of 4 alternating runs

Steps: read each session's rows (one query per session, as `Snapshot.events`), decode each
envelope, check the hash chain (SHA-256 of each body), start each session from its seeded event,
validate each call's recorded arguments, run the tool and compare its observation. A step's cost is
the time of the whole replay minus the time without it (an input the step would have made is made
once, beforehand), per event. "as shipped" is `replay.check_log` over `Snapshot.events`: its excess
over "every step" is the glue between the steps. "bare" makes the same checks with none of the
library's structure (no event tuples, no separate chain pass, the tool's function called
directly): about the least replay can cost in Python, written for this one environment. The
garbage collector runs under `rare_gc`, as it does while serving, so its passes hardly fall on one
variant or another.
"""

from __future__ import annotations

import argparse
import hashlib
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from eventsourced_env.collector import rare_gc
from eventsourced_env.environment import Context
from eventsourced_env.events import decode_event, first_broken_link
from eventsourced_env.fold import start
from eventsourced_env.replay import check_log
from eventsourced_env.snapshot import Filters, Snapshot
from tools.bench import raw_read, write_counter_log

STEPS = ("read", "decode", "chain", "start", "validate", "tool")
_EVENTS = "SELECT body, hash FROM events WHERE session = ? ORDER BY seq"


def _open(db: Path) -> tuple[sqlite3.Connection, list[str]]:
    """A connection holding one read transaction (as `Snapshot` does), and the session ids in order."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    return conn, [s for (s,) in conn.execute("SELECT id FROM sessions ORDER BY created_at, id")]


def replay(db: Path, without: str | None = None) -> int:
    """Replay every session of the counter log at `db` with one step left out; the events replayed."""
    from environments.counter import env

    conn, ids = _open(db)
    try:
        # What a left-out step would have made, made once: rows, events, a started session, arguments.
        first_rows = conn.execute(_EVENTS, (ids[0],)).fetchall()
        first_events = [decode_event(body, hash) for body, hash in first_rows]
        started = start(env, first_events[0])
        tool = env.tools["increment_counter"]
        validated = tool.validate(first_events[1].data["args"])
        n = 0
        for session in ids:
            rows = first_rows if without == "read" else conn.execute(_EVENTS, (session,)).fetchall()
            events = first_events if without == "decode" else [decode_event(b, h) for b, h in rows]
            if without != "chain" and first_broken_link(events) is not None:
                raise RuntimeError(f"session {session}: hash chain broken")
            folded = started if without == "start" else start(env, events[0])
            state, seed = folded.state, folded.seed
            for event in events[1:]:
                args = validated if without == "validate" else tool.validate(event.data["args"])
                if without == "tool":
                    observation = event.data["observation"]
                else:
                    ctx = Context(seed, event.seq, event.at)
                    state, observation = env.run_tool(tool, state, args, ctx)
                if observation != event.data["observation"]:
                    raise RuntimeError(f"session {session}: observation differs at seq {event.seq}")
            n += len(events)
        return n
    finally:
        conn.close()


def bare(db: Path) -> int:
    """The same checks, fused into one loop for the counter alone: each row decoded, its SHA-256
    checked against its stored hash and its `prev` against the row before, each call's arguments
    validated, the tool's function run on the state and its observation compared."""
    from environments.counter import env

    conn, ids = _open(db)
    try:
        tool = env.tools["increment_counter"]
        validate, fn = tool.args_model.__pydantic_validator__.validate_python, tool.fn
        n = 0
        for session in ids:
            prev, state, seed = "", None, 0
            for body, digest in conn.execute(_EVENTS, (session,)):
                event = orjson.loads(body)
                if event["prev"] != prev or hashlib.sha256(body).hexdigest() != digest:
                    raise RuntimeError(f"session {session}: hash chain broken")
                prev, data = digest, event["data"]
                if event["kind"] == "seeded":
                    seed = data["seed"]
                    state = env.start(env.parse_task(data["row"]), Context(seed, 1, event["at"]))
                else:
                    ctx = Context(seed, event["seq"], event["at"])
                    state, observation = fn(state, validate(data["args"]), ctx)
                    if observation != data["observation"]:
                        raise RuntimeError(f"session {session}: observation differs at seq {event['seq']}")
                n += 1
        return n
    finally:
        conn.close()


def as_shipped(db: Path) -> int:
    """`check_log` over `Snapshot.events`, session by session, as `esenv replay --jobs 1` runs it."""
    from environments.counter import env

    n = 0
    with Snapshot(db) as view:
        for session in view.ids(Filters()):
            events = view.events(session)
            if check_log(env, session, events) is not None:
                raise RuntimeError(f"session {session} diverged")
            n += len(events)
    return n


def measure(db: Path, repeats: int = 4) -> dict[str, float]:
    """µs per event of each variant, the best of `repeats` alternating runs: "raw read", "as shipped",
    "every step" and "without <step>" for each step."""
    variants: dict[str, Callable[[Path], int]] = {
        "raw read": raw_read,
        "as shipped": as_shipped,
        "every step": replay,
        "bare": bare,
    }
    for step in STEPS:
        variants[f"without {step}"] = lambda db, step=step: replay(db, without=step)
    best = dict.fromkeys(variants, float("inf"))
    with rare_gc():
        for _ in range(repeats):
            for name, run in variants.items():
                started = time.perf_counter()
                n = run(db)
                best[name] = min(best[name], (time.perf_counter() - started) / n * 1e6)
    return best


def main(argv: list[str] | None = None) -> int:
    """Command line: write a counter log, measure, print each step's cost per event."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.replay_costs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=55_000, help="Events in the log.")
    parser.add_argument("--repeats", type=int, default=4, help="Alternating runs of each variant.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="esenv-replay-costs-") as tmp:
        db = Path(tmp) / "log.db"
        write_counter_log(db, args.events)
        us = measure(db, args.repeats)
    every = us["every step"]
    print(f"{args.events:,} events, one process, under rare_gc; µs per event (best of {args.repeats}):")
    print(f"  raw read     {us['raw read']:6.2f}")
    print(f"  as shipped   {us['as shipped']:6.2f}   (glue: {us['as shipped'] - every:+.2f})")
    print(f"  every step   {every:6.2f}")
    print(f"  bare         {us['bare']:6.2f}   (the same checks, none of the library's structure)")
    for step in STEPS:
        print(f"    {step:<10} {every - us[f'without {step}']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

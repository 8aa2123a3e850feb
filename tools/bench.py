"""The benchmark: our server against a bare-aiohttp ceiling, side by side, in alternating rounds.

    python -m tools.bench                      # everything, default sizes (make bench)
    python -m tools.bench --concurrency 64 --rounds 3 --rollouts 2000 --skip-replay --skip-memory

HTTP: starts `esenv serve counter` (a fresh log in a temporary folder) and `tools/ceiling_server.py`
as processes, and drives each with the same NeMo-Gym-style load (`tools/loadgen.py`'s `run`, in a
process of its own so it shares no interpreter with a server), ours and the ceiling taking turns
round by round so that whatever else the machine is doing falls on both. For each it prints
calls/s, p50, p99 and the server's CPU time per call (user + system of the server process and its
threads, from /proc/PID/stat), then ours/ceiling: the ratio of the totals, and the median and
range of the ratios of each pair of rounds (run back to back, so each sees one state of a machine
whose speed drifts). Ratios, and CPU per call, are the figures to compare across machines;
absolute throughput depends on what else runs. The issue's reference prototype plays too
(`tools/prototype_server.py`: validation, hash chain, group commit, durable before reply, and
nothing else; --no-prototype leaves it out), so what its figures elsewhere set as targets can be
read on this machine.

Instructions: the same load on each server run under valgrind's callgrind, which counts the
user-space instructions per call (kernel time excluded); unlike CPU time, the count does not move
with what else the machine is doing (skipped, with a note, where valgrind is not installed).

Replay: folds every session of a log of N counter events (`replay_fold`, what `esenv replay`
does: on one worker process per core, and with --jobs 1) against a raw-read ceiling (one SELECT
of every payload and `orjson.loads`). Memory: our server's RSS after serving 10,000 sessions and
after 100,000 (the state cache is bounded by `--cache-size`). Cold rebuild: the first read of a
10,000-event session's state after a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# -- processes ------------------------------------------------------------------------------------


def raise_fd_limit() -> None:
    """Raise this process's open-file limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Server:
    """A server process that prints its URL on stdout when ready."""

    def __init__(self, name: str, argv: list[str], prefix: Sequence[str] = ()) -> None:
        self.name = name
        argv = [*prefix, *argv]
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.proc.kill()
            raise RuntimeError(f"{name} did not start: {' '.join(argv)}")

    @classmethod
    def ours(cls, db: Path, *extra: str, prefix: Sequence[str] = ()) -> Server:
        """`esenv serve counter` on a free port, logging to `db` (run under `prefix`, e.g. valgrind)."""
        argv = [sys.executable, "-m", "eventsourced_env", "serve", "counter", "--db", str(db), "--port", "0"]
        return cls("ours", [*argv, *extra], prefix)

    @classmethod
    def ceiling(cls, prefix: Sequence[str] = ()) -> Server:
        """The bare-aiohttp ceiling on a free port."""
        argv = [sys.executable, str(ROOT / "tools" / "ceiling_server.py"), "--port", "0"]
        return cls("ceiling", argv, prefix)

    @classmethod
    def prototype(cls, prefix: Sequence[str] = ()) -> Server:
        """The issue's reference prototype (`tools/prototype_server.py`) on a free port, a scratch log."""
        argv = [sys.executable, str(ROOT / "tools" / "prototype_server.py"), "--port", "0"]
        return cls("prototype", argv, prefix)

    def cpu_seconds(self) -> float:
        """User + system CPU time so far of the process (all its threads) and of its live children
        (ours: the syncer, which fsyncs the log); children that exited count once reaped."""
        total = 0.0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if entry.name == str(self.proc.pid):
                total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / CLOCK_TICKS
            elif fields[1] == str(self.proc.pid):
                total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        return total

    def rss_bytes(self) -> int:
        """Resident memory of the process now."""
        return int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * PAGE_SIZE

    def stop(self) -> None:
        """SIGTERM and wait (ours flushes its log)."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


# -- HTTP load ------------------------------------------------------------------------------------


@dataclass
class Round:
    """What one load run saw, as the load generator's process reports it."""

    calls: int
    seconds: float
    latencies: list[float]
    errors: list[str]
    perfect: int
    rollouts: int
    #: CPU time (user + system) of the load generator's own process over the run, s.
    loadgen_cpu: float = 0.0


def play(url: str, rollouts: int, concurrency: int, increments: int, seed: int) -> Round:
    """Run `tools/loadgen.py`'s load against `url` (called in the load generator's own process)."""
    from tools.loadgen import run

    raise_fd_limit()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    results = asyncio.run(run(url, rollouts, concurrency, increments, seed))
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    latencies = [x for r in results for x in r.latencies]
    return Round(
        calls=len(latencies),
        seconds=seconds,
        latencies=latencies,
        errors=[e for r in results for e in r.errors],
        perfect=sum(r.reward == 1.0 for r in results),
        rollouts=len(results),
        loadgen_cpu=after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime,
    )


@dataclass
class Tally:
    """Rounds of one server at one concurrency, added up."""

    calls: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    perfect: int = 0
    rollouts: int = 0
    loadgen_cpu: float = 0.0

    #: Each round's own figures, in order: (calls/s, p99 ms, server CPU µs per call).
    rounds: list[tuple[float, float, float]] = field(default_factory=list)

    def add(self, r: Round, cpu: float) -> None:
        """Count one round and the server CPU time it cost."""
        alone = Tally(calls=r.calls, seconds=r.seconds, cpu=cpu, latencies=r.latencies)
        self.rounds.append((alone.rate, alone.pct(0.99), alone.cpu_per_call_us))
        self.loadgen_cpu += r.loadgen_cpu
        self.calls += r.calls
        self.seconds += r.seconds
        self.cpu += cpu
        self.latencies += r.latencies
        self.errors += r.errors
        self.perfect += r.perfect
        self.rollouts += r.rollouts

    @property
    def rate(self) -> float:
        """Calls per second."""
        return self.calls / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """A latency percentile, in ms."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def cpu_per_call_us(self) -> float:
        """Server CPU time per call, µs."""
        return self.cpu / self.calls * 1e6 if self.calls else 0.0


def bench_http(
    loadgen: ProcessPoolExecutor,
    concurrency: int,
    rounds: int,
    rollouts: int,
    increments: int,
    tmp: Path,
    sync: str = "FULL",
    prototype: bool = False,
) -> dict[str, Tally]:
    """Alternate ours and the ceiling (and the prototype) for `rounds` rounds at `concurrency`; the
    tallies by server. Ours and the ceiling always play back to back; the prototype plays first or
    last, so in every other pair of its rounds with the ceiling's, ours played between them."""
    rollouts = max(rollouts, 2 * concurrency)  # every worker plays at least two rollouts
    servers = [Server.ours(tmp / f"http-{concurrency}.db", "--sync", sync), Server.ceiling()]
    if prototype:
        servers.insert(0, Server.prototype())
    tallies = {s.name: Tally() for s in servers}
    try:
        for s in servers:  # warm up: connections, caches, the allocator
            loadgen.submit(play, s.url, min(rollouts, 500), min(concurrency, 500), increments, 99).result()
        for n in range(rounds):
            for s in servers if n % 2 == 0 else servers[::-1]:
                before = s.cpu_seconds()
                r = loadgen.submit(play, s.url, rollouts, concurrency, increments, n).result()
                tallies[s.name].add(r, s.cpu_seconds() - before)
    finally:
        for s in servers:
            s.stop()
    return tallies


def _loadgen_instructions(argv: list[str], dump: Path) -> int:
    """The instructions the load generator (`argv`) runs under callgrind, start to end (its `refs`)."""
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    refs = next((line for line in run.stderr.splitlines() if "refs:" in line), None)
    if run.returncode != 0 or refs is None:
        raise RuntimeError(f"callgrind failed ({run.returncode}): {run.stderr[-500:]}")
    if "\n0 errors" not in run.stdout:
        raise RuntimeError(f"the load generator under callgrind had errors: {run.stdout[-500:]}")
    return int(refs.split("refs:")[1].replace(",", ""))


def _start(name: str, db: Path, prefix: Sequence[str] = ()) -> Server:
    """Start the server called `name` ("ours" logging to `db`, "prototype" or "ceiling")."""
    if name == "ours":
        return Server.ours(db, prefix=prefix)
    return Server.prototype(prefix) if name == "prototype" else Server.ceiling(prefix)


def bench_instructions(
    loadgen: ProcessPoolExecutor,
    concurrency: int,
    rollouts: int,
    increments: int,
    tmp: Path,
    servers: Sequence[str] = ("ours", "ceiling"),
) -> dict[str, tuple[float, float]]:
    """Instructions per call, counted by valgrind's callgrind: {server: (the server's, the load generator's)}.

    Each server runs under callgrind (about 50 times slower), plays a few rollouts to warm up, has
    its counters zeroed, plays `rollouts`, and dumps. The count is of user-space instructions only
    (no kernel time: sockets, fsync), but it is the same run after run, however busy the machine.
    Then, against the same server run normally, the load generator runs under callgrind twice, for
    `rollouts` and for twice as many; the difference over the difference in calls is its own
    work per call, without its start-up. If that is the same against both servers, the load
    generator's CPU time per call differing between them is the same work running slower.
    `servers`: which, of "ours", "prototype" and "ceiling".
    """
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise RuntimeError("valgrind is not installed (apt-get install valgrind)")
    counts = {}
    for name in servers:
        dump = tmp / f"callgrind-{name}.out"
        prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}"]
        server = _start(name, tmp / "instr.db", prefix)
        try:
            loadgen.submit(play, server.url, concurrency, concurrency, increments, 99).result()
            control = ["callgrind_control", "--zero", str(server.proc.pid)]
            subprocess.run(control, check=True, capture_output=True)
            r = loadgen.submit(play, server.url, rollouts, concurrency, increments, 0).result()
            control[1] = "--dump"
            subprocess.run(control, check=True, capture_output=True)
        finally:
            server.stop()
        if r.errors:
            raise RuntimeError(f"{server.name} under callgrind had errors: {r.errors[:3]}")
        [part] = tmp.glob(dump.name + ".*")  # the dump of the counted rollouts alone
        summary = next(line for line in part.read_text().splitlines() if line.startswith("summary:"))
        server_count = int(summary.split()[1]) / r.calls
        server = _start(name, tmp / "instr-lg.db")
        argv = [sys.executable, "-m", "tools.loadgen", "--url", server.url, "--concurrency", str(concurrency)]
        argv += ["--increments", str(increments), "--rollouts"]
        try:
            dump = tmp / f"callgrind-loadgen-{name}.out"
            refs = [_loadgen_instructions([*argv, str(n)], dump) for n in (rollouts, 2 * rollouts)]
        finally:
            server.stop()
        calls_per_rollout = r.calls / r.rollouts
        counts[name] = (server_count, (refs[1] - refs[0]) / (rollouts * calls_per_rollout))
    return counts


# -- the event log: replay, cold rebuild ----------------------------------------------------------


def write_counter_log(db: Path, events: int, per_session: int = 11) -> list[str]:
    """Write a log of about `events` counter events (sessions of `per_session`); the session ids.

    Real events, built as the server builds them (the counter's tools run for every observation),
    written in big transactions without fsync: the file is scratch.
    """
    from environments.counter import env
    from eventsourced_env.environment import Context
    from eventsourced_env.events import SEEDED, TOOL_CALLED, make_event
    from eventsourced_env.sqlite_store import INSERT_EVENT, SCHEMA

    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript(SCHEMA)
    conn.execute("PRAGMA synchronous=OFF")
    sessions: list[str] = []
    rows: list[tuple[str, int, str, float, str, bytes]] = []
    at = time.time()
    tool = env.tools["increment_counter"]
    n = 0
    conn.execute("BEGIN")
    while n < events:
        session = f"bench-{len(sessions):08d}"
        sessions.append(session)
        row = {"initial_count": 0, "expected_count": per_session - 1, "_ng_task_index": len(sessions)}
        data: dict[str, Any] = {
            "env": env.name,
            "env_version": env.version,
            "seed": len(sessions),
            "row": row,
        }
        event = make_event("", 1, SEEDED, at, data)
        conn.execute("INSERT INTO sessions VALUES (?, ?, ?)", (session, env.name, at))
        state = env.start(env.parse_task(row), Context(len(sessions), 1, at))
        for seq in range(1, min(per_session, events - n) + 1):
            if seq > 1:
                args = tool.validate({"count": 1})
                state, observation = env.run_tool(tool, state, args, Context(len(sessions), seq, at))
                data = {"tool": tool.name, "args": args.model_dump(mode="json"), "observation": observation}
                event = make_event(event.hash, seq, TOOL_CALLED, at, data)
            rows.append((session, event.seq, event.kind, event.at, event.hash, event.body))
        n += min(per_session, events - n)
        if len(rows) >= 50_000:
            conn.executemany(INSERT_EVENT, rows)
            rows.clear()
    conn.executemany(INSERT_EVENT, rows)
    conn.execute("COMMIT")
    conn.close()
    return sessions


def replay_fold(db: Path, jobs: int = 0) -> int:
    """What `esenv replay` does to the log at `db` (`jobs` processes; 0: one per core); the events replayed.

    Every session read from a read-only snapshot, its hash chain checked, every call re-run and its
    observation compared with the record, its state snapshots checked.
    """
    from environments.counter import env
    from eventsourced_env.parallel import default_jobs, replay_file
    from eventsourced_env.snapshot import Filters, Snapshot

    with Snapshot(db) as view:
        ids = view.ids(Filters())
    with contextlib.closing(sqlite3.connect(db)) as conn:  # the log is scratch and still: count it apart
        (n,) = conn.execute("SELECT count(*) FROM events").fetchone()
    for _, divergence in replay_file(db, ids, lambda name: env, jobs or default_jobs()):
        if divergence is not None:
            raise RuntimeError(divergence.describe())
    return int(n)


def raw_read(db: Path) -> int:
    """The replay ceiling: one SELECT of every payload and `orjson.loads` of each; the count."""
    conn = sqlite3.connect(db)
    try:
        n = 0
        for (body,) in conn.execute("SELECT body FROM events"):
            orjson.loads(body)
            n += 1
        return n
    finally:
        conn.close()


def best_rate(fn: Callable[[Path], int], db: Path, repeats: int) -> float:
    """Events per second of `fn(db)`, the best of `repeats` runs (noise on a shared machine only slows)."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        n = fn(db)
        rates.append(n / (time.perf_counter() - started))
    return max(rates)


def bench_replay(events: int, repeats: int, tmp: Path) -> tuple[float, float, float]:
    """(events/s of `esenv replay` on every core, on one process, of the raw read) over `events` events."""
    db = tmp / "replay.db"
    write_counter_log(db, events)
    every_core: list[float] = []
    one_process: list[float] = []
    raw_rate: list[float] = []
    for _ in range(repeats):  # alternate, like the HTTP rounds
        every_core.append(best_rate(replay_fold, db, 1))
        one_process.append(best_rate(lambda db: replay_fold(db, jobs=1), db, 1))
        raw_rate.append(best_rate(raw_read, db, 1))
    return max(every_core), max(one_process), max(raw_rate)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as resp:
        return orjson.loads(resp.read())


def _played_session(db: Path, events: int) -> str:
    """A counter session of `events` events played through `Sessions`, as the server writes it
    (state snapshots included); synchronous=OFF only to build it quickly."""
    from environments.counter import env
    from eventsourced_env import Sessions, SqliteStore

    async def play_one() -> str:
        store = SqliteStore(db, synchronous="OFF")
        sessions = Sessions(env, store)
        session = await sessions.seed({"initial_count": 0})
        for _ in range(events - 1):
            await sessions.call(session, "increment_counter", {"count": 1})
        await store.close()
        return session

    return asyncio.run(play_one())


def bench_cold_rebuild(events: int, tmp: Path) -> tuple[float, float]:
    """(ms to the first state read of an `events`-event session after a restart, ms for the next)."""
    db = tmp / "cold.db"
    session = _played_session(db, events)
    server = Server.ours(db)
    try:
        started = time.perf_counter()
        reply = _get(f"{server.url}/sessions/{session}/state")
        cold = (time.perf_counter() - started) * 1000
        assert reply == {"seq": events, "state": {"count": events - 1}}, reply
        started = time.perf_counter()
        _get(f"{server.url}/sessions/{session}/state")
        warm = (time.perf_counter() - started) * 1000
    finally:
        server.stop()
    return cold, warm


def bench_memory(
    loadgen: ProcessPoolExecutor, marks: list[int], cache_size: int, tmp: Path
) -> list[tuple[int, int]]:
    """Our server's RSS after serving each number of sessions in `marks` (short rollouts, 64 at a time)."""
    server = Server.ours(tmp / "memory.db", "--cache-size", str(cache_size))
    out = []
    served = 0
    try:
        for mark in marks:
            r = loadgen.submit(play, server.url, mark - served, 64, 1, mark).result()
            if r.errors:
                raise RuntimeError(f"memory run had errors: {r.errors[:3]}")
            served = mark
            out.append((mark, server.rss_bytes()))
    finally:
        server.stop()
    return out


# -- the report -----------------------------------------------------------------------------------


def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def paired_ratios(server: Tally, ceiling: Tally) -> list[tuple[float, float, float]]:
    """A server (ours, the prototype) / the ceiling round by round: (calls/s, p99, CPU per call).

    The two rounds of a pair ran one right after the other, so each ratio sees one state of the
    machine; the ratio of the totals instead lets a slow spell that fell on one server's round weigh
    on it alone. Their median and range are printed beside the ratio of the totals.
    """
    return [
        (a[0] / b[0], a[1] / b[1], a[2] / b[2])
        for a, b in zip(server.rounds, ceiling.rounds, strict=True)
        if b[0] and b[1] and b[2]
    ]


def print_http(concurrency: int, tallies: dict[str, Tally]) -> None:
    """One block of the HTTP table: each server, then each other server over the ceiling."""
    ceiling = tallies["ceiling"]
    for name, t in tallies.items():
        print(
            f"| {concurrency:>5} | {name:<9} | {t.rate:>8.0f} | {t.pct(0.5):>7.1f} | {t.pct(0.99):>7.1f} "
            f"| {t.cpu_per_call_us:>7.0f} | {len(t.errors):>6} | {t.perfect}/{t.rollouts} "
            f"| {t.loadgen_cpu / t.calls * 1e6 if t.calls else 0:>7.0f} |"
        )

    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "-"

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"

    for name, t in tallies.items():
        if name == "ceiling":
            continue
        label = "ratio" if name == "ours" else f"{name[:5]}/c"
        print(
            f"| {concurrency:>5} | {label:<9} | {ratio(t.rate, ceiling.rate):>8} "
            f"| {ratio(t.pct(0.5), ceiling.pct(0.5)):>7} | {ratio(t.pct(0.99), ceiling.pct(0.99)):>7} "
            f"| {ratio(t.cpu_per_call_us, ceiling.cpu_per_call_us):>7} |        |  |  |"
        )
        pairs = paired_ratios(t, ceiling)
        if len(pairs) > 1:
            rate, p99, cpu = (spread([pair[i] for pair in pairs]) for i in range(3))
            label = "paired" if name == "ours" else f"{name[:5]} pd"
            print(f"| {concurrency:>5} | {label:<9} | {rate} | | {p99} | {cpu} |        |  |  |")
    for e in [e for t in tallies.values() for e in t.errors][:5]:
        print(f"  error: {e}")


def main(argv: list[str] | None = None) -> int:
    """Command line: run the chosen benchmarks and print their tables."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--concurrency",
        default="64,1024,4096",
        help="Comma-separated concurrent rollouts (default: %(default)s).",
    )
    parser.add_argument("--rounds", type=int, default=6, help="Rounds per server per concurrency.")
    parser.add_argument(
        "--rollouts", type=int, default=1000, help="Rollouts per round (at least 2x the concurrency)."
    )
    parser.add_argument("--increments", type=int, default=8, help="increment_counter calls per rollout.")
    parser.add_argument("--replay-events", type=int, default=1_000_000, help="Events in the replay log.")
    parser.add_argument(
        "--memory-sessions", default="10000,100000", help="Comma-separated session counts for RSS."
    )
    parser.add_argument("--cache-size", type=int, default=10_000, help="Our server's --cache-size for RSS.")
    parser.add_argument("--cold-events", type=int, default=10_000, help="Events in the cold-rebuild session.")
    parser.add_argument(
        "--sync",
        default="FULL",
        choices=["FULL", "NORMAL"],
        help="Our server's SQLite synchronous mode: FULL survives power loss, NORMAL a process crash.",
    )
    parser.add_argument(
        "--instructions-rollouts",
        type=int,
        default=200,
        help="Rollouts (at 64 concurrent) counted under callgrind for instructions per call.",
    )
    parser.add_argument(
        "--prototype",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Play the issue's reference prototype (tools/prototype_server.py) in the HTTP rounds too.",
    )
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-instructions", action="store_true", help="Skip the callgrind count.")
    parser.add_argument("--skip-replay", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args(argv)
    raise_fd_limit()
    print(f"load average before: {_loadavg()}; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")
    spawn = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory(prefix="esenv-bench-") as tmp_name,
        ProcessPoolExecutor(max_workers=1, mp_context=spawn) as loadgen,
    ):
        tmp = Path(tmp_name)
        if not args.skip_http:
            print(
                f"\nHTTP: {args.rounds} alternating round(s) per server; seed + {args.increments} increments"
            )
            print(
                f"+ 1 read + verify per rollout; each call committed (--sync {args.sync}) before its reply.\n"
            )
            print(
                "| conc. | server    |  calls/s | p50 ms  | p99 ms  | CPU µs/call | errors | reward 1.0 "
                "| load gen. CPU µs/call |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
            rates: dict[int, dict[str, float]] = {}
            for c in (int(x) for x in args.concurrency.split(",")):
                tallies = bench_http(
                    loadgen, c, args.rounds, args.rollouts, args.increments, tmp, args.sync, args.prototype
                )
                print_http(c, tallies)
                rates[c] = {name: t.rate for name, t in tallies.items()}
                sys.stdout.flush()
            if 64 in rates:
                for c, rate in rates.items():
                    if c != 64:
                        ours, ceiling = (rate[n] / rates[64][n] for n in ("ours", "ceiling"))
                        print(
                            f"at {c} concurrent: ours {ours:.2f}x its 64-concurrent throughput, "
                            f"the ceiling {ceiling:.2f}x its own"
                        )
        if not args.skip_instructions:
            try:
                names = ("ours", "prototype", "ceiling") if args.prototype else ("ours", "ceiling")
                counts = bench_instructions(
                    loadgen, 64, args.instructions_rollouts, args.increments, tmp, names
                )
            except RuntimeError as e:
                print(f"\nInstructions per call: skipped ({e})")
            else:
                (ours, lg_ours), (ceiling, lg_ceiling) = counts["ours"], counts["ceiling"]
                print(
                    f"\nInstructions per call (callgrind, user space, {args.instructions_rollouts} rollouts "
                    f"at 64 concurrent): ours {ours / 1000:,.0f}k, ceiling {ceiling / 1000:,.0f}k, "
                    f"ratio {ours / ceiling:.2f}x; the load generator's own against each: "
                    f"{lg_ours / 1000:,.0f}k and {lg_ceiling / 1000:,.0f}k, ratio {lg_ours / lg_ceiling:.2f}x"
                )
                if "prototype" in counts:
                    proto, lg_proto = counts["prototype"]
                    print(
                        f"the prototype {proto / 1000:,.0f}k, {proto / ceiling:.2f}x the ceiling's; "
                        f"the load generator's own against it {lg_proto / 1000:,.0f}k"
                    )
            sys.stdout.flush()
        if not args.skip_replay:
            from eventsourced_env.parallel import default_jobs

            every_core, one_process, raw_rate = bench_replay(args.replay_events, 3, tmp)
            print(
                f"\nReplay of {args.replay_events:,} events: raw read {raw_rate:,.0f} events/s; esenv replay "
                f"on {default_jobs()} processes (the default) {every_core:,.0f} events/s, "
                f"ratio {every_core / raw_rate:.2f}x; with --jobs 1 {one_process:,.0f} events/s, "
                f"ratio {one_process / raw_rate:.2f}x"
            )
        if not args.skip_memory:
            marks = [int(x) for x in args.memory_sessions.split(",")]
            rss = bench_memory(loadgen, marks, args.cache_size, tmp)
            print(f"\nMemory (--cache-size {args.cache_size}):")
            for mark, size in rss:
                print(f"  RSS after {mark:,} sessions: {size / 2**20:.1f} MiB ({size / rss[0][1]:.2f}x)")
        if not args.skip_cold:
            cold, warm = bench_cold_rebuild(args.cold_events, tmp)
            print(
                f"\nCold rebuild of a {args.cold_events:,}-event session after a restart: {cold:.1f} ms "
                f"(the next read, cached: {warm:.1f} ms)"
            )
    print(f"\nload average after: {_loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

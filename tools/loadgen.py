"""A load generator that plays counter rollouts exactly as NeMo Gym's SimpleAgent calls a resources server.

It keeps no cookie jar: after every call it keeps only the last reply's `Set-Cookie` and sends
that on the next call. A rollout is: seed, N increment_counter calls, get_counter_value, verify.

    python tools/loadgen.py --url http://127.0.0.1:8000 --rollouts 2000 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

import aiohttp
import orjson

from eventsourced_env.collector import rare_gc
from eventsourced_env.conformance import trajectory_response


@dataclass
class Rollout:
    """What one rollout saw: its cookie at the end, its reward, and each call's latency."""

    index: int
    cookie: str = ""
    reward: float | None = None
    expected: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class AgentClient:
    """Calls a resources server the way NeMo Gym's agent does: only the last `Set-Cookie` is carried."""

    def __init__(self, http: aiohttp.ClientSession, base: str, cookie: str = "") -> None:
        self.http = http
        self.base = base.rstrip("/")
        self.cookie = cookie
        self.latencies: list[float] = []

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """POST `body` to `path`; keep exactly this reply's cookies for the next call."""
        headers = {"Content-Type": "application/json", **(headers or {})}
        if self.cookie:
            headers["Cookie"] = self.cookie
        started = time.perf_counter()
        async with self.http.post(self.base + path, data=orjson.dumps(body), headers=headers) as resp:
            raw = await resp.read()
            jar: SimpleCookie = resp.cookies
            self.cookie = "; ".join(f"{k}={m.value}" for k, m in jar.items())
            status = resp.status
        self.latencies.append(time.perf_counter() - started)
        return status, orjson.loads(raw) if raw else None


def counter_row(index: int, rollout: int, initial: int, expected: int) -> dict[str, Any]:
    """A dataset row in NeMo Gym's format for the counter environment."""
    return {
        "responses_create_params": {
            "input": [{"role": "user", "content": f"Bring the counter from {initial} to {expected}."}],
        },
        "initial_count": initial,
        "expected_count": expected,
        "_ng_task_index": index,
        "_ng_rollout_index": rollout,
        "agent_ref": {"type": "responses_api_agents", "name": "simple_agent"},
    }


async def play_counter(
    client: AgentClient, row: dict[str, Any], increments: list[int], rollout: Rollout
) -> None:
    """One counter rollout, NeMo-Gym style, recorded into `rollout`."""
    status, _ = await client.post("/seed_session", row)
    if status != 200:
        rollout.errors.append(f"seed: {status}")
        return
    calls: list[tuple[str, dict[str, Any], Any]] = []
    for count in increments:
        status, obs = await client.post("/increment_counter", {"count": count})
        if status != 200:
            rollout.errors.append(f"increment_counter: {status} {obs}")
        calls.append(("increment_counter", {"count": count}, obs))
    status, obs = await client.post("/get_counter_value", {})
    if status != 200 or obs.get("count") != row["expected_count"]:
        rollout.errors.append(f"get_counter_value: {status} {obs}")
    calls.append(("get_counter_value", {}, obs))
    rollout.cookie = client.cookie
    status, reply = await client.post("/verify", {**row, "response": trajectory_response(calls)})
    if status != 200:
        rollout.errors.append(f"verify: {status} {reply}")
        return
    rollout.reward = reply["reward"]


async def run(url: str, rollouts: int, concurrency: int, increments: int = 8, seed: int = 0) -> list[Rollout]:
    """Play `rollouts` counter rollouts against `url`, `concurrency` at a time."""
    rng = random.Random(seed)
    plans = []
    for i in range(rollouts):
        initial = rng.randint(-50, 50)
        steps = [rng.randint(-5, 9) for _ in range(increments)]
        plans.append((counter_row(i % 50, i // 50, initial, initial + sum(steps)), steps))
    results = [Rollout(i, expected=plans[i][0]["expected_count"]) for i in range(rollouts)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(rollouts):
        queue.put_nowait(i)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    # The garbage collector as the server has it: else, at thousands of rollouts in flight, its
    # passes over their objects, not the calls, take a third of this process's CPU.
    with rare_gc():
        async with aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), timeout=timeout
        ) as http:

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    client = AgentClient(http, url)
                    try:
                        await play_counter(client, plans[i][0], plans[i][1], results[i])
                    except (TimeoutError, aiohttp.ClientError) as e:
                        results[i].errors.append(f"{type(e).__name__}: {e}")
                    results[i].latencies = client.latencies

            await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def main() -> None:
    """Command line: play rollouts and print throughput, latency and rewards."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--rollouts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--increments", type=int, default=8)
    args = parser.parse_args()
    started = time.perf_counter()
    results = asyncio.run(run(args.url, args.rollouts, args.concurrency, args.increments))
    elapsed = time.perf_counter() - started
    latencies = sorted(x for r in results for x in r.latencies)
    errors = [e for r in results for e in r.errors]
    perfect = sum(r.reward == 1.0 for r in results)
    p = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    rate = len(latencies) / elapsed
    print(f"{len(results)} rollouts, {len(latencies)} calls in {elapsed:.2f}s: {rate:.0f} calls/s")
    # No call answered (no server there, or not listening yet): no percentiles, but the errors.
    timing = f"p50 {p(0.5):.1f} ms, p99 {p(0.99):.1f} ms" if latencies else "no call answered"
    print(f"{timing}; reward 1.0 on {perfect}/{len(results)}")
    print(f"{len(errors)} errors")
    for e in errors[:10]:
        print("  error:", e)
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()

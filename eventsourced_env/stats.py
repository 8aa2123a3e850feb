"""`esenv stats`: per-environment figures read off an event log (one consistent snapshot).

For each environment: sessions by status; the reward of each verified session (its latest
verified event): mean, sample std, min, max and a distribution; pass@k per task group
(`_ng_task_index`, with `metrics.pass_at_k_over_groups`: success is reward >= 1.0); per tool,
the calls (called or rejected) and the share rejected; events per session; and the call latency
as the log records it: the seconds from the previous event to each tool call, i.e. the agent's
time to produce the call. Percentiles interpolate linearly between the closest ranks.

Rewards, session lengths and latencies are kept as packed arrays (8 bytes a value) to compute
percentiles. Sits on top; imports `snapshot` and `metrics`.
"""

from __future__ import annotations

import math
import statistics
from array import array
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .events import TOOL_CALLED, TOOL_REJECTED
from .metrics import SUCCESS_THRESHOLD, pass_at_k_over_groups
from .snapshot import STATUSES, Filters, SessionLog, Snapshot

__all__ = ["format_stats", "percentile", "stats"]

_MAX_DISTINCT: Final = 10
_BINS: Final = 10


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-quantile (0 ≤ q ≤ 1) of sorted `values`, interpolating between the closest ranks."""
    pos = (len(values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _spread(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "mean": statistics.fmean(ordered),
        "p50": percentile(ordered, 0.5),
        "p95": percentile(ordered, 0.95),
        "max": ordered[-1],
    }


def _distribution(rewards: Sequence[float]) -> list[dict[str, float]]:
    """A count per value if there are few distinct rewards, else equal-width bins from min to max."""
    counts = Counter(rewards)
    if len(counts) <= _MAX_DISTINCT:
        return [{"low": v, "high": v, "count": n} for v, n in sorted(counts.items())]
    low, high = min(rewards), max(rewards)
    width = (high - low) / _BINS
    bins = [0] * _BINS
    for r in rewards:
        # A reward on an edge (0.3 of 0 to 1) goes in the bin it starts, though 0.3 / 0.1 < 3.
        place = (r - low) / width
        nearest = round(place)
        index = nearest if math.isclose(place, nearest, abs_tol=1e-9) else math.floor(place)
        bins[min(index, _BINS - 1)] += 1
    return [{"low": low + i * width, "high": low + (i + 1) * width, "count": n} for i, n in enumerate(bins)]


@dataclass
class _Tally:
    """Everything counted for one environment."""

    statuses: Counter[str] = field(default_factory=Counter)
    rewards: array[float] = field(default_factory=lambda: array("d"))
    groups: defaultdict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    calls: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    lengths: array[int] = field(default_factory=lambda: array("q"))
    gaps: array[float] = field(default_factory=lambda: array("d"))
    failed: int = 0

    def add(self, log: SessionLog) -> None:
        s = log.summary
        self.statuses[s.status] += 1
        self.lengths.append(s.events)
        if s.failure is not None:  # scored 0 because scoring failed (a judge down): not a sample
            self.failed += 1
        elif s.reward is not None:
            self.rewards.append(s.reward)
            if s.task_index is not None:
                self.groups[s.task_index].append(s.reward)
        for before, event in zip(log.events, log.events[1:], strict=False):
            if event.kind in (TOOL_CALLED, TOOL_REJECTED):
                tool = str(event.data.get("tool"))
                self.calls[tool] += 1
                self.rejected[tool] += event.kind == TOOL_REJECTED
                self.gaps.append(event.at - before.at)

    def report(self) -> dict[str, Any]:
        rewards = self.rewards
        return {
            "sessions": len(self.lengths),
            "verified": len(rewards) + self.failed,
            "scoring_failed": self.failed,
            "status": {status: self.statuses[status] for status in STATUSES},
            "reward": {
                "mean": statistics.fmean(rewards),
                "std": statistics.stdev(rewards) if len(rewards) > 1 else 0.0,
                "min": min(rewards),
                "max": max(rewards),
                "distribution": _distribution(rewards),
            }
            if rewards
            else None,
            "pass_at_k": [p._asdict() for p in pass_at_k_over_groups(self.groups.values())],
            "tools": {
                tool: {
                    "calls": n,
                    "rejected": self.rejected[tool],
                    "rejection_rate": self.rejected[tool] / n,
                }
                for tool, n in sorted(self.calls.items())
            },
            "events_per_session": {k: v for k, v in _spread(self.lengths).items() if k != "max"},
            "latency": {"calls": len(self.gaps), **_spread(self.gaps)} if self.gaps else None,
        }


def stats(db: str | Path, env: str | None = None) -> dict[str, Any]:
    """The figures of every environment in the log `db` (or of `env` only), JSON-ready."""
    tallies: defaultdict[str, _Tally] = defaultdict(_Tally)
    with Snapshot(db) as snapshot:
        for log in snapshot.sessions(Filters(env=env)):
            tallies[log.summary.env].add(log)
    return {
        "success_threshold": SUCCESS_THRESHOLD,
        "envs": {name: tally.report() for name, tally in sorted(tallies.items())},
    }


def _line(label: str, figures: dict[str, float], names: tuple[str, ...], spec: str, unit: str = "") -> str:
    return f"  {label:<15} " + "  ".join(f"{name} {figures[name]:{spec}}{unit}" for name in names)


def format_stats(report: dict[str, Any]) -> str:
    """The figures as a readable table."""
    lines: list[str] = []
    for name, env in report["envs"].items():
        status = ", ".join(f"{k} {v}" for k, v in env["status"].items())
        failed = (
            f" (scoring failed for {env['scoring_failed']}: left out below)" if env["scoring_failed"] else ""
        )
        lines.append(f"{name}: {env['sessions']} sessions ({status}), {env['verified']} verified{failed}")
        reward = env["reward"]
        if reward:
            lines.append(_line("reward", reward, ("mean", "std", "min", "max"), ".4f"))
            top = max(b["count"] for b in reward["distribution"])
            for b in reward["distribution"]:
                where = f"{b['low']:.4g}" if b["low"] == b["high"] else f"{b['low']:.4g} to {b['high']:.4g}"
                bar = "#" * max(1, round(30 * b["count"] / top))  # every value seen shows
                lines.append(f"    {where:>15}  {bar:<30} {b['count']}")
        if env["pass_at_k"]:
            threshold = report["success_threshold"]
            lines.append(f"  pass@k          (success: reward >= {threshold}; mean over task groups)")
            lines.extend(
                f"    k={p['k']:<4} {p['value']:.4f}  ({p['groups']} groups)" for p in env["pass_at_k"]
            )
        if env["tools"]:
            lines.append(f"  {'tool':<28} {'calls':>8} {'rejected':>9} {'rate':>7}")
            lines.extend(
                # A made-up tool's name is what the client posted to: a newline would split its row.
                f"  {tool if tool.isprintable() else repr(tool):<28} {t['calls']:>8} {t['rejected']:>9} "
                f"{t['rejection_rate']:>7.1%}"
                for tool, t in env["tools"].items()
            )
        lines.append(_line("events/session", env["events_per_session"], ("mean", "p50", "p95"), ".4g"))
        latency = env["latency"]
        if latency:
            figures = _line("call latency", latency, ("mean", "p50", "p95", "max"), ".4f", "s")
            lines.append(f"{figures}  ({latency['calls']} calls)")
    return "\n".join(lines) if lines else "no sessions"

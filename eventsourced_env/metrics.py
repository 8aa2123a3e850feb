"""`/aggregate_metrics`: NeMo Gym's default statistics over a batch of verify replies.

Rows are grouped by `_ng_task_index`; for every top-level numeric field (bools as 0/1; the `_ng_*`
bookkeeping fields and `session_seed` left out) and the response's usage token counts, each group
and the whole batch get `mean/`, `max/`, `min/`, `median/` and `std/` (sample standard deviation)
entries. The usage counts are named as NeMo Gym names them, as if they were top-level fields
(`mean/input_tokens`; a usage count wins over a top-level field of the same name, as there).

pass@k (the unbiased estimator `1 - C(n-c, k)/C(n, k)` of Chen et al. 2021, over the `n`
rewarded rollouts of a task group of which `c` succeeded) is added to the batch's metrics as
`pass@{k}/reward` for k = 1 up to the largest group, averaged over the groups that have at least
k rollouts. A rollout succeeds when its reward is at least `SUCCESS_THRESHOLD` (1.0).
`esenv stats` reports pass@k with the same function.
"""

from __future__ import annotations

import math
import reprlib
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

from .errors import BadRequest

__all__ = ["SUCCESS_THRESHOLD", "PassAtK", "aggregate_metrics", "pass_at_k", "pass_at_k_over_groups"]

SUCCESS_THRESHOLD: Final = 1.0


class PassAtK(NamedTuple):
    """pass@k averaged over the task groups that have at least k rollouts, and how many groups that is."""

    k: int
    value: float
    groups: int


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate for `n` rollouts of which `c` succeeded: 1 - C(n-c, k)/C(n, k)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, not n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_k_over_groups(groups: Iterable[Sequence[float]]) -> list[PassAtK]:
    """pass@k for k = 1 … the largest group, given each task group's rewards."""
    counts = [(len(g), sum(1 for r in g if r >= SUCCESS_THRESHOLD)) for g in groups if g]
    out = []
    for k in range(1, max((n for n, _ in counts), default=0) + 1):
        values = [pass_at_k(n, c, k) for n, c in counts if n >= k]
        out.append(PassAtK(k, statistics.fmean(values), len(values)))
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numeric_fields(row: Mapping[str, Any]) -> dict[str, float]:
    fields: dict[str, float] = {}
    for key, value in row.items():
        if key.startswith("_ng_") or key == "session_seed":
            continue
        if isinstance(value, bool | int | float):
            fields[key] = float(value)
    response = row.get("response")
    usage = response.get("usage") if isinstance(response, Mapping) else None
    if isinstance(usage, Mapping):
        for key, value in usage.items():
            if isinstance(value, bool | int | float):
                fields[key] = float(value)
    return fields


def _summarise(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    columns: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        for key, value in _numeric_fields(row).items():
            columns[key].append(value)
    out: dict[str, float] = {}
    for key, values in columns.items():
        out[f"mean/{key}"] = _mean(values)
        out[f"max/{key}"] = max(values)
        out[f"min/{key}"] = min(values)
        out[f"median/{key}"] = statistics.median(values)
        try:
            out[f"std/{key}"] = statistics.stdev(values) if len(values) > 1 else 0.0
        except OverflowError:  # beyond a float's range (values near it, of both signs)
            out[f"std/{key}"] = math.inf
    return out


def _mean(values: list[float]) -> float:
    """The mean, also of numbers whose sum is beyond a float's range (as large rewards can be)."""
    try:
        return statistics.fmean(values)
    except OverflowError:
        return math.fsum(v / len(values) for v in values)


def _group_order(index: Any) -> tuple[int, float, str]:
    """Numeric task indexes first, in numeric order; then the others by their text."""
    if _is_number(index):
        return (0, float(index), "")
    return (1, 0.0, str(index))


def aggregate_metrics(verify_responses: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The reply to `/aggregate_metrics` for a list of verify replies."""
    groups: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for row in verify_responses:
        index = row.get("_ng_task_index")
        if isinstance(index, list | dict):
            raise BadRequest(f"_ng_task_index must be a number or a string, not {reprlib.repr(index)}")
        groups[index].append(row)
    group_level = [
        {"_ng_task_index": index, "num_rollouts": len(rows), **_summarise(rows)}
        for index, rows in sorted(groups.items(), key=lambda kv: _group_order(kv[0]))
    ]
    agent = _summarise(verify_responses)
    rewards = [
        [float(row["reward"]) for row in rows if _is_number(row.get("reward"))]
        for index, rows in groups.items()
        if index is not None
    ]
    for p in pass_at_k_over_groups(rewards):
        agent[f"pass@{p.k}/reward"] = p.value
    return {
        "group_level_metrics": group_level,
        "agent_metrics": agent,
        "key_metrics": {k: v for k, v in agent.items() if k.startswith(("mean/", "pass@"))},
    }

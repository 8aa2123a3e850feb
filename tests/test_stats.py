"""`esenv stats` on a small fixed log, checked against figures computed by hand."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import orjson
import pytest

from eventsourced_env.cli import main
from eventsourced_env.stats import _distribution, format_stats, percentile, stats
from tests.logs import build_fixed_log


@pytest.fixture
def fixed(db_path: Path) -> Path:
    build_fixed_log(db_path)
    return db_path


def test_stats_of_the_fixed_log(fixed: Path) -> None:
    report = stats(fixed)
    assert report["success_threshold"] == 1.0
    counter = report["envs"]["counter"]
    assert counter["sessions"] == 6
    assert counter["verified"] == 5
    assert counter["status"] == {"open": 1, "verified": 4, "closed": 1}
    # Rewards [1, 0, 0, 1, 0]: mean 0.4; sample variance (2·0.6² + 3·0.4²)/4 = 0.3.
    reward = counter["reward"]
    assert reward["mean"] == pytest.approx(0.4)
    assert reward["std"] == pytest.approx(math.sqrt(0.3))
    assert (reward["min"], reward["max"]) == (0.0, 1.0)
    assert reward["distribution"] == [
        {"low": 0.0, "high": 0.0, "count": 3},
        {"low": 1.0, "high": 1.0, "count": 2},
    ]
    # Task 0: n=3, c=1; task 1: n=2, c=1; task 2 was never verified.
    # k=1: (1/3 + 1/2)/2; k=2: (1 - C(2,2)/C(3,2) + 1)/2 = (2/3 + 1)/2; k=3: task 0 only, 1.
    assert [(p["k"], p["groups"]) for p in counter["pass_at_k"]] == [(1, 2), (2, 2), (3, 1)]
    assert [p["value"] for p in counter["pass_at_k"]] == pytest.approx([5 / 12, 5 / 6, 1.0])
    assert counter["tools"] == {
        "get_counter_value": {"calls": 1, "rejected": 0, "rejection_rate": 0.0},
        "increment_counter": {"calls": 6, "rejected": 1, "rejection_rate": pytest.approx(1 / 6)},
        "nonesuch": {"calls": 1, "rejected": 1, "rejection_rate": 1.0},
    }
    # Events per session [3, 3, 5, 4, 3, 2]: sorted 2 3 3 3 4 5; p95 at rank 4.75.
    assert counter["events_per_session"] == pytest.approx({"mean": 20 / 6, "p50": 3.0, "p95": 4.75})
    # Gaps before each call: 1, 2, 0.5, 3.5, 1, 0.5, 4, 2 -> sorted 0.5 0.5 1 1 2 2 3.5 4.
    assert counter["latency"] == pytest.approx(
        {"calls": 8, "mean": 14.5 / 8, "p50": 1.5, "p95": 3.5 + 0.5 * 0.65, "max": 4.0}
    )


def test_stats_filters_by_environment(fixed: Path) -> None:
    assert stats(fixed, env="counter")["envs"].keys() == {"counter"}
    assert stats(fixed, env="other")["envs"] == {}


def test_a_wide_spread_of_rewards_is_binned() -> None:
    bins = _distribution([0.0, *(i / 10 + 0.05 for i in range(10)), 1.0])
    assert len(bins) == 10
    assert [b["count"] for b in bins] == [2, 1, 1, 1, 1, 1, 1, 1, 1, 2]
    assert bins[0]["low"] == 0.0 and bins[-1]["high"] == pytest.approx(1.0)


def test_a_reward_on_a_bin_edge_goes_in_the_bin_that_starts_there() -> None:
    # 0.3 / 0.1 is 2.9999999999999996 in floating point: 0.3 was counted in "0.2 to 0.3", 0.6 and
    # 0.7 one bin low too, leaving "0.3 to 0.4" and "0.7 to 0.8" empty.
    assert [b["count"] for b in _distribution([i / 10 for i in range(11)])] == [1] * 9 + [2]
    assert [b["count"] for b in _distribution([i / 20 for i in range(21)])] == [2] * 9 + [3]
    assert [b["count"] for b in _distribution([-1 + i / 5 for i in range(11)])] == [1] * 9 + [2]


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.95) == pytest.approx(3.85)
    assert percentile([7.0], 0.95) == 7.0


def test_stats_command_prints_a_table_or_json(fixed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--db", str(fixed), "--json"]) == 0
    report: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    assert report["envs"]["counter"]["verified"] == 5
    assert main(["stats", "--db", str(fixed)]) == 0
    table = capsys.readouterr().out
    assert "counter: 6 sessions (open 1, verified 4, closed 1), 5 verified" in table
    assert "mean 0.4000  std 0.5477  min 0.0000  max 1.0000" in table
    assert "k=2    0.8333  (2 groups)" in table
    assert "nonesuch" in table and "100.0%" in table
    assert "events/session  mean 3.333  p50 3  p95 4.75" in table
    assert "(8 calls)" in table


def test_a_tool_name_that_is_not_printable_is_escaped_in_the_table(fixed: Path) -> None:
    # The name of an unknown tool is the URL path a model posted to: a newline in it split its row in two.
    report = stats(fixed)
    report["envs"]["counter"]["tools"]["a\nb\x00"] = {"calls": 1, "rejected": 1, "rejection_rate": 1.0}
    table = format_stats(report)
    assert "  'a\\nb\\x00'" in table
    assert not any(line.startswith("b") for line in table.splitlines())


def test_stats_without_a_log_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stats", "--db", str(tmp_path / "none.db")]) == 2
    assert "no event log" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()

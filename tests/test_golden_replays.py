"""Golden replays: every saved session of every bundled environment reproduces itself and its snapshot."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from eventsourced_env import Sessions, SqliteStore, load_environment
from eventsourced_env.cli import main
from eventsourced_env.testing import check_replay, load_replay, replay_files, replay_outcome, write_replay
from tests.envs_for_tests import tags_env

REPLAYS = Path(__file__).resolve().parent.parent / "replays"
CASES = [
    (folder.name, path)
    for folder in sorted(REPLAYS.iterdir())
    if folder.is_dir()
    for path in replay_files(folder)
]

pytest_plugins = ["pytester"]


@pytest.mark.parametrize(("env_name", "path"), CASES, ids=[f"{e}-{p.stem}" for e, p in CASES])
def test_golden_replay(env_name: str, path: Path, snapshot: Any) -> None:
    check_replay(load_environment(env_name), path, snapshot)


REGENERATE = {
    "counter": "python tools/make_counter_replays.py",
    "qa_judge": "python -m tools.make_qa_judge_replays",
    "blackjack": "python tools/make_replays.py",
    "sokoban": "python tools/make_replays.py",
    "workplace": "python -m environments.workplace.make_replays",
}


def test_golden_replays_record_the_current_verifier_version() -> None:
    """A replay's verified events say which verifier scored them: the one the code has now, or the
    file is stale (its verifier's module changed since it was recorded)."""
    stale = {
        f"{env_name}/{path.name}"
        for env_name, path in CASES
        for event in load_replay(path)
        if event.kind == "verified"
        and event.data["verifier_version"] != load_environment(env_name).verifier_version
    }
    hint = "; ".join(sorted({REGENERATE[name.partition("/")[0]] for name in stale}))
    assert not stale, f"stale verifier_version in {', '.join(sorted(stale))}: regenerate with {hint}"


def test_counter_has_the_required_cases() -> None:
    assert {p.stem for p in replay_files(REPLAYS / "counter")} >= {"success", "failure", "rejected", "fork"}


def test_a_replay_folder_that_is_not_there_is_an_error_not_no_tests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        replay_files("typo")
    assert str(e.value) == f"no replay folder 'typo' (relative to {tmp_path})"
    with pytest.raises(FileNotFoundError, match=f"^no replay folder {str(tmp_path / 'typo')!r}$"):
        replay_files(tmp_path / "typo")
    (tmp_path / "typo").mkdir()  # there, but no replay in it yet: nothing to test, not an error
    assert replay_files("typo") == []


def test_replay_files_round_trip(tmp_path: Path) -> None:
    events = load_replay(REPLAYS / "counter" / "fork.jsonl")
    write_replay(tmp_path / "copy.jsonl", events)
    assert (tmp_path / "copy.jsonl").read_bytes() == (REPLAYS / "counter" / "fork.jsonl").read_bytes()
    assert [e.kind for e in events][-3:] == ["forked", "tool_called", "verified"]


def test_a_set_in_the_final_state_is_snapshotted_sorted(tmp_path: Path) -> None:
    """A set's JSON lists it in an order the process's hash seed picks: the golden snapshot of the
    final state lists it sorted, or the same replay would fail in the next process."""
    words = ["kilo", "alpha", "echo", "zulu", "bravo", "mike", "delta", "oscar"]

    async def go() -> str:
        store = SqliteStore(tmp_path / "log.db")
        sessions = Sessions(tags_env, store)
        sid = await sessions.seed({})
        for word in words:
            await sessions.call(sid, "tag", {"word": word})
        await store.close()
        return sid

    sid = asyncio.run(go())
    assert (
        main(["save-replay", sid, "--db", str(tmp_path / "log.db"), "--out", str(tmp_path / "t.jsonl")]) == 0
    )
    outcome = replay_outcome(tags_env, load_replay(tmp_path / "t.jsonl"))
    assert outcome["final_state"] == {"words": sorted(words)}


GOLDEN_TEST = """
from tests.envs_for_tests import {env} as env
from eventsourced_env.testing import check_replay


def test_golden(snapshot):
    check_replay(env, {path!r}, snapshot)
"""


SNAPSHOTS = Path(__file__).parent / "__snapshots__"


def counter_success_snapshot(pytester: pytest.Pytester) -> Path:
    """Our golden snapshot of counter's `success` replay, copied as the snapshot of pytester's
    `test_golden`: the copy."""
    ours = pytester.path / "__snapshots__" / "test_golden" / "test_golden.json"
    theirs = SNAPSHOTS / "test_golden_replays" / "test_golden_replay[counter-success].json"
    ours.parent.mkdir(parents=True)
    ours.write_text(theirs.read_text())
    return ours


@pytest.mark.parametrize("changed", [False, True])
def test_snapshots_fail_when_the_verifier_output_changes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, changed: bool
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPLAYS.parent))
    source = REPLAYS / "counter" / "success.jsonl"
    pytester.makepyfile(
        test_golden=GOLDEN_TEST.format(env="half_counter" if changed else "counter_env", path=str(source))
    )
    counter_success_snapshot(pytester)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=0 if changed else 1, failed=1 if changed else 0)


def test_a_failing_snapshot_shows_what_changed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # check_replay's assert is in the library, which pytest does not rewrite: the failure was a bare
    # "AssertionError", with nothing of the snapshot's diff.
    monkeypatch.setenv("PYTHONPATH", str(REPLAYS.parent))
    source = REPLAYS / "counter" / "success.jsonl"
    pytester.makepyfile(test_golden=GOLDEN_TEST.format(env="half_counter", path=str(source)))
    counter_success_snapshot(pytester)
    monkeypatch.setenv("NO_COLOR", "1")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.re_match_lines([r".*- .*\"reward\": 1\.0.*", r".*\+ .*\"reward\": 0\.5.*"])


def test_qa_judge_replays_hold_recorded_judgments() -> None:
    cases = {p.stem: load_replay(p)[-1].data for p in replay_files(REPLAYS / "qa_judge")}
    assert set(cases) >= {"judged_correct", "judged_incorrect", "judge_failed", "rules_without_judge"}
    assert cases["judged_correct"]["effects"][0]["result"]["text"].endswith("VERDICT: CORRECT")
    assert cases["judge_failed"]["failure"]["kind"] == "judge" and cases["judge_failed"]["reward"] == 0.0
    assert "effects" not in cases["rules_without_judge"]


def test_snapshot_update_keeps_the_snapshot_of_a_replay_that_no_longer_reproduces(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # check_replay failed before it read the snapshot, so syrupy took it for unused, and
    # `pytest --snapshot-update` (the README's way to refresh snapshots) deleted it: after a tool
    # change, the golden verifier outputs of every replay that diverged were gone.
    monkeypatch.setenv("PYTHONPATH", str(REPLAYS.parent))
    source = REPLAYS / "counter" / "success.jsonl"
    pytester.makepyfile(
        test_golden=GOLDEN_TEST.replace("tests.envs_for_tests", "tests.test_replay").format(
            env="changed_tools_counter", path=str(source)
        )
    )
    ours = counter_success_snapshot(pytester)
    recorded = ours.read_text()
    monkeypatch.setenv("NO_COLOR", "1")
    for update in ([], ["--snapshot-update"]):
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *update)
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*observation differs at seq 2 (tool 'increment_counter')*"])
        assert ours.read_text() == recorded

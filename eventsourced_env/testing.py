"""Golden replays for your tests: load a saved session log, fold it, verify it, snapshot it.

A replay file (`replays/<env>/<case>.jsonl`) is a session's log, one event per line as
`Event.to_json()` gives it; it is self-contained (the seeded event holds the whole row, the env
name and version and the session seed). Save one with `esenv save-replay SESSION --out FILE`.

In a test (syrupy gives the `snapshot` fixture)::

    from eventsourced_env.testing import check_replay, replay_files

    @pytest.mark.parametrize("path", replay_files("replays/my_env"), ids=lambda p: p.stem)
    def test_golden(path, snapshot):
        check_replay(my_env, path, snapshot)

`check_replay` checks the hash chain, that the replay reproduces every recorded observation, and
that two folds give identical states; then it compares the final state, every observation and
the verifier's result with a JSON snapshot (`pytest --snapshot-update` records or refreshes them).
A replay that fails before the comparison (it no longer reproduces) leaves its snapshot as it is.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import orjson

from .environment import Context, Effects, Environment
from .events import TOOL_CALLED, TOOL_REJECTED, VERIFIED, Event, make_event
from .fold import as_recorded, attempt, fold, start, step
from .replay import check_log

__all__ = ["check_replay", "load_replay", "replay_files", "replay_outcome", "write_replay"]


def write_replay(path: str | Path, events: list[Event]) -> None:
    """Write a session's events as a replay file."""
    Path(path).write_bytes(b"".join(orjson.dumps(e.to_json()) + b"\n" for e in events))


def load_replay(path: str | Path) -> list[Event]:
    """Read a replay file back into events, their stored bytes rebuilt (so hashes can be checked)."""
    events = []
    for line in Path(path).read_bytes().splitlines():
        if not line.strip():
            continue
        e = orjson.loads(line)
        rebuilt = make_event(e["prev"], e["seq"], e["kind"], e["at"], e["data"])
        events.append(
            Event(rebuilt.seq, rebuilt.kind, rebuilt.at, rebuilt.prev, rebuilt.data, rebuilt.body, e["hash"])
        )
    return events


def replay_files(folder: str | Path) -> list[Path]:
    """The replay files in `folder`, sorted (for `pytest.mark.parametrize`).

    A folder that is not there raises FileNotFoundError (a typo would otherwise skip every golden
    test in silence); an empty one gives [], which pytest reports as a skip ("got empty parameter set").
    """
    path = Path(folder)
    if not path.is_dir():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise FileNotFoundError(f"no replay folder {str(folder)!r}{where}")
    return sorted(path.glob("*.jsonl"))


def replay_outcome(env: Environment[Any, Any], events: list[Event]) -> dict[str, Any]:
    """What a replay produces: each observation (or rejection), the final state, the verifier's result.

    The verifier runs on the final state with the response of the log's last verified event
    (or None if the session was never verified), and with that event's recorded effects (a judge's
    reply): nothing outside is called.
    """
    folded = start(env, events[0])
    observations: list[dict[str, Any]] = []
    for event in events[1:]:
        if event.kind == TOOL_REJECTED:
            tool, args = event.data["tool"], event.data["args"]
            error = attempt(env, folded.state, folded.seed, event.seq, event.at, tool, args).reply
            observations.append({"seq": event.seq, "tool": tool, "rejected": error})
        observation = step(folded, event)
        if event.kind == TOOL_CALLED:
            observations.append(
                {"seq": event.seq, "tool": event.data["tool"], "observation": as_recorded(observation)}
            )
    verified = next((e for e in reversed(events) if e.kind == VERIFIED), None)
    data = verified.data if verified else {}
    effects = Effects.replaying(data.get("effects", ())) if env.effects else None
    seq, at = (verified.seq, verified.at) if verified else (folded.seq + 1, events[-1].at)
    ctx = Context(folded.seed, seq, at, effects)
    result = env.run_verifier(folded.state, folded.task, data.get("response"), ctx)
    verify = result.model_dump(mode="json")
    if result.failure is not None:
        verify["failure"] = result.failure
    return {
        "env": env.name,
        "observations": observations,
        "final_state": _sets_sorted(folded.state.model_dump(), folded.state.model_dump(mode="json")),
        "verify": verify,
    }


def _sets_sorted(python: Any, dumped: Any) -> Any:
    """`dumped` (a value's JSON dump) with every list that `python` (its Python dump) holds as a set
    sorted: a set lists in an order the process's hash seed picks, which would change the snapshot."""
    if isinstance(python, set | frozenset) and isinstance(dumped, list):
        try:
            return sorted(dumped)
        except TypeError:  # mixed types, or objects: sorted by their JSON
            return sorted(dumped, key=lambda item: orjson.dumps(item, option=orjson.OPT_SORT_KEYS))
    if isinstance(python, dict) and isinstance(dumped, dict) and len(python) == len(dumped):
        return {key: _sets_sorted(p, d) for p, (key, d) in zip(python.values(), dumped.items(), strict=True)}
    if isinstance(python, list | tuple) and isinstance(dumped, list) and len(python) == len(dumped):
        return [_sets_sorted(p, d) for p, d in zip(python, dumped, strict=True)]
    return dumped


def check_replay(env: Environment[Any, Any], path: str | Path, snapshot: Any) -> None:
    """Assert that the replay at `path` reproduces itself, folds deterministically and matches `snapshot`."""
    from syrupy.extensions.json import JSONSnapshotExtension

    expected = snapshot.use_extension(JSONSnapshotExtension)
    try:
        events = load_replay(path)
        divergence = check_log(env, Path(path).stem, events)
        if divergence is not None:
            raise AssertionError(divergence.describe())
        first, second = fold(env, events), fold(env, events)
        if first.state != second.state:
            raise AssertionError("two folds of the same log differ: a tool is not deterministic")
        outcome = replay_outcome(env, events)
    except BaseException:
        with contextlib.suppress(Exception):  # whatever syrupy does, the replay's own failure is shown
            _leave_alone(expected)
        raise
    if not expected == outcome:
        # pytest rewrites no assert in this module, so syrupy's diff is not shown unless asked for.
        raise AssertionError(
            "\n".join(["the replay differs from its snapshot:", *expected.get_assert_diff()])
        )


class _NotCompared(Exception):
    """Raised inside syrupy to read a snapshot as used without comparing or writing it."""


def _leave_alone(expected: Any) -> None:
    """Mark the test's snapshot as used, without writing it, when the replay failed before it could
    be compared: syrupy deletes the snapshots no test used under `--snapshot-update`, so a replay
    that no longer reproduces would lose its golden snapshot. The matcher raises as syrupy serialises
    the value, so the assertion is recorded (failed) and nothing is queued for writing."""

    def refuse(*, data: Any, path: Any) -> Any:
        raise _NotCompared("the replay failed before its snapshot could be compared")

    expected(matcher=refuse) == None  # noqa: B015, E711 (the comparison is syrupy's record of the snapshot)

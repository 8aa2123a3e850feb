"""Conformance: the checks every environment must pass, in the manner of Gymnasium's `check_env`.

`check_env(env, rows, oracle)` checks that every tool schema is a valid OpenAI function tool;
that the same session seed gives the same run (the oracle played twice in process yields
identical states and observations at every step, and folding the run's log reproduces them);
that every state survives a JSON round trip; and that the oracle's known solution verifies to
the reward it should. The first failure raises `ConformanceError` naming the check, row and seq.

An oracle is `oracle(row)`: a generator that yields `(tool_name, arguments)` and is sent each
observation as parsed JSON, exactly what an agent reads over HTTP. Bundled environments expose one.

Sits above `fold` and `environment`; never imports `sessions`, `server` or `cli`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .environment import Context, Environment, State, VerifyResult
from .errors import ArgumentsInvalid, EnvError, ToolNotFound
from .events import SEEDED, TOOL_CALLED, TOOL_REJECTED, Event, make_event
from .fold import start, step

__all__ = ["ConformanceError", "Oracle", "Run", "check_env", "run_oracle", "trajectory_response"]

Oracle = Callable[[dict[str, Any]], Generator[tuple[str, dict[str, Any]], Any, None]]
Call = tuple[str, Any, Any]

_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class ConformanceError(EnvError):
    """Raised when an environment fails a conformance check; the message names the check, row and seq."""

    code = "conformance_failed"


@dataclass
class Run:
    """One session played in process: its log, the state after each event, what the agent saw, the verdict."""

    events: list[Event]
    states: list[State]
    calls: list[Call] = field(default_factory=list)
    result: VerifyResult | None = None


def trajectory_response(calls: Sequence[Call]) -> dict[str, Any]:
    """A Responses-API `response` holding each (tool, arguments, observation) as a call and its output."""
    output: list[dict[str, Any]] = []
    for i, (name, args, observation) in enumerate(calls):
        call_id = f"call_{i}"
        output.append(
            {
                "type": "function_call",
                "name": name,
                "arguments": orjson.dumps(args).decode(),
                "call_id": call_id,
                "id": f"fc_{i}",
                "status": "completed",
            }
        )
        output.append(
            {"type": "function_call_output", "call_id": call_id, "output": orjson.dumps(observation).decode()}
        )
    output.append(
        {
            "type": "message",
            "role": "assistant",
            "id": "msg_0",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Done.", "annotations": []}],
        }
    )
    return {"id": "resp_0", "object": "response", "output": output, "model": "scripted"}


def _session_seed(row: Mapping[str, Any], default: int) -> int:
    seed = row.get("session_seed")
    return seed if isinstance(seed, int) else default


def run_oracle(
    env: Environment[Any, Any], row: dict[str, Any], oracle: Oracle, *, seed: int = 0, max_calls: int = 10_000
) -> Run:
    """Play `oracle` on `row` in process as the server would (the row's `session_seed`, else `seed`).

    Refused calls are logged as `tool_rejected` and answered with the error body the server would
    send; the verifier is run on the final state with the trajectory as the response. Event `seq`
    is also its (virtual) time.
    """
    session_seed = _session_seed(row, seed)
    task = env.parse_task(row)
    state = env.start(task, Context(session_seed, 1, 1.0))
    seeded = {"env": env.name, "env_version": env.version, "seed": session_seed, "row": row}
    run = Run(events=[make_event("", 1, SEEDED, 1.0, seeded)], states=[state])
    calls = oracle(row)
    try:
        name, args = next(calls)
        while True:
            seq = len(run.events) + 1
            prev = run.events[-1].hash
            tool = env.tools.get(name)
            try:
                if tool is None:
                    raise ToolNotFound(
                        f"{env.name!r} has no tool {name!r}; its tools are: {', '.join(env.tools)}"
                    )
                parsed = tool.validate(args)
            except (ToolNotFound, ArgumentsInvalid) as e:
                seen: Any = e.to_json()
                event = make_event(
                    prev, seq, TOOL_REJECTED, float(seq), {"tool": name, "args": args, "error": e.detail}
                )
            else:
                given, before = state, state.model_dump(mode="json")
                state, observation = env.run_tool(tool, state, parsed, Context(session_seed, seq, float(seq)))
                if given.model_dump(mode="json") != before:
                    raise ConformanceError(
                        f"seq {seq}: tool {name!r} changed the state it was given in place (a list or "
                        "dict inside it?); a State is immutable: return a new one (model_copy(update=…))"
                    )
                seen = _plain_json(observation, seq)
                data = {
                    "tool": name,
                    "args": tool.recorded(parsed),
                    "observation": observation,
                }
                event = make_event(prev, seq, TOOL_CALLED, float(seq), data)
            run.events.append(event)
            run.states.append(state)
            run.calls.append((name, args, seen))
            if len(run.calls) >= max_calls:
                raise ConformanceError(f"the oracle made {max_calls} calls without finishing")
            name, args = calls.send(seen)
    except StopIteration:
        pass
    seq = len(run.events) + 1  # the verified event's, as the server would number it
    run.result = env.run_verifier(
        state, task, trajectory_response(run.calls), Context(session_seed, seq, float(seq))
    )
    return run


def _plain_json(value: Any, seq: int) -> Any:
    """`value` as an agent reads it after the wire; it must equal what the tool returned."""
    try:
        seen = orjson.loads(orjson.dumps(value))
    except TypeError as e:
        raise ConformanceError(f"seq {seq}: the observation is not JSON-serializable: {e}") from e
    if seen != value:
        raise ConformanceError(
            f"seq {seq}: the observation changes in a JSON round trip (tuples? non-string keys?): the "
            f"agent reads {seen!r}, not {value!r}; return it as the agent will see it"
        )
    return seen


def check_tool_schemas(env: Environment[Any, Any]) -> None:
    """Raise ConformanceError unless every tool's schema is a valid OpenAI function tool."""
    for name, tool in env.tools.items():
        schema = tool.schema
        params = schema.get("parameters")
        problems = [
            problem
            for problem, bad in (
                ("type is not 'function'", schema.get("type") != "function"),
                (
                    "name is not the tool's name of 1-64 letters, digits, _ or -",
                    schema.get("name") != name or not _FUNCTION_NAME.match(name),
                ),
                ("description is empty", not str(schema.get("description") or "").strip()),
                (
                    "parameters is not a JSON schema of type 'object'",
                    not isinstance(params, dict) or params.get("type") != "object",
                ),
                (
                    "parameters.properties is not an object",
                    isinstance(params, dict) and not isinstance(params.get("properties", {}), dict),
                ),
                (
                    "parameters.required names a field that is not in properties",
                    isinstance(params, dict)
                    and not set(params.get("required", [])) <= set(params.get("properties", {})),
                ),
            )
            if bad
        ]
        if problems:
            raise ConformanceError(f"{env.name!r} tool {name!r}: schema {'; '.join(problems)}")
        try:
            orjson.dumps(schema)
        except TypeError as e:
            raise ConformanceError(f"{env.name!r} tool {name!r}: schema is not JSON: {e}") from e


def _check_round_trip(state: State, seq: int) -> None:
    dumped = state.model_dump(mode="json")
    try:
        again = type(state).model_validate(orjson.loads(orjson.dumps(dumped)))
    except (TypeError, ValueError) as e:
        raise ConformanceError(f"seq {seq}: the state does not survive a JSON round trip: {e}") from e
    if again != state:
        changed = [k for k in type(state).model_fields if getattr(again, k) != getattr(state, k)]
        raise ConformanceError(f"seq {seq}: the state changes in a JSON round trip (fields {changed})")


def _check_same_run(first: Run, second: Run) -> None:
    """Gymnasium's determinism check: two runs with the same seed agree at every step."""
    for seq, (a, b) in enumerate(zip(first.events, second.events, strict=False), start=1):
        if a.data != b.data:
            raise ConformanceError(f"seq {seq}: the same seed gave another event: {a.data} != {b.data}")
        if first.states[seq - 1] != second.states[seq - 1]:
            raise ConformanceError(f"seq {seq}: the same seed gave another state")
    if len(first.events) != len(second.events):
        raise ConformanceError(
            f"the same seed gave runs of {len(first.events)} and {len(second.events)} events"
        )


def _check_replay(env: Environment[Any, Any], run: Run) -> None:
    """Folding the run's log reproduces every state and every recorded observation."""
    folded = start(env, run.events[0])
    for event, state in zip(run.events, run.states, strict=True):
        if event.seq > 1:
            observation = step(folded, event)
            if event.kind == TOOL_CALLED and observation != event.data["observation"]:
                raise ConformanceError(
                    f"seq {event.seq}: replay observed {observation!r}, "
                    f"the run recorded {event.data['observation']!r}"
                )
        if folded.state != state:
            raise ConformanceError(f"seq {event.seq}: folding the log gives another state")


def check_env(
    env: Environment[Any, Any],
    rows: Iterable[dict[str, Any]],
    oracle: Oracle | None = None,
    *,
    oracle_rewards: Collection[float] = (1.0,),
    seed: int = 0,
) -> None:
    """Run every conformance check on `env` over `rows`; raise ConformanceError at the first failure.

    With an `oracle`, each row is also played (twice, with the row's `session_seed` or `seed`)
    and its reward must be one of `oracle_rewards` (1.0 for an oracle that always solves the task).
    """
    env.check()
    check_tool_schemas(env)
    for index, row in enumerate(rows):
        where = f"{env.name!r} row {index}"
        try:
            _check_row(env, row, oracle, oracle_rewards, seed)
        except ConformanceError as e:
            raise ConformanceError(f"{where}: {e.detail}") from e
        except Exception as e:
            # A crash or a refusal in the environment is a failure of this row: name it.
            detail = e.detail if isinstance(e, EnvError) else str(e)
            raise ConformanceError(f"{where}: {type(e).__name__}: {detail}") from e


def _check_row(
    env: Environment[Any, Any],
    row: dict[str, Any],
    oracle: Oracle | None,
    oracle_rewards: Collection[float],
    seed: int,
) -> None:
    session_seed = _session_seed(row, seed)
    task = env.parse_task(row)
    state = env.start(task, Context(session_seed, 1, 1.0))
    if state != env.start(task, Context(session_seed, 1, 1.0)):
        raise ConformanceError("the same seed gave another initial state")
    _check_round_trip(state, 1)
    if oracle is None:
        env.run_verifier(state, task, trajectory_response([]), Context(session_seed, 2, 2.0))
        return
    run = run_oracle(env, row, oracle, seed=seed)
    _check_same_run(run, run_oracle(env, row, oracle, seed=seed))
    _check_replay(env, run)
    for seq, each in enumerate(run.states, start=1):
        _check_round_trip(each, seq)
    assert run.result is not None
    if run.result.reward not in oracle_rewards:
        raise ConformanceError(
            f"the oracle's run verified to {run.result.reward}, expected one of "
            f"{sorted(oracle_rewards)} ({run.result.details or 'no details'})"
        )

"""check_env: every bundled environment passes it, and each kind of violation is caught and named."""

from __future__ import annotations

import dataclasses
import importlib
import random
from collections.abc import Generator
from typing import Any

import orjson
import pytest

from eventsourced_env import Args, Context, Environment, State, Task, check_env
from eventsourced_env.conformance import ConformanceError, run_oracle, trajectory_response
from eventsourced_env.loader import bundled
from tests.conftest import example_rows


@pytest.mark.parametrize("name", bundled())
def test_every_bundled_environment_conforms(name: str) -> None:
    package = importlib.import_module(f"environments.{name}")
    rows = example_rows(name)
    check_env(
        package.env,
        rows,
        getattr(package, "oracle", None),
        oracle_rewards=getattr(package, "ORACLE_REWARDS", (1.0,)),
    )


def test_the_games_and_the_counter_ship_rows_and_an_oracle() -> None:
    for name in ("counter", "blackjack", "sokoban"):
        assert example_rows(name) and callable(importlib.import_module(f"environments.{name}").oracle)


# -- a small environment to break on purpose ------------------------------------------------------


class Draws(State):
    values: tuple[int, ...] = ()


class Draw(Args):
    """Arguments of `draw`."""

    times: int = 1


def dice(*, leak: str = "") -> Environment[Any, Any]:
    """An environment that draws dice with `ctx.rng`, broken in the way `leak` names."""
    env: Environment[Any, Any] = Environment("dice", version="1", task=Task)

    @env.initial
    def initial(task: Task, ctx: Context) -> Draws:
        return Draws()

    @env.tool
    def draw(state: Draws, args: Draw, ctx: Context) -> tuple[Draws, Any]:
        """Roll a die `times` times."""
        rng = random if leak == "global random" else ctx.rng
        values = tuple(rng.randint(1, 6) for _ in range(args.times))
        observation: Any = {"rolled": values if leak == "tuple" else list(values)}
        return Draws(values=state.values + values), observation

    @env.verifier
    def verify(state: Draws, task: Task, response: Any) -> float:
        return 1.0 if state.values else 0.0

    return env


def roll_twice(row: dict[str, Any]) -> Generator[tuple[str, dict[str, Any]], Any, None]:
    seen = yield ("draw", {"times": 3})
    assert len(seen["rolled"]) == 3
    yield ("draw", {})


def test_a_well_behaved_environment_passes() -> None:
    check_env(dice(), [{"session_seed": 3}, {}], roll_twice)


def test_reading_the_global_random_breaks_same_seed_same_run() -> None:
    with pytest.raises(ConformanceError, match=r"'dice' row 0: seq 2: the same seed gave another event"):
        check_env(dice(leak="global random"), [{}], roll_twice)


def test_an_observation_that_is_not_plain_json_is_named() -> None:
    with pytest.raises(ConformanceError, match=r"seq 2: the observation changes in a JSON round trip"):
        check_env(dice(leak="tuple"), [{}], roll_twice)


def test_a_wrong_reward_is_reported_with_the_accepted_ones() -> None:
    def idle(row: dict[str, Any]) -> Generator[tuple[str, dict[str, Any]], Any, None]:
        yield from ()

    with pytest.raises(
        ConformanceError, match=r"row 0: the oracle's run verified to 0.0, expected one of \[1.0\]"
    ):
        check_env(dice(), [{}], idle)


def test_a_schema_that_is_not_an_object_schema_is_named() -> None:
    env = dice()
    env.tools["draw"].schema["parameters"] = {"type": "string"}
    with pytest.raises(
        ConformanceError, match="tool 'draw': schema parameters is not a JSON schema of type 'object'"
    ):
        check_env(env, [])


def test_a_state_that_does_not_survive_json_is_named() -> None:
    class Odd(State):
        pair: Any

    env: Environment[Any, Any] = Environment("odd", version="1", task=Task)

    @env.initial
    def initial(task: Task, ctx: Context) -> Odd:
        return Odd(pair=(1, 2))  # comes back from JSON as a list, which is not equal to the tuple

    env.tool(dice().tools["draw"].fn)
    env.verifier(lambda state, task, response: 0.0)
    with pytest.raises(ConformanceError, match=r"'odd' row 0: seq 1: the state changes in a JSON round trip"):
        check_env(env, [{}])


def test_a_crashing_tool_is_reported_with_its_row() -> None:
    def crash(row: dict[str, Any]) -> Generator[tuple[str, dict[str, Any]], Any, None]:
        yield ("draw", {})

    def draw_unless_seed_1(state: Draws, args: Draw, ctx: Context) -> tuple[Draws, Any]:
        return Draws(values=(1 // (ctx.seed - 1),)), {}

    env = dice()
    env.tools["draw"] = dataclasses.replace(env.tools["draw"], fn=draw_unless_seed_1)
    with pytest.raises(
        ConformanceError, match=r"'dice' row 1: ZeroDivisionError: integer division or modulo by zero"
    ):
        check_env(env, [{}, {"session_seed": 1}], crash)


def test_refused_calls_are_logged_and_answered_as_the_server_would() -> None:
    def bad_call(row: dict[str, Any]) -> Generator[tuple[str, dict[str, Any]], Any, None]:
        yield ("draw", {"times": -1})
        yield ("draw", {"times": "many"})

    env = dice()
    run = run_oracle(env, {}, bad_call)
    # A refused call is logged and answered as the server would: the state does not change.
    assert [e.kind for e in run.events] == ["seeded", "tool_called", "tool_rejected"]
    assert run.calls[1][2]["error"] == "arguments_invalid"
    assert run.states[1] == run.states[2] == Draws()


def test_run_oracle_hands_the_verifier_the_trajectory_as_a_responses_api_response() -> None:
    run = run_oracle(dice(), {"session_seed": 9}, roll_twice)
    assert [c[0] for c in run.calls] == ["draw", "draw"]
    response = trajectory_response(run.calls)
    kinds = [item["type"] for item in response["output"]]
    assert kinds == ["function_call", "function_call_output"] * 2 + ["message"]
    assert orjson.loads(response["output"][1]["output"]) == run.calls[0][2]


class Pile(State):
    items: list[int] = []


def test_a_tool_that_changes_its_state_in_place_is_named() -> None:
    env: Environment[Any, Any] = Environment("pile", version="1", task=Task)
    env.initial(lambda task, ctx: Pile())

    @env.tool
    def put(state: Pile, args: Draw, ctx: Context) -> tuple[Pile, Any]:
        """Put `times` on the pile: in place, which a State must not be."""
        state.items.append(args.times)
        return state, {"items": list(state.items)}

    env.verifier(lambda state, task, response: 1.0)

    def put_twice(row: dict[str, Any]) -> Generator[tuple[str, dict[str, Any]], Any, None]:
        yield ("put", {"times": 1})
        yield ("put", {"times": 2})

    with pytest.raises(ConformanceError, match=r"seq 2: tool 'put' changed the state it was given in place"):
        check_env(env, [{}], put_twice)


def test_the_error_check_env_raises_is_importable_beside_it() -> None:
    # The README: "`check_env(env, rows, oracle)` (in `eventsourced_env`) … raises `ConformanceError`";
    # an environment imports only from the package (its docstring), so the error must be there too.
    import eventsourced_env

    assert eventsourced_env.ConformanceError is ConformanceError
    assert "ConformanceError" in eventsourced_env.__all__

from __future__ import annotations

import enum
import functools
import json
import re
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

import pytest
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, computed_field, create_model

from environments.counter import CounterState, CounterTask
from eventsourced_env import (
    Args,
    ArgumentsInvalid,
    Context,
    Environment,
    EnvironmentDefinitionError,
    State,
    Task,
    TaskInvalid,
    ToolError,
    VerifyResult,
)


class Pick(Args):
    """Arguments of `pick`."""

    index: int


class Bag(State):
    items: tuple[str, ...] = ()


def make_env() -> Environment[Any, Any]:
    env: Environment[Any, Any] = Environment("bag", version="3", task=Task)

    @env.initial
    def initial(task: Task, ctx: Context) -> Bag:
        return Bag(items=("a", "b", "c"))

    @env.tool
    def pick(state: Bag, args: Pick, ctx: Context) -> tuple[Bag, Any]:
        """Take the item at `index` out of the bag."""
        if not 0 <= args.index < len(state.items):
            raise ToolError(f"no item at index {args.index}; the bag holds {len(state.items)}")
        item = state.items[args.index]
        return Bag(items=state.items[: args.index] + state.items[args.index + 1 :]), {"picked": item}

    @env.verifier
    def verify(state: Bag, task: Task, response: Any) -> VerifyResult:
        return VerifyResult(reward=1.0 - len(state.items) / 3, components={"left": len(state.items)})

    return env


def test_tool_schema_is_openai_function_format() -> None:
    env = make_env()
    [schema] = env.tool_schemas()
    assert schema["type"] == "function"
    assert schema["name"] == "pick"
    assert schema["description"] == "Take the item at `index` out of the bag."
    assert schema["parameters"]["properties"]["index"]["type"] == "integer"
    assert schema["parameters"]["required"] == ["index"]
    assert schema["parameters"]["additionalProperties"] is False


def test_arguments_are_validated_with_field_errors() -> None:
    tool = make_env().tools["pick"]
    assert tool.validate({"index": "2"}) == Pick(index=2)
    with pytest.raises(ArgumentsInvalid) as info:
        tool.validate({"index": "two", "extra": 1})
    locs = sorted(str(e["loc"]) for e in info.value.errors)
    assert locs == ["['extra']", "['index']"]
    assert "index" in info.value.detail and "extra" in info.value.detail
    with pytest.raises(ArgumentsInvalid, match="valid dictionary"):
        tool.validate([1, 2])


def test_tool_error_is_an_observation_on_the_unchanged_state() -> None:
    env = make_env()
    state = Bag(items=("x",))
    new, obs = env.run_tool(env.tools["pick"], state, Pick(index=5), Context(1, 2, 0.0))
    assert new is state
    assert obs == {"error": "no item at index 5; the bag holds 1"}


def test_verifier_result_is_normalised() -> None:
    env = make_env()
    result = env.run_verifier(Bag(items=("a",)), Task(), None)
    assert result.reward == pytest.approx(2 / 3)
    assert result.components == {"left": 1}
    counter = __import__("environments.counter", fromlist=["env"]).env
    assert counter.run_verifier(CounterState(count=3), CounterTask(expected_count=3), None) == VerifyResult(
        reward=1.0
    )


@pytest.mark.parametrize(("score", "reward"), [(1, 1.0), (0, 0.0), (True, 1.0), (False, 0.0), (0.25, 0.25)])
def test_a_verifier_may_return_any_real_number(score: Any, reward: float) -> None:
    env = make_env().with_verifier(lambda state, task, response: score)
    assert env.run_verifier(Bag(), Task(), None) == VerifyResult(reward=reward)


@pytest.mark.parametrize("score", ["1.0", None, [1.0], {"reward": 1.0}, b"1"])
def test_a_verifier_returning_anything_but_a_number_or_verify_result_breaks_its_contract(score: Any) -> None:
    env = make_env().with_verifier(lambda state, task, response: score)
    with pytest.raises(TypeError, match="must return a number or a VerifyResult, not a "):
        env.run_verifier(Bag(), Task(), None)


def test_a_verifier_whose_details_are_not_json_breaks_its_contract() -> None:
    # Caught here, as a TypeError the server reports as the verifier's bug (500 tool_failed), not
    # when the verified event is written (an "unexpected server error").
    env = make_env().with_verifier(
        lambda state, task, response: VerifyResult(reward=1, details={"o": object()})
    )
    with pytest.raises(TypeError, match="its details must be JSON"):
        env.run_verifier(Bag(), Task(), None)


def test_an_initial_state_that_is_not_a_state_breaks_its_contract() -> None:
    # Seeded, a dict would have failed later, in the tools and the verifier, with errors that blame them.
    env = make_env()
    env.initial(lambda task, ctx: {"items": []})
    with pytest.raises(TypeError, match="must return a State, not a dict"):
        env.start(Task(), Context(0, 1, 0.0))


def test_verifier_version_names_env_version_and_code() -> None:
    env = make_env()
    assert env.verifier_version.startswith("3+")
    other = make_env()
    assert other.verifier_version == env.verifier_version

    @other.verifier
    def changed(state: Bag, task: Task, response: Any) -> float:
        return 0.5

    assert other.verifier_version != env.verifier_version


def test_context_rng_depends_on_seed_and_seq_only() -> None:
    draws = [Context(7, 3, 100.0).rng.random() for _ in range(2)]
    assert draws[0] == draws[1]
    assert Context(7, 4, 100.0).rng.random() != draws[0]
    assert Context(8, 3, 100.0).rng.random() != draws[0]
    assert Context(7, 3, 999.0).rng.random() == draws[0]


def test_context_now_is_the_recorded_time() -> None:
    assert Context(1, 1, 0.0).now == datetime(1970, 1, 1, tzinfo=UTC)


def test_task_keeps_unknown_fields_and_refuses_bad_ones() -> None:
    env = make_env()
    task = env.parse_task({"_ng_task_index": 3, "agent_ref": {"name": "x"}})
    assert task.model_extra == {"_ng_task_index": 3, "agent_ref": {"name": "x"}}
    counter = Environment("c", version="1", task=CounterTask)
    with pytest.raises(TaskInvalid, match="initial_count"):
        counter.parse_task({"initial_count": "many"})


def test_badly_defined_tools_are_refused_at_definition() -> None:
    env: Environment[Any, Any] = Environment("bad", version="1", task=Task)

    def no_model(state: Bag, args: dict[str, Any], ctx: Context) -> tuple[Bag, Any]:
        """Doc."""
        return state, None

    with pytest.raises(EnvironmentDefinitionError, match="pydantic model"):
        env.tool(no_model)

    def no_doc(state: Bag, args: Pick, ctx: Context) -> tuple[Bag, Any]:
        return state, None

    with pytest.raises(EnvironmentDefinitionError, match="docstring"):
        env.tool(no_doc)

    def verify(state: Bag, args: Pick, ctx: Context) -> tuple[Bag, Any]:
        """Shadows a route."""
        return state, None

    with pytest.raises(EnvironmentDefinitionError, match="not allowed"):
        env.tool(verify)


def test_incomplete_environment_fails_check() -> None:
    env: Environment[Any, Any] = Environment("empty", version="1", task=Task)
    with pytest.raises(EnvironmentDefinitionError, match="an initial state, a verifier, a tool"):
        env.check()
    make_env().check()


def test_pydantic_observations_are_dumped_to_json() -> None:
    class Obs(BaseModel):
        when: datetime

    env: Environment[Any, Any] = Environment("obs", version="1", task=Task)

    @env.tool
    def look(state: Bag, args: Pick, ctx: Context) -> tuple[Bag, Any]:
        """Look."""
        return state, Obs(when=ctx.now)

    _, obs = env.run_tool(env.tools["look"], Bag(), Pick(index=0), Context(1, 2, 0.0))
    assert obs == {"when": "1970-01-01T00:00:00Z"}


def _left_with_bonus(state: Bag, task: Task, response: Any, *, bonus: float = 0.0) -> float:
    return len(state.items) + bonus


def _left_with_ctx(state: Bag, task: Task, response: Any, ctx: Context, *, bonus: float = 0.0) -> float:
    return ctx.seq + bonus


def test_a_verifier_with_keyword_only_options_is_not_given_the_context_as_one() -> None:
    # A keyword-only parameter counted as the fourth, so the verifier was called with the context as
    # a fourth positional argument: a TypeError on every /verify and every re-verify. Also through
    # functools.partial, the natural way to re-score with a verifier's option set otherwise.
    env = make_env().with_verifier(_left_with_bonus)
    assert env.run_verifier(Bag(items=("a",)), Task(), None).reward == 1.0
    env = make_env().with_verifier(functools.partial(_left_with_bonus, bonus=0.5))
    assert env.run_verifier(Bag(items=("a",)), Task(), None).reward == 1.5
    env = make_env().with_verifier(functools.partial(_left_with_ctx, bonus=0.5))
    assert env.run_verifier(Bag(), Task(), None, Context(0, 4, 0.0)).reward == 4.5


class _Scorer:
    """A verifier that is a callable object."""

    def __init__(self, bonus: float) -> None:
        self.bonus = bonus

    def __call__(self, state: Bag, task: Task, response: Any) -> float:
        return len(state.items) + self.bonus


def test_the_verifier_version_of_a_partial_or_a_callable_object_is_the_same_in_every_process() -> None:
    # Their source could not be read, so the digest fell back on repr(), which holds the object's
    # address: each process (each `esenv reverify`, each golden test run) gave the same code another
    # version, and a partial's options (which change its scores) were not in it.
    def version(fn: Any) -> str:
        return make_env().with_verifier(fn, version="9").verifier_version

    half = version(functools.partial(_left_with_bonus, bonus=0.5))
    assert half == version(functools.partial(_left_with_bonus, bonus=0.5))
    assert half != version(functools.partial(_left_with_bonus, bonus=0.25))
    assert half != version(_left_with_bonus)
    assert version(_Scorer(0.5)) == version(_Scorer(0.5))
    assert version(_Scorer(0.5)).startswith("9+")


class Colour(enum.StrEnum):
    red = "red"
    green = "green"


class Filter(BaseModel):
    """Which items to take."""

    colour: Annotated[Colour, Field(description="Only items of this colour")] = Colour.red


# Another tool's model of the same name (as a second module's `Filter` would be): a different schema.
OtherFilter = create_model("Filter", limit=(int, 10))


class Cat(BaseModel):
    kind: Literal["cat"]


class Dog(BaseModel):
    kind: Literal["dog"]


class TakeArgs(Args):
    filter: Filter
    filters: list[Filter] = []
    pet: Annotated[Cat | Dog, Field(discriminator="kind")]


class LimitArgs(Args):
    filter: OtherFilter  # type: ignore[valid-type]


class TreeNode(BaseModel):
    label: str
    children: list[TreeNode] = []


class PlantArgs(Args):
    tree: TreeNode


def test_tool_parameters_have_no_refs_to_resolve() -> None:
    """pydantic refers nested models, Enums and union members to `$defs`; vLLM's tool_choice="required"
    merges every tool's `$defs` and fails on two of one name ("Tool definition 'Filter' has multiple
    schemas"), and other servers leave the `$ref` unresolved. The published parameters spell them out."""
    env = make_env()

    @env.tool
    def take(state: Bag, args: TakeArgs, ctx: Context) -> tuple[Bag, Any]:
        """Take items."""
        return state, {}

    @env.tool
    def limit(state: Bag, args: LimitArgs, ctx: Context) -> tuple[Bag, Any]:
        """Limit items."""
        return state, {}

    schemas = {s["name"]: s for s in env.tool_schemas()}
    for schema in schemas.values():
        assert "$defs" not in schema["parameters"] and "$ref" not in json.dumps(schema), schema
    take_params = schemas["take"]["parameters"]["properties"]
    assert take_params["filter"]["description"] == "Which items to take."
    colour = take_params["filter"]["properties"]["colour"]
    assert colour == {
        "description": "Only items of this colour",
        "enum": ["red", "green"],
        "title": "Colour",
        "type": "string",
        "default": "red",
    }
    assert take_params["filters"]["items"] == take_params["filter"]
    assert [m["properties"]["kind"]["const"] for m in take_params["pet"]["oneOf"]] == ["cat", "dog"]
    assert take_params["pet"]["discriminator"] == {"propertyName": "kind"}
    assert schemas["limit"]["parameters"]["properties"]["filter"]["properties"]["limit"]["type"] == "integer"
    # What the schema spells out is what validation takes.
    tool = env.tools["take"]
    tool.validate({"filter": {"colour": "green"}, "filters": [{}], "pet": {"kind": "dog"}})


def test_a_recursive_model_keeps_its_refs() -> None:
    env = make_env()

    @env.tool
    def plant(state: Bag, args: PlantArgs, ctx: Context) -> tuple[Bag, Any]:
        """Plant a tree."""
        return state, {}

    params = env.tools["plant"].schema["parameters"]
    assert params == PlantArgs.model_json_schema()
    assert params["properties"]["tree"] == {"$ref": "#/$defs/TreeNode"}


class SendFrom(Args):
    from_: str = Field(validation_alias="from")


class Shown(Args):
    x: str = Field(serialization_alias="y")


class Hidden(Args):
    secret: str = "s"
    note: str = Field(default="", exclude=True)


class Doubled(Args):
    x: int

    @computed_field  # type: ignore[prop-decorator]
    @property
    def double(self) -> int:
        return 2 * self.x


class Recipient(BaseModel):
    from_: str = Field(validation_alias="from")


class SendMany(Args):
    to: list[Recipient] | None = None


class Fine(Args):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from")
    q: str = Field(validation_alias=AliasChoices("query", "q"))
    by_name: str = Field(default="", validation_alias="byName")
    inner: list[Filter] = []


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (SendFrom, "SendFrom.from_ is read as 'from' and written as 'from_'"),
        (Shown, "Shown.x is read as 'x' and written as 'y'"),
        (Hidden, "Hidden.note is excluded"),
        (SendMany, "Recipient.from_ is read as 'from'"),
        (Doubled, "Doubled.double is a computed field"),
    ],
)
def test_arguments_the_log_could_not_replay_are_refused_at_registration(
    model: type[Args], named: str
) -> None:
    """A call's arguments are recorded as they dump (by alias): with `validation_alias="from"` alone a
    call `{"from": "bob"}` was served, recorded as `{"from_": "bob"}`, and `esenv replay` (and any
    rebuild of the session) rejected it: 'recorded arguments are now rejected at seq 2'."""
    env = make_env()

    def send(state: Bag, args: Any, ctx: Context) -> tuple[Bag, Any]:
        """Send."""
        return state, {}

    send.__annotations__["args"] = model
    with pytest.raises(EnvironmentDefinitionError, match=re.escape(named)):
        env.tool(send)


def test_arguments_whose_record_reads_back_are_accepted() -> None:
    env = make_env()

    @env.tool
    def send(state: Bag, args: Fine, ctx: Context) -> tuple[Bag, Any]:
        """Send."""
        return state, {}

    tool = env.tools["send"]
    args = tool.validate({"from": "bob", "query": "x", "byName": "n", "inner": [{"colour": "green"}]})
    assert tool.validate(tool.recorded(args)) == args


class StrictArgs(Args):
    model_config = ConfigDict(extra="forbid", strict=True)

    colour: Colour
    when: date | None = None
    pair: tuple[int, int] | None = None
    count: int = 0


def test_a_strict_model_takes_what_its_schema_publishes() -> None:
    """Read as Python, a strict model wants an Enum member, a date, a tuple: the JSON its schema
    publishes ({"enum": ["red", "green"]}, an ISO date, an array) was refused with a 422 ('Input
    should be an instance of Colour'). It is JSON, and is now read as JSON; strictness still holds."""
    env = make_env()

    @env.tool
    def paint(state: Bag, args: StrictArgs, ctx: Context) -> tuple[Bag, Any]:
        """Paint."""
        return state, {}

    tool = env.tools["paint"]
    properties = tool.schema["parameters"]["properties"]
    assert properties["colour"]["enum"] == ["red", "green"]
    args = tool.validate({"colour": "green", "when": "2024-02-29", "pair": [1, 2], "count": 3})
    assert args == StrictArgs(colour=Colour.green, when=date(2024, 2, 29), pair=(1, 2), count=3)
    assert tool.validate(tool.recorded(args)) == args  # and replay reads its record back
    for wrong in ({"colour": "blue"}, {"colour": "red", "count": "3"}, {"colour": "red", "when": 5}):
        with pytest.raises(ArgumentsInvalid):
            tool.validate(wrong)


class StrictTask(Task):
    model_config = ConfigDict(extra="allow", strict=True)

    colour: Colour
    due: date


def test_a_strict_task_takes_its_seed_row_as_json() -> None:
    """A seed row is JSON too: a strict Task refused {"colour": "red", "due": "2024-02-29"} as
    'task_invalid: Input should be an instance of Colour'."""
    env: Environment[Any, Any] = Environment("strict", version="1", task=StrictTask)
    row = {
        "responses_create_params": {"input": "x"},
        "colour": "red",
        "due": "2024-02-29",
        "_ng_task_index": 0,
    }
    task = env.parse_task(row)
    assert (task.colour, task.due) == (Colour.red, date(2024, 2, 29))
    with pytest.raises(TaskInvalid):
        env.parse_task({**row, "colour": "blue"})

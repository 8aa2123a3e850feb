"""The environment author's API: Task, State, Args, Context, tools as reducers, and the verifier.

An environment is four typed pieces (each tool a reducer: state and arguments in, new state and
observation out, so folding a log's calls rebuilds the state):

- a `Task` model for the seed row's task fields (unknown fields allowed);
- a `State` model (frozen) and an `initial(task, ctx) -> State` function;
- tools `tool(state, args, ctx) -> (new_state, observation)` whose `args` is a pydantic model;
  the model's JSON schema and the function's docstring are the tool's published schema;
- a verifier `verify(state, task, response[, ctx]) -> float | VerifyResult` (an int or bool
  is a number too: True scores 1.0).

External effects (an LLM judge…) go through `ctx.effect(kind, request)`: live, the host's performer
for `kind` runs once and `Effects` records the request and result in the event; on replay the
recorded result comes back and nothing is called.

Depends only on `events` (and `errors`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import math
import numbers
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, get_args, get_type_hints

import orjson
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticSerializationError

from .errors import (
    ArgumentsInvalid,
    EffectDiverged,
    EffectFailed,
    EnvironmentDefinitionError,
    TaskInvalid,
    ToolError,
    Unrecordable,
)

__all__ = [
    "Args",
    "Context",
    "Effects",
    "Environment",
    "Performer",
    "State",
    "Task",
    "Tool",
    "VerifyResult",
]

S = TypeVar("S", bound="State")
T = TypeVar("T", bound="Task")
M = TypeVar("M", bound=BaseModel)

_TOOL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
# Our own routes: a tool must not shadow them.
RESERVED_TOOL_NAMES = frozenset(
    {"seed_session", "verify", "aggregate_metrics", "reverify_mode", "close_session", "sessions", "tools"}
)


class Task(BaseModel):
    """The task fields of a seed row; subclass it and declare the fields your environment reads.

    Rows carry extra keys (`responses_create_params`, `_ng_*`, `agent_ref`…): they are kept, not refused.
    """

    model_config = ConfigDict(extra="allow")


class State(BaseModel):
    """A session's state: immutable; a tool returns a new one (built anew, or `state.model_copy(...)`)."""

    model_config = ConfigDict(frozen=True)


class Args(BaseModel):
    """Base for a tool's arguments: unknown fields are refused, so a model learns of a misspelt one."""

    model_config = ConfigDict(extra="forbid")


class VerifyResult(BaseModel):
    """What a verifier may return instead of a bare float: the reward, named components and details."""

    reward: float
    components: dict[str, float] = {}
    details: dict[str, Any] = {}
    #: Why scoring failed (`{"kind": "judge", "error": ...}`), scored 0. Left out of `model_dump`: the
    #: verified event records it beside the result, only when present, so effect-free logs keep their bytes.
    failure: dict[str, str] | None = Field(default=None, exclude=True)


def failure_fields(failure: Mapping[str, Any]) -> dict[str, Any]:
    """A scoring failure in NeMo Gym's terms (`_ng_failure_class: "judge_failed"`, `"replay_failed"`
    for a stateless replay that departs from its record): NeMo Gym files such a row with the
    failures, not with the samples."""
    kind = failure.get("kind", "scoring")
    return {"_ng_failure_class": f"{kind}_failed", f"_ng_failure_{kind}_error": failure.get("error")}


#: Runs one external effect of a kind for the host: a JSON request in, a JSON result out, or EffectFailed.
Performer = Callable[[Any], Any]


def _recordable(value: Any) -> Any:
    """`value` as the log will hold it (a JSON round trip), or Unrecordable."""
    try:
        return orjson.loads(orjson.dumps(value))
    except TypeError as e:
        raise Unrecordable(f"an effect's request or result cannot be recorded as JSON: {e}") from e


class Effects:
    """The external effects of one event: performed and recorded live, or given back from the record.

    Live (`Effects.live(performers)`), each effect runs through the host's performer for its kind and
    is written down as `{"kind", "request", "result"}`, or `{"kind", "request", "error"}` if it failed
    for good. On replay (`Effects.replaying(record)`) nothing runs: the requests must equal the
    recorded ones, in order, and get the recorded results (or failures) back.
    """

    __slots__ = ("_next", "_performers", "record")

    def __init__(self, performers: Mapping[str, Performer] | None, record: list[dict[str, Any]]) -> None:
        self._performers = performers
        self.record = record
        self._next = 0

    @classmethod
    def live(cls, performers: Mapping[str, Performer]) -> Effects:
        """Effects performed now by `performers` (by kind) and recorded."""
        return cls(performers, [])

    @classmethod
    def replaying(cls, record: Iterable[dict[str, Any]]) -> Effects:
        """Effects returned from an event's record; nothing is performed."""
        return cls(None, list(record))

    def can(self, kind: str) -> bool:
        """Live: whether `kind` has a performer. Replay: whether the next recorded effect is of `kind`."""
        if self._performers is not None:
            return kind in self._performers
        return self._next < len(self.record) and self.record[self._next]["kind"] == kind

    def run(self, kind: str, request: Any) -> Any:
        """The result of the effect: performed and recorded live, or the recorded one on replay."""
        request = _recordable(request)
        if self._performers is None:
            return self._replay(kind, request)
        perform = self._performers.get(kind)
        try:
            if perform is None:
                raise EffectFailed(f"no {kind!r} is configured on this server", kind)
            result = _recordable(perform(request))
        except EffectFailed as e:
            self.record.append({"kind": kind, "request": request, "error": e.detail})
            raise
        self.record.append({"kind": kind, "request": request, "result": result})
        return result

    def _replay(self, kind: str, request: Any) -> Any:
        index = self._next
        asked = {"kind": kind, "request": request}
        if index >= len(self.record):
            raise EffectDiverged(f"effect {index + 1} ({kind!r}) was not recorded", None, asked)
        entry = self.record[index]
        if entry["kind"] != kind or entry["request"] != request:
            recorded = {"kind": entry["kind"], "request": entry["request"]}
            raise EffectDiverged(f"effect {index + 1} ({kind!r}) differs from the record", recorded, asked)
        self._next += 1
        if "error" in entry:
            raise EffectFailed(entry["error"], kind)
        return entry["result"]

    def finish(self) -> None:
        """On replay, raise EffectDiverged if a recorded effect was not asked for again."""
        if self._performers is None and self._next < len(self.record):
            entry = self.record[self._next]
            raise EffectDiverged(
                f"recorded effect {self._next + 1} ({entry['kind']!r}) is no longer asked for",
                {"kind": entry["kind"], "request": entry["request"]},
                None,
            )


class Context:
    """The tools' only door to the outside: a seeded random generator, the event's time, recorded effects.

    `rng` is seeded from the session seed and the event's seq, so a replay draws the same numbers;
    `now` is the time recorded in the event, never the wall clock; `effect()` runs an external call
    once and replays its recorded result.
    """

    __slots__ = ("_effects", "_rng", "at", "seed", "seq")

    def __init__(self, seed: int, seq: int, at: float, effects: Effects | None = None) -> None:
        self.seed = seed
        self.seq = seq
        self.at = at
        self._rng: random.Random | None = None
        self._effects = effects

    def effect(self, kind: str, request: Any) -> Any:
        """Perform an external effect (e.g. `"judge"`) once and record it; on replay, its recorded result.

        Raises EffectFailed if it failed for good (live, or as recorded).
        """
        if self._effects is None:
            raise EnvironmentDefinitionError(
                f"effect {kind!r} asked for, but the environment does not declare it: "
                f"Environment(..., effects=[{kind!r}])"
            )
        return self._effects.run(kind, request)

    def can(self, kind: str) -> bool:
        """Whether an effect of `kind` can be asked for: configured live, or recorded next on replay."""
        return self._effects is not None and self._effects.can(kind)

    @property
    def rng(self) -> random.Random:
        """A random generator seeded from (session seed, event seq): the same on every replay."""
        if self._rng is None:
            self._rng = random.Random(f"{self.seed}:{self.seq}")
        return self._rng

    @property
    def now(self) -> datetime:
        """The event's recorded time (UTC): a virtual clock that replays identically."""
        return datetime.fromtimestamp(self.at, UTC)


ToolFn = Callable[[Any, Any, Context], tuple[Any, Any]]
InitialFn = Callable[[Any, Context], Any]
VerifierFn = Callable[..., "float | VerifyResult"]


def _validate_json_data(model: type[M], raw: Any) -> M:
    """`raw`, JSON data (a call's arguments, a seed row), validated into `model`, or ValidationError."""
    validator = model.__pydantic_validator__
    try:
        # The model's own validator, as `model_validate` calls it: a third less time per call.
        result: M = validator.validate_python(raw)
    except ValidationError as python_error:
        # Read as Python, a strict model (or field) wants the objects themselves, refusing the JSON
        # its schema publishes: an Enum's value, a date's ISO string, a tuple's list. Read as the JSON
        # they are, they pass; if not, the Python reading's errors stand (as a call that fails either
        # way has always been answered and recorded).
        try:
            result = validator.validate_json(orjson.dumps(raw))
        except (TypeError, ValidationError):
            raise python_error from None
    return result


@dataclass(frozen=True)
class Tool:
    """One registered tool: its reducer, its arguments model and its published schema."""

    name: str
    fn: ToolFn
    args_model: type[BaseModel]
    description: str
    schema: dict[str, Any] = field(repr=False)

    def validate(self, raw: Any) -> BaseModel:
        """Parse raw JSON arguments into the arguments model, or raise ArgumentsInvalid."""
        try:
            return _validate_json_data(self.args_model, raw)
        except ValidationError as e:
            summary, errors = _field_errors(e)
            raise ArgumentsInvalid(f"invalid arguments for tool {self.name!r}: {summary}", errors) from e
        except ToolError as e:  # raised by a validator of the arguments': refused as invalid ones are
            raise ArgumentsInvalid(f"invalid arguments for tool {self.name!r}: {e.detail}") from e

    @staticmethod
    def recorded(args: BaseModel) -> dict[str, Any]:
        """Validated arguments as a `tool_called` event records them: JSON, by alias (as the schema
        publishes them and a model sends them, so that replay validates them again)."""
        return args.model_dump(mode="json", by_alias=True)


# The keywords whose value is a schema, a list of schemas, or a map of names to schemas; any other
# keyword's value (default, enum, const, examples…) is data, where a "$ref" key is just a key.
_SUBSCHEMA = frozenset(
    {"items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else"}
)
_SUBSCHEMAS = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "dependentSchemas"})


class _NotInlinable(Exception):
    """A `$ref` that cannot be written out: a model that contains itself, or not a `$defs` entry."""


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with every `#/$defs/…` reference replaced by the definition it names, and no `$defs`.

    pydantic puts each nested model, Enum and union member in `$defs`, referred to by `$ref`. Many
    consumers of a tool's parameters do not resolve them: vLLM's `tool_choice="required"` merges
    every tool's `$defs` into one and fails on two tools whose definitions share a name, other
    servers and chat templates leave a bare `$ref` for the model to puzzle over. Keywords beside a
    `$ref` (the field's description, its default) are kept over the definition's. A discriminator's
    `mapping` names `$defs` entries, so it goes; each member's `const` still tells them apart. A
    recursive model (a tree of itself) cannot be written out: its schema is returned as it is.
    """
    defs = schema.get("$defs")
    if not isinstance(defs, dict):
        return schema

    def resolve(node: Any, seen: tuple[str, ...]) -> Any:
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        if "$ref" in node:
            ref = node["$ref"]
            name = ref[len("#/$defs/") :] if isinstance(ref, str) and ref.startswith("#/$defs/") else ""
            if name in seen or name not in defs:
                raise _NotInlinable(ref)
            out.update(resolve(defs[name], (*seen, name)))
        for key, value in node.items():
            if key in ("$ref", "$defs"):
                continue
            if key == "discriminator" and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k != "mapping"}
            elif key in _SUBSCHEMA:
                value = resolve(value, seen)
            elif key in _SUBSCHEMAS and isinstance(value, list):
                value = [resolve(v, seen) for v in value]
            elif key in _SCHEMA_MAPS and isinstance(value, dict):
                value = {k: resolve(v, seen) for k, v in value.items()}
            out[key] = value
        return out

    try:
        inlined: dict[str, Any] = resolve(schema, ())
    except _NotInlinable:
        return schema
    return inlined


def _unreplayable_fields(model: type[BaseModel], seen: set[type[BaseModel]]) -> list[str]:
    """The fields of `model` (and of the models inside it) whose recorded value replay would not
    read back: written under a key that validation does not accept (a `validation_alias` without
    the same `serialization_alias`, or the reverse), not written at all (`exclude=True`), or written
    though not a field (a `computed_field` of a model that forbids unknown fields)."""
    if model in seen:
        return []
    seen.add(model)
    by_name = bool(model.model_config.get("validate_by_name") or model.model_config.get("populate_by_name"))
    problems = []
    if model.model_config.get("extra") == "forbid":
        problems += [
            f"{model.__name__}.{name} is a computed field: dumped, then refused as an unknown one"
            for name in model.__pydantic_computed_fields__
        ]
    for name, info in model.model_fields.items():
        where = f"{model.__name__}.{name}"
        written = info.serialization_alias or name
        alias = info.validation_alias
        if isinstance(alias, str):
            read = {alias}
        elif isinstance(alias, AliasChoices):
            read = {choice for choice in alias.choices if isinstance(choice, str)}
        else:
            read = {name} if alias is None else set()
        if by_name:
            read.add(name)
        if info.exclude:
            problems.append(f"{where} is excluded from the dump, so the log would not hold it")
        elif written not in read:
            problems.append(
                f"{where} is read as {' or '.join(map(repr, sorted(read))) or 'a path'} and written as "
                f"{written!r}; give it alias={sorted(read)[0] if read else written!r} (both ways)"
            )
        for inner in _models_in(info.annotation):
            problems += _unreplayable_fields(inner, seen)
    return problems


def _models_in(annotation: Any) -> Iterable[type[BaseModel]]:
    """The pydantic models an annotation holds (itself, or inside Optional, list, dict, unions…)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in get_args(annotation):
        yield from _models_in(arg)


def _field_errors(e: ValidationError) -> tuple[str, list[dict[str, object]]]:
    """A validation error as one line (`field: message; …`) and as JSON, field by field."""
    errors = e.errors(include_url=False)
    summary = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(body)'}: {err['msg']}" for err in errors)
    return summary, [{"loc": list(err["loc"]), "msg": err["msg"], "type": err["type"]} for err in errors]


def _shape(value: Any) -> str:
    """What a tool returned, for the error that says it is not (state, observation)."""
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(type(v).__name__ for v in value)})"
    return f"a {type(value).__name__}"


def _as_json(value: Any) -> Any:
    """An observation or detail as plain JSON data (pydantic models dumped)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


def _source_digest(fn: Callable[..., Any]) -> str:
    """A digest of the verifier's code and of the module around it (the helpers and constants it uses).

    Code in other modules is not covered: bump the environment's version when it changes. A
    `functools.partial` counts as its function and the options it sets; a callable object as its
    class (its attributes are not covered). Nothing that differs from process to process (an
    object's address) goes in, so the same code has the same version in every process.
    """
    digest = hashlib.sha256()
    code: Any = fn
    while isinstance(code, functools.partial):
        digest.update(repr((code.args, sorted(code.keywords.items()))).encode())
        code = code.func
    if not (inspect.isfunction(code) or inspect.ismethod(code) or inspect.isbuiltin(code)):
        code = type(code)  # a callable object: what it does is its class's
    for part in (code, inspect.getmodule(code)):
        try:
            digest.update(inspect.getsource(part).encode())  # type: ignore[arg-type]
        except (OSError, TypeError):  # no source file: its bytecode, or a name (never an address)
            digest.update(getattr(getattr(part, "__code__", None), "co_code", repr(part).encode()))
    return digest.hexdigest()[:12]


class Environment(Generic[T, S]):
    """An environment: a name, a version, a Task model, an initial state, tools and a verifier.

    Example::

        env = Environment("counter", version="1", task=CounterTask)

        @env.initial
        def initial(task: CounterTask, ctx: Context) -> CounterState: ...

        @env.tool
        def increment_counter(state: CounterState, args: Increment, ctx: Context):
            "Add `count` to the counter."
            return state.model_copy(update={"count": state.count + args.count}), {"success": True}

        @env.verifier
        def verify(state: CounterState, task: CounterTask, response: dict) -> float: ...
    """

    def __init__(self, name: str, *, version: str, task: type[T], effects: Iterable[str] = ()) -> None:
        self.name = name
        self.version = version
        self.task_model = task
        #: The kinds of external effect (e.g. "judge") its tools and verifier may ask for.
        self.effects = tuple(effects)
        self.tools: dict[str, Tool] = {}
        self._initial: Callable[[T, Context], S] | None = None
        self._verifier: VerifierFn | None = None
        self._verifier_takes_ctx = False
        self._verifier_version = ""

    # -- registration ---------------------------------------------------------------------------

    def initial(self, fn: Callable[[T, Context], S]) -> Callable[[T, Context], S]:
        """Register `initial(task, ctx) -> State`, the state a session starts from."""
        self._initial = fn
        return fn

    def tool(
        self, fn: Callable[[S, Any, Context], tuple[S, Any]]
    ) -> Callable[[S, Any, Context], tuple[S, Any]]:
        """Register a tool: a reducer `(state, args, ctx) -> (new_state, observation)`.

        The tool's name is the function's name, its description the docstring, and its parameters
        the JSON schema of the pydantic model annotated on the second parameter.
        """
        name = fn.__name__
        if not _TOOL_NAME.match(name) or name in RESERVED_TOOL_NAMES:
            raise EnvironmentDefinitionError(
                f"tool name {name!r} is not allowed (reserved or not an identifier)"
            )
        if name in self.tools:
            raise EnvironmentDefinitionError(f"tool {name!r} is registered twice in {self.name!r}")
        params = list(inspect.signature(fn).parameters)
        try:
            hints = get_type_hints(fn)
        except NameError as e:
            raise EnvironmentDefinitionError(
                f"tool {name!r}: cannot resolve its annotations ({e}); define its models at module level"
            ) from e
        args_model = hints.get(params[1]) if len(params) == 3 else None
        if not (isinstance(args_model, type) and issubclass(args_model, BaseModel)):
            raise EnvironmentDefinitionError(
                f"tool {name!r} must be `def {name}(state, args: SomeArgs, ctx)`, SomeArgs a pydantic model"
            )
        unrecordable = _unreplayable_fields(args_model, set())
        if unrecordable:
            raise EnvironmentDefinitionError(
                f"tool {name!r}: a call's arguments are recorded as they dump (by alias) and read back "
                f"on replay, but {'; '.join(unrecordable)}"
            )
        description = inspect.cleandoc(fn.__doc__ or "").strip()
        if not description:
            raise EnvironmentDefinitionError(
                f"tool {name!r} needs a docstring: it is the model's description"
            )
        schema = {
            "type": "function",
            "name": name,
            "description": description,
            "parameters": _inline_refs(args_model.model_json_schema()),
            "strict": False,
        }
        self.tools[name] = Tool(name, fn, args_model, description, schema)
        return fn

    def verifier(self, fn: VerifierFn) -> VerifierFn:
        """Register `verify(state, task, response[, ctx]) -> float | VerifyResult` (ctx for effects)."""
        self._verifier = fn
        # Counted among the parameters a positional argument can fill: a keyword-only option (or one
        # a functools.partial sets) is not the fourth, and must not be handed the context.
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        params = inspect.signature(fn).parameters.values()
        self._verifier_takes_ctx = sum(p.kind in positional for p in params) == 4
        self._verifier_version = f"{self.version}+{_source_digest(fn)}"
        return fn

    def with_verifier(self, fn: VerifierFn, *, version: str | None = None) -> Environment[T, S]:
        """A copy of this environment with another verifier (and version), e.g. to re-score with it."""
        variant = copy.copy(self)
        variant.tools = dict(self.tools)
        variant.version = version or self.version
        variant.verifier(fn)
        return variant

    # -- use ------------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise EnvironmentDefinitionError unless the environment is complete enough to serve."""
        missing = [
            what
            for what, present in (("an initial state", self._initial), ("a verifier", self._verifier))
            if present is None
        ]
        if missing or not self.tools:
            missing += [] if self.tools else ["a tool"]
            raise EnvironmentDefinitionError(f"environment {self.name!r} lacks {', '.join(missing)}")

    @property
    def verifier_version(self) -> str:
        """The environment's version plus a digest of the verifier's source: says what produced a reward."""
        return self._verifier_version

    def tool_schemas(self) -> list[dict[str, Any]]:
        """Every tool in OpenAI function-tool format (ready for `responses_create_params.tools`)."""
        return [tool.schema for tool in self.tools.values()]

    def parse_task(self, row: Mapping[str, Any]) -> T:
        """Validate a seed row into the Task model, or raise TaskInvalid."""
        try:
            return _validate_json_data(self.task_model, row)
        except ValidationError as e:
            summary, errors = _field_errors(e)
            raise TaskInvalid(f"seed row does not fit {self.name!r}'s task: {summary}", errors) from e
        except ToolError as e:  # raised by a validator of the task's: the row's fault all the same
            raise TaskInvalid(f"seed row does not fit {self.name!r}'s task: {e.detail}") from e

    def start(self, task: T, ctx: Context) -> S:
        """The initial state of a session for `task`."""
        assert self._initial is not None, "check() first"
        state = self._initial(task, ctx)
        if not isinstance(state, State):  # caught here, not by the tools and verifier it would break
            raise TypeError(f"it must return a State, not {_shape(state)}")
        return state

    def run_tool(self, tool: Tool, state: S, args: BaseModel, ctx: Context) -> tuple[S, Any]:
        """Apply one tool call: the new state and the JSON observation.

        A `ToolError` raised by the tool becomes the observation `{"error": message}` on an
        unchanged state, so the model can recover.
        """
        try:
            result: Any = tool.fn(state, args, ctx)
        except ToolError as e:
            return state, {"error": e.detail}
        if not isinstance(result, (tuple, list)) or len(result) != 2 or not isinstance(result[0], State):
            # Caught here, not at the next call: a pydantic state unpacks as (name, value) pairs.
            raise TypeError(f"it must return (new_state, observation), a State first; not {_shape(result)}")
        new_state, observation = result
        return new_state, _as_json(observation)

    def run_verifier(self, state: S, task: T, response: Any, ctx: Context | None = None) -> VerifyResult:
        """Score a session's state: the verifier's result, normalised to a VerifyResult.

        An effect that failed for good (a judge down after its retries) scores 0, the failure kept.
        Raises TypeError if the verifier returns neither a real number (a bool is 1.0 or 0.0) nor a
        VerifyResult, ValueError if a score is not finite.
        """
        assert self._verifier is not None, "check() first"
        try:
            if self._verifier_takes_ctx:
                result = self._verifier(state, task, response, ctx or Context(0, 0, 0.0))
            else:
                result = self._verifier(state, task, response)
        except EffectFailed as e:
            return VerifyResult(reward=0.0, failure={"kind": e.kind, "error": e.detail})
        if not isinstance(result, VerifyResult):
            # Only a real number (a bool is one: pass/fail as 1.0/0.0); "1.0" or None is the verifier's bug.
            if not isinstance(result, numbers.Real):
                shown = f"{result!r:.60}"
                raise TypeError(f"it must return a number or a VerifyResult, not {_shape(result)} ({shown})")
            result = VerifyResult(reward=float(result))
        # NaN or infinity would be logged as null (JSON has neither) and poison every mean over it.
        scores = {"reward": result.reward, **{f"components[{k!r}]": v for k, v in result.components.items()}}
        bad = {name: value for name, value in scores.items() if not math.isfinite(value)}
        if bad:
            raise ValueError(f"the verifier's scores must be finite numbers: {bad}")
        try:  # as the verified event will record it
            result.model_dump(mode="json")
        except PydanticSerializationError as e:
            raise TypeError(f"its details must be JSON: {e}") from e
        return result

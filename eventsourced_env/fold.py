"""Rebuilding a session: folding its events through the environment's reducers.

A session's state is nothing but `fold(env, events)`: start from the seeded event's task and
seed, then re-run every recorded tool call with its recorded arguments, seq and time. Because
tools are pure functions of (state, args, ctx), this reproduces the state the server had. The
external effects a call made (a judge's reply…) come back from its event, never performed again.

Depends on `environment` and `events`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .environment import Context, Effects, Environment, State, Task
from .errors import (
    ArgumentsInvalid,
    Conflict,
    EnvError,
    EnvironmentDefinitionError,
    SessionNotFound,
    ToolFailed,
    ToolNotFound,
)
from .events import CLOSED, SEEDED, TOOL_CALLED, TOOL_REJECTED, Event

__all__ = [
    "Attempt",
    "Folded",
    "as_recorded",
    "attempt",
    "fold",
    "resume",
    "snapshot_body",
    "start",
    "state_model",
    "step",
]


@dataclass(slots=True)
class Folded:
    """A session folded up to `seq`: its task, seed, state and the hash its next event chains to."""

    env: Environment[Any, Any]
    task: Task
    seed: int
    state: State
    seq: int
    hash: str
    closed: bool = False
    #: Idempotency keys of this session's calls: key -> (event kind, event data).
    keys: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    #: When the session was last used (the server's clock), for idle eviction.
    used: float = 0.0


def start(env: Environment[Any, Any], seeded: Event) -> Folded:
    """The session as it stands after its seeded event (seq 1)."""
    if seeded.seq != 1 or seeded.kind != SEEDED:
        raise SessionNotFound(f"a session's log must start with a seeded event, found {seeded.kind!r}")
    data = seeded.data
    if data["env"] != env.name:
        raise Conflict(f"the session belongs to environment {data['env']!r}, this server serves {env.name!r}")
    task = env.parse_task(data["row"])
    state = env.start(task, Context(data["seed"], 1, seeded.at))
    return Folded(env, task, data["seed"], state, 1, seeded.hash)


def step(folded: Folded, event: Event) -> Any:
    """Apply one event after the seeded one to `folded` in place; the replayed observation, if any."""
    kind, data = event.kind, event.data
    observation = None
    key = data.get("idempotency_key")
    if key is not None:
        folded.keys[key] = (kind, data)
    if kind == TOOL_CALLED:
        env = folded.env
        tool = env.tools.get(data["tool"])
        if tool is None:
            raise EnvironmentDefinitionError(
                f"event seq {event.seq} calls tool {data['tool']!r}, which {env.name!r} no longer has"
            )
        args = tool.validate(data["args"])
        effects = Effects.replaying(data.get("effects", ())) if env.effects else None
        ctx = Context(folded.seed, event.seq, event.at, effects)
        folded.state, observation = env.run_tool(tool, folded.state, args, ctx)
        if effects is not None:
            effects.finish()
    elif kind == CLOSED:
        folded.closed = True
    folded.seq = event.seq
    folded.hash = event.hash
    return observation


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one tool call comes to: the event to record, the state after it, and the reply."""

    kind: str
    data: dict[str, Any]
    state: State
    error: EnvError | None

    @property
    def reply(self) -> Any:
        """The body the caller gets: the observation, or the error's JSON."""
        return self.error.to_json() if self.error is not None else self.data["observation"]


def attempt(
    env: Environment[Any, Any],
    state: State,
    seed: int,
    seq: int,
    at: float,
    name: str,
    raw: Any,
    effects: Effects | None = None,
) -> Attempt:
    """Try one tool call on `state` without recording it: a call, or a rejection (unknown tool, bad args).

    A tool that crashes raises `ToolFailed`: that is a bug in the environment, not a recordable call.
    The effects the tool performed through `effects` go into the event's data.
    """
    tool = env.tools.get(name)
    if tool is None:
        error: EnvError = ToolNotFound(
            f"{env.name!r} has no tool {name!r}; its tools are: {', '.join(env.tools)}"
        )
        return Attempt(TOOL_REJECTED, {"tool": name, "args": raw, "error": error.detail}, state, error)
    try:
        args = tool.validate(raw)
    except ArgumentsInvalid as e:
        return Attempt(TOOL_REJECTED, {"tool": name, "args": raw, "error": e.detail}, state, e)
    try:
        new_state, observation = env.run_tool(tool, state, args, Context(seed, seq, at, effects))
    except EnvError:
        raise
    except Exception as e:
        raise ToolFailed(f"tool {name!r} failed: {type(e).__name__}: {e}") from e
    data = {"tool": name, "args": tool.recorded(args), "observation": observation}
    if effects is not None and effects.record:
        data["effects"] = effects.record
    return Attempt(TOOL_CALLED, data, new_state, None)


def as_recorded(observation: Any) -> Any:
    """An observation as the log records it (JSON round trip: tuples become lists, and so on)."""
    return orjson.loads(orjson.dumps(observation))


def fold(env: Environment[Any, Any], events: Iterable[Event]) -> Folded:
    """Rebuild a session from its whole log (or a prefix of it)."""
    it = iter(events)
    first = next(it, None)
    if first is None:
        raise SessionNotFound("the session has no events")
    folded = start(env, first)
    for event in it:
        step(folded, event)
    return folded


@functools.cache
def state_model(model: type[State]) -> str:
    """A digest of a State model's JSON schema (its fields, their types and defaults), which a snapshot
    names: a snapshot of another model (one written before the model changed) is none of this one's."""
    try:
        schema: Any = model.model_json_schema()
    except Exception:  # a field type with no JSON schema: its fields and their types, then
        schema = {name: str(info.annotation) for name, info in model.model_fields.items()}
    return hashlib.sha256(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


def snapshot_body(folded: Folded) -> bytes:
    """A snapshot of a folded session: its state (and its model's digest), the seq and hash it stands
    at, its keys, closed or not."""
    keys = {key: [kind, data] for key, (kind, data) in folded.keys.items()}
    state = folded.state.model_dump(mode="json")
    return orjson.dumps(
        {
            "seq": folded.seq,
            "hash": folded.hash,
            "model": state_model(type(folded.state)),
            "state": state,
            "closed": folded.closed,
            "keys": keys,
        }
    )


def resume(env: Environment[Any, Any], events: list[Event], snapshot: bytes) -> Folded | None:
    """Rebuild from a snapshot and the events from its seq on (after the seeded one).

    None when the snapshot does not fit the log (no event at its seq, or another hash there) or is
    of another State model than the environment's now (or names none: written before snapshots
    did): the caller then folds the whole log. A snapshot is derived data; `esenv replay` checks each one.
    """
    try:
        snap = orjson.loads(snapshot)
        at = next((i for i, e in enumerate(events) if e.seq == snap["seq"]), None)
        if at is None or events[at].hash != snap["hash"]:
            return None
        folded = start(env, events[0])
        if snap.get("model") != state_model(type(folded.state)):
            return None  # validated into this model, it would take defaults the log never set
        folded.state = type(folded.state).model_validate(snap["state"])
        folded.seq, folded.hash, folded.closed = snap["seq"], snap["hash"], snap["closed"]
        folded.keys = {key: (kind, data) for key, (kind, data) in snap["keys"].items()}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None  # damaged (or of another state model): folding the whole log needs none
    for event in events[at + 1 :]:
        step(folded, event)
    return folded

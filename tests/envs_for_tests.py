"""Small environments for tests: a pure one, and two that break the rules (wall clock, global random)."""

from __future__ import annotations

import random
import time
from typing import Any

from pydantic import Field

from environments.counter import CounterState, CounterTask
from environments.counter import env as counter_env
from eventsourced_env import Args, Context, Environment, State, Task


class Tally(State):
    """A running total."""

    total: float = 0.0


class Add(Args):
    """Arguments of `add`."""

    amount: float


class LenientAdd(Args):
    """Arguments of `add` that take anything."""

    amount: Any


def _tally_env(name: str, extra: Any, args_model: type[Args] = Add) -> Environment[Task, Tally]:
    env: Environment[Task, Tally] = Environment(name, version="1", task=Task)
    env.initial(lambda task, ctx: Tally())

    def add(state: Tally, args: Any, ctx: Context) -> tuple[Tally, Any]:
        """Add `amount` to the total."""
        amount = args.amount if isinstance(args.amount, int | float) else 0.0
        return Tally(total=state.total + amount), {"total": state.total + amount, **extra()}

    add.__annotations__["args"] = args_model
    env.tool(add)
    env.verifier(lambda state, task, response: 1.0 if state.total > 0 else 0.0)
    return env


#: Deterministic: its observations depend only on the state, the arguments and ctx.
seeded_env = _tally_env("tally", lambda: {})
#: Accepts arguments `seeded_env` rejects: replaying `seeded_env`'s rejections with it diverges.
lenient_env = _tally_env("tally", lambda: {}, LenientAdd)
#: Reads the wall clock in a tool: replay catches it.
clock_env = _tally_env("tally", lambda: {"stamp": time.time()})
#: Draws from the global random module in a tool: replay catches it.
random_env = _tally_env("tally", lambda: {"luck": random.random()})


def _within_one(state: CounterState, task: CounterTask, response: Any) -> float:
    """Half a point for ending within one of the target."""
    if state.count == task.expected_count:
        return 1.0
    return 0.5 if task.expected_count is not None and abs(state.count - task.expected_count) <= 1 else 0.0


def _always_half(state: CounterState, task: CounterTask, response: Any) -> float:
    """Half a point, whatever happened."""
    return 0.5


#: The counter with a more lenient verifier, as version 2.
lenient_counter = counter_env.with_verifier(_within_one, version="2")
#: The counter with a broken verifier, same version: its golden-replay snapshots must fail.
half_counter = counter_env.with_verifier(_always_half)


class Tags(State):
    """A set of words: a set's JSON lists them in its iteration order, which hash seeds change."""

    words: frozenset[str] = frozenset()


class Word(Args):
    """Arguments of `tag`."""

    word: str


#: Keeps a set in its state, and answers with it sorted: deterministic whatever the hash seed.
tags_env: Environment[Task, Tags] = Environment("tags", version="1", task=Task)
tags_env.initial(lambda task, ctx: Tags())


@tags_env.tool
def tag(state: Tags, args: Word, ctx: Context) -> tuple[Tags, Any]:
    """Add a word to the set."""
    words = state.words | {args.word}
    return Tags(words=words), {"words": sorted(words)}


tags_env.verifier(lambda state, task, response: float(len(state.words)))


class Send(Args):
    """Arguments of `send`: `from` is a Python keyword, so its field has an alias."""

    sender: str = Field(alias="from")
    to: str


#: A tool whose arguments have an alias: the model sends `from`, which the log must record.
mail_env: Environment[Task, Tags] = Environment("mail", version="1", task=Task)
mail_env.initial(lambda task, ctx: Tags())


@mail_env.tool
def send(state: Tags, args: Send, ctx: Context) -> tuple[Tags, Any]:
    """Send a mail."""
    return Tags(words=state.words | {f"{args.sender}->{args.to}"}), {"sent": True}


mail_env.verifier(lambda state, task, response: float(len(state.words)))


class Blob(State):
    """Raw bytes: JSON cannot hold them unless they are UTF-8, so such a state has no JSON form."""

    data: bytes = b""


class Byte(Args):
    """Arguments of `put`."""

    byte: int = Field(ge=0, le=255)


#: Keeps raw bytes in its state: a state the server cannot write down as a snapshot.
blob_env: Environment[Task, Blob] = Environment("blob", version="1", task=Task)
blob_env.initial(lambda task, ctx: Blob())


@blob_env.tool
def put(state: Blob, args: Byte, ctx: Context) -> tuple[Blob, Any]:
    """Append one byte."""
    data = state.data + bytes([args.byte])
    return Blob(data=data), {"length": len(data)}


blob_env.verifier(lambda state, task, response: float(len(state.data)))

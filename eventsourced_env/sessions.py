"""Live sessions: seeding, tool calls, verification and closing, in the order the log demands.

Every operation on a session runs under that session's lock (calls of one session are
serialized; sessions run concurrently) and follows **append, then apply**: compute the event,
wait until the store has durably committed it, and only then change the state in memory. If the
append fails, the cached state is dropped, so the next call rebuilds from the log — the state in
memory is never ahead of, or different from, what the log explains.

Folded states are kept in a bounded LRU cache; a miss rebuilds the session by folding its log,
which is also how sessions continue after a restart. Environments that declare external effects
(a judge) run their tools and verifier in a small thread pool, off the event loop, with the host's
performers; effect-free environments never leave the loop. Depends on `fold`, `store` and `events`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import re
import reprlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import orjson

from . import exactjson
from .environment import Context, Effects, Environment, Performer, State, VerifyResult
from .errors import (
    ArgumentsInvalid,
    BadRequest,
    Conflict,
    EnvError,
    EnvironmentDefinitionError,
    EventNotFound,
    InvalidRequest,
    SessionClosed,
    SessionLimit,
    SessionNotFound,
    TaskInvalid,
    ToolError,
    ToolFailed,
    TooManySessions,
    Unrecordable,
)
from .events import CLOSED, FORKED, SEEDED, TOOL_CALLED, TOOL_REJECTED, VERIFIED, Event, make_event
from .fold import Attempt, Folded, as_recorded, attempt, fold, resume, snapshot_body
from .store import SessionInfo, Store

__all__ = ["EFFECT_THREADS", "MAX_FORKS", "SESSION_HEADER", "SESSION_ID_PATTERN", "Sessions"]

log = logging.getLogger("eventsourced_env.sessions")

R = TypeVar("R")

SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_MAX_SEED = 2**63 - 1
MAX_FORKS = 100
#: Threads that run effectful tools and verifiers off the loop; the judge bounds its own calls further.
EFFECT_THREADS = 32
#: The header that may carry the session instead of the cookie (the server reads and echoes it).
SESSION_HEADER = "X-Session-Id"
#: How many times a call is applied, at most, while other servers sharing the store append to its
#: session first (each time on their latest events); then the call is a 409.
STALE_TRIES = 3
_NO_SESSION = (
    "no session: POST /seed_session first; the session travels in the cookie "
    f"(or {SESSION_HEADER} header) it sets"
)


def _refused(e: Unrecordable, tool: str, raw: Any, result: Attempt, state: State) -> Attempt:
    """A call whose event cannot be written down, as the server answers it: refused on `state` (a
    number beyond 64 bits…), or, if the tool's observation is not JSON at all, the tool's bug."""
    if not _json_types(result.data.get("observation")):  # a set, an object…
        raise ToolFailed(f"tool {tool!r} returned an observation that is not JSON: {e.detail}") from e
    return Attempt(TOOL_REJECTED, {"tool": tool, "args": raw, "error": e.detail}, state, e)


def _recorded_as(
    prev: str, seq: int, at: float, tool: str, raw: Any, result: Attempt, state: State, key: str | None = None
) -> tuple[Event, Attempt]:
    """The event a call's `result` is written down as, and the result it stands for: the call, or its
    refusal if the call cannot be recorded (`_refused`). Unrecordable, if not even the refusal can be
    (its arguments hold an integer past 64 bits…): then nothing is written."""
    data = result.data if key is None else {**result.data, "idempotency_key": key}
    try:
        return make_event(prev, seq, result.kind, at, data), result
    except Unrecordable as e:
        result = _refused(e, tool, raw, result, state)
        data = result.data if key is None else {**result.data, "idempotency_key": key}
        try:
            return make_event(prev, seq, result.kind, at, data), result
        except Unrecordable:
            raise Unrecordable(
                f"the arguments of this call to {tool!r} cannot be recorded, so it is refused "
                f"and nothing is written: {e.detail}"
            ) from e


def _json_types(value: Any) -> bool:
    """True if `value` is made of JSON's types only (dicts with string keys, lists, strings, numbers,
    booleans, None): what a tool's observation must be, whatever the sizes of its numbers."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_types(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_json_types(v) for v in value)
    return value is None or isinstance(value, str | int | float)


def _new_session_id() -> str:
    """A fresh session id: the time in ms (hex, so ids sort by creation), then 128 random bits.

    Time first because the log's key is (session, seq): the events of live sessions then land in
    the last pages of the table instead of all over it, which keeps the pages a commit writes
    few and cached however large the log grows (with random ids the server spent about 15%
    more CPU per call once the log held 50,000 events, and more as it grew).
    """
    return f"{time.time_ns() // 1_000_000:011x}{secrets.token_urlsafe(16)}"


class _Stale(Conflict):
    """The store has an event at the seq this server appended at: its fold of the session is stale."""


class _SessionLock:
    """One session's turn: its operations run one at a time, in arrival order. It leaves `locks`
    once no operation holds or awaits it, so a session with no operation in flight costs nothing.

    Not an `asyncio.Lock`: nearly every operation finds its session free, and taking a free turn
    is a flag, where an `asyncio.Lock` made for each call cost five Python calls more (callgrind,
    64 concurrent rollouts: 454k against 449k instructions per call).
    """

    __slots__ = ("_held", "_locks", "_session", "_waiters")

    def __init__(self, locks: dict[str, _SessionLock], session: str) -> None:
        self._locks = locks
        self._session = session
        self._held = False
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def __aenter__(self) -> None:
        if not self._held:
            self._held = True
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if not waiter.cancelled():  # cancelled after the turn was handed over: hand it on
                self._release()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        """Hand the turn to the next waiter still waiting (it stays held), or let go of the session."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._held = False
        del self._locks[self._session]


class Sessions:
    """The live sessions of one environment over one store."""

    def __init__(
        self,
        env: Environment[Any, Any],
        store: Store,
        *,
        cache_size: int = 10_000,
        idle_ttl: float | None = None,
        max_events: int | None = None,
        max_live: int | None = None,
        snapshot_every: int | None = 1000,
        clock: Callable[[], float] = time.time,
        performers: Mapping[str, Performer] | None = None,
        effect_threads: int = EFFECT_THREADS,
    ) -> None:
        env.check()
        self.env = env
        self.store = store
        self.cache_size = cache_size
        self.idle_ttl = idle_ttl
        self.max_events = max_events
        self.max_live = max_live
        self.snapshot_every = snapshot_every
        self._clock = clock
        self._cache: OrderedDict[str, Folded] = OrderedDict()
        self._locks: dict[str, _SessionLock] = {}
        #: Sessions admitted under `max_live` whose first events are being written (not cached yet).
        self._starting = 0
        #: Who performs each kind of external effect (e.g. "judge": a judge client), for effectful envs.
        self.performers: Mapping[str, Performer] = performers or {}
        # Two pools, so that tool calls never queue behind verifications waiting on a slow judge;
        # each as large as the most effects that may be in flight (a judge's concurrency, say).
        self._executor: ThreadPoolExecutor | None = None
        self._scoring: ThreadPoolExecutor | None = None
        if env.effects:
            self._executor = ThreadPoolExecutor(effect_threads, thread_name_prefix="esenv-effects")
            self._scoring = ThreadPoolExecutor(effect_threads, thread_name_prefix="esenv-scoring")

    # -- plumbing -------------------------------------------------------------------------------

    def _lock(self, session: str) -> _SessionLock:
        """The lock that serializes `session`'s operations (shared while anyone holds or awaits it)."""
        lock = self._locks.get(session)
        if lock is None:
            lock = self._locks[session] = _SessionLock(self._locks, session)
        return lock

    def _remember(self, session: str, folded: Folded) -> None:
        self._cache[session] = folded
        self._cache.move_to_end(session)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    async def _load(self, session: str | None) -> Folded:
        """The session's folded state: from the cache, or rebuilt from its log."""
        if session is None:
            raise SessionNotFound(_NO_SESSION)
        folded = self._cache.get(session)
        if folded is None:
            if not SESSION_ID_PATTERN.match(session):  # no session was ever given such an id
                raise SessionNotFound(f"unknown session {reprlib.repr(session)}: " + _NO_SESSION)
            events, snapshot = await self.store.read_for_rebuild(session)
            if not events:
                raise SessionNotFound(f"unknown session {session!r}: " + _NO_SESSION)
            try:
                folded = resume(self.env, events, snapshot) if snapshot is not None else None
                if folded is None:
                    if snapshot is not None:  # it did not fit the log: fold all of it
                        events = await self.store.read(session)
                    folded = fold(self.env, events)
            except ArgumentsInvalid as e:  # the environment changed since: not the new call's fault
                raise EnvironmentDefinitionError(
                    f"session {session!r} cannot be rebuilt by {self.env.name!r}: a call its log records "
                    f"is refused now ({e.detail}); `esenv replay` names the event"
                ) from e
            if not folded.closed:  # a closed one is only read (a 409, its state): it takes no live slot
                self._remember(session, folded)
        else:
            self._cache.move_to_end(session)
        folded.used = self._clock()
        return folded

    def _save_snapshot(self, session: str, folded: Folded) -> None:
        """Keep a snapshot of `folded` with the next batch. Derived data: a state JSON cannot hold
        (an integer beyond 64 bits, bytes that are not UTF-8…) gets none, and its rebuilds fold
        from further back. So does one the store fails to keep. Its call is recorded and applied
        already: it must be answered."""
        try:
            body = snapshot_body(folded)
        except (TypeError, ValueError) as e:  # orjson's TypeError; pydantic's serialization errors
            log.warning("no snapshot of session %s at seq %d: %s", session, folded.seq, e)
            return
        try:
            self.store.save_snapshot(session, folded.seq, body)
        except Exception as e:
            log.warning("no snapshot of session %s at seq %d: the store failed: %s", session, folded.seq, e)

    @contextlib.contextmanager
    def _room(self, new: int) -> Iterator[None]:
        """Admit `new` more live sessions, or refuse them beyond `max_live` (once the idle ones are
        evicted). The slots stay taken while the block writes their first events, so that sessions
        started concurrently (a batch of rollouts seeding at once) count each other."""
        if self.max_live is not None and new > self.max_live:  # a 503 "retry later" would never pass
            raise InvalidRequest(
                f"{new} sessions at once exceed this server's cap of {self.max_live} live sessions"
            )
        if self.max_live is not None and len(self._cache) + self._starting + new > self.max_live:
            self.evict_idle()
            held = len(self._cache) + self._starting
            if held + new > self.max_live:
                if self.idle_ttl is not None:
                    leave = f"sessions unused for {self.idle_ttl:g} s leave memory, as closed ones do"
                else:
                    # Without an idle TTL, a session nobody closes (NeMo Gym's agent closes none)
                    # keeps its slot: "retry later" would never be answered.
                    leave = (
                        "only closed sessions (POST /close_session) leave memory: this server has no "
                        "--idle-ttl, so a session never closed keeps its slot until the server restarts"
                    )
                raise TooManySessions(
                    f"the server holds {held} of its cap of {self.max_live} live sessions; "
                    f"{new} more would exceed it; retry later ({leave})"
                )
        self._starting += new
        try:
            yield
        finally:
            self._starting -= new

    def evict_idle(self) -> int:
        """Drop from memory the sessions unused for longer than `idle_ttl` (their logs stay); how many."""
        if self.idle_ttl is None:
            return 0
        horizon = self._clock() - self.idle_ttl
        evicted = 0
        # The cache is in order of use, so the idle sessions are at its front.
        while self._cache:
            session, folded = next(iter(self._cache.items()))
            if folded.used > horizon:
                break
            del self._cache[session]
            evicted += 1
        return evicted

    @property
    def live(self) -> int:
        """How many sessions are folded in memory now."""
        return len(self._cache)

    async def _on_latest(self, session: str, apply: Callable[[Folded], Awaitable[R]]) -> R:
        """`apply` to the session as its log has it, under the session's lock.

        Optimistic concurrency: should another server sharing the store have appended to the session
        since this one folded it (the store refuses the seq: `_Stale`), its events are folded in
        and `apply` runs again on the new state, up to `STALE_TRIES` times in all (then a 409).
        """
        async with self._lock(session):
            tries = 1
            while True:
                folded = await self._load(session)
                try:
                    return await apply(folded)
                except _Stale:
                    if tries == STALE_TRIES:
                        raise
                    tries += 1

    async def _append(self, session: str, folded: Folded, event: Event) -> None:
        """Commit `event` durably, then advance `folded` past it (the caller applies the state).

        `_Stale` if the log has an event at its seq already: another server appended to the session.
        """
        try:
            await self.store.append(session, [event])
        except BaseException as e:
            # Whatever happened, the log is the truth: rebuild from it on the next call.
            self._cache.pop(session, None)
            if isinstance(e, Conflict):
                raise _Stale(e.detail) from e
            raise
        folded.seq = event.seq
        folded.hash = event.hash
        if self._cache.get(session) is not folded:  # evicted while the append was in flight
            self._remember(session, folded)

    def _start(self, task: Any, seed: int, at: float) -> State:
        """The environment's initial state; a crash in it is the environment's bug (500)."""
        try:
            state: State = self.env.start(task, Context(seed, 1, at))
        except ToolError as e:  # the task cannot start (a level that does not exist…): the row's fault
            raise TaskInvalid(f"the task cannot start: {e.detail}") from e
        except EnvError:
            raise
        except Exception as e:
            raise ToolFailed(f"{self.env.name!r}'s initial state failed: {type(e).__name__}: {e}") from e
        return state

    def _score(self, state: State, task: Any, response: Any, ctx: Context | None = None) -> VerifyResult:
        """The verifier's result; a crash in it is the environment's bug (500)."""
        try:
            return self.env.run_verifier(state, task, response, ctx)
        except ToolError as e:  # a tool's recoverable error means nothing to a verifier: a bug (500)
            raise ToolFailed(f"{self.env.name!r}'s verifier raised ToolError: {e.detail}") from e
        except EnvError:
            raise
        except Exception as e:
            raise ToolFailed(f"{self.env.name!r}'s verifier failed: {type(e).__name__}: {e}") from e

    def _live_effects(self) -> Effects | None:
        """A fresh record of live effects for one event, if the environment has any."""
        return Effects.live(self.performers) if self._executor is not None else None

    async def offload(self, fn: Callable[..., R], *args: Any, scoring: bool = False) -> R:
        """`fn(*args)`: in the effect threads if the environment performs (blocking) effects, else
        inline; `scoring` (a verification) in threads of their own."""
        pool = self._scoring if scoring else self._executor
        if pool is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(fn, *args))

    def shutdown(self) -> None:
        """Let the effect threads go once their calls finish, and drop the folded sessions (their
        logs stay). Dropped here, they are freed as they go; left to the end of the process, the
        collector scans them all, again and again (26 s for 10,000 `workplace` sessions, 1 GB)."""
        for pool in (self._executor, self._scoring):
            if pool is not None:
                pool.shutdown(wait=False)
        self._cache.clear()

    # -- the operations -------------------------------------------------------------------------

    async def seed(self, row: Any, carried: str | None = None) -> str:
        """Start a session from a dataset row; returns its id.

        The row may name the session (`_ng_session_id`): seeding the same id with the same row
        again returns the same session; with another row it is a `Conflict`. It may also pin the
        session's random seed (`session_seed`, an integer); otherwise one is drawn and recorded.

        `carried`: the session the request carries (its cookie or header). A seed comes at the start
        of a rollout, without one; one that carries a session the log knows (open or closed) is a
        `Conflict`. Else a model
        could name a tool `seed_session` (NeMo Gym's agent posts every call to `/{name}` and keeps
        the reply's cookie), start a session of a task it made up, and be scored on that.
        """
        if not isinstance(row, dict):
            raise BadRequest(f"a seed row must be a JSON object, not {type(row).__name__}")
        task = self.env.parse_task(row)
        chosen = row.get("_ng_session_id")
        if chosen is not None and not (isinstance(chosen, str) and SESSION_ID_PATTERN.match(chosen)):
            raise TaskInvalid("_ng_session_id must be 1-128 characters of letters, digits and _ . : -")
        if carried is not None and carried != chosen:
            await self._refuse_inside(carried, "seed")
        seed = _session_seed(row, secrets.randbits(63))
        session = chosen or _new_session_id()
        async with self._lock(session):
            if chosen is not None and await self._seeded_with(session, row):
                return session  # a retry: nothing new is held in memory, so no cap applies
            with self._room(1):
                at = self._clock()
                state = self._start(task, seed, at)
                data = {"env": self.env.name, "env_version": self.env.version, "seed": seed, "row": row}
                event = make_event("", 1, SEEDED, at, data)
                try:
                    await self.store.append(session, [event])
                except Conflict:
                    # Another server sharing the store seeded this id since it was read (a retry of
                    # the seed sent there, say): the same row is the same session there as here.
                    if chosen is not None and await self._seeded_with(session, row):
                        return session
                    raise
                self._remember(session, Folded(self.env, task, seed, state, 1, event.hash, used=at))
        return session

    async def _seeded_with(self, session: str, row: dict[str, Any]) -> bool:
        """True if the log has `session` seeded with `row`, False if it has no such session; a
        `Conflict` if it was seeded with another row."""
        existing = await self.store.read(session, upto=1)
        if not existing:
            return False
        if existing[0].data.get("row") != row:
            raise Conflict(f"session {session!r} was already seeded with a different row")
        return True

    async def _refuse_inside(self, carried: str, what: str) -> None:
        """Conflict if `carried` is a session the log knows, open or closed: a seed or fork (`what`)
        sent from inside a rollout. NeMo Gym's agent posts each call to `/{name}` (slashes and all)
        and keeps the reply's cookie, so a "tool" named `seed_session` or `sessions/<id>/fork`
        (after `close_session`, too) would swap the rollout's session for one of a task the model
        made up, or for a fork of its own at an earlier seq, and the agent's final /verify would
        score that one."""
        try:
            async with self._lock(carried):  # a rebuild must not race a call's update of the cache
                folded = await self._load(carried)
        except SessionNotFound:
            return  # a stale or foreign cookie: nothing to protect
        state = "closed" if folded.closed else "open"
        raise Conflict(
            f"this {what} carries {state} session {carried!r} (its cookie or {SESSION_HEADER} header): "
            f"a rollout's tool calls cannot {what} (a tool cannot be named seed_session or "
            f"sessions/<id>/fork). Send the {what} without that session's cookie"
        )

    async def call(self, session: str | None, tool_name: str, raw: Any, key: str | None = None) -> Any:
        """Apply one tool call; returns the observation. Refused calls are recorded, then raised.

        A call carrying an idempotency `key` that this session already recorded is not applied
        again: the recorded outcome is returned (a different call under the same key is a Conflict).
        """
        if session is None:
            raise SessionNotFound(_NO_SESSION)
        return await self._on_latest(session, lambda folded: self._call(session, folded, tool_name, raw, key))

    async def _call(self, session: str, folded: Folded, tool_name: str, raw: Any, key: str | None) -> Any:
        """`call` on the session as folded."""
        if key is not None and key in folded.keys:
            # A retry: its first answer may have been a 503 (committed, fsync not known done),
            # so it is answered only once the log is on the disk.
            await self.store.sync()
            return self._recorded(folded, key, tool_name, raw)
        if folded.closed:
            raise SessionClosed(f"session {session!r} is closed; seed a new one")
        if self.max_events is not None and folded.seq >= self.max_events:
            raise SessionLimit(
                f"session {session!r} has reached the cap of {self.max_events} events; verify or close it"
            )
        seq, at = folded.seq + 1, self._clock()
        if self._executor is None:
            result = attempt(self.env, folded.state, folded.seed, seq, at, tool_name, raw)
        else:
            effects = Effects.live(self.performers)
            result = await self.offload(
                attempt, self.env, folded.state, folded.seed, seq, at, tool_name, raw, effects
            )
        event, result = _recorded_as(folded.hash, seq, at, tool_name, raw, result, folded.state, key)
        data = event.data
        await self._append(session, folded, event)
        if key is not None:
            folded.keys[key] = (event.kind, data)
        if result.error is None:
            folded.state = result.state
        # Whatever the event's kind (a refused call too): else a rebuild could fold past N.
        if self.snapshot_every and folded.seq % self.snapshot_every == 0:
            self._save_snapshot(session, folded)
        if result.error is not None:
            raise result.error
        return data["observation"]

    def _recorded(self, folded: Folded, key: str, tool_name: str, raw: Any) -> Any:
        """The outcome recorded under an idempotency key, for a retry of the same call."""
        kind, data = folded.keys[key]
        tool = self.env.tools.get(tool_name)
        if kind == TOOL_CALLED:
            same = data["tool"] == tool_name and tool is not None and _validated(tool, raw) == data["args"]
        else:
            same = data["tool"] == tool_name and data["args"] == raw
        if not same:
            raise Conflict(f"Idempotency-Key {key!r} was already used for a different call")
        if kind == TOOL_CALLED:
            return data["observation"]
        # A refused call is refused again, with the same error (validation does not depend on state).
        error = attempt(self.env, folded.state, folded.seed, 0, 0.0, tool_name, raw).error
        raise error if error is not None else Unrecordable(data["error"])

    async def verify(self, session: str | None, response: Any) -> VerifyResult:
        """Run the verifier on the session's state and record the result."""
        if session is None:
            raise SessionNotFound(_NO_SESSION)
        return await self._on_latest(session, lambda folded: self._verify(session, folded, response))

    async def _verify(self, session: str, folded: Folded, response: Any) -> VerifyResult:
        """`verify` on the session as folded."""
        if folded.closed:
            raise SessionClosed(f"session {session!r} is closed; it can no longer be verified live")
        seq, at = folded.seq + 1, self._clock()
        if self._executor is None:
            effects = None
            result = self._score(folded.state, folded.task, response, Context(folded.seed, seq, at))
        else:
            effects = Effects.live(self.performers)
            ctx = Context(folded.seed, seq, at, effects)
            result = await self.offload(self._score, folded.state, folded.task, response, ctx, scoring=True)
        data = {
            **result.model_dump(mode="json"),
            "verifier_version": self.env.verifier_version,
            "response": response,
        }
        if effects is not None and effects.record:
            data["effects"] = effects.record
        if result.failure is not None:
            data["failure"] = result.failure
        event = make_event(folded.hash, seq, VERIFIED, at, data)
        await self._append(session, folded, event)
        if self.snapshot_every and folded.seq % self.snapshot_every == 0:
            self._save_snapshot(session, folded)
        return result

    async def close(self, session: str | None) -> bool:
        """Close a session (no more calls); False if it was closed already. Its log stays."""
        if session is None:
            raise SessionNotFound(_NO_SESSION)

        async def close(folded: Folded) -> bool:
            if folded.closed:
                return False
            await self._append(
                session, folded, make_event(folded.hash, folded.seq + 1, CLOSED, self._clock(), {})
            )
            folded.closed = True
            self._cache.pop(session, None)
            return True

        return await self._on_latest(session, close)

    async def fork(
        self, parent: str, at: int | None = None, count: int = 1, carried: str | None = None
    ) -> list[str]:
        """Start `count` sessions whose logs are `parent`'s first `at` events (default: all), then their own.

        The copied events are byte-identical (their hash chain holds); a `forked` event naming the
        parent follows them. The parent is untouched. `carried`: the session the request carries;
        a fork that carries one the log knows is a `Conflict` (sent from inside a rollout).
        """
        if not 1 <= count <= MAX_FORKS:
            raise InvalidRequest(f"count must be from 1 to {MAX_FORKS}, not {count}")
        if at is not None and at < 1:
            raise InvalidRequest(f"at must be a seq of 1 or more, not {at}")
        if carried is not None:
            await self._refuse_inside(carried, "fork")
        events = await self.events(parent, at)
        last = events[-1].seq
        if at is not None and at > last:
            raise Conflict(f"session {parent!r} has {last} events; it cannot be forked at seq {at}")
        if any(e.kind == CLOSED for e in events):
            raise Conflict(f"session {parent!r} is closed by seq {last}; fork it before its close")
        base = fold(self.env, events)
        with self._room(count):
            made = []
            for _ in range(count):
                forked = make_event(
                    events[-1].hash, last + 1, FORKED, self._clock(), {"parent": parent, "at": last}
                )
                made.append((_new_session_id(), forked))
            # All or nothing: a fork that fails part way (a full disk) leaves no session nobody was told of.
            await self.store.append_many([(session, [*events, forked]) for session, forked in made])
            for session, forked in made:
                # As a rebuild from its log would have it: the parent's state and idempotency keys.
                keys = dict(base.keys)
                folded = Folded(
                    self.env,
                    base.task,
                    base.seed,
                    base.state,
                    forked.seq,
                    forked.hash,
                    keys=keys,
                    used=forked.at,
                )
                self._remember(session, folded)
                if self.snapshot_every and forked.seq > self.snapshot_every:
                    # Its log starts with the parent's (whose snapshots are the parent's): without
                    # one of its own, its cold rebuild would fold all of them.
                    self._save_snapshot(session, folded)
        return [session for session, _ in made]

    def verify_stateless(self, body: dict[str, Any]) -> tuple[VerifyResult, dict[str, Any]]:
        """Verify a trajectory without a session: fold the request's own function calls from its row.

        The row (the body less `response`) seeds a throw-away session (never stored; its seed is
        the row's `session_seed`, else 0); each `function_call` in `response.output` is applied in
        order and its replayed output compared with the recorded `function_call_output` (as JSON
        where both are JSON); a call whose arguments are not JSON is skipped and takes no seq, as
        does one no output answers (the agent never sent it) and one the server answered with an
        error it did not record (a tool that crashed).
        Returns the verifier's result and a report of the replay; a replay that diverges scores 0
        with a `replay` failure (the replayed state's own reward in the report). Effects
        (a judge) are performed live: nothing of this session is recorded. Blocks on effects: run it
        through `offload`.
        """
        row = {k: v for k, v in body.items() if k != "response"}
        response = body.get("response")
        task = self.env.parse_task(row)
        seed = _session_seed(row, 0)
        at = self._clock()
        state = self._start(task, seed, at)
        calls = _function_calls(response)
        divergence = None
        seq = 1  # the seeded event's; each call the server would have seen takes the next, as live
        sent = 0  # the calls the server saw live, each replayed
        for call_id, name, arguments, recorded in calls:
            if recorded is _UNANSWERED:
                continue  # the agent never sent it (a turn cut short): live, it never ran
            try:
                # NeMo Gym's agent sends no body for arguments that are falsy (`null`, `{}`, `[]`, 0,
                # ""), which the server reads as `{}`: so they were called with `{}`.
                # Integers past 64 bits exact, as the server reads a tool's arguments.
                raw = exactjson.loads(arguments.encode()) or {}
            except ValueError:
                continue  # NeMo Gym's agent answers unparsable arguments itself; the server never saw them
            seq += 1
            sent += 1
            try:
                result = attempt(self.env, state, seed, seq, at, name, raw, self._live_effects())
                _, result = _recorded_as("", seq, at, name, raw, result, state)  # as the server would
                state, replayed = result.state, result.reply
            except EnvError as e:  # the error body the server sent (a crash's 500 included)
                replayed = e.to_json()
                seq -= 1  # nothing was recorded for it, so it took no seq live
            if divergence is None and recorded is not None and not _same_output(recorded, replayed):
                divergence = {"call_id": call_id, "tool": name, "recorded": recorded, "replayed": replayed}
        verified = self._score(state, task, response, Context(seed, seq + 1, at, self._live_effects()))
        report: dict[str, Any] = {"clean": divergence is None, "calls": sent, "divergence": divergence}
        if divergence is not None:
            # Scored, but not a sample: the record says the tools answered otherwise (a forged
            # output, a session lost mid-rollout whose calls got 404s, a changed environment, or a
            # random draw from another seed). The reward is 0, as for a failed judge; the replayed
            # state's own stays in the report.
            report["reward"] = verified.reward
            if verified.failure is None:
                verified = VerifyResult(
                    reward=0.0,
                    details=verified.details,
                    failure={"kind": "replay", "error": _diverged(divergence)},
                )
        return verified, report

    # -- reading --------------------------------------------------------------------------------

    async def info(self, session: str) -> SessionInfo:
        """The store's summary of one session."""
        _known_form(session)
        info = await self.store.info(session)
        if info is None:
            raise SessionNotFound(f"unknown session {session!r}")
        return info

    async def events(self, session: str, upto: int | None = None) -> list[Event]:
        """The session's events (up to seq `upto`)."""
        if upto is not None and upto < 1:
            raise BadRequest(f"upto must be a seq of 1 or more, not {upto}")
        _known_form(session)
        events = await self.store.read(session, upto)
        if not events:
            raise SessionNotFound(f"unknown session {session!r}")
        return events

    async def state_at(self, session: str, at: int | None = None) -> tuple[int, dict[str, Any]]:
        """The session's state after event `at` (the latest if None), as (seq, JSON state)."""
        if at is None:
            async with self._lock(session):  # a rebuild must not race a call's update of the cache
                return _state_json(session, await self._load(session))
        if at < 1:
            raise BadRequest(f"at must be a seq of 1 or more, not {at}")
        events = await self.events(session, at)
        if events[-1].seq < at:
            raise EventNotFound(f"session {session!r} has {events[-1].seq} events, none at seq {at}")
        return _state_json(session, fold(self.env, events))


def _state_json(session: str, folded: Folded) -> tuple[int, dict[str, Any]]:
    """(seq, the state as JSON); a state with no JSON form (bytes that are not UTF-8…) is the
    environment's bug, a `ToolFailed` naming it, not an unexpected error."""
    try:
        return folded.seq, folded.state.model_dump(mode="json")
    except ValueError as e:  # pydantic's serialization errors
        raise ToolFailed(
            f"session {session!r}: the state of {folded.env.name!r} at seq {folded.seq} has no JSON form: {e}"
        ) from e


def _known_form(session: str) -> None:
    """SessionNotFound for an id no session was ever given, without asking the store: a backend
    need hold only ids of `SESSION_ID_PATTERN`'s form (PostgreSQL's text refuses NUL, say)."""
    if not SESSION_ID_PATTERN.match(session):
        raise SessionNotFound(f"unknown session {reprlib.repr(session)}")


def _validated(tool: Any, raw: Any) -> Any:
    """The arguments as a call with `raw` would record them, or None if they are refused."""
    try:
        return tool.recorded(tool.validate(raw))
    except ArgumentsInvalid:
        return None


def _diverged(divergence: dict[str, Any]) -> str:
    """A stateless replay's first divergence in one line, outputs as JSON."""
    recorded, replayed = (
        orjson.dumps(v).decode() if not isinstance(v, str) else v
        for v in (divergence["recorded"], divergence["replayed"])
    )
    call = f"call {divergence['call_id']} ({divergence['tool']})"
    return f"{call} diverged: recorded {recorded}, replayed {replayed}"


def _session_seed(row: dict[str, Any], default: int) -> int:
    """The row's `session_seed`, checked, or `default`."""
    seed = row.get("session_seed", default)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= _MAX_SEED:
        raise TaskInvalid(f"session_seed must be an integer from 0 to 2**63-1, not {seed!r}")
    return seed


#: A function call no `function_call_output` answers: NeMo Gym's agent answers every call it sends,
#: so it never sent this one (a turn cut short by max_output_tokens, or the last one).
_UNANSWERED: Any = object()


def _function_calls(response: Any) -> list[tuple[str, str, str, Any]]:
    """(call_id, tool, arguments, recorded output) for each function call of a Responses output;
    the output is `_UNANSWERED` for a call no `function_call_output` answers.

    Each call's output is the first `function_call_output` after it with its `call_id` not yet
    taken by an earlier call: ids may repeat (a model numbering its calls turn by turn). A call_id
    that is not a string is a 400.
    """
    output = response.get("output") if isinstance(response, dict) else None
    if not isinstance(output, list):
        return []
    calls: list[list[Any]] = []
    waiting: dict[str, collections.deque[list[Any]]] = collections.defaultdict(collections.deque)
    for place, item in enumerate(output):
        if not isinstance(item, dict) or item.get("type") not in ("function_call", "function_call_output"):
            continue
        call_id = item.get("call_id", "")
        if not isinstance(call_id, str):
            what = reprlib.repr(call_id)
            raise BadRequest(f"response.output[{place}].call_id must be a string, not {what}")
        if item["type"] == "function_call":
            call = [call_id, str(item.get("name")), str(item.get("arguments", "{}")), _UNANSWERED]
            calls.append(call)
            waiting[call_id].append(call)
        elif waiting[call_id]:
            waiting[call_id].popleft()[3] = item.get("output")
    return [(call_id, name, arguments, recorded) for call_id, name, arguments, recorded in calls]


def _same_output(recorded: Any, replayed: Any) -> bool:
    """Whether a recorded tool output (the raw reply text) matches a replayed one."""
    if isinstance(recorded, str):
        try:
            recorded = orjson.loads(recorded)
        except orjson.JSONDecodeError:
            return bool(recorded == orjson.dumps(replayed).decode())
    return bool(recorded == as_recorded(replayed))

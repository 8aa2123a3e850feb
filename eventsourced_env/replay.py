"""Replay and re-verify: rebuild stored sessions and check them against their own record.

`check_log` rebuilds a session from its log, re-runs every tool call on the rebuilt state and
compares each observation (and each rejection) with what was recorded, after checking the hash
chain; it names the first divergence. `reverify_log` runs the current verifier on the state a
session had when it was verified (rebuilt with each observation checked, or NotRebuilt) and
compares the reward with the recorded one. External effects
(a judge's verdict) come from the record, so neither calls anything; `reverify_log` can instead ask
them again (`performers`: re-judging) and report old and new verdicts.

Depends on `fold`, `environment` and `events`; takes logs as `(session, events)` pairs, read from a
Snapshot of a SQLite file or with any `Store`'s `read`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from .environment import Context, Effects, Environment, Performer
from .errors import ArgumentsInvalid, EffectDiverged, EnvError, Unrecordable
from .events import TOOL_CALLED, TOOL_REJECTED, VERIFIED, Event, first_broken_link, make_event
from .fold import Folded, as_recorded, attempt, snapshot_body, start, step

__all__ = [
    "Divergence",
    "NotRebuilt",
    "ReplayReport",
    "Reverified",
    "ReverifyReport",
    "check_log",
    "replay_logs",
    "reverify_log",
    "reverify_logs",
]

Resolver = Callable[[str], "Environment[Any, Any] | None"]


@dataclass(frozen=True)
class Divergence:
    """The first place a session's replay departs from its record."""

    session: str
    seq: int
    reason: str
    tool: str | None = None
    recorded: Any = None
    replayed: Any = None

    def to_json(self) -> dict[str, Any]:
        """The divergence as JSON."""
        return {
            "session": self.session,
            "seq": self.seq,
            "tool": self.tool,
            "reason": self.reason,
            "recorded": self.recorded,
            "replayed": self.replayed,
        }

    def describe(self) -> str:
        """One readable paragraph: session, seq, tool, and recorded vs replayed."""
        head = f"session {self.session}: {self.reason} at seq {self.seq}"
        if self.tool:
            head += f" (tool {self.tool!r})"
        if self.recorded is None and self.replayed is None:
            return head
        return f"{head}\n    recorded: {self.recorded!r}\n    replayed: {self.replayed!r}"


def _broken(session: str, events: list[Event]) -> Divergence | None:
    """The session's broken hash chain, if it is: an edited seeded event names no environment we have,
    and is reported as the edit it is."""
    broken = first_broken_link(events)
    return Divergence(session, broken, "hash chain broken") if broken is not None else None


def _env_of(events: list[Event]) -> str:
    return str(events[0].data.get("env", "?")) if events else "?"


def check_log(
    env: Environment[Any, Any],
    session: str,
    events: list[Event],
    snapshots: Mapping[int, bytes] | None = None,
) -> Divergence | None:
    """Replay one session's log; the first divergence, or None if it reproduces exactly.

    `snapshots` (seq -> stored snapshot) are checked against the fold at their seq too.
    """
    tampered = _broken(session, events)
    if tampered is not None:
        return tampered
    if not events:
        return Divergence(session, 1, "the log is empty")
    try:
        folded = start(env, events[0])
    except Exception as e:  # a row the Task no longer takes, or an `initial` that crashes on it
        return Divergence(session, 1, f"cannot rebuild the initial state: {_why(e)}")
    # The loop every replayed event goes through: kept flat, it is most of replay's own time.
    for event in events[1:]:
        kind = event.kind
        if kind == TOOL_REJECTED:
            reason = _rejection_differs(folded, event)
            if reason is not None:
                return Divergence(session, event.seq, reason, event.data["tool"], event.data["error"])
        try:
            replayed = step(folded, event)
        except Exception as e:
            return _failed(session, event, e)
        if kind == TOOL_CALLED:
            recorded = event.data["observation"]
            # Equal as it stands is equal once recorded; only a mismatch pays for the JSON round trip.
            if replayed != recorded and (replayed := as_recorded(replayed)) != recorded:
                return Divergence(
                    session, event.seq, "observation differs", event.data["tool"], recorded, replayed
                )
        if snapshots and event.seq in snapshots:
            folded_now = orjson.loads(snapshot_body(folded))
            try:
                stored = orjson.loads(snapshots[event.seq])
            except orjson.JSONDecodeError as e:
                return Divergence(session, event.seq, f"stored snapshot is not JSON ({e})")
            if isinstance(stored, dict) and "model" not in stored:  # written before snapshots named it
                del folded_now["model"]
            elif isinstance(stored, dict) and stored["model"] != folded_now["model"]:
                continue  # of the State model before a change: a rebuild ignores it (fold.resume)
            if stored != folded_now and not _same_state(folded, stored, folded_now):
                return Divergence(
                    session, event.seq, "snapshot differs from the fold", None, stored, folded_now
                )
    extra = sorted(set(snapshots) - {e.seq for e in events}) if snapshots else None
    if extra:
        return Divergence(session, extra[0], "snapshot of an event the log does not have")
    return None


def _same_state(folded: Folded, stored: Any, folded_now: dict[str, Any]) -> bool:
    """Whether a stored snapshot that differs from the fold as JSON holds the same state all the same.

    A set in the state is listed in its iteration order, which the hash seed (random per process)
    changes: a snapshot written by the server lists it otherwise than a replay in another process.
    """
    if not isinstance(stored, dict) or {**stored, "state": None} != {**folded_now, "state": None}:
        return False
    try:
        return bool(type(folded.state).model_validate(stored["state"]) == folded.state)
    except (ValueError, KeyError):
        return False


def _why(e: Exception) -> str:
    """What went wrong: our own error's detail, else the exception's type and message."""
    return e.detail if isinstance(e, EnvError) else f"{type(e).__name__}: {e}"


def _failed(session: str, event: Event, e: Exception) -> Divergence:
    """The divergence of an event whose replay raised `e`."""
    tool = event.data.get("tool") if event.kind in (TOOL_CALLED, TOOL_REJECTED) else None
    if isinstance(e, ArgumentsInvalid):
        args = event.data.get("args")
        return Divergence(session, event.seq, "recorded arguments are now rejected", tool, args, e.detail)
    if isinstance(e, EffectDiverged):
        return Divergence(session, event.seq, e.detail, tool, e.recorded, e.replayed)
    if isinstance(e, EnvError):
        return Divergence(session, event.seq, e.detail, tool)
    return Divergence(session, event.seq, f"the tool raised {type(e).__name__}: {e}", tool)


def _rejection_differs(folded: Folded, event: Event) -> str | None:
    """Why a call the log records as refused would not be refused now, or None if it still is."""
    tool, args = event.data["tool"], event.data["args"]
    try:
        result = attempt(folded.env, folded.state, folded.seed, event.seq, event.at, tool, args)
    except EnvError as e:
        return f"a rejected call now fails: {e.detail}"
    if result.error is not None:
        return None
    try:
        make_event(event.prev, event.seq, result.kind, event.at, result.data)
    except Unrecordable:
        return None
    return "a rejected call is now accepted"


@dataclass
class ReplayReport:
    """The outcome of replaying many sessions."""

    sessions: int = 0
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every session replayed exactly."""
        return not self.divergences

    def to_json(self) -> dict[str, Any]:
        """The report as JSON."""
        return {
            "sessions": self.sessions,
            "diverged": len(self.divergences),
            "divergences": [d.to_json() for d in self.divergences],
        }


def replay_logs(
    logs: Iterable[tuple[str, list[Event]]],
    resolve: Resolver,
    snapshots_of: Callable[[str], Mapping[int, bytes]] | None = None,
) -> Iterator[tuple[str, Divergence | None]]:
    """Check every log, one at a time as `logs` gives them; yields each session with its divergence
    (or None). `resolve` maps env names.

    `snapshots_of(session)` gives the session's stored snapshots, to check them too.
    """
    for session, events in logs:
        if not events:
            yield session, Divergence(session, 1, "no such session in the log")
            continue
        env = resolve(_env_of(events))
        if env is None:
            yield (
                session,
                _broken(session, events)
                or Divergence(session, 1, f"environment {_env_of(events)!r} is not available to replay"),
            )
            continue
        yield session, check_log(env, session, events, snapshots_of(session) if snapshots_of else None)


@dataclass(frozen=True)
class Reverified:
    """One verified session scored again: the recorded reward and verdict, and the current verifier's.

    A verdict is what the verifier put in `details["verdict"]` (a judge's "correct"…), if anything;
    a failure is a failed effect (`{"kind": "judge", "error": ...}`), scored 0.
    """

    session: str
    task_index: Any
    old: float
    new: float
    old_version: str
    new_version: str
    old_verdict: Any = None
    new_verdict: Any = None
    new_failure: dict[str, str] | None = None
    old_failure: dict[str, str] | None = None

    @property
    def changed(self) -> bool:
        """True when the reward moved."""
        return self.old != self.new

    @property
    def verdict_changed(self) -> bool:
        """True when the verdict moved (a re-judged session can change its verdict, not its reward)."""
        return bool(self.old_verdict != self.new_verdict)

    def to_json(self) -> dict[str, Any]:
        """As JSON."""
        return {
            "session": self.session,
            "task_index": self.task_index,
            "old": self.old,
            "new": self.new,
            "old_verifier_version": self.old_version,
            "new_verifier_version": self.new_version,
            "old_verdict": self.old_verdict,
            "new_verdict": self.new_verdict,
            "new_failure": self.new_failure,
            "old_failure": self.old_failure,
        }


class NotRebuilt(Exception):
    """The state a session was verified in cannot be rebuilt with the current environment: its log
    no longer replays (`divergence` says where: a tool that now answers otherwise, is gone, or refuses
    the recorded arguments; a row the Task no longer takes)."""

    def __init__(self, divergence: Divergence) -> None:
        super().__init__(divergence.describe())
        self.divergence = divergence


def _rebuild_verified(env: Environment[Any, Any], session: str, events: list[Event], upto: int) -> Folded:
    """The session folded up to (not including) seq `upto`, each call's observation checked against
    the record as replay checks it; NotRebuilt at the first that departs from it."""
    try:
        folded = start(env, events[0])
    except Exception as e:
        raise NotRebuilt(Divergence(session, 1, f"cannot rebuild the initial state: {_why(e)}")) from e
    for event in events[1 : upto - 1]:
        try:
            replayed = step(folded, event)
        except Exception as e:
            raise NotRebuilt(_failed(session, event, e)) from e
        if event.kind == TOOL_CALLED:
            recorded = event.data["observation"]
            if replayed != recorded and (replayed := as_recorded(replayed)) != recorded:
                tool = event.data["tool"]
                raise NotRebuilt(
                    Divergence(session, event.seq, "observation differs", tool, recorded, replayed)
                )
    return folded


def reverify_log(
    env: Environment[Any, Any],
    session: str,
    events: list[Event],
    performers: Mapping[str, Performer] | None = None,
) -> Reverified | None:
    """Score the session's latest verification again with `env`'s verifier (None if never verified).

    The state is rebuilt as replay rebuilds it: NotRebuilt if the log's calls up to the verification
    do not reproduce their recorded observations with `env`'s tools (the state they would give is not
    the one that was verified). Its effects (a judge's reply) come from the verified event's record;
    with `performers` they are performed again instead (re-judging). Raises EffectDiverged if the
    verifier now asks otherwise.
    """
    verified = next((e for e in reversed(events) if e.kind == VERIFIED), None)
    if verified is None:
        return None
    folded = _rebuild_verified(env, session, events, verified.seq)
    effects = None
    if env.effects:
        recorded = verified.data.get("effects", ())
        effects = Effects.live(performers) if performers is not None else Effects.replaying(recorded)
    ctx = Context(folded.seed, verified.seq, verified.at, effects)
    result = env.run_verifier(folded.state, folded.task, verified.data.get("response"), ctx)
    if effects is not None:
        effects.finish()
    recorded, old_failure = verified.data["reward"], verified.data.get("failure")
    if recorded is None:  # a log from before rewards had to be finite: NaN was written as null
        old_failure = {"kind": "reward", "error": "the log records no reward (null)"}
    return Reverified(
        session,
        events[0].data["row"].get("_ng_task_index"),
        0.0 if recorded is None else float(recorded),
        result.reward,
        str(verified.data.get("verifier_version", "")),
        env.verifier_version,
        verified.data.get("details", {}).get("verdict"),
        result.details.get("verdict"),
        result.failure,
        old_failure,
    )


@dataclass
class ReverifyReport:
    """The outcome of re-verifying many sessions."""

    results: list[Reverified]
    errors: list[Divergence]

    @property
    def changed(self) -> list[Reverified]:
        """The sessions whose reward or verdict moved."""
        return [r for r in self.results if r.changed or r.verdict_changed]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON: every change, and the means before and after.

        A score whose scoring failed (a judge down: 0 with a failure) is no sample: each mean leaves
        out its side's failures (`scoring_failed_before` / `_after` count them), as `stats` does.
        """
        n = len(self.results)
        before = [r.old for r in self.results if r.old_failure is None]
        after = [r.new for r in self.results if r.new_failure is None]
        return {
            "verified_sessions": n,
            "changed": sum(r.changed for r in self.results),
            "verdicts_changed": sum(r.verdict_changed for r in self.results),
            "mean_reward_before": sum(before) / len(before) if before else None,
            "mean_reward_after": sum(after) / len(after) if after else None,
            "scoring_failed_before": n - len(before),
            "scoring_failed_after": n - len(after),
            "changes": [r.to_json() for r in self.changed],
            "errors": [e.to_json() for e in self.errors],
        }


def reverify_logs(
    logs: Iterable[tuple[str, list[Event]]],
    resolve: Resolver,
    performers: Mapping[str, Performer] | None = None,
) -> ReverifyReport:
    """Re-verify every verified session among `logs`; one whose environment `resolve` cannot provide
    is an error, as is one whose hash chain is broken, and (re-judging) one whose effect failed now.

    With `performers`, effects (a judge) are performed again rather than taken from the log.
    """
    report = ReverifyReport([], [])
    for session, events in logs:
        if not events:
            continue
        env = resolve(_env_of(events))
        if env is None:
            tampered = _broken(session, events)
            if tampered is not None:
                report.errors.append(tampered)
            elif any(e.kind == VERIFIED for e in events):  # a reward it cannot check: say so, not "none"
                reason = f"environment {_env_of(events)!r} is not available to re-verify (give --env)"
                report.errors.append(Divergence(session, 1, reason))
            continue
        tampered = _broken(session, events)
        if tampered is not None:
            # A reward recomputed from a tampered log would mean nothing: report, do not score.
            report.errors.append(tampered)
            continue
        try:
            result = reverify_log(env, session, events, performers)
        except NotRebuilt as e:  # scored, it would be a state the session never was in
            d = e.divergence
            reason = f"not re-verified, its log does not replay: {d.reason}"
            report.errors.append(Divergence(session, d.seq, reason, d.tool, d.recorded, d.replayed))
            continue
        except EffectDiverged as e:
            seq = next(ev.seq for ev in reversed(events) if ev.kind == VERIFIED)
            reason = f"{e.detail}; re-ask with --rejudge"
            report.errors.append(Divergence(session, seq, reason, None, e.recorded, e.replayed))
            continue
        except Exception as e:  # the verification at that seq cannot be redone
            seq = next(ev.seq for ev in reversed(events) if ev.kind == VERIFIED)
            report.errors.append(Divergence(session, seq, f"cannot re-verify: {type(e).__name__}: {e}"))
            continue
        if result is not None and performers is not None and result.new_failure is not None:
            # A judge that is down now says nothing about the verifier: an error, not a lower reward.
            seq = next(ev.seq for ev in reversed(events) if ev.kind == VERIFIED)
            failure = result.new_failure
            reason = f"re-asking failed ({failure['kind']}_failed: {failure['error']}); not scored"
            report.errors.append(Divergence(session, seq, reason))
            continue
        if result is not None:
            report.results.append(result)
    return report

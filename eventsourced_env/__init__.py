"""eventsourced_env: an environment server for RL of LLM agents that keeps nothing but an event log.

Layers, each importing only those below it:

    events        the envelope and the hash chain (the floor)
    environment   the author's API: Task, State, Args, Context, tools, verifier   (uses events)
    store         the store interface; sqlite_store the SQLite backend           (uses events)
    fold          rebuilding a session from its log                             (uses environment)
    sessions      live sessions: append, then apply; fork; stateless verify     (uses fold, store)
    replay        replay and re-verify stored logs                              (uses fold)
    testing       golden replays and snapshot tests                             (uses replay, sessions)
    snapshot      a consistent, read-only view of a log file                    (uses sqlite_store)
    export, stats exports and figures for analysis                            (use snapshot, metrics)
    parallel      replay and re-verify a log file on every core                 (uses replay, snapshot)
    judge         the OpenAI-compatible judge client, a performer of effects    (uses errors only)
    collector     the garbage collector's tuning while serving                  (uses nothing)
    server, cli   the HTTP server and the command line; nemo, NeMo Gym's launcher (on top)

An environment imports only from this package: the names in `__all__`.
"""

from .conformance import ConformanceError, check_env
from .environment import Args, Context, Effects, Environment, Performer, State, Task, Tool, VerifyResult
from .errors import (
    ArgumentsInvalid,
    BadRequest,
    ConfigError,
    Conflict,
    EffectDiverged,
    EffectFailed,
    EnvError,
    EnvironmentDefinitionError,
    EventNotFound,
    InvalidRequest,
    LogCorrupt,
    PayloadTooLarge,
    SessionClosed,
    SessionNotFound,
    StoreError,
    StoreUnavailable,
    TaskInvalid,
    ToolError,
    ToolFailed,
    ToolNotFound,
)
from .events import Event
from .fold import Folded, fold
from .loader import load_environment
from .sessions import Sessions
from .sqlite_store import SqliteStore
from .store import SessionInfo, Store

__all__ = [
    "Args",
    "ArgumentsInvalid",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "ConformanceError",
    "Context",
    "EffectDiverged",
    "EffectFailed",
    "Effects",
    "EnvError",
    "Environment",
    "EnvironmentDefinitionError",
    "Event",
    "EventNotFound",
    "Folded",
    "InvalidRequest",
    "LogCorrupt",
    "PayloadTooLarge",
    "Performer",
    "SessionClosed",
    "SessionInfo",
    "SessionNotFound",
    "Sessions",
    "SqliteStore",
    "State",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Task",
    "TaskInvalid",
    "Tool",
    "ToolError",
    "ToolFailed",
    "ToolNotFound",
    "VerifyResult",
    "check_env",
    "fold",
    "load_environment",
]

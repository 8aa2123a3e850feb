"""The aiohttp server: NeMo Gym's resources-server routes plus our own, over `Sessions`.

Handlers only parse, call the library and serialize. One middleware carries the session (the
`esenv_session` cookie or the `X-Session-Id` header, in and out, on every reply including errors)
and turns every error into `{"error": code, "detail": message}` with its status. Every route is
also served under NeMo Gym's `/ng-rollout/{rollout_id}` prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import reprlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from . import exactjson
from .collector import rare_gc
from .environment import Environment, Performer, failure_fields
from .errors import BadRequest, ConfigError, EnvError, PayloadTooLarge, ToolError, ToolFailed, Unauthorized
from .metrics import aggregate_metrics
from .sessions import EFFECT_THREADS, SESSION_HEADER, SESSION_ID_PATTERN, Sessions
from .store import Store

__all__ = [
    "COOKIE",
    "HEADER",
    "IDEMPOTENCY_HEADER",
    "SESSIONS",
    "check_exposure",
    "create_app",
    "serve",
]

log = logging.getLogger("eventsourced_env.server")

COOKIE = "esenv_session"
HEADER = SESSION_HEADER
SESSIONS = web.AppKey("sessions", Sessions)
MAX_BODY = web.AppKey("max_body", int)
TOKEN = web.AppKey("token", str)
IDEMPOTENCY_HEADER = "Idempotency-Key"
DEFAULT_MAX_BODY = 16 * 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=exactjson.dumps(data), status=status, content_type="application/json")


def _error(error: EnvError) -> web.Response:
    return _json(error.to_json(), error.status)


@web.middleware
async def _session_and_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except ToolError as e:  # a tool's own are its observations (`run_tool`): one here escaped a tool
        response = _error(ToolFailed(f"ToolError raised outside a tool: {e.detail}"))
    except EnvError as e:
        response = _error(e)
    except web.HTTPException as e:
        code = _HTTP_CODES.get(e.status, "http_error")
        response = _json({"error": code, "detail": f"{e.reason}: {request.method} {request.path}"}, e.status)
        if "Allow" in e.headers:  # a 405 says which methods the path takes (RFC 9110)
            response.headers["Allow"] = e.headers["Allow"]
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        response = _json(
            {"error": "internal_error", "detail": "unexpected server error; see the server log"}, 500
        )
    # A handler that starts a session names it in its reply; otherwise the caller's is echoed.
    session = response.headers.get(HEADER) or _incoming(request)
    # Only a well-formed id is echoed: it is safe in a header as it is (nothing to quote or inject),
    # so the cookie is written directly, without building a Morsel on every reply.
    if session and SESSION_ID_PATTERN.match(session):
        response.headers.add("Set-Cookie", f"{COOKIE}={session}; HttpOnly; Path=/; SameSite=Lax")
        response.headers[HEADER] = session
    return response


def _incoming(request: web.Request) -> str | None:
    """The session the request carries: the `X-Session-Id` header, else the cookie."""
    session = request.headers.get(HEADER)
    if session:
        return session
    # Read our one cookie off the header directly: parsing every cookie costs more than the call.
    for part in request.headers.get("Cookie", "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value.strip('"') or None
    return None


async def _body(request: web.Request, *, exact: bool = False) -> Any:
    """The request's JSON body, or a clear 400/413.

    `exact`: integers past 64 bits as they are (orjson reads them as floats), for a body that is
    recorded or echoed as it came (a seed row, a tool's arguments, a verify body): refused then as
    too big to record, not changed (nor handed to a tool as a float).
    """
    try:
        raw = await request.read()
    except ConnectionResetError as e:  # nobody to answer, and no server error to log
        raise BadRequest("the request body was cut short: the client closed its connection") from e
    except web.HTTPRequestEntityTooLarge as e:
        raise PayloadTooLarge(
            f"request body is over the server's limit of {request.app[MAX_BODY]} bytes"
        ) from e
    if not raw:
        return {}
    try:
        return exactjson.loads(raw) if exact else orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"request body is not valid JSON: {e}") from e
    except ValueError as e:  # an integer of more digits than Python converts (4,300)
        raise BadRequest(f"request body holds a number that cannot be read exactly: {e}") from e


async def _object(request: web.Request, *, exact: bool = False) -> dict[str, Any]:
    body = await _body(request, exact=exact)
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, not {type(body).__name__}")
    return body


def _authorize(request: web.Request, *, own_session_ok: bool) -> None:
    """Let a route that reaches other sessions through only with the server's bearer token (if it has one).

    A client may always read its own session (the one its cookie or header names).
    """
    token = request.app.get(TOKEN)
    if not token:
        return
    if own_session_ok and request.match_info.get("id") == _incoming(request):
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # Header bytes that are not UTF-8 come as surrogates (as a token from argv may): back to bytes.
    given_bytes, token_bytes = (t.encode("utf-8", "surrogateescape") for t in (given, token))
    if scheme.lower() != "bearer" or not hmac.compare_digest(given_bytes, token_bytes):
        raise Unauthorized("this route needs the server's token: send `Authorization: Bearer <token>`")


def _int_query(request: web.Request, name: str) -> int | None:
    """An integer query parameter (None if absent), within what the store can compare with."""
    value = request.query.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"query parameter {name!r} must be an integer, not {value!r}") from None
    if not -(2**63) <= number < 2**63:
        raise BadRequest(f"query parameter {name!r} is out of range (64-bit integers): {value!r}")
    return number


# -- NeMo Gym's routes ----------------------------------------------------------------------------


async def root(request: web.Request) -> web.Response:
    """Liveness probe."""
    return _json({"status": "ok"})


async def seed_session(request: web.Request) -> web.Response:
    """Start a session from a dataset row; the reply sets its cookie."""
    session = await request.app[SESSIONS].seed(await _body(request, exact=True), _incoming(request))
    response = _json({"session_id": session})
    response.headers[HEADER] = session
    return response


async def call_tool(request: web.Request) -> web.Response:
    """Call one tool with the body as its arguments; the reply is the observation."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and (not 0 < len(key) <= 256 or not key.isprintable()):
        raise BadRequest(f"{IDEMPOTENCY_HEADER} must be 1 to 256 printable characters")
    tool = request.match_info.get("tool")  # `/{tool}`; else the tool's own route
    if tool is None:
        tool = request.path[1:]
    elif tool in _GET_ONLY:  # one of our read routes, POSTed: not a tool's call
        raise web.HTTPMethodNotAllowed(request.method, ["GET"])
    body = await _body(request, exact=True)
    observation = await request.app[SESSIONS].call(_incoming(request), tool, body, key)
    return _json(observation)


async def verify(request: web.Request) -> web.Response:
    """Score the session: the request body echoed back with `reward` (and `reward_components`)."""
    body = await _object(request, exact=True)
    session = _incoming(request)
    sessions = request.app[SESSIONS]
    if session is None:
        # No session, as NeMo Gym's `gym eval reverify` sends it: fold the request's own trajectory.
        result, report = await sessions.offload(sessions.verify_stateless, body, scoring=True)
        reply = {**body, "reward": result.reward, "stateless_replay": report}
    else:
        result = await sessions.verify(session, body.get("response"))
        reply = {**body, "reward": result.reward}
    if result.components:
        reply["reward_components"] = result.components
    if result.failure is not None:
        reply.update(failure_fields(result.failure))
    return _json(reply)


async def aggregate(request: web.Request) -> web.Response:
    """NeMo Gym's default metrics over a batch of verify replies."""
    rows = (await _object(request)).get("verify_responses")
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise BadRequest('body must be {"verify_responses": [verify reply, ...]}')
    return _json(aggregate_metrics(rows))


async def reverify_mode(request: web.Request) -> web.Response:
    """`/verify` works without a session: it folds the request's own trajectory from its row."""
    return _json("stateless")


async def close_session(request: web.Request) -> web.Response:
    """Close the request's session: no more calls; its log stays."""
    session = _incoming(request)
    closed = await request.app[SESSIONS].close(session)
    return _json({"session_id": session, "closed": True, "already_closed": not closed})


# -- our own routes -------------------------------------------------------------------------------


async def tools(request: web.Request) -> web.Response:
    """The environment's tools in OpenAI function-tool format."""
    return _json(request.app[SESSIONS].env.tool_schemas())


async def list_sessions(request: web.Request) -> web.Response:
    """Sessions in creation order (`?env=`, `?limit=`, `?offset=`)."""
    _authorize(request, own_session_ok=False)
    limit = _int_query(request, "limit")
    offset = _int_query(request, "offset")
    limit, offset = 1000 if limit is None else limit, 0 if offset is None else offset
    if limit < 1 or offset < 0:
        raise BadRequest(f"limit must be 1 or more and offset 0 or more, not {limit} and {offset}")
    env = request.query.get("env") or None  # `?env=`, empty: no filter, whatever the backend
    infos = await request.app[SESSIONS].store.sessions(env, limit, offset)
    return _json([info.to_json() for info in infos])


async def session_info(request: web.Request) -> web.Response:
    """One session's summary."""
    _authorize(request, own_session_ok=True)
    info = await request.app[SESSIONS].info(request.match_info["id"])
    return _json(info.to_json())


async def session_events(request: web.Request) -> web.Response:
    """A session's events (`?upto=N` for a prefix)."""
    _authorize(request, own_session_ok=True)
    events = await request.app[SESSIONS].events(request.match_info["id"], _int_query(request, "upto"))
    return _json([event.to_json() for event in events])


async def session_state(request: web.Request) -> web.Response:
    """A session's state after event `?at=N` (the latest by default)."""
    _authorize(request, own_session_ok=True)
    seq, state = await request.app[SESSIONS].state_at(request.match_info["id"], _int_query(request, "at"))
    return _json({"seq": seq, "state": state})


async def fork_session(request: web.Request) -> web.Response:
    """Fork a session at seq `at` into `count` new sessions; the reply sets the first one's cookie."""
    _authorize(request, own_session_ok=False)
    body = await _object(request)
    unknown = sorted(set(body) - {"at", "count"})
    if unknown:
        raise BadRequest(f"a fork takes 'at' and 'count', not {', '.join(map(repr, unknown))}")
    at, count = body.get("at"), body.get("count")
    for name, value in (("at", at), ("count", count)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise BadRequest(f"{name!r} must be an integer, not {reprlib.repr(value)}")
    parent = request.match_info["id"]
    forks = await request.app[SESSIONS].fork(parent, at, 1 if count is None else count, _incoming(request))
    response = _json({"parent": parent, "sessions": forks})
    response.headers[HEADER] = forks[0]
    return response


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/", root),
    ("GET", "/tools", tools),
    ("GET", "/reverify_mode", reverify_mode),
    ("POST", "/seed_session", seed_session),
    ("POST", "/verify", verify),
    ("POST", "/aggregate_metrics", aggregate),
    ("POST", "/close_session", close_session),
    ("GET", "/sessions", list_sessions),
    ("GET", "/sessions/{id}", session_info),
    ("GET", "/sessions/{id}/events", session_events),
    ("GET", "/sessions/{id}/state", session_state),
    ("POST", "/sessions/{id}/fork", fork_session),
    ("POST", "/{tool}", call_tool),  # last: every fixed route wins over a tool name
]
#: The one-segment routes that only GET takes: a POST to one reaches `/{tool}`, and is a 405 there.
_GET_ONLY = frozenset(path[1:] for method, path, _ in ROUTES if method == "GET" and path.count("/") == 1)


def create_app(
    env: Environment[Any, Any],
    store: Store,
    *,
    max_body: int = DEFAULT_MAX_BODY,
    cache_size: int = 10_000,
    token: str | None = None,
    idle_ttl: float | None = None,
    max_events: int | None = None,
    max_live: int | None = None,
    snapshot_every: int | None = 1000,
    performers: Mapping[str, Performer] | None = None,
    effect_threads: int = EFFECT_THREADS,
) -> web.Application:
    """The server for `env` over `store`; the app owns the store and closes it on cleanup.

    `token`: the bearer token the routes that reach other sessions require (none: open).
    `idle_ttl`: seconds after which an unused session leaves memory (its log stays).
    `max_events` / `max_live`: caps on events per session and on sessions held in memory.
    `snapshot_every`: keep a state snapshot every N events of a session (None: never), so a cold
    rebuild folds at most N events.
    `performers`: who performs each kind of external effect the environment asks for (e.g. a judge).
    `effect_threads`: threads for tool calls, and as many for verifications, of an environment with
    effects: at least as many as the effects that may be in flight (a judge's concurrency).
    """
    app = web.Application(middlewares=[_session_and_errors], client_max_size=max_body)
    sessions = Sessions(
        env,
        store,
        cache_size=cache_size,
        idle_ttl=idle_ttl,
        max_events=max_events,
        max_live=max_live,
        snapshot_every=snapshot_every,
        performers=performers,
        effect_threads=effect_threads,
    )
    app[SESSIONS] = sessions
    app[MAX_BODY] = max_body
    if token:
        app[TOKEN] = token
    if idle_ttl is not None:

        async def evict_idle(app: web.Application) -> AsyncIterator[None]:
            async def loop() -> None:
                while True:
                    await asyncio.sleep(min(idle_ttl, 30.0) / 2)
                    sessions.evict_idle()

            task = asyncio.create_task(loop())
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

        app.cleanup_ctx.append(evict_idle)
    for method, path, handler in ROUTES:
        if path == "/{tool}":  # each tool also by its own path (never a reserved one): one lookup
            for name in env.tools:
                app.router.add_route(method, "/" + name, handler)
        app.router.add_route(method, path, handler)
        app.router.add_route(method, "/ng-rollout/{rollout_id}" + path, handler)

    async def close_store(app: web.Application) -> None:
        sessions.shutdown()
        await store.close()

    app.on_cleanup.append(close_store)
    return app


def check_exposure(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to listen beyond loopback without a token, unless told `insecure`."""
    if token or insecure or host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ConfigError(
        f"refusing to listen on {host!r} without a token: anyone who can reach it could read and fork every "
        "session. Give --token (or ESENV_TOKEN), or --insecure if you mean it"
    )


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard one: each rollout holds a connection, and a
    shell's soft limit (1,024 on many systems) is reached long before the hard one. Out of files,
    the server could neither accept connections nor start its syncer (every write a 503)."""
    try:
        import resource
    except ImportError:  # not on this system
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(
    app: web.Application,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    announce: Callable[[str], None] = print,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Serve `app` until SIGINT or SIGTERM, then drain in-flight calls and flush the log.

    `on_stop` runs when the signal comes, before the drain (the CLI closes its judge there, so the
    drain waits for judge attempts in flight, not for their retries).

    The cyclic garbage collector runs rarely while serving (`rare_gc`); the soft limit on open
    files is lifted to the hard one (`raise_open_files_limit`).
    """
    raise_open_files_limit()
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    with rare_gc():
        try:  # a port that cannot be bound still closes the app (and its store)
            site = web.TCPSite(runner, host, port)
            await site.start()
            bound_host, bound_port = runner.addresses[0][:2]
            announce(f"http://{bound_host}:{bound_port}")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            if on_stop is not None:
                on_stop()
        finally:
            await runner.cleanup()

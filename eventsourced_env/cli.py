"""The `esenv` command line: a thin adapter over the library (testable as `main(argv) -> int`)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson
from click.core import ParameterSource

from .environment import Environment, Performer
from .errors import ConfigError, EnvError, StoreUnavailable
from .export import FORMATS, Progress, export, output_paths, staged
from .judge import API_PATHS, JudgeClient, JudgeConfig
from .loader import bundled, load_environment
from .nemo import ServerSettings, find_server, from_environment, read_config
from .parallel import default_jobs, replay_file, reverify_file
from .replay import ReplayReport
from .server import DEFAULT_MAX_BODY, check_exposure, create_app, serve
from .sessions import EFFECT_THREADS
from .snapshot import STATUSES, Filters, Snapshot, parse_time
from .sqlite_store import SQLITE_FILES, SqliteStore
from .stats import format_stats, stats

__all__ = ["cli", "main", "run"]

DEFAULT_DB = "esenv.db"
_db_option = click.option(
    "--db",
    default=lambda: os.environ.get("ESENV_DB", DEFAULT_DB),
    show_default=f"$ESENV_DB or {DEFAULT_DB}",
    help="The SQLite event log.",
)


_JUDGE_OPTIONS = {
    "judge_base_url": "base_url",
    "judge_model": "model",
    "judge_api": "api",
    "judge_timeout": "timeout",
    "judge_retries": "max_retries",
    "judge_concurrency": "max_concurrency",
}


def _judge_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options that say where the LLM judge is (its API key only from the environment, never argv)."""
    for option in reversed(
        [
            click.option(
                "--judge-base-url",
                help="The judge's OpenAI-style base URL (http://host/v1). "
                "[env: ESENV_JUDGE_BASE_URL, else OPENAI_BASE_URL]",
            ),
            click.option(
                "--judge-model",
                help="The judge model: naming one turns the judge on. [env: ESENV_JUDGE_MODEL]",
            ),
            click.option(
                "--judge-api",
                type=click.Choice(list(API_PATHS)),
                help="chat (/chat/completions) or responses. [env: ESENV_JUDGE_API; default: chat]",
            ),
            click.option(
                "--judge-timeout",
                type=click.FloatRange(min=0.1),
                help="Seconds per judge request. [default: 60]",
            ),
            click.option(
                "--judge-retries",
                type=click.IntRange(0),
                help="Retries on 429, 5xx, timeouts and malformed replies. [default: 4]",
            ),
            click.option(
                "--judge-concurrency",
                type=click.IntRange(1),
                help="Judge requests in flight at most. [default: 16]",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _judge(given: dict[str, Any]) -> JudgeClient | None:
    """The judge the options (and ESENV_JUDGE_* / OPENAI_* variables) describe, if any."""
    config = JudgeConfig.resolve(given)
    return JudgeClient(config) if config is not None else None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="eventsourced-env")
def cli() -> None:
    """eventsourced_env: an RL environment server that keeps nothing but an append-only event log."""


@cli.command(name="serve")
@click.argument("env", required=False)
@_db_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free)."
)
@click.option(
    "--max-body",
    default=DEFAULT_MAX_BODY,
    show_default=True,
    type=click.IntRange(1),
    help="Largest request body, bytes.",
)
@click.option(
    "--cache-size",
    default=10_000,
    show_default=True,
    type=click.IntRange(1),
    help="Folded sessions kept in memory.",
)
@click.option(
    "--token",
    default=None,
    envvar="ESENV_TOKEN",
    help="Bearer token for the routes that reach other sessions (list, read, fork). [env: ESENV_TOKEN]",
)
@click.option("--insecure", is_flag=True, help="Allow listening beyond loopback without a token.")
@click.option(
    "--idle-ttl", default=None, type=click.FloatRange(min=0.1), help="Evict sessions unused this long (s)."
)
@click.option("--max-events", default=None, type=click.IntRange(2), help="Cap on events per session.")
@click.option("--max-live", default=None, type=click.IntRange(1), help="Cap on sessions held in memory.")
@click.option(
    "--snapshot-every",
    default=1000,
    show_default=True,
    type=click.IntRange(0),
    help="Snapshot a session's state every N events, so a cold rebuild folds at most N (0: never).",
)
@click.option(
    "--sync",
    "synchronous",
    default="FULL",
    show_default=True,
    type=click.Choice(["FULL", "NORMAL"], case_sensitive=False),
    help="SQLite synchronous mode: FULL survives power loss, NORMAL survives a process crash.",
)
@_judge_options
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="A NeMo Gym YAML config: its resources server's env, db, judge and serve options (cache_size…).",
)
@click.option("--instance", help="Which server instance of --config (needed if it has several).")
@click.option(
    "--nemo-gym",
    is_flag=True,
    help="Read the config as NeMo Gym's runner passes it: NEMO_GYM_CONFIG_DICT and NEMO_GYM_CONFIG_PATH.",
)
def serve_command(
    env: str | None,
    db: str,
    host: str,
    port: int,
    max_body: int,
    cache_size: int,
    token: str | None,
    insecure: bool,
    idle_ttl: float | None,
    max_events: int | None,
    max_live: int | None,
    snapshot_every: int,
    synchronous: str,
    config_file: str | None,
    instance: str | None,
    nemo_gym: bool,
    **judge_options: Any,
) -> None:
    """Serve ENV over HTTP (NeMo Gym's resources-server protocol), logging every call to --db.

    ENV is a bundled environment (e.g. `counter`), `package.module:attribute`, or a `.py` file.
    Binds 127.0.0.1 by default; beyond loopback it needs --token (or --insecure). With --config
    (or --nemo-gym), the YAML's values stand in for the defaults; options given here still win.
    An environment that asks a judge uses the one --judge-* (or ESENV_JUDGE_*) names, if any.

    \b
    Example:
        esenv serve counter --db runs.db --port 8000
        esenv serve --config environments/qa_judge/configs/qa_judge.yaml \\
            --judge-base-url http://127.0.0.1:9000/v1 --judge-model m
    """
    judge_given = {key: judge_options[option] for option, key in _JUDGE_OPTIONS.items()}
    if nemo_gym and config_file is not None:
        raise click.UsageError("--nemo-gym reads NeMo Gym's own variables; give it or --config, not both")
    if instance is not None and config_file is None:
        raise click.UsageError("--instance names a server of --config FILE.yaml; give that file too")
    if config_file is not None or nemo_gym:
        settings = (
            from_environment(os.environ)
            if nemo_gym
            else find_server(read_config(Path(config_file or "").read_text()), instance)
        )
        for warning in settings.warnings:
            click.echo(f"esenv: warning: {warning}", err=True)
        chosen = _from_config(settings)
        env, host, port, db, token, insecure = (
            chosen[k] for k in ("env", "host", "port", "db", "token", "insecure")
        )
        max_body, cache_size, idle_ttl = chosen["max_body"], chosen["cache_size"], chosen["idle_ttl"]
        max_events, max_live = chosen["max_events"], chosen["max_live"]
        snapshot_every, synchronous = chosen["snapshot_every"], chosen["synchronous"]
        judge_given = {**settings.judge, **{k: v for k, v in judge_given.items() if v is not None}}
    if env is None:
        raise click.UsageError("give ENV (or --config FILE.yaml)")
    check_exposure(host, token, insecure)
    environment = load_environment(env)
    environment.check()  # before the log is made: an environment that cannot serve leaves no file
    judge = _judge(judge_given) if "judge" in environment.effects else None
    performers: dict[str, Performer] = judge.performers() if judge is not None else {}
    new_log = db != ":memory:" and not Path(db).exists()

    def remove_new_log() -> None:
        """Leave no new, empty log behind when serve stops before it listens."""
        if new_log:
            for suffix in SQLITE_FILES:
                Path(f"{db}{suffix}").unlink(missing_ok=True)

    try:
        store = SqliteStore(db, synchronous=synchronous)
    except BaseException:  # no room for it, say
        remove_new_log()
        raise

    listening: list[str] = []  # once bound, the log may hold calls: it stays whatever happens

    def announce(url: str) -> None:
        listening.append(url)
        click.echo(f"esenv: serving {environment.name!r} on {url} (event log: {db})", err=True)
        if judge is not None:
            click.echo(f"esenv: judge {judge.config.model!r} at {judge.config.base_url}", err=True)
        elif environment.effects:
            click.echo(f"esenv: no judge configured; {environment.name!r} scores without one", err=True)
        click.echo(url)
        sys.stdout.flush()

    async def run() -> None:
        try:
            app = create_app(
                environment,
                store,
                max_body=max_body,
                cache_size=cache_size,
                token=token,
                idle_ttl=idle_ttl,
                max_events=max_events,
                max_live=max_live,
                snapshot_every=snapshot_every or None,
                performers=performers,
                # Enough threads for every judge call allowed in flight (more only wait on its slots).
                effect_threads=max(EFFECT_THREADS, judge.config.max_concurrency if judge is not None else 0),
            )
        except BaseException:  # the app owns the store once made; until then, it is closed here
            await store.close()
            raise
        await serve(app, host=host, port=port, announce=announce, on_stop=judge.close if judge else None)

    try:
        asyncio.run(run())
    except BaseException:  # it never listened (a port in use, an unknown host…): leave no empty log behind
        if not listening:
            remove_new_log()
        raise


#: A config key whose `serve` parameter is named otherwise.
_PARAMETER_OF = {"sync": "synchronous"}


def _from_config(settings: ServerSettings) -> dict[str, Any]:
    """Every `serve` parameter: the command line's value where given there, else the config's, else
    the default. A config's option is checked and converted by the option's own type, as the command
    line's is (ConfigError naming the key if it is wrong)."""
    ctx = click.get_current_context()
    parameters = {p.name: p for p in ctx.command.params}
    chosen = dict(ctx.params)

    def given_here(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    for name in ("env", "host", "port", "db", "token"):  # checked as `find_server` read them
        value = getattr(settings, name)
        if value is not None and not given_here(name):
            chosen[name] = value
    for key, value in settings.options.items():
        parameter = parameters[_PARAMETER_OF.get(key, key)]
        assert parameter.name is not None
        if given_here(parameter.name):
            continue
        flag = bool(getattr(parameter, "is_flag", False))
        try:
            if flag and not isinstance(value, bool):
                raise click.BadParameter(f"must be true or false, not {value!r}")
            if isinstance(value, bool) and not flag:
                raise click.BadParameter(f"{value!r} is not a valid {parameter.type.name}")
            chosen[parameter.name] = parameter.type.convert(value, parameter, ctx)
        except click.BadParameter as e:
            raise ConfigError(f"{settings.instance}: `{key}`: {e.message}") from e
    return chosen


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


@cli.command(name="sessions")
@_db_option
@click.option("--env", "env_name", default=None, help="Only sessions of this environment.")
@click.option(
    "--limit", default=1000, show_default=True, type=click.IntRange(1, 2**63 - 1), help="At most this many."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of a table.")
def sessions_command(db: str, env_name: str | None, limit: int, as_json: bool) -> None:
    """List the sessions in an event log, oldest first.

    \b
    Example:
        esenv sessions --db runs.db --env counter --json
    """
    with Snapshot(db) as view:  # read-only: a file that is not a log is refused, never written
        infos = view.infos(env_name, limit)
    if as_json:
        for info in infos:
            click.echo(orjson.dumps(info.to_json()))
        return
    id_width = max((len(info.id) for info in infos), default=len("session"))
    click.echo(f"{'session':<{id_width}} {'env':<12} {'events':>6}  {'last':<13} {'created (UTC)':<19}")
    for info in infos:
        when = _when(info.created_at)
        click.echo(f"{info.id:<{id_width}} {info.env:<12} {info.last_seq:>6}  {info.last_kind:<13} {when}")
    click.echo(f"{len(infos)} session(s)", err=True)


def _resolver(spec: str | None) -> Callable[[str], Environment[Any, Any] | None]:
    """Environment by name: `spec`'s if given (then only its sessions), else the bundled one."""
    if spec is not None:
        chosen = load_environment(spec)
        return lambda name: chosen if name == chosen.name else None
    available = set(bundled())
    loaded: dict[str, Environment[Any, Any]] = {}

    def resolve(name: str) -> Environment[Any, Any] | None:
        if name not in available:
            return None
        if name not in loaded:
            loaded[name] = load_environment(name)
        return loaded[name]

    return resolve


def _session_ids(db: str, sessions: tuple[str, ...], env_spec: str | None) -> list[str]:
    """The sessions to visit, oldest first: those named, else every session of the log, or of
    `env_spec`'s environment. A named one the log lacks, or of another environment than `env_spec`'s,
    is a mistake in the command (ConfigError, exit 2)."""
    env = load_environment(env_spec).name if env_spec else None
    with Snapshot(db) as view:
        view.require(sessions)
        found = view.ids(Filters(env=env, sessions=sessions))
    other = set(sessions) - set(found)
    if other:
        raise ConfigError(f"session {min(other)!r} is not one of environment {env!r}'s (--env {env_spec})")
    return found


@contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[int], None] | None]:
    """A progress bar's `update` on a terminal (None elsewhere)."""
    if not sys.stderr.isatty():
        yield None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr) as bar:
        yield bar.update


_jobs_option = click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=0),
    default=0,
    show_default="0: one per core",
    help="Worker processes; sessions are checked in parallel, reported in order.",
)


@cli.command(name="replay")
@click.argument("sessions", nargs=-1)
@_db_option
@click.option(
    "--env", "env_spec", default=None, help="Only this environment's sessions, with this implementation."
)
@click.option("--json", "as_json", is_flag=True, help="A JSON report instead of text.")
@_jobs_option
@click.pass_context
def replay_command(
    ctx: click.Context, sessions: tuple[str, ...], db: str, env_spec: str | None, as_json: bool, jobs: int
) -> None:
    """Rebuild sessions from the log and check every observation and the hash chain.

    Re-runs every recorded tool call on the rebuilt state and compares it with the record;
    exits 1 and names, per diverging session, the first diverging seq, the tool, and the
    recorded vs replayed observation (or where the hash chain breaks). All sessions by default.

    \b
    Example:
        esenv replay --db runs.db
        esenv replay --db runs.db SESSION_ID --json
    """
    ids = _session_ids(db, sessions, env_spec)
    report = ReplayReport()
    with _progress(len(ids), "replaying") as progress:
        for _, divergence in replay_file(db, ids, _resolver(env_spec), jobs or default_jobs(), progress):
            report.sessions += 1
            if divergence is not None:
                report.divergences.append(divergence)
                if not as_json:
                    click.echo(divergence.describe())
    if as_json:
        click.echo(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2))
    elif report.ok:
        click.echo(f"replayed {report.sessions} session(s): every observation and hash matches")
    else:
        click.echo(f"{len(report.divergences)} of {report.sessions} session(s) diverged")
    ctx.exit(0 if report.ok else 1)


@cli.command(name="reverify")
@_db_option
@click.option(
    "--env", "env_spec", default=None, help="Only this environment's sessions, with this implementation."
)
@click.option("--json", "as_json", is_flag=True, help="A JSON report instead of text.")
@click.option("--fail-on-change", is_flag=True, help="Exit 1 if any reward changed.")
@click.option(
    "--rejudge",
    is_flag=True,
    help="Ask the judge again rather than reuse recorded judgments (needs a judge; one process).",
)
@_jobs_option
@_judge_options
@click.pass_context
def reverify_command(
    ctx: click.Context,
    /,
    db: str,
    env_spec: str | None,
    as_json: bool,
    fail_on_change: bool,
    rejudge: bool,
    jobs: int,
    **judge_options: Any,
) -> None:
    """Score every verified session again with the current verifier; report each reward that moved.

    The log is only read: nothing is appended. Recorded judgments are reused, so no judge is
    called; with --rejudge the judge is asked again and old vs new verdicts are reported.

    \b
    Example:
        esenv reverify --db runs.db --env counter --fail-on-change
        esenv reverify --db runs.db --env my_env.py --json
        esenv reverify --db runs.db --rejudge --judge-base-url http://127.0.0.1:9000/v1 --judge-model m
    """
    performers, threads, judge = None, 1, None
    if rejudge:
        judge = _judge({key: judge_options[option] for option, key in _JUDGE_OPTIONS.items()})
        if judge is None:
            raise ConfigError(
                "--rejudge needs a judge: give --judge-model, --judge-base-url (or ESENV_JUDGE_*)"
            )
        performers, threads = judge.performers(), judge.config.max_concurrency
    ids = _session_ids(db, (), env_spec)
    try:
        with _progress(len(ids), "re-verifying") as progress:
            report = reverify_file(
                db, ids, _resolver(env_spec), performers, jobs or default_jobs(), progress, threads=threads
            )
    finally:  # interrupted: the judge calls in flight end with their attempt, not after their retries
        if judge is not None:
            judge.close()
    summary = report.to_json()
    if as_json:
        click.echo(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
    else:
        for r in report.changed:
            verdict = f"  verdict {r.old_verdict} -> {r.new_verdict}" if r.verdict_changed else ""
            failure = f"  [{r.new_failure['kind']}_failed: {r.new_failure['error']}]" if r.new_failure else ""
            if r.old_failure:  # the old 0 was no judgement: scoring had failed
                failure += f"  [was {r.old_failure.get('kind')}_failed: {r.old_failure.get('error')}]"
            click.echo(
                f"{r.session}  task {r.task_index}  {r.old:g} -> {r.new:g}{verdict}  "
                f"(verifier {r.old_version} -> {r.new_version}){failure}"
            )
        for error in report.errors:
            click.echo(error.describe(), err=True)
        if summary["verified_sessions"]:
            before, after = (
                "n/a" if mean is None else f"{mean:.4g}"
                for mean in (summary["mean_reward_before"], summary["mean_reward_after"])
            )
            failed = [
                f"{summary[key]} {when}"
                for key, when in (("scoring_failed_before", "before"), ("scoring_failed_after", "now"))
                if summary[key]
            ]
            unscored = f" (scoring failed: {', '.join(failed)}; left out of the means)" if failed else ""
            # The sessions that could not be scored are in no figure: say so beside them.
            errors = f"; {len(report.errors)} session(s) not re-verified, above" if report.errors else ""
            click.echo(
                f"{summary['verified_sessions']} verified session(s), {summary['changed']} reward(s) "
                f"changed; mean reward {before} -> {after}{unscored}{errors}"
            )
        elif report.errors:  # there were sessions to score; none could be
            click.echo(f"no session re-verified; {len(report.errors)} error(s) above")
        else:
            click.echo("no verified sessions")
    ctx.exit(1 if (fail_on_change and report.changed) or report.errors else 0)


@cli.command(name="save-replay")
@click.argument("session")
@_db_option
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, writable=True), help="The replay file (JSONL)."
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def save_replay_command(session: str, db: str, out: str, force: bool) -> None:
    """Save one session's log as a self-contained golden replay file (one event per line).

    \b
    Example:
        esenv save-replay SESSION_ID --db runs.db --out replays/counter/success.jsonl
    """
    from .testing import write_replay

    # As an export's: never over the log itself, over another file only with --force, and
    # written beside it then renamed, so an interrupted save leaves no half-written replay.
    files = output_paths("jsonl", out, force=force, db=db)
    with Snapshot(db) as view:
        view.require((session,))
        events = view.events(session)
    with staged(files) as temps:
        write_replay(temps[0], events)
    click.echo(f"saved {len(events)} events of {session} to {out}")


@cli.command(name="envs")
def envs_command() -> None:
    """List the bundled environments and their tools.

    \b
    Example:
        esenv envs
    """
    for name in bundled():
        environment = load_environment(name)
        click.echo(f"{name} (version {environment.version}): {', '.join(environment.tools)}")


def _time(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    try:
        return None if value is None else parse_time(value)
    except ConfigError as e:
        raise click.BadParameter(e.detail) from None


@cli.command(name="export")
@_db_option
@click.option("--format", "fmt", required=True, type=click.Choice(FORMATS), help="What to write.")
@click.option(
    "--out", required=True, help="The file to write (a folder for csv and parquet: sessions.* and events.*)."
)
@click.option("--env", "env_name", default=None, help="Only sessions of this environment.")
@click.option("--session", "session_ids", multiple=True, help="Only this session (repeatable).")
@click.option("--since", default=None, callback=_time, help="Only sessions created at or after (ISO, UTC).")
@click.option("--until", default=None, callback=_time, help="Only sessions created before (ISO, UTC).")
@click.option(
    "--status",
    default=None,
    type=click.Choice(STATUSES),
    help="closed: has a closed event; verified: verified, not closed; open: neither.",
)
@click.option("--verified-only", is_flag=True, help="Only sessions verified at least once (closed or not).")
@click.option("--force", is_flag=True, help="Write over an existing output file.")
def export_command(
    db: str,
    fmt: str,
    out: str,
    env_name: str | None,
    session_ids: tuple[str, ...],
    since: float | None,
    until: float | None,
    status: str | None,
    verified_only: bool,
    force: bool,
) -> None:
    """Export sessions of an event log for analysis, from one consistent snapshot.

    Formats: jsonl (one event a line), csv and parquet (sessions and events tables), sqlite (a
    filtered copy of the log) and nemo-rollouts (one line per verified session: the seed row with
    the session's session_seed, response and reward). The log is only read: a server may keep writing to it.

    \b
    Example:
        esenv export --db runs.db --format parquet --out runs/ --env counter --verified-only
    """
    filters = Filters(
        env=env_name,
        sessions=session_ids,
        since=since,
        until=until,
        status=status,
        verified_only=verified_only,
    )
    progress = None
    if sys.stderr.isatty():

        def progress(total: int) -> AbstractContextManager[Progress]:
            return click.progressbar(length=total, label="exporting", file=sys.stderr)

    result = export(db, fmt, out, filters, force=force, progress=progress)
    failed = f" ({result.failed} whose scoring failed to {result.files[1]})" if fmt == "nemo-rollouts" else ""
    click.echo(
        f"exported {result.sessions} session(s), {result.events} event(s) as {fmt} to {out}{failed}"
        f" in {result.seconds:.2f} s",
        err=True,
    )
    if result.forks:
        click.echo(
            f"warning: {result.forks} of the rollouts are forks, which keep their parent's _ng_task_index and"
            " _ng_rollout_index: NeMo Gym's aggregate metrics and reward profiling refuse a file in which two"
            " rollouts share both (give --session to choose)",
            err=True,
        )


@cli.command(name="stats")
@_db_option
@click.option("--env", "env_name", default=None, help="Only this environment.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def stats_command(db: str, env_name: str | None, as_json: bool) -> None:
    """Per environment: sessions, rewards, pass@k per task group, tool calls, rejections, latency.

    pass@k counts a rollout as a success when its reward is at least 1.0.

    \b
    Example:
        esenv stats --db runs.db --env counter --json
    """
    report = stats(db, env_name)
    click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2) if as_json else format_stats(report))


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with `argv`; returns the exit code instead of exiting."""
    try:
        code = cli.main(args=argv, prog_name="esenv", standalone_mode=False)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:  # Ctrl-C
        click.echo("Aborted!", err=True)
        return 130
    except StoreUnavailable as e:  # the system refused the log (locked, an I/O error): as for OSError
        click.echo(f"Error: {e.detail}", err=True)
        return 1
    except EnvError as e:
        click.echo(f"Error: {e.detail}", err=True)
        return 2
    except OSError as e:  # the system refused: a port in use, an unknown host, a path not writable
        click.echo(f"Error: {e}", err=True)
        return 1
    return code if isinstance(code, int) else 0


def _terminate(signum: int, frame: object) -> None:
    sys.exit(128 + signum)


def run() -> None:
    """The console-script entry point. SIGTERM ends a command as Ctrl-C does: what it was writing
    is removed, not left half-written (`serve` drains and stops on its own handlers)."""
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(main())

"""Running under NeMo Gym's own launcher: its YAML config, and the entrypoint its runner starts.

NeMo Gym's `ng_run` merges the YAML files it is given into one config whose top-level keys are
server instances, `<instance>: {resources_servers: {<name>: {entrypoint: app.py, domain, host,
port, ...}}}`, fills in each server's `host` and `port`, then starts every server as
`python <entrypoint>` inside its folder with the whole config as YAML in `NEMO_GYM_CONFIG_DICT`
and the server's own instance name in `NEMO_GYM_CONFIG_PATH`. Each bundled environment ships such
a YAML (`environments/<name>/configs/<name>.yaml`) and an `app.py` that calls `main()` here.

Our keys in a server's block, beside NeMo Gym's: `env` (which environment; default: the server's
name), `db` (the SQLite event log), `token`, `judge` (`base_url`, `model`, `api`, `api_key`,
`timeout`, `max_retries`, `max_concurrency`; unset ones come from ESENV_JUDGE_* / OPENAI_*), and
`esenv serve`'s other options by name (`SERVE_OPTIONS`: `cache_size`, `max_live`, `sync`…; `cli`
checks them as it checks the command line). A key neither NeMo Gym nor we read is named in a
warning at start, a typo being likelier than a key for someone else. `esenv serve --config
FILE.yaml` reads the same file.

Sits on top, beside `cli` (whose `serve` it runs).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import ConfigError
from .judge import check_settings

__all__ = [
    "CONFIG_DICT_VAR",
    "CONFIG_PATH_VAR",
    "NEMO_GYM_KEYS",
    "SERVE_OPTIONS",
    "ServerSettings",
    "find_server",
    "main",
    "read_config",
]

CONFIG_DICT_VAR = "NEMO_GYM_CONFIG_DICT"
CONFIG_PATH_VAR = "NEMO_GYM_CONFIG_PATH"
_SERVER_TYPE = "resources_servers"

#: The keys of a resources server's block that NeMo Gym itself reads or fills in (0.4.0's config
#: models, and what every config it ships puts there): not ours, and not unknown either.
NEMO_GYM_KEYS = frozenset(
    {"entrypoint", "domain", "verified", "verified_url", "description", "value", "host", "port"}
    | {"num_workers", "datasets", "name"}
)
#: Our keys that `find_server` reads itself.
_SETTINGS = ("env", "host", "port", "db", "token", "judge")
#: `esenv serve`'s other options a block may set, by the option's name with underscores.
SERVE_OPTIONS = (
    "max_body",
    "cache_size",
    "idle_ttl",
    "max_events",
    "max_live",
    "snapshot_every",
    "sync",
    "insecure",
)


@dataclass(frozen=True)
class ServerSettings:
    """One resources server's block of a NeMo Gym config, as `esenv serve` uses it."""

    instance: str
    name: str
    env: str
    host: str | None = None
    port: int | None = None
    db: str | None = None
    token: str | None = None
    judge: dict[str, Any] = field(default_factory=dict)
    #: `esenv serve` options set in the block (SERVE_OPTIONS), unchecked: `cli` checks them.
    options: dict[str, Any] = field(default_factory=dict)
    #: What the block asks that is ignored, to say at start.
    warnings: tuple[str, ...] = ()


def read_config(text: str) -> dict[str, Any]:
    """A NeMo Gym config (YAML text) as a dict, or ConfigError."""
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"the NeMo Gym config is not valid YAML: {_one_line(e)}") from e
    if not isinstance(config, dict):
        raise ConfigError("the NeMo Gym config must be a YAML mapping of server instances")
    return config


def _one_line(e: yaml.YAMLError) -> str:
    """A YAML error as one line, where it is first (PyYAML's spans several, with the text quoted)."""
    if not isinstance(e, yaml.MarkedYAMLError) or e.problem is None or e.problem_mark is None:
        return " ".join(str(e).split())
    problem = f"line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}: {e.problem}"
    if e.context:
        begun = e.context_mark
        since = f" from line {begun.line + 1}, column {begun.column + 1}" if begun is not None else ""
        problem += f" ({e.context}{since})"
    return problem


def _servers(config: Mapping[str, Any]) -> dict[str, tuple[str, dict[str, Any]]]:
    """instance -> (server name, its block), for every resources server in the config."""
    found = {}
    for instance, block in config.items():
        servers = block.get(_SERVER_TYPE) if isinstance(block, dict) else None
        if isinstance(servers, dict) and len(servers) == 1:
            [(name, settings)] = servers.items()
            if isinstance(settings, dict):
                found[str(instance)] = (str(name), settings)
    return found


def find_server(config: Mapping[str, Any], instance: str | None = None) -> ServerSettings:
    """The settings of resources server `instance` (the only one, if None), or ConfigError."""
    servers = _servers(config)
    if instance is None:
        if len(servers) != 1:
            raise ConfigError(
                f"the config has {len(servers)} resources servers ({', '.join(servers) or 'none'}); "
                f"name one ({CONFIG_PATH_VAR} or --instance)"
            )
        [instance] = servers
    if instance not in servers:
        raise ConfigError(
            f"no resources server instance {instance!r} in the config; it has: {', '.join(servers) or 'none'}"
        )
    name, block = servers[instance]
    judge = block.get("judge") or {}
    port = block.get("port")
    if not isinstance(judge, dict):
        raise ConfigError(f"{instance}: `judge` must be a mapping, not {judge!r}")
    check_settings(judge)  # judge or no judge: a wrong value is a mistake in the file all the same
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535):
        raise ConfigError(f"{instance}: `port` must be an integer from 0 to 65535, not {port!r}")
    for key in ("env", "host", "db", "token"):
        if block.get(key) is not None and not isinstance(block[key], str):
            raise ConfigError(f"{instance}: `{key}` must be a string (quote it in YAML), not {block[key]!r}")
    return ServerSettings(
        instance=instance,
        name=name,
        env=str(block.get("env") or name),
        host=block.get("host"),
        port=port,
        db=block.get("db"),
        token=block.get("token"),
        judge=dict(judge),
        options={key: block[key] for key in SERVE_OPTIONS if block.get(key) is not None},
        warnings=_ignored(instance, block),
    )


def _ignored(instance: str, block: Mapping[str, Any]) -> tuple[str, ...]:
    """Warnings for what `block` asks that nothing does: keys no one reads, NeMo Gym's workers."""
    warnings = []
    unknown = sorted(set(map(str, block)) - NEMO_GYM_KEYS - {*_SETTINGS, *SERVE_OPTIONS})
    if unknown:
        ours = ", ".join((*_SETTINGS, *SERVE_OPTIONS))
        warnings.append(
            f"{instance}: ignoring {', '.join(map(repr, unknown))}: neither esenv nor NeMo Gym reads "
            f"{'it' if len(unknown) == 1 else 'them'} (esenv reads {ours})"
        )
    workers = block.get("num_workers")
    if isinstance(workers, int) and not isinstance(workers, bool) and workers > 1:
        warnings.append(f"{instance}: ignoring num_workers: {workers}: one esenv process serves each server")
    return tuple(warnings)


def from_environment(environ: Mapping[str, str]) -> ServerSettings:
    """The server NeMo Gym's runner started: from NEMO_GYM_CONFIG_DICT and NEMO_GYM_CONFIG_PATH."""
    text = environ.get(CONFIG_DICT_VAR)
    if not text:
        raise ConfigError(
            f"{CONFIG_DICT_VAR} is not set: this entrypoint is started by NeMo Gym's `ng_run`; "
            "to start it by hand, use `esenv serve --config FILE.yaml`"
        )
    return find_server(read_config(text), environ.get(CONFIG_PATH_VAR) or None)


def main() -> None:
    """The entrypoint NeMo Gym's runner starts (`python app.py`): `esenv serve --nemo-gym`."""
    # Imported here: `cli` imports this module to read configs.
    from .cli import main as cli_main

    sys.exit(cli_main(["serve", "--nemo-gym"]))


if __name__ == "__main__":
    main()

"""Finding an environment from what a user typed: a bundled name, `module:attribute`, or a `.py` file."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import pkgutil
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from .environment import Environment
from .errors import ConfigError, EnvError

__all__ = ["bundled", "load_environment"]


_OURS = Path(__file__).resolve().parent.parent / "environments"


def _environments() -> ModuleType:
    """Our `environments` package, even where another of that name comes first on `sys.path`.

    nemo-gym ships a top-level `environments` package too, and NeMo Gym's runner installs nemo-gym
    in every server's venv, ahead of ours (an editable install is found last): so ours is loaded
    from beside `eventsourced_env`, under its own name, whatever `import environments` would find.
    """
    loaded = sys.modules.get("environments")
    spec = importlib.util.find_spec("environments") if loaded is None else loaded.__spec__
    found = spec.submodule_search_locations if spec is not None else None
    if found is not None and _OURS in {Path(p).resolve() for p in found}:
        return importlib.import_module("environments")
    spec = importlib.util.spec_from_file_location(
        "environments", _OURS / "__init__.py", submodule_search_locations=[str(_OURS)]
    )
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import the bundled environments from {_OURS}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["environments"] = module
    spec.loader.exec_module(module)
    return module


def bundled() -> list[str]:
    """The names of the environments that ship in our `environments` package."""
    return sorted(m.name for m in pkgutil.iter_modules(_environments().__path__) if m.ispkg)


def _pick(module: ModuleType, attribute: str | None, spec: str) -> Environment[Any, Any]:
    """The Environment `attribute` names, else `env`, else the module's only one; or a ConfigError."""
    name = attribute or "env"
    found = getattr(module, name, None)
    if found is None and attribute is None:
        candidates = [k for k, v in vars(module).items() if isinstance(v, Environment)]
        if len(candidates) == 1:
            found = getattr(module, candidates[0])
        elif candidates:
            raise ConfigError(
                f"{spec!r} defines {len(candidates)} Environments ({', '.join(candidates)}): "
                f"name the one to serve `env`, or give {spec}:NAME"
            )
        else:
            raise ConfigError(f"{spec!r} defines no eventsourced_env.Environment (name it `env`)")
    if found is None:
        raise ConfigError(f"{spec!r} has no attribute {name!r}")
    if not isinstance(found, Environment):
        raise ConfigError(
            f"{spec!r}: {name!r} is not an eventsourced_env.Environment (it is {type(found).__name__})"
        )
    return found


def load_environment(spec: str) -> Environment[Any, Any]:
    """The environment `spec` names: `counter`, `package.module:attribute` or `path/to/env.py[:attribute]`."""
    target, _, attribute = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    attr = attribute or None
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"no environment file {target!r}")
        name = f"_esenv_user_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ConfigError(f"cannot import {target!r}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        _importable(path.resolve().parent)  # its sibling modules, as for `python path/to/env.py`
        with _one_line(f"cannot load environment file {target!r}"):
            module_spec.loader.exec_module(module)
        return _pick(module, attr, spec)
    if attr is None and "." not in target:
        if target not in bundled():
            raise ConfigError(
                f"unknown environment {target!r}: bundled ones are {', '.join(bundled())}; "
                "or give `module:attribute` or a .py file"
            )
        target = f"environments.{target}"
    else:  # the user's own module: found in the current folder too, as with `python -m` (but after
        # what is installed, so a stray file there cannot stand in for a library)
        _importable(Path.cwd(), first=False)
    with _one_line(f"cannot import environment module {target!r}"):
        module = importlib.import_module(target)
    return _pick(module, attr, spec)


def _importable(folder: Path, *, first: bool = True) -> None:
    """Let the modules in `folder` be imported: first on `sys.path` (as a script's folder is), or last."""
    if str(folder) not in sys.path:
        sys.path.insert(0 if first else len(sys.path), str(folder))


@contextlib.contextmanager
def _one_line(what: str) -> Iterator[None]:
    """Any error importing the user's code (a missing module, a syntax error, a crash at import) as one
    ConfigError line; our own errors (an environment defined wrongly) pass as they are."""
    try:
        yield
    except EnvError:
        raise
    except SyntaxError as e:  # its message names the file and line
        raise ConfigError(f"{what}: {type(e).__name__}: {e}") from e
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        raise ConfigError(f"{what}: {type(e).__name__}: {e} ({where.filename}, line {where.lineno})") from e

"""Exports of an event log for analysis: JSONL, CSV, Parquet, a filtered SQLite copy, NeMo Gym rollouts.

Every export reads one `Snapshot` (a consistent, read-only view, so a live server can keep
writing) session by session and writes as it reads, so memory stays flat however long the log.
Output goes to a hidden file beside its target and is renamed into place only when complete: a
failed export leaves no half-written file, and never touches the log itself.

Formats (`FORMATS`):
- `jsonl`: one event per line: `session`, `env`, `tool` (for tool events) and the stored event
  (`seq`, `kind`, `at`, `prev`, `hash`, `data`), so each line's hash can be checked;
- `csv` and `parquet`: a folder with `sessions` (one row per session, `SESSION_COLUMNS`) and
  `events` (one row per event, `EVENT_COLUMNS`: the data's tool, args, observation, error and
  reward lifted into columns, the rest in `extra` as JSON);
- `sqlite`: the selected sessions in a new log file with the same schema, usable by every command;
- `nemo-rollouts`: one line per verified session, as NeMo Gym stores rollouts: the seed row (with
  the session's `session_seed`, so a stateless `/verify` replays its randomness), the latest
  verified event's `response` and `reward` (and `reward_components` if any); a session whose
  scoring failed goes, with `_ng_failure_class`, to `<stem>_failures.jsonl` beside it, as
  `ng_collect_rollouts` files it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final, Protocol

import orjson

from .environment import failure_fields
from .errors import ConfigError
from .snapshot import Filters, SessionLog, SessionSummary, Snapshot
from .sqlite_store import INSERT_EVENT, SCHEMA, SQLITE_FILES

__all__ = [
    "EVENT_COLUMNS",
    "FORMATS",
    "SESSION_COLUMNS",
    "ExportResult",
    "Progress",
    "export",
    "output_paths",
    "staged",
]

FORMATS: Final = ("jsonl", "csv", "parquet", "sqlite", "nemo-rollouts")
_FOLDER_FORMATS: Final = ("csv", "parquet")
_BATCH: Final = 5_000

# Column name and type ("str", "int", "float", or "json": JSON text) of the two tables.
SESSION_COLUMNS: Final = (
    ("session", "str"),
    ("env", "str"),
    ("env_version", "str"),
    ("seed", "int"),
    ("task_index", "int"),
    ("rollout_index", "int"),
    ("status", "str"),
    ("events", "int"),
    ("calls", "int"),
    ("rejected", "int"),
    ("reward", "float"),
    ("reward_components", "json"),
    ("failure", "json"),
    ("verifier_version", "str"),
    ("parent", "str"),
    ("created_at", "float"),
    ("updated_at", "float"),
    ("verified_at", "float"),
)
EVENT_COLUMNS: Final = (
    ("session", "str"),
    ("seq", "int"),
    ("kind", "str"),
    ("at", "float"),
    ("tool", "str"),
    ("args", "json"),
    ("observation", "json"),
    ("error", "str"),
    ("reward", "float"),
    ("extra", "json"),
    ("prev", "str"),
    ("hash", "str"),
)
_LIFTED: Final = ("tool", "args", "observation", "error", "reward")


class Progress(Protocol):
    """What an export reports its progress to (a `click.progressbar` is one)."""

    def update(self, n_steps: int) -> None:
        """Advance by `n_steps` sessions."""


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What an export wrote."""

    format: str
    files: list[Path]
    sessions: int
    events: int
    seconds: float
    #: nemo-rollouts: of `sessions`, those whose scoring failed, written to the failures file (`files[1]`).
    failed: int = 0
    #: nemo-rollouts: of the lines in the rollouts file, those of forks (their parent's `_ng_*` indexes).
    forks: int = 0


def _session_row(s: SessionSummary) -> tuple[Any, ...]:
    return (
        s.id,
        s.env,
        s.env_version,
        s.seed,
        s.task_index,
        s.rollout_index,
        s.status,
        s.events,
        s.calls,
        s.rejected,
        s.reward,
        s.reward_components if s.verified_at is not None else None,
        s.failure,
        s.verifier_version,
        s.parent,
        s.created_at,
        s.updated_at,
        s.verified_at,
    )


def _event_rows(log: SessionLog) -> Iterator[tuple[Any, ...]]:
    for e in log.events:
        data = e.data
        extra = {k: v for k, v in data.items() if k not in _LIFTED}
        reward = data.get("reward")
        yield (
            log.summary.id,
            e.seq,
            e.kind,
            e.at,
            data.get("tool"),
            _json_cell(data, "args"),
            _json_cell(data, "observation"),
            data.get("error"),
            float(reward) if reward is not None else None,
            extra or None,
            e.prev,
            e.hash,
        )


#: A JSON null that is there (a tool's observation of None), as against a value that is missing:
#: CSV writes the one as `null` and the other as an empty cell, Parquet as "null" and as null.
_NULL: Final = object()


def _json_cell(data: dict[str, Any], key: str) -> Any:
    value = data.get(key)
    return _NULL if value is None and key in data else value


def _json_text(value: Any) -> str:
    return "null" if value is _NULL else orjson.dumps(value).decode()


# -- writers: one per format, each fed one session at a time ------------------------------------


class _Writer(Protocol):
    def add(self, log: SessionLog) -> None: ...

    def close(self) -> None: ...


class _JsonlWriter:
    def __init__(self, path: Path) -> None:
        self._file = path.open("wb", buffering=1 << 20)

    def add(self, log: SessionLog) -> None:
        session, env = log.summary.id, log.summary.env
        for e in log.events:
            line = {"session": session, "env": env, "tool": e.data.get("tool"), **e.to_json()}
            self._file.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))

    def close(self) -> None:
        self._file.close()


def failures_path(path: Path) -> Path:
    """Where `ng_collect_rollouts` writes the rollouts of `path` that failed (`_ng_failure_class`):
    `<stem>_failures.jsonl` beside it (nemo_gym/rollout_collection.py, `_failures_path_for`)."""
    return path.with_name(path.stem + "_failures.jsonl")


class _RolloutsWriter:
    """The rollouts as `ng_collect_rollouts` files them: the scored ones in the main file, those whose
    scoring failed (a judge down) in the failures file beside it, which NeMo Gym's aggregation and
    resumption do not read as samples (they see no `_ng_failure_class`: only the file tells them)."""

    def __init__(self, path: Path, failures: Path) -> None:
        self._file = path.open("wb", buffering=1 << 20)
        self._failures = failures.open("wb")
        self.failed = 0
        self.forks = 0  # lines of forks, which carry their parent's row and so its task and rollout index

    def add(self, log: SessionLog) -> None:
        s = log.summary
        if s.verified_at is None:
            return
        # The session's seed goes with the row, so a stateless /verify deals the same cards.
        line = {"session_seed": s.seed, **(s.row or {}), "response": s.response, "reward": s.reward}
        if s.reward_components:
            line["reward_components"] = s.reward_components
        if s.failure is not None:  # a judge that was down: no sample, filed with the failures
            line.update(failure_fields(s.failure))
            self._failures.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
            self.failed += 1
            return
        self.forks += s.parent is not None
        self._file.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))

    def close(self) -> None:
        self._file.close()
        self._failures.close()


_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")


def _no_formula(value: Any) -> Any:
    """A CSV text cell a spreadsheet will not run: one starting as a formula does (`=`, `+`, `-`, `@`,
    a tab or a carriage return: a tool name or error the model wrote) gets a `'` in front (OWASP's
    advice against CSV injection). A tool's own name never starts so; JSON cells never start a formula."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


class _CsvWriter:
    def __init__(self, sessions: Path, events: Path) -> None:
        self._files: list[IO[str]] = []
        self._sessions = self._open(sessions, SESSION_COLUMNS)
        self._events = self._open(events, EVENT_COLUMNS)

    def _open(self, path: Path, columns: tuple[tuple[str, str], ...]) -> Any:
        file = path.open("w", newline="", encoding="utf-8", buffering=1 << 20)
        self._files.append(file)
        writer = csv.writer(file)
        writer.writerow(name for name, _ in columns)
        return writer

    @staticmethod
    def _cells(row: tuple[Any, ...], columns: tuple[tuple[str, str], ...]) -> list[Any]:
        # An empty cell is a missing value; JSON cells hold JSON text (so a JSON null is "null").
        return [
            "" if value is None else _json_text(value) if kind == "json" else _no_formula(value)
            for value, (_, kind) in zip(row, columns, strict=True)
        ]

    def add(self, log: SessionLog) -> None:
        self._sessions.writerow(self._cells(_session_row(log.summary), SESSION_COLUMNS))
        self._events.writerows(self._cells(row, EVENT_COLUMNS) for row in _event_rows(log))

    def close(self) -> None:
        for file in self._files:
            file.close()


def _fits(value: Any, kind: str) -> Any:
    """`value` for a Parquet column of `kind`: an integer past 64 bits (a task index) is missing there."""
    return None if kind == "int" and not -(2**63) <= value < 2**63 else value


class _ParquetTable:
    """One Parquet file written in row groups of `_BATCH` rows."""

    def __init__(self, path: Path, columns: tuple[tuple[str, str], ...]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "json": pa.string()}
        self._pa = pa
        self._columns = columns
        self._schema = pa.schema([(name, types[kind]) for name, kind in columns])
        self._writer = pq.ParquetWriter(str(path), self._schema, compression="zstd")
        self._rows: list[tuple[Any, ...]] = []

    def add(self, row: tuple[Any, ...]) -> None:
        self._rows.append(row)
        if len(self._rows) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        arrays = {
            name: [
                None if row[i] is None else _json_text(row[i]) if kind == "json" else _fits(row[i], kind)
                for row in self._rows
            ]
            for i, (name, kind) in enumerate(self._columns)
        }
        self._writer.write_table(self._pa.Table.from_pydict(arrays, schema=self._schema))
        self._rows.clear()

    def close(self) -> None:
        self._flush()
        self._writer.close()


class _ParquetWriter:
    def __init__(self, sessions: Path, events: Path) -> None:
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError(
                "the parquet format needs pyarrow: pip install 'eventsourced-env[parquet]'"
            ) from None
        self._sessions = _ParquetTable(sessions, SESSION_COLUMNS)
        self._events = _ParquetTable(events, EVENT_COLUMNS)

    def add(self, log: SessionLog) -> None:
        self._sessions.add(_session_row(log.summary))
        for row in _event_rows(log):
            self._events.add(row)

    def close(self) -> None:
        self._sessions.close()
        self._events.close()


class _SqliteWriter:
    def __init__(self, path: Path) -> None:
        path.touch()  # a path the system refuses is an OSError that says why (SQLite's does not)
        self._conn = sqlite3.connect(path, isolation_level=None)
        # A new file nobody reads until it is renamed into place, and deleted if the export fails:
        # it needs neither a journal nor an fsync as it grows.
        self._conn.execute("PRAGMA journal_mode=OFF")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.executescript(SCHEMA)
        self._conn.execute("BEGIN")
        self._pending = 0

    def add(self, log: SessionLog) -> None:
        s = log.summary
        self._conn.execute(
            "INSERT INTO sessions (id, env, created_at) VALUES (?, ?, ?)", (s.id, s.env, s.created_at)
        )
        self._conn.executemany(
            INSERT_EVENT,
            ((s.id, e.seq, e.kind, e.at, e.hash, e.body) for e in log.events),
        )
        self._pending += len(log.events)
        if self._pending >= _BATCH:
            self._conn.execute("COMMIT")
            self._conn.execute("BEGIN")
            self._pending = 0

    def close(self) -> None:
        # None is open if an interrupt landed between a batch's COMMIT and the next BEGIN.
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")
        self._conn.close()


# -- paths ---------------------------------------------------------------------------------------


def output_paths(
    fmt: str, out: str | Path, *, force: bool = False, db: str | Path | None = None
) -> list[Path]:
    """The files an export in `fmt` to `out` will write; raises `ConfigError` if it must not.

    `csv` and `parquet` write a folder (`sessions.*` and `events.*` in it), the others one file.
    A file that exists is only written over with `force`; the log `db` itself never is, nor
    anything that is not a regular file (a device, a pipe: /dev/stdout).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; the formats are: {', '.join(FORMATS)}")
    out = Path(out)
    parent = out.resolve().parent
    if not parent.is_dir():
        raise ConfigError(f"cannot write {str(out)!r}: the folder {str(parent)!r} does not exist")
    if fmt in _FOLDER_FORMATS:
        if out.exists() and not out.is_dir():
            raise ConfigError(
                f"{fmt} writes a folder (sessions.{fmt} and events.{fmt}), but {str(out)!r} is a file"
            )
        files = [out / f"sessions.{fmt}", out / f"events.{fmt}"]
    else:
        if out.is_dir():
            raise ConfigError(f"{fmt} writes one file, but {str(out)!r} is a folder; give a file path")
        files = [out, failures_path(out)] if fmt == "nemo-rollouts" else [out]
    # The log and the files SQLite keeps beside it: writing over its WAL would lose its latest events.
    log = Path(db).resolve() if db is not None else None
    log_files = {Path(f"{log}{suffix}") for suffix in SQLITE_FILES} if log is not None else set()
    for file in files:
        if file.resolve() in log_files:
            raise ConfigError(
                f"{str(file)!r} is the event log being exported (or a file of SQLite's beside it); "
                "choose another --out"
            )
        if file.exists() and not file.is_file():
            # A device or a pipe (/dev/stdout): the export would be renamed over it, never written into it.
            raise ConfigError(
                f"{str(file)!r} is not a regular file (a device or a pipe, such as /dev/stdout): an "
                "export is written beside its target and renamed into place; give a file path"
            )
        if file.exists() and not force:
            raise ConfigError(f"{str(file)!r} exists; pass --force to write over it")
    return files


@contextlib.contextmanager
def staged(files: list[Path], *, sqlite: bool = False) -> Iterator[list[Path]]:
    """Hidden temporary files beside `files`, renamed onto them only if the block succeeds.

    `sqlite`: the files are SQLite databases, so the WAL, shared-memory and journal files of those
    they replace go too; SQLite would otherwise apply a stale WAL to the new database.
    """
    made_folder = False
    folder = files[0].parent
    if not folder.exists():
        folder.mkdir()
        made_folder = True
    temps = [f.with_name(f".{f.name}.{os.getpid()}.tmp") for f in files]
    try:
        yield temps
    except BaseException as e:
        for temp in temps:
            temp.unlink(missing_ok=True)
        if made_folder:
            folder.rmdir()
        named = {str(temp): file for temp, file in zip(temps, files, strict=True)}
        if isinstance(e, OSError) and str(e.filename) in named:  # the user's path, not our hidden one
            raise OSError(e.errno, e.strerror, str(named[str(e.filename)])) from e
        raise
    for temp, file in zip(temps, files, strict=True):
        if sqlite:
            for suffix in SQLITE_FILES[1:]:
                Path(f"{file}{suffix}").unlink(missing_ok=True)
        os.replace(temp, file)


def _writer(fmt: str, files: list[Path]) -> _Writer:
    if fmt == "jsonl":
        return _JsonlWriter(files[0])
    if fmt == "nemo-rollouts":
        return _RolloutsWriter(files[0], files[1])
    if fmt == "sqlite":
        return _SqliteWriter(files[0])
    if fmt == "csv":
        return _CsvWriter(files[0], files[1])
    return _ParquetWriter(files[0], files[1])


def export(
    db: str | Path,
    fmt: str,
    out: str | Path,
    filters: Filters | None = None,
    *,
    force: bool = False,
    progress: Callable[[int], AbstractContextManager[Progress]] | None = None,
) -> ExportResult:
    """Export the sessions of the log `db` that pass `filters` to `out` in format `fmt`.

    `progress(total)` (e.g. `lambda n: click.progressbar(length=n)`) makes the context that is
    told of each session read.
    """
    filters = filters or Filters()
    if fmt == "nemo-rollouts":  # a line per verified session: count only those, as written
        filters = dataclasses.replace(filters, verified_only=True)
    files = output_paths(fmt, out, force=force, db=db)
    started = time.perf_counter()
    sessions = events = 0
    with Snapshot(db) as snapshot, staged(files, sqlite=fmt == "sqlite") as temps:
        snapshot.require(filters.sessions)  # a session named that is not there: no file (staged cleans up)
        writer = _writer(fmt, temps)
        try:
            bar = progress(snapshot.count(filters)) if progress else contextlib.nullcontext(None)
            with bar as tick:
                for log in snapshot.sessions(filters, tick.update if tick else None):
                    writer.add(log)
                    sessions += 1
                    events += len(log.events)
        finally:
            writer.close()
    failed, forks = (writer.failed, writer.forks) if isinstance(writer, _RolloutsWriter) else (0, 0)
    return ExportResult(fmt, files, sessions, events, time.perf_counter() - started, failed, forks)

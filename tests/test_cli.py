from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import click
import orjson
import pytest

from environments.counter import env as counter_env
from eventsourced_env import Sessions, SqliteStore, load_environment
from eventsourced_env.cli import cli, main
from eventsourced_env.errors import ConfigError
from eventsourced_env.sqlite_store import SCHEMA
from tests.conftest import row
from tests.logs import build_fixed_log


def test_every_command_has_help_with_an_example() -> None:
    assert cli.commands
    for name, command in cli.commands.items():
        assert command.help and "Example:" in command.help, name
        assert f"esenv {name}" in command.help, name


def test_sessions_lists_a_log(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def make() -> list[str]:
        store = SqliteStore(db_path)
        sessions = Sessions(counter_env, store)
        ids = [await sessions.seed(row(initial=i)) for i in range(3)]
        await sessions.call(ids[0], "increment_counter", {"count": 1})
        await store.close()
        return ids

    ids = asyncio.run(make())
    assert main(["sessions", "--db", str(db_path), "--json"]) == 0
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["id"], x["events"]) for x in lines] == [(ids[0], 2), (ids[1], 1), (ids[2], 1)]
    assert main(["sessions", "--db", str(db_path)]) == 0
    out = capsys.readouterr()
    assert ids[1] in out.out and "3 session(s)" in out.err


def test_sessions_without_a_log_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sessions", "--db", str(tmp_path / "none.db")]) == 2  # as every other command
    assert "no event log" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
    # A SQLite file that is not a log is refused and left as it was (it used to get our schema).
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE foo (x)")
        conn.commit()
    before = other.read_bytes()
    assert main(["sessions", "--db", str(other)]) == 2
    assert "is not an event log" in capsys.readouterr().err
    assert other.read_bytes() == before
    assert not Path(f"{other}-wal").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["sessions"],
        ["stats"],
        ["export", "--format", "jsonl", "--out", "{tmp}/out.jsonl"],
        ["replay"],
        ["reverify"],
        ["save-replay", "s1", "--out", "{tmp}/s1.jsonl"],
    ],
    ids=lambda c: c[0],
)
@pytest.mark.parametrize(
    "theirs",
    [
        "CREATE TABLE events (session TEXT, seq INTEGER)",  # another program's events, sessions as ours
        "CREATE TABLE snapshots (who TEXT)",
    ],
    ids=["events", "snapshots"],
)
def test_a_log_of_another_program_is_a_clear_error_for_every_read_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], theirs: str
) -> None:
    table = theirs.split()[2]
    # Tables named as ours but with other columns (an `events` table is a common name) were read
    # as a log: a sqlite3.OperationalError traceback (no such column: body), exit 1.
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.executescript(SCHEMA)  # our layout, but for one table of theirs
        conn.execute(f"DROP TABLE {table}")
        conn.execute(theirs)
        conn.execute("INSERT INTO sessions VALUES ('s1', 'counter', 1.0)")
        if table == "events":
            conn.execute("INSERT INTO events (session, seq) VALUES ('s1', 1)")
        conn.commit()
    argv = [part.format(tmp=tmp_path) for part in command]
    assert main([*argv, "--db", str(other)]) == 2
    err = capsys.readouterr().err
    assert "is not an event log: its table" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) == ["other.db"]


def test_a_log_on_read_only_storage_is_read_unless_its_wal_holds_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An archived log on read-only storage (a read-only mount) was refused by every read command:
    # "cannot read the event log now: unable to open database file", exit 1: SQLite cannot make
    # there the shared-memory file (-shm) a WAL reader needs. A -shm path that cannot be opened (a
    # symlink: SQLite opens it with O_NOFOLLOW) stands in for the read-only folder.
    db = tmp_path / "archive" / "log.db"
    db.parent.mkdir()
    build_fixed_log(db)
    assert main(["stats", "--db", str(db), "--json"]) == 0
    expected = capsys.readouterr().out
    Path(f"{db}-shm").unlink(missing_ok=True)
    Path(f"{db}-shm").symlink_to(tmp_path / "nowhere")
    assert main(["stats", "--db", str(db), "--json"]) == 0
    assert capsys.readouterr().out == expected
    assert main(["replay", "--db", str(db), "--jobs", "1"]) == 0
    assert "every observation and hash matches" in capsys.readouterr().out
    assert main(["export", "--db", str(db), "--format", "jsonl", "--out", str(tmp_path / "e.jsonl")]) == 0
    assert len((tmp_path / "e.jsonl").read_text().splitlines()) == 20

    # A log copied with events still in its WAL: read without it, they would be missing. Refused.
    copy = tmp_path / "copy" / "log.db"
    copy.parent.mkdir()
    Path(f"{db}-shm").unlink()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("INSERT INTO sessions VALUES ('late', 'counter', 999.0)")
        conn.commit()
        for suffix in ("", "-wal"):
            Path(f"{copy}{suffix}").write_bytes(Path(f"{db}{suffix}").read_bytes())
    assert Path(f"{copy}-wal").stat().st_size > 0
    Path(f"{copy}-shm").symlink_to(tmp_path / "nowhere")
    assert main(["sessions", "--db", str(copy)]) == 1
    assert "unable to open" in capsys.readouterr().err


def test_serve_with_an_unknown_environment_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "nonesuch"]) == 2
    assert "unknown environment 'nonesuch'" in capsys.readouterr().err


def test_envs_lists_the_bundled_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["envs"]) == 0
    assert "counter (version 1): increment_counter, get_counter_value" in capsys.readouterr().out


def test_environments_load_by_name_module_and_file(tmp_path: Path) -> None:
    assert load_environment("counter") is counter_env
    assert load_environment("environments.counter:env") is counter_env
    source = Path(__file__).parent.parent / "environments" / "counter" / "__init__.py"
    copy = tmp_path / "my_counter.py"
    copy.write_text(source.read_text())
    assert load_environment(str(copy)).name == "counter"
    with pytest.raises(ConfigError, match="no environment file"):
        load_environment(str(tmp_path / "missing.py"))
    with pytest.raises(ConfigError, match="has no attribute 'nope'"):
        load_environment("environments.counter:nope")


def test_a_file_without_one_environment_is_told_so_plainly(tmp_path: Path) -> None:
    header = "from eventsourced_env import Environment, Task\n"
    one = "{} = Environment({!r}, version='1', task=Task)\n"
    cases = {
        "noenv.py": ("x = 1\n", "'{path}' defines no eventsourced_env.Environment (name it `env`)"),
        "two.py": (
            header + one.format("a", "a") + one.format("b", "b"),
            "'{path}' defines 2 Environments (a, b): name the one to serve `env`, or give {path}:NAME",
        ),
        "wrong.py": ("env = 42\n", "'{path}': 'env' is not an eventsourced_env.Environment (it is int)"),
        "wrong.py:x": ("x = 'y'\n", "'{path}': 'x' is not an eventsourced_env.Environment (it is str)"),
        "plain.py:nope": ("x = 1\n", "'{path}' has no attribute 'nope'"),
    }
    for spec, (source, message) in cases.items():
        (tmp_path / spec.partition(":")[0]).write_text(source)
        path = str(tmp_path / spec)
        with pytest.raises(ConfigError) as e:
            load_environment(path)
        assert e.value.detail == message.format(path=path), spec
    (tmp_path / "one.py").write_text(header + one.format("mine", "mine"))
    assert load_environment(str(tmp_path / "one.py")).name == "mine"


def test_bad_usage_exits_nonzero() -> None:
    assert main(["serve"]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["--help"]) == 0
    assert isinstance(cli, click.Group)


def test_save_replay_writes_a_loadable_golden_file(
    db_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from eventsourced_env.testing import load_replay

    async def make() -> tuple[str, list[object]]:
        store = SqliteStore(db_path)
        sessions = Sessions(counter_env, store)
        sid = await sessions.seed(row(initial=1, expected=2))
        await sessions.call(sid, "increment_counter", {"count": 1})
        events = await store.read(sid)
        await store.close()
        return sid, list(events)

    sid, events = asyncio.run(make())
    out = tmp_path / "case.jsonl"
    assert main(["save-replay", sid, "--db", str(db_path), "--out", str(out)]) == 0
    assert load_replay(out) == events
    assert main(["save-replay", sid, "--db", str(db_path), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["save-replay", "nobody", "--db", str(db_path), "--out", str(out), "--force"]) == 2
    assert load_replay(out) == events  # a failed save leaves the file it would have replaced
    assert main(["save-replay", sid, "--db", str(db_path), "--out", str(tmp_path / "no" / "x.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # Not even --force writes over the event log itself.
    log_before = db_path.read_bytes()
    assert main(["save-replay", sid, "--db", str(db_path), "--out", str(db_path), "--force"]) == 2
    assert "is the event log" in capsys.readouterr().err
    assert db_path.read_bytes() == log_before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_a_port_in_use_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "counter", "--db", str(tmp_path / "s.db"), "--port", str(port)]) == 1
        err = capsys.readouterr().err
        assert not list(tmp_path.iterdir())  # no empty log left behind, nor its WAL
        # A log that was there stays, whole.
        asyncio.run(SqliteStore(tmp_path / "kept.db").close())
        before = (tmp_path / "kept.db").read_bytes()
        assert main(["serve", "counter", "--db", str(tmp_path / "kept.db"), "--port", str(port)]) == 1
        assert (tmp_path / "kept.db").read_bytes() == before
    assert err.startswith("Error: ") and "address already in use" in err
    assert "Traceback" not in err


def test_serving_an_incomplete_environment_leaves_no_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "incomplete.py"
    source.write_text(
        "from eventsourced_env import Environment, Task\nenv = Environment('inc', version='1', task=Task)\n"
    )
    db = tmp_path / "l.db"
    assert main(["serve", str(source), "--db", str(db), "--port", "0"]) == 2
    assert "Error: environment 'inc' lacks an initial state, a verifier, a tool" in capsys.readouterr().err
    assert not list(tmp_path.glob("l.db*"))
    # Whatever else stops it before it listens, a log it made is removed with its WAL.
    import eventsourced_env.cli

    def refused(*args: object, **kwargs: object) -> None:
        raise ConfigError("refused")

    closed: list[SqliteStore] = []

    class Store(SqliteStore):
        async def close(self) -> None:
            closed.append(self)
            await super().close()

    monkeypatch.setattr(eventsourced_env.cli, "create_app", refused)
    monkeypatch.setattr(eventsourced_env.cli, "SqliteStore", Store)
    assert main(["serve", "counter", "--db", str(db), "--port", "0"]) == 2
    assert not list(tmp_path.glob("l.db*"))
    assert len(closed) == 1  # its connections too (Python 3.13 warns of an unclosed one)


def test_an_output_path_the_system_refuses_is_an_error_not_a_traceback(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(SqliteStore(db_path).close())  # an empty log
    for fmt in ("jsonl", "nemo-rollouts", "sqlite", "csv"):
        # The path given is named, not the hidden file written first (SQLite's own error named none).
        assert main(["export", "--db", str(db_path), "--format", fmt, "--out", f"/proc/x.{fmt}"]) == 1
        assert capsys.readouterr().err == f"Error: [Errno 2] No such file or directory: '/proc/x.{fmt}'\n"


def test_sigterm_during_an_export_leaves_nothing_behind(tmp_path: Path) -> None:
    from tools.bench import write_counter_log

    db, out = tmp_path / "big.db", tmp_path / "export"  # csv writes a folder
    write_counter_log(db, 300_000)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "eventsourced_env",
            "export",
            "--db",
            str(db),
            "--format",
            "csv",
            "--out",
            str(out),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(out.glob(".*.tmp")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the export finished before it could be interrupted"
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    assert not out.exists()  # the folder it made, the staged files in it: all gone


def test_ctrl_c_exits_130(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import eventsourced_env.cli

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(eventsourced_env.cli, "stats", interrupted)
    assert main(["stats", "--db", str(db_path)]) == 130
    assert "Aborted!" in capsys.readouterr().err


def test_serve_on_a_log_the_system_refuses_is_exit_1_and_leaves_no_new_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Another process holds the log locked: the system refuses it (1), not a mistake in the command (2).
    locked = tmp_path / "locked.db"
    with contextlib.closing(sqlite3.connect(locked, isolation_level=None)) as holder:
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN EXCLUSIVE")
        assert main(["serve", "counter", "--db", str(locked), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and str(locked) in err and "locked" in err

    # No room to write (a quota, a full disk): one line, exit 1, and the new log it began is removed.
    def no_room() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))

    full = tmp_path / "full.db"
    serve = [sys.executable, "-m", "eventsourced_env", "serve", "counter", "--db", str(full), "--port", "0"]
    done = subprocess.run(serve, capture_output=True, text=True, timeout=60, preexec_fn=no_room)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("Error: ") and str(full) in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked.db"]

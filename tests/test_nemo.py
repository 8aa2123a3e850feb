"""Started by NeMo Gym's launcher: its YAML config, NEMO_GYM_CONFIG_DICT / _PATH, `python app.py`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from environments.qa_judge import oracle
from eventsourced_env.cli import main
from eventsourced_env.errors import ConfigError
from eventsourced_env.loader import bundled
from eventsourced_env.nemo import find_server, read_config
from tests.judge_stub import StubJudge

ENVIRONMENTS = Path(__file__).resolve().parent.parent / "environments"


def nemo_config(name: str) -> dict[str, Any]:
    return read_config((ENVIRONMENTS / name / "configs" / f"{name}.yaml").read_text())


def free_port() -> int:
    """A free loopback port, picked the way NeMo Gym's runner picks one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Rollout:
    """A client that keeps only the last reply's Set-Cookie, like NeMo Gym's agent."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.cookie: str | None = None

    def post(self, path: str, body: Any) -> Any:
        headers = {"Content-Type": "application/json", **({"Cookie": self.cookie} if self.cookie else {})}
        req = urllib.request.Request(self.url + path, data=orjson.dumps(body), headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            cookie = SimpleCookie(resp.headers.get("Set-Cookie", ""))
            self.cookie = "; ".join(f"{k}={m.value}" for k, m in cookie.items()) or None
            return orjson.loads(resp.read())


def start(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Start a server process; its URL (the first line it prints)."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise AssertionError(f"the server did not start (exit {proc.wait()})")
    return proc, url


def stop(proc: subprocess.Popen[str]) -> int:
    """Interrupt it as NeMo Gym's runner does on shutdown (SIGINT); its exit code."""
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=30)
    if proc.stdout:
        proc.stdout.close()
    return code


@pytest.mark.parametrize("name", bundled())
def test_every_bundled_environment_has_a_nemo_gym_config_and_entrypoint(name: str) -> None:
    settings = find_server(nemo_config(name))
    assert settings.env == name
    [block] = nemo_config(name)[settings.instance]["resources_servers"].values()
    assert block["entrypoint"] == "app.py" and block["domain"] and block["db"]
    assert (ENVIRONMENTS / name / "app.py").is_file()


# Those of NeMo Gym 0.4.0's own resources servers (it ships 95) named like ours. ng_run runs a server
# in `resources_servers/<server name>`: one of ours by such a name would be NeMo Gym's, in a checkout.
NEMO_GYM_SERVERS = {"blackjack", "grl_sokoban", "workplace_assistant"}


@pytest.mark.parametrize("name", bundled())
def test_no_server_is_named_as_one_nemo_gym_ships(name: str) -> None:
    assert find_server(nemo_config(name)).name not in NEMO_GYM_SERVERS


def test_started_exactly_as_ng_run_starts_a_server(tmp_path: Path) -> None:
    # The global config ng_run hands every server: all instances merged, host and port filled in.
    config = {
        **nemo_config("counter"),
        "policy_model": {
            "responses_api_models": {"openai_model": {"entrypoint": "app.py", "port": free_port()}}
        },
        "head_server": {"host": "127.0.0.1", "port": 11000},
        "default_host": "127.0.0.1",
    }
    block = config["counter_resources_server"]["resources_servers"]["counter"]
    block.update(host="127.0.0.1", port=free_port(), db=str(tmp_path / "counter.db"))
    env = {
        "NEMO_GYM_CONFIG_DICT": yaml.safe_dump(config),
        "NEMO_GYM_CONFIG_PATH": "counter_resources_server",
        "PYTHONPATH": str(ENVIRONMENTS / "counter"),
    }
    proc, url = start([sys.executable, "app.py"], ENVIRONMENTS / "counter", env)
    try:
        assert url == f"http://127.0.0.1:{block['port']}"
        agent = Rollout(url)
        row = {"responses_create_params": {"input": []}, "initial_count": 1, "expected_count": 4}
        agent.post("/seed_session", row)
        assert agent.post("/increment_counter", {"count": 3}) == {"success": True}
        assert agent.post("/get_counter_value", {}) == {"count": 4}
        assert agent.post("/verify", {**row, "response": {"output": []}})["reward"] == 1.0
    finally:
        assert stop(proc) == 0
    assert main(["replay", "--db", block["db"]]) == 0


def counter_as_ng_run_starts_it(tmp_path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Counter's block (host, port and db filled in) and the variables ng_run starts its app.py with."""
    config = nemo_config("counter")
    block = config["counter_resources_server"]["resources_servers"]["counter"]
    block.update(host="127.0.0.1", port=free_port(), db=str(tmp_path / "counter.db"))
    env = {"NEMO_GYM_CONFIG_DICT": yaml.safe_dump(config), "NEMO_GYM_CONFIG_PATH": "counter_resources_server"}
    return block, env


def test_served_beside_nemo_gyms_own_environments_package(tmp_path: Path) -> None:
    # ng_run installs nemo-gym in every server's venv, and nemo-gym ships a top-level `environments`
    # package of its own (abstention, blackjack, ...), found before ours: a bundled name must
    # still mean our environment, not "unknown environment".
    theirs = tmp_path / "site-packages" / "environments"
    (theirs / "blackjack").mkdir(parents=True)
    (theirs / "__init__.py").write_text("")
    (theirs / "blackjack" / "__init__.py").write_text("")
    _, env = counter_as_ng_run_starts_it(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(ENVIRONMENTS / "counter"), str(theirs.parent)])
    proc, url = start([sys.executable, "app.py"], ENVIRONMENTS / "counter", env)
    try:
        agent = Rollout(url)
        agent.post("/seed_session", {"responses_create_params": {"input": []}, "initial_count": 1})
        assert agent.post("/get_counter_value", {}) == {"count": 1}
    finally:
        assert stop(proc) == 0


def test_serve_options_in_the_block_take_effect_and_the_command_line_wins(tmp_path: Path) -> None:
    # Under ng_run, app.py gets no command line: the block is the only place to cap a server.
    block, env = counter_as_ng_run_starts_it(tmp_path)
    block.update(max_live=1, max_events=3, sync="normal")
    env["NEMO_GYM_CONFIG_DICT"] = yaml.safe_dump(
        {"counter_resources_server": {"resources_servers": {"counter": block}}}
    )
    row = {"responses_create_params": {"input": []}, "initial_count": 1}
    proc, url = start([sys.executable, "app.py"], ENVIRONMENTS / "counter", env)
    try:
        first = Rollout(url)
        first.post("/seed_session", row)
        for _ in range(2):
            assert first.post("/increment_counter", {"count": 1}) == {"success": True}
        with pytest.raises(urllib.error.HTTPError) as capped:  # its fourth event
            first.post("/increment_counter", {"count": 1})
        assert capped.value.code == 409 and b"cap of 3 events" in capped.value.read()
        with pytest.raises(urllib.error.HTTPError) as full:
            Rollout(url).post("/seed_session", row)
        assert full.value.code == 503 and b"cap of 1 live sessions" in full.value.read()
        # At `sync: normal` SQLite's commit is all: no syncer process is started to fsync it.
        assert Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text() == ""
    finally:
        assert stop(proc) == 0
    # The same file with --max-live 2 given: the command line's value stands.
    (tmp_path / "c.yaml").write_text(env["NEMO_GYM_CONFIG_DICT"])
    command = [
        sys.executable,
        "-m",
        "eventsourced_env",
        "serve",
        "--config",
        str(tmp_path / "c.yaml"),
        "--max-live",
        "2",
    ]
    proc, url = start(command, tmp_path, {})
    try:
        Rollout(url).post("/seed_session", row)
        assert "session_id" in Rollout(url).post("/seed_session", row)
    finally:
        assert stop(proc) == 0


def test_keys_no_one_reads_are_named_at_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in bundled():  # NeMo Gym's own keys, and ours, are no surprise
        assert find_server(nemo_config(name)).warnings == ()
    config = nemo_config("counter")
    config["counter_resources_server"]["resources_servers"]["counter"].update(max_lve=4, num_workers=4)
    warnings = find_server(config).warnings
    assert warnings[0].startswith("counter_resources_server: ignoring 'max_lve': neither esenv nor NeMo Gym")
    assert (
        warnings[1]
        == "counter_resources_server: ignoring num_workers: 4: one esenv process serves each server"
    )


def test_every_serve_option_can_be_set_in_the_block() -> None:
    # A new `serve` option is either a key of the block or deliberately not one.
    from eventsourced_env.cli import serve_command
    from eventsourced_env.nemo import SERVE_OPTIONS

    names = {p.name for p in serve_command.params} - {"config_file", "instance", "nemo_gym"}
    judge = {n for n in names if n is not None and n.startswith("judge_")}  # the block's `judge:` sets them
    read_by_find_server = {"env", "host", "port", "db", "token"}
    assert names - judge - read_by_find_server == {"synchronous" if o == "sync" else o for o in SERVE_OPTIONS}


def test_ctrl_c_of_the_runner_stops_server_and_syncer_without_a_traceback(tmp_path: Path) -> None:
    # Ctrl-C in ng_run's terminal reaches its whole process group: the runner, our server and the
    # syncer the server started. The syncer must leave its end to the server (it exits when its
    # stdin closes), not die at once with a KeyboardInterrupt traceback.
    block, env = counter_as_ng_run_starts_it(tmp_path)
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=ENVIRONMENTS / "counter",
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's job is
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    agent = Rollout(url)
    agent.post("/seed_session", {"responses_create_params": {"input": []}, "initial_count": 1})
    assert agent.post("/increment_counter", {"count": 2}) == {"success": True}  # the syncer runs
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert main(["replay", "--db", block["db"]]) == 0


def test_serve_reads_the_same_yaml_judge_included(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = nemo_config("qa_judge")
    block = config["qa_judge_resources_server"]["resources_servers"]["qa_judge"]
    row = orjson.loads((ENVIRONMENTS / "qa_judge" / "data" / "example.jsonl").read_bytes().splitlines()[0])
    with StubJudge() as judge:
        block.update(db=str(tmp_path / "qa.db"), port=0, judge={**block["judge"], "base_url": judge.base_url})
        (tmp_path / "qa.yaml").write_text(yaml.safe_dump(config))
        # The model comes from the environment, as the YAML's comment says it may.
        command = [sys.executable, "-m", "eventsourced_env", "serve", "--config", str(tmp_path / "qa.yaml")]
        proc, url = start(command, tmp_path, {"ESENV_JUDGE_MODEL": "stub-judge"})
        try:
            agent = Rollout(url)
            agent.post("/seed_session", row)
            steps = oracle(row)
            tool, args = next(steps)
            with pytest.raises(StopIteration):
                while True:
                    tool, args = steps.send(agent.post(f"/{tool}", args))
            assert agent.post("/verify", {**row, "response": {"output": []}})["reward"] == 1.0
        finally:
            assert stop(proc) == 0
        assert [body["model"] for _, body in judge.requests] == ["stub-judge"]
    assert (tmp_path / "qa.db").is_file()


def test_config_errors_are_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    both = {**nemo_config("counter"), **nemo_config("qa_judge")}
    with pytest.raises(ConfigError, match="2 resources servers"):
        find_server(both)
    with pytest.raises(ConfigError, match="no resources server instance 'nope'"):
        find_server(both, "nope")
    assert find_server(both, "qa_judge_resources_server").env == "qa_judge"
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_config("a: [")
    (tmp_path / "bad.yaml").write_text("# a comment\nfoo: [unclosed\n")
    assert main(["serve", "--config", str(tmp_path / "bad.yaml"), "--db", str(tmp_path / "x.db")]) == 2
    assert capsys.readouterr().err == (
        "Error: the NeMo Gym config is not valid YAML: line 3, column 1: expected ',' or ']', "
        "but got '<stream end>' (while parsing a flow sequence from line 2, column 6)\n"
    )
    assert not (tmp_path / "x.db").exists()
    monkeypatch.delenv("NEMO_GYM_CONFIG_DICT", raising=False)
    assert main(["serve", "--nemo-gym"]) == 2
    assert "NEMO_GYM_CONFIG_DICT is not set" in capsys.readouterr().err
    assert main(["serve"]) == 2


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("port", 99999, "`port` must be an integer from 0 to 65535"),
        ("port", True, "`port` must be an integer"),
        ("token", 12345, "`token` must be a string"),
        ("db", 5, "`db` must be a string"),
        ("host", [1], "`host` must be a string"),
        (
            "judge",
            {"model": "m", "base_url": "http://x/v1", "timeout": "abc"},
            "timeout must be a number above 0",
        ),
        (
            "judge",
            {"model": "m", "base_url": "http://x/v1", "max_concurrency": 0},
            "max_concurrency must be an integer of at least 1",
        ),
        (
            "judge",
            {"model": "m", "base_url": "http://x/v1", "max_retries": -3},
            "max_retries must be an integer of at least 0",
        ),
        ("judge", {"model": ["m"], "base_url": "http://x/v1"}, "judge setting model must be a string"),
        ("judge", {"model": "m", "base_url": 123}, "judge setting base_url must be a string"),
        ("max_live", 0, "`max_live`: 0 is not in the range x>=1"),
        ("cache_size", True, "`cache_size`: True is not a valid integer range"),
        ("idle_ttl", "soon", "`idle_ttl`: 'soon' is not a valid float range"),
        ("sync", "OFF", "`sync`: 'OFF' is not one of 'full', 'normal'"),
        ("insecure", "yes", "`insecure`: must be true or false, not 'yes'"),
    ],
)
def test_wrong_typed_config_values_are_one_line_at_start(
    tmp_path: Path, key: str, value: Any, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = nemo_config("qa_judge")
    config["qa_judge_resources_server"]["resources_servers"]["qa_judge"][key] = value
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    db = tmp_path / "c.db"
    assert main(["serve", "--config", str(tmp_path / "c.yaml"), "--db", str(db), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not db.exists()


@pytest.mark.parametrize(
    ("judge", "message"),
    [
        ({"max_concurrency": 0}, "judge setting max_concurrency must be an integer of at least 1, not 0"),
        ({"timeout": "abc"}, "judge setting timeout must be a number above 0, not 'abc'"),
        ({"api": "completions"}, "judge API must be one of chat, responses, not 'completions'"),
        ({"retries": 3}, "unknown judge setting(s): retries"),
    ],
)
def test_a_wrong_judge_block_is_refused_for_an_environment_without_a_judge(
    tmp_path: Path, judge: dict[str, Any], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = nemo_config("counter")
    config["counter_resources_server"]["resources_servers"]["counter"]["judge"] = judge
    with pytest.raises(ConfigError) as e:  # checked as it is read, before anything is served
        find_server(config)
    assert e.value.detail == message
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    db = tmp_path / "c.db"
    assert main(["serve", "--config", str(tmp_path / "c.yaml"), "--db", str(db), "--port", "0"]) == 2
    assert capsys.readouterr().err == f"Error: {message}\n"
    assert not db.exists()


def test_config_flags_out_of_place_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "counter", "--instance", "nope", "--db", str(tmp_path / "x.db")]) == 2
    assert "--instance names a server of --config" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(nemo_config("counter")))
    assert main(["serve", "--nemo-gym", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "not both" in capsys.readouterr().err

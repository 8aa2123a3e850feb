"""LLM-as-judge verifiers as recorded effects, against a real local HTTP judge (tests/judge_stub.py)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import DummyCookieJar
from aiohttp.test_utils import TestClient

from environments.qa_judge import QATask, judge_request, oracle, rules_verdict
from environments.qa_judge import env as qa_env
from environments.qa_judge.corpus import DOCUMENTS
from eventsourced_env import EffectFailed, SqliteStore
from eventsourced_env.cli import main
from eventsourced_env.conformance import trajectory_response
from eventsourced_env.errors import ConfigError
from eventsourced_env.events import VERIFIED
from eventsourced_env.judge import JudgeClient, JudgeConfig
from eventsourced_env.replay import check_log, reverify_logs
from eventsourced_env.server import create_app
from tests.conftest import ClientFactory
from tests.judge_stub import StubJudge
from tests.serverproc import ServerProcess
from tests.test_replay import scan_logs
from tests.test_server import Agent

ROWS = [
    orjson.loads(line) for line in Path("environments/qa_judge/data/example.jsonl").read_bytes().splitlines()
]


def client_for(judge: StubJudge, **settings: Any) -> JudgeClient:
    """A judge client of the stub, with quick backoff so retried tests stay short."""
    return JudgeClient(
        JudgeConfig(base_url=judge.base_url, model="stub-judge", **{"backoff": 0.01, **settings})
    )


async def qa_server(
    aiohttp_client: ClientFactory, db: Path, judge: JudgeClient | None
) -> TestClient[Any, Any]:
    performers = judge.performers() if judge is not None else None
    app = create_app(qa_env, SqliteStore(db), performers=performers)
    return await aiohttp_client(app, cookie_jar=DummyCookieJar())


async def rollout(
    client: TestClient[Any, Any], row: dict[str, Any], answer: str | None = None
) -> dict[str, Any]:
    """Play the oracle (answering `answer` instead, if given) the NeMo Gym way; the /verify reply."""
    agent = Agent(client)
    await agent.post("/seed_session", row)
    seen: list[tuple[str, Any, Any]] = []
    steps = oracle(row)
    observation = None
    try:
        while True:
            tool, args = steps.send(observation)
            if tool == "answer" and answer is not None:
                args = {"text": answer}
            status, observation, _ = await agent.post(f"/{tool}", args)
            assert status == 200, observation
            seen.append((tool, args, observation))
    except StopIteration:
        pass
    status, reply, _ = await agent.post("/verify", {**row, "response": trajectory_response(seen)})
    assert status == 200, reply
    return dict(reply)


def logs(db: Path) -> list[tuple[str, list[Any]]]:
    """Every session's log, in the order they were seeded."""
    return sorted(scan_logs(db), key=lambda log: log[1][0].at)


def verified_data(db: Path) -> list[dict[str, Any]]:
    return [e.data for _, events in logs(db) for e in events if e.kind == VERIFIED]


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_a_judgment_is_recorded_then_replayed_without_the_judge(
    aiohttp_client: ClientFactory, db_path: Path, api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with StubJudge() as judge:
        client = await qa_server(aiohttp_client, db_path, client_for(judge, api=api))
        right = await rollout(client, ROWS[0])
        wrong = await rollout(client, ROWS[1], answer="about two hours")
        await client.close()
        assert [path for path, _ in judge.requests] == [
            f"/v1{'/chat/completions' if api == 'chat' else '/responses'}"
        ] * 2
        sent = judge.requests[0][1]
        assert sent["model"] == "stub-judge"
        assert (sent["messages"] if api == "chat" else sent["input"]) == judge_request(
            qa_env.parse_task(ROWS[0]), "Mara Voss"
        )["messages"]
    assert (right["reward"], wrong["reward"]) == (1.0, 0.0)
    assert "_ng_failure_class" not in right
    first, second = verified_data(db_path)
    assert first["details"] == {"scorer": "judge", "verdict": "correct", "answer": "Mara Voss"}
    assert second["details"]["verdict"] == "incorrect"
    [effect] = first["effects"]
    assert effect["kind"] == "judge" and effect["request"] == judge_request(
        qa_env.parse_task(ROWS[0]), "Mara Voss"
    )
    assert effect["result"]["api"] == api and effect["result"]["text"].endswith("VERDICT: CORRECT")
    # The judge is gone: replay and re-verification use what the log recorded.
    assert all(check_log(qa_env, session, events) is None for session, events in logs(db_path))
    report = reverify_logs(logs(db_path), lambda name: qa_env)
    assert [(r.old, r.new, r.new_verdict) for r in report.results] == [
        (1.0, 1.0, "correct"),
        (0.0, 0.0, "incorrect"),
    ]
    assert not report.changed and not report.errors
    assert main(["replay", "--db", str(db_path)]) == 0
    assert main(["reverify", "--db", str(db_path), "--fail-on-change"]) == 0
    assert "2 verified session(s), 0 reward(s) changed" in capsys.readouterr().out


async def test_without_a_judge_the_rules_decide_and_say_so(
    aiohttp_client: ClientFactory, db_path: Path
) -> None:
    client = await qa_server(aiohttp_client, db_path, None)
    assert (await rollout(client, ROWS[2]))["reward"] == 1.0
    assert (await rollout(client, ROWS[2], answer="potatoes"))["reward"] == 0.0
    first, second = verified_data(db_path)
    assert first["details"] == {"scorer": "rules", "verdict": "correct", "answer": "saffron"}
    assert second["details"]["verdict"] == "incorrect"
    assert "effects" not in first
    # Recorded without a judge, re-verified without one: the rules again, never a judge.
    assert [r.new for r in reverify_logs(logs(db_path), lambda name: qa_env).results] == [1.0, 0.0]


def test_the_rules_do_not_pass_an_answer_that_pastes_the_notes() -> None:
    """The rules passed any answer in which the reference appears word for word, so a model that
    pasted the note it read (or every note: 1,588 characters, under `answer`'s 2,000) as its answer
    scored 1.0 on every row without answering. The rules now take a short answer only (the prompt
    asks for one); the judge's rubric already refuses an answer that hedges."""
    everything = " ".join(text for _, text in DOCUMENTS.values())
    for row in ROWS:
        task = qa_env.parse_task(row)
        assert task.source_doc is not None
        for pasted in (DOCUMENTS[task.source_doc][1], everything):
            assert not rules_verdict(task, pasted), (row, pasted)
        assert rules_verdict(task, task.expected_answer)
        assert rules_verdict(task, f"From the notes, I found that the answer is {task.expected_answer}.")


def test_429_500_and_malformed_replies_are_retried() -> None:
    with StubJudge() as judge:
        judge.plan = ["429", "500", "malformed", "noverdict"]
        result = client_for(judge).perform(judge_request(qa_env.parse_task(ROWS[0]), "Mara Voss"))
    assert len(judge.requests) == 4
    # A reply without a verdict is well-formed: the client returns it; the verifier decides what it means.
    assert result["text"] == "I am not sure."


def test_an_error_reply_cut_short_is_retried_not_a_crash() -> None:
    # A 500 whose body the judge (or a proxy) drops mid-way: reading it raised IncompleteRead out of
    # the client, so /verify was a 500 tool_failed, with nothing recorded and no retry.
    with StubJudge() as judge:
        judge.plan = ["500cut", "500cut"]
        result = client_for(judge).perform(judge_request(qa_env.parse_task(ROWS[0]), "Mara Voss"))
        assert len(judge.requests) == 3 and result["text"].endswith("VERDICT: CORRECT")
        judge.plan = ["500cut"] * 3
        with pytest.raises(EffectFailed, match=r"failed 3 time\(s\); last: HTTP 500"):
            client_for(judge, max_retries=2).perform(judge_request(qa_env.parse_task(ROWS[0]), "Mara Voss"))


def test_a_closed_client_stops_retrying() -> None:
    # The server closes its judge when it stops: its threads kept retrying (and waiting out their
    # backoff) for replies no one would read, which held the process for minutes after SIGTERM.
    with StubJudge(hold=0.3) as judge:
        judge.plan = ["500"] * 100
        client = client_for(judge, max_retries=50, backoff=30.0, max_backoff=30.0, max_concurrency=1)
        outcomes: list[str] = []

        def ask() -> None:
            try:
                client.perform(judge_request(qa_env.parse_task(ROWS[0]), "Mara Voss"))
                outcomes.append("answered")
            except EffectFailed as e:
                outcomes.append(e.detail)

        threads = [threading.Thread(target=ask, daemon=True) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # each has had its 500 (0.3 s each, one at a time) and waits out its backoff
        started = time.monotonic()
        client.close()
        for thread in threads:
            thread.join(10)
        # Each wakes from its 30 s backoff at once (the bound only tells that from the wait).
        assert time.monotonic() - started < 10 and not any(t.is_alive() for t in threads)
        assert len(judge.requests) == 3
        assert all(o.startswith("the server is stopping; the judge failed: HTTP 500") for o in outcomes)
        # Once closed, a call has its one attempt (a healthy judge still answers), no retry.
        with pytest.raises(EffectFailed, match="the server is stopping; the judge failed: HTTP 500"):
            client.perform(judge_request(qa_env.parse_task(ROWS[0]), "Mara Voss"))
        assert len(judge.requests) == 4
        judge.plan = []
        assert client.perform(judge_request(qa_env.parse_task(ROWS[0]), "Mara Voss"))["text"].endswith(
            "CORRECT"
        )


def test_sigterm_while_the_judge_fails_ends_its_retries_and_records_the_failure(db_path: Path) -> None:
    # The drain waited for every in-flight verification's retries and backoff against a judge that
    # was down (minutes with the defaults) before the process exited; the judge is now closed when
    # the signal comes: attempts in flight finish, none is retried, each /verify is answered.
    with (
        StubJudge() as judge,
        ServerProcess(
            "qa_judge",
            db_path,
            "--judge-base-url",
            judge.base_url,
            "--judge-model",
            "m",
            "--judge-retries",
            "50",
        ) as server,
    ):
        judge.plan = ["500"] * 1000
        url = server.url

        def rollout(i: int) -> dict[str, Any]:
            seeded = urllib.request.urlopen(
                urllib.request.Request(url + "/seed_session", orjson.dumps(ROWS[0]))
            )
            cookie = {"Cookie": seeded.headers["Set-Cookie"].split(";")[0]}
            call = urllib.request.Request(url + "/answer", orjson.dumps({"text": "Mara Voss"}), cookie)
            urllib.request.urlopen(call).read()
            body = orjson.dumps({**ROWS[0], "response": {"output": []}})
            reply: dict[str, Any] = orjson.loads(
                urllib.request.urlopen(
                    urllib.request.Request(url + "/verify", body, cookie), timeout=60
                ).read()
            )
            return reply

        with ThreadPoolExecutor(3) as pool:
            replies = [pool.submit(rollout, i) for i in range(3)]
            deadline = time.monotonic() + 10
            while len(judge.requests) < 6 and time.monotonic() < deadline:  # each in its backoff
                time.sleep(0.05)
            started = time.monotonic()
            assert server.stop() == 0
            assert time.monotonic() - started < 20  # not 50 retries' backoffs
            for reply in replies:
                answer = reply.result()
                assert (answer["reward"], answer["_ng_failure_class"]) == (0.0, "judge_failed")
                assert answer["_ng_failure_judge_error"].startswith("the server is stopping")
    failures = [d["failure"]["error"] for d in verified_data(db_path)]
    assert len(failures) == 3 and all(f.startswith("the server is stopping") for f in failures)


def test_an_interrupted_rejudging_stops_asking_the_judge(db_path: Path) -> None:
    # SIGTERM (or Ctrl-C) during `reverify --rejudge` waited, at exit, for every session queued on
    # its threads to be judged, retries and all: it kept calling (and paying) the judge for minutes.
    with ServerProcess("qa_judge", db_path) as server:  # no judge: the rules score them
        for _ in range(12):
            seeded = urllib.request.urlopen(
                urllib.request.Request(server.url + "/seed_session", orjson.dumps(ROWS[0]))
            )
            cookie = {"Cookie": seeded.headers["Set-Cookie"].split(";")[0]}
            body = orjson.dumps({**ROWS[0], "response": {"output": []}})
            call = urllib.request.Request(server.url + "/answer", orjson.dumps({"text": "Mara Voss"}), cookie)
            urllib.request.urlopen(call).read()
            urllib.request.urlopen(urllib.request.Request(server.url + "/verify", body, cookie)).read()
        assert server.stop() == 0
    with StubJudge(hold=5.0) as judge:  # every attempt times out
        flags = ["--judge-base-url", judge.base_url, "--judge-model", "m", "--judge-timeout", "0.5"]
        command = [sys.executable, "-m", "eventsourced_env", "reverify", "--db", str(db_path), "--rejudge"]
        with subprocess.Popen([*command, *flags, "--judge-concurrency", "2"], stderr=subprocess.PIPE) as proc:
            deadline = time.monotonic() + 20
            while len(judge.requests) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        assert len(judge.requests) <= 4  # the two in flight, perhaps a retry each: not 12 sessions' worth


def test_a_runaway_reply_is_a_failure_not_a_huge_event() -> None:
    # A judge that ignored max_tokens and answered 9 MiB (or 1 GB) was read whole into memory and
    # recorded in the verified event twice (its text and the whole reply): a 40 MB event for a
    # 20 MB reply, and past SQLite's 1 GB limit for a large enough one.
    with StubJudge() as judge:
        judge.plan = ["huge"]
        with pytest.raises(EffectFailed, match="larger than 8 MiB"):
            client_for(judge).perform(judge_request(qa_env.parse_task(ROWS[0]), "Mara Voss"))
        assert len(judge.requests) == 1


def test_a_judge_that_repeats_the_key_does_not_get_it_recorded() -> None:
    # The judge's own words go into the error, which the verified event records and /verify
    # returns to the agent (_ng_failure_judge_error): a judge or proxy that echoed the request's
    # Authorization header put the API key there, and into every export.
    with StubJudge() as judge:
        judge.plan = ["401echo"]
        with pytest.raises(EffectFailed) as failed:
            client_for(judge, api_key="sk-test-0123456789").perform(
                judge_request(qa_env.parse_task(ROWS[0]), "Mara Voss")
            )
    assert "sk-test-0123456789" not in failed.value.detail
    assert "HTTP 401" in failed.value.detail and "Bearer [API key]" in failed.value.detail


def test_a_slow_judge_times_out_and_is_retried() -> None:
    with StubJudge(slow=2.0) as judge:
        judge.plan = ["slow"]
        result = client_for(judge, timeout=0.2).perform(
            judge_request(qa_env.parse_task(ROWS[0]), "Mara Voss")
        )
    assert len(judge.requests) == 2 and result["text"].endswith("VERDICT: CORRECT")


def test_a_refused_request_is_not_retried() -> None:
    with StubJudge() as judge:
        judge.plan = ["401"]
        with pytest.raises(EffectFailed, match="refused the request: HTTP 401"):
            client_for(judge).perform(judge_request(qa_env.parse_task(ROWS[0]), "Mara Voss"))
    assert len(judge.requests) == 1


async def test_a_failing_judge_scores_zero_with_the_failure_recorded(
    aiohttp_client: ClientFactory, db_path: Path
) -> None:
    with StubJudge() as judge:
        judge.plan = ["500"] * 3
        client = await qa_server(aiohttp_client, db_path, client_for(judge, max_retries=2))
        reply = await rollout(client, ROWS[0])
        judge.plan = ["noverdict"]
        vague = await rollout(client, ROWS[0])
        await client.close()
    assert reply["reward"] == 0.0 and reply["_ng_failure_class"] == "judge_failed"
    assert "the judge failed 3 time(s); last: HTTP 500" in reply["_ng_failure_judge_error"]
    assert vague["reward"] == 0.0 and "no `VERDICT" in vague["_ng_failure_judge_error"]
    failed, unparsable = verified_data(db_path)
    assert failed["failure"] == {"kind": "judge", "error": reply["_ng_failure_judge_error"]}
    assert (
        failed["effects"][0]["error"] == failed["failure"]["error"] and "result" not in failed["effects"][0]
    )
    assert unparsable["effects"][0]["result"]["text"] == "I am not sure."
    # Re-verified without the judge: the same failures, from the record.
    results = reverify_logs(logs(db_path), lambda name: qa_env).results
    assert [(r.new, r.new_failure) for r in results] == [
        (0.0, failed["failure"]),
        (0.0, unparsable["failure"]),
    ]


async def test_rejudge_asks_again_and_reports_old_and_new_verdicts(
    aiohttp_client: ClientFactory, db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with StubJudge() as judge:
        client = await qa_server(aiohttp_client, db_path, client_for(judge))
        await rollout(client, ROWS[0])
        await rollout(client, ROWS[3])
        await client.close()
        judge.verdict = "INCORRECT"  # a stricter judge
        asked = len(judge.requests)
        assert main(["reverify", "--db", str(db_path), "--json"]) == 0
        assert len(judge.requests) == asked  # recorded judgments reused
        capsys.readouterr()
        flags = ["--rejudge", "--judge-base-url", judge.base_url, "--judge-model", "stub-judge"]
        assert main(["reverify", "--db", str(db_path), "--json", *flags]) == 0
        assert len(judge.requests) == asked + 2
    report = orjson.loads(capsys.readouterr().out)
    assert report["changed"] == 2 and report["verdicts_changed"] == 2
    assert {(c["old"], c["new"], c["old_verdict"], c["new_verdict"]) for c in report["changes"]} == {
        (1.0, 0.0, "correct", "incorrect")
    }
    # Re-judging reads the log only: the recorded verdicts stand.
    assert [d["details"]["verdict"] for d in verified_data(db_path)] == ["correct", "correct"]
    # A judge that fails now is an error for each session, not a reward that fell to 0.
    with StubJudge() as down:
        down.plan = ["500"] * 100
        flags = ["--rejudge", "--judge-base-url", down.base_url, "--judge-model", "stub-judge"]
        assert main(["reverify", "--db", str(db_path), "--json", *flags, "--judge-retries", "0"]) == 1
    report = orjson.loads(capsys.readouterr().out)
    assert (report["verified_sessions"], report["changed"], report["mean_reward_after"]) == (0, 0, None)
    for error in report["errors"]:
        assert error["reason"].startswith("re-asking failed (judge_failed: the judge failed 1 time(s)")
        assert "HTTP 500" in error["reason"] and error["reason"].endswith("; not scored")
    assert len(report["errors"]) == 2


def test_rejudge_needs_a_judge(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("ESENV_JUDGE_MODEL", "ESENV_JUDGE_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    db_path.touch()
    assert main(["reverify", "--db", str(db_path), "--rejudge"]) == 2
    assert "--rejudge needs a judge" in capsys.readouterr().err


async def test_judge_calls_are_bounded_and_leave_the_loop_free(
    aiohttp_client: ClientFactory, db_path: Path
) -> None:
    with StubJudge(hold=0.3) as judge:
        client = await qa_server(aiohttp_client, db_path, client_for(judge, max_concurrency=2))
        replies = await asyncio.gather(*(rollout(client, ROWS[i % 5]) for i in range(6)))
        await client.close()
    assert [r["reward"] for r in replies] == [1.0] * 6
    # Two judge calls at once: a blocked event loop would have allowed one; the bound, no more.
    assert len(judge.requests) == 6 and judge.max_inflight == 2


def test_the_judge_comes_from_options_or_the_environment() -> None:
    assert JudgeConfig.resolve({}, {}) is None
    assert JudgeConfig.resolve({}, {"OPENAI_BASE_URL": "http://x/v1", "OPENAI_API_KEY": "k"}) is None
    config = JudgeConfig.resolve(
        {"max_retries": 1},
        {"ESENV_JUDGE_MODEL": "m", "OPENAI_BASE_URL": "http://x/v1/", "OPENAI_API_KEY": "k"},
    )
    assert config == JudgeConfig(base_url="http://x/v1", model="m", api_key="k", max_retries=1)
    given = {"base_url": "http://y/v1", "model": "n", "api": "responses"}
    assert JudgeConfig.resolve(given, {"ESENV_JUDGE_MODEL": "m"}) == JudgeConfig(
        "http://y/v1", "n", api="responses"
    )
    for given, environ, message in [
        ({"base_url": "http://y/v1"}, {}, "no model"),
        ({"model": "m"}, {}, "no base URL"),
        ({"model": "m", "base_url": "http://y", "api": "completions"}, {}, "must be one of"),
        ({"model": "m", "base_url": "http://y", "retries": 3}, {}, "unknown judge setting"),
    ]:
        with pytest.raises(ConfigError, match=message):
            JudgeConfig.resolve(given, environ)


def test_a_judge_url_that_cannot_be_right_is_refused_at_start(
    db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # These were accepted: the server started, then every rollout's judge call failed after its
    # retries (URLError: unknown url type), each scored 0 as judge_failed; a key in the URL was
    # printed in the start line.
    for url, message in [
        ("127.0.0.1:9000/v1", "must start with http:// or https://"),
        ("htp://127.0.0.1:9000/v1", "must start with http:// or https://"),
        ("http:/127.0.0.1:9000/v1", "names no host"),
        ("http://127.0.0.1:90000/v1", "port"),
        ("http://user:sk-secret@127.0.0.1:9000/v1", "ESENV_JUDGE_API_KEY"),
    ]:
        with pytest.raises(ConfigError, match=message):
            JudgeConfig.resolve({"model": "m", "base_url": url}, {})
        flags = ["--judge-base-url", url, "--judge-model", "m"]
        assert main(["serve", "qa_judge", "--db", str(db_path), "--port", "0", *flags]) == 2
        err = capsys.readouterr().err
        assert "judge base URL" in err and "sk-secret" not in err, err
        assert "rejudge" not in err
        assert main(["reverify", "--db", str(db_path), "--rejudge", *flags]) == 2
        assert "judge base URL" in capsys.readouterr().err
    assert JudgeConfig.resolve({"model": "m", "base_url": "HTTPS://judge.example:8443/v1"}, {}) is not None


async def test_rejudging_keeps_the_judges_concurrency_busy(
    aiohttp_client: ClientFactory, db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with StubJudge() as judge:
        client = await qa_server(aiohttp_client, db_path, client_for(judge))
        for i in range(6):
            await rollout(client, ROWS[i % 5])
        await client.close()
    with StubJudge(hold=0.3) as slow:
        flags = ["--rejudge", "--judge-base-url", slow.base_url, "--judge-model", "stub-judge"]
        assert main(["reverify", "--db", str(db_path), "--json", *flags, "--judge-concurrency", "3"]) == 0
        assert len(slow.requests) == 6 and slow.max_inflight == 3  # one at a time, it was
    report = orjson.loads(capsys.readouterr().out)
    assert report["verified_sessions"] == 6 and report["errors"] == []


def test_a_reply_that_trickles_in_is_cut_off_at_the_timeout() -> None:
    with StubJudge() as judge:
        judge.plan = ["drip", "drip"]  # whole, valid replies, in some 20 reads 0.05 s apart: about a second
        client = client_for(judge, timeout=0.3, max_retries=1)
        with pytest.raises(EffectFailed, match=r"took longer than the 0\.3 s timeout"):
            client.perform(judge_request(qa_env.parse_task(ROWS[0]), "Mara Voss"))
    assert len(judge.requests) == 2  # cut off, then retried


def test_the_rules_read_decimals_and_commas_as_a_reader_would() -> None:
    # "2.5" said "5" to the rules (the dot split it), and "saffron,tea" said "saffrontea".
    task = QATask(question="How many arches?", expected_answer="five", aliases=["5"])
    assert not rules_verdict(task, "about 2.5 arches")
    assert rules_verdict(task, "5 arches.")
    assert rules_verdict(QATask(question="q", expected_answer="saffron"), "saffron,tea")
    assert rules_verdict(QATask(question="q", expected_answer="1200 people"), "1,200 people")
    # A form with no words matches nothing, not every answer.
    assert not rules_verdict(QATask(question="q", expected_answer="?", aliases=["the"]), "the")
    assert rules_verdict(QATask(question="q", expected_answer="Lund", aliases=["—"]), "Lund")

"""A local OpenAI-compatible judge for tests: chat completions and responses, with scripted faults.

It runs its own event loop in a thread on 127.0.0.1 (a free port), so both async tests (whose loop
must stay free) and plain CLI tests can use it. Its verdict: CORRECT iff the reference answer,
lower-cased, is in the candidate answer (or `verdict` when set, to play a judge that changed).
"""

from __future__ import annotations

import asyncio
import re
import threading
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web


class StubJudge:
    """`with StubJudge() as judge:` serves `judge.base_url` until the block ends."""

    def __init__(self, *, hold: float = 0.0, slow: float = 2.0) -> None:
        #: What the next requests get, in order: "429", "500", "401", "malformed", "slow", "noverdict",
        #: "drip", "500cut" (a 500 whose body is cut short: the connection closes mid-reply), "huge",
        #: "401echo" (a refusal that repeats the request's Authorization header).
        self.plan: list[str] = []
        #: Every request: (path, body).
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.verdict: str | None = None
        self.hold = hold
        self.slow = slow
        self.inflight = 0
        self.max_inflight = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.port = 0

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (ending in /v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def _run(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/responses", self._handle)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.close()

    def __enter__(self) -> StubJudge:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _judge(self, messages: list[dict[str, Any]]) -> str:
        prompt = messages[-1]["content"]
        reference = re.search(r"Reference answer: (.*)", prompt)
        candidate = re.search(r"Candidate answer: (.*)", prompt)
        correct = bool(reference and candidate and reference[1].lower() in candidate[1].lower())
        verdict = self.verdict or ("CORRECT" if correct else "INCORRECT")
        reason = "matches" if verdict == "CORRECT" else "misses"
        return f"The candidate {reason} the reference.\nVERDICT: {verdict}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append((request.path, body))
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            fault = self.plan.pop(0) if self.plan else None
            await asyncio.sleep(self.slow if fault == "slow" else self.hold)
            if fault in ("429", "500", "401"):
                return web.json_response({"error": {"message": f"stub fault {fault}"}}, status=int(fault))
            if fault == "500cut":
                stream = web.StreamResponse(status=500, headers={"Content-Type": "application/json"})
                stream.content_length = 1000
                await stream.prepare(request)
                await stream.write(b'{"error": {"message": "upstream')
                await asyncio.sleep(0.05)
                assert request.transport is not None
                request.transport.close()
                return stream
            if fault == "401echo":  # a proxy that repeats the request's headers in its refusal
                said = f"bad key: {request.headers.get('Authorization')}"
                return web.json_response({"error": {"message": said}}, status=401)
            if fault == "huge":  # a runaway judge: a valid reply of 9 MiB and more
                text = "x" * (9 << 20) + "\nVERDICT: CORRECT"
                return web.json_response(
                    {"model": body["model"], "choices": [{"message": {"content": text}}]}
                )
            if fault == "malformed":
                return web.Response(text='{"choices": [', content_type="application/json")
            text = (
                "I am not sure."
                if fault == "noverdict"
                else self._judge(body.get("messages") or body["input"])
            )
            if request.path.endswith("/responses"):
                content = [{"type": "output_text", "text": text, "annotations": []}]
                output = [{"type": "message", "id": "msg_1", "role": "assistant", "content": content}]
                return web.json_response(
                    {"id": "resp_1", "object": "response", "model": body["model"], "output": output}
                )
            message = {"role": "assistant", "content": text}
            choices = [{"index": 0, "message": message, "finish_reason": "stop"}]
            reply = {"id": "chatcmpl-1", "model": body["model"], "choices": choices}
            if (
                fault == "drip"
            ):  # a whole, valid reply, a few bytes at a time (a judge or proxy that trickles)
                raw = orjson.dumps(reply)
                stream = web.StreamResponse(headers={"Content-Type": "application/json"})
                stream.content_length = len(raw)
                await stream.prepare(request)
                for i in range(0, len(raw), 16):
                    await stream.write(raw[i : i + 16])
                    await asyncio.sleep(0.05)
                return stream
            return web.json_response(reply)
        finally:
            self.inflight -= 1

"""An OpenAI-compatible LLM judge: the performer of `"judge"` effects.

`JudgeClient.perform(request)` takes what a verifier asked for (`{"messages": [...], "temperature",
"max_tokens"}`), sends it to `/chat/completions` or `/responses` under the configured base URL, and
returns `{"api", "model", "text", "reply"}` (the reply's text and the whole reply), which the event
records. It blocks (stdlib HTTP with a timeout), so the server calls it from its effect threads;
at most `max_concurrency` calls are in flight. Rate limits (429), server errors (5xx), timeouts,
dropped connections and malformed replies are retried with exponential backoff; whatever still
fails, or is refused outright (401, 400…), raises `EffectFailed`, which the verifier's event records.

Configuration comes from the caller (CLI options, the NeMo Gym YAML) or the environment:
`ESENV_JUDGE_BASE_URL` (else `OPENAI_BASE_URL`), `ESENV_JUDGE_MODEL`, `ESENV_JUDGE_API_KEY` (else
`OPENAI_API_KEY`), `ESENV_JUDGE_API` (`chat` or `responses`). Nothing is assumed: no base URL and
model, no judge.

Depends only on `errors`; the server and CLI hand it to `Sessions` as a performer.
"""

from __future__ import annotations

import http.client
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from .errors import ConfigError, EffectFailed

__all__ = ["API_PATHS", "MAX_REPLY", "JudgeClient", "JudgeConfig", "check_settings"]

Api = Literal["chat", "responses"]
API_PATHS: dict[str, str] = {"chat": "/chat/completions", "responses": "/responses"}
_KIND = "judge"
#: The largest judge reply read (bytes): the event records its text and the whole reply.
MAX_REPLY = 8 << 20


class _Transient(Exception):
    """One attempt failed in a way worth retrying; `wait` is how long the server asked us to wait."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


#: The judge's numeric settings: name -> (bound, integers only, strictly above the bound).
_LIMITS = {
    "timeout": (0, False, True),
    "max_retries": (0, True, False),
    "max_concurrency": (1, True, False),
    "backoff": (0, False, False),
    "max_backoff": (0, False, False),
}
_TEXTS = ("base_url", "model", "api_key")


def _check(name: str, value: Any) -> None:
    """Raise ConfigError unless `value` is one judge setting `name` may have."""
    if name in _TEXTS:
        if not isinstance(value, str):
            shown = "something else" if name == "api_key" else repr(value)  # a key is not repeated
            raise ConfigError(f"judge setting {name} must be a string, not {shown}")
        if name == "base_url":
            _check_url(value)
    elif name == "api":
        if value not in API_PATHS:
            raise ConfigError(f"judge API must be one of {', '.join(API_PATHS)}, not {value!r}")
    else:
        low, integer, strict = _LIMITS[name]
        kind = int if integer else int | float
        if isinstance(value, bool) or not isinstance(value, kind) or value < low or (strict and value == low):
            what = "an integer" if integer else "a number"
            bound = f"above {low}" if strict else f"of at least {low}"
            raise ConfigError(f"judge setting {name} must be {what} {bound}, not {value!r}")


def _check_url(url: str) -> None:
    """Raise ConfigError unless `url` can be a judge's base URL: else the server would start and
    every judge call fail, after its retries, with each rollout scored 0."""
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port  # out of range or not a number: ValueError
    except ValueError as e:
        raise ConfigError(f"the judge base URL has a bad host or port: {e}") from e
    if parts.username is not None or parts.password is not None:  # the URL is shown: no key in it
        raise ConfigError("the judge base URL must not hold credentials: give the key as ESENV_JUDGE_API_KEY")
    if parts.scheme.lower() not in ("http", "https"):
        raise ConfigError(
            f"the judge base URL must start with http:// or https:// (e.g. http://host/v1), not {url!r}"
        )
    if not parts.hostname:
        raise ConfigError(f"the judge base URL names no host: {url!r} (e.g. http://host/v1)")
    if port == 0:
        raise ConfigError(f"the judge base URL has a bad host or port: port 0 in {url!r}")


def check_settings(given: Mapping[str, Any]) -> None:
    """Raise ConfigError for a judge setting in `given` (options or a config's `judge:` block; None:
    unset) that is unknown or out of range, whether or not a judge is made of them: a config is
    checked whole at start, even for an environment that asks no judge."""
    unknown = set(given) - {*_TEXTS, "api", *_LIMITS}
    if unknown:
        raise ConfigError(f"unknown judge setting(s): {', '.join(sorted(map(str, unknown)))}")
    for name, value in given.items():
        if value is not None:
            _check(name, value)


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge is and how hard to try: base URL (ending in /v1), model, key, API and limits."""

    base_url: str
    model: str
    api_key: str | None = None
    api: Api = "chat"
    timeout: float = 60.0
    max_retries: int = 4
    max_concurrency: int = 16
    backoff: float = 0.5
    max_backoff: float = 8.0

    def __post_init__(self) -> None:
        # The command line checks its options; a YAML config's `judge:` block comes here unchecked.
        for name in (*_TEXTS, "api", *_LIMITS):
            value = getattr(self, name)
            if not (name == "api_key" and value is None):
                _check(name, value)

    @classmethod
    def resolve(cls, given: Mapping[str, Any], environ: Mapping[str, str] = os.environ) -> JudgeConfig | None:
        """The judge `given` (options or YAML keys; None: unset), completed from the environment; or None.

        A model makes a judge; raises ConfigError for half a one (no base URL, an unknown API…).
        """
        check_settings(given)
        values = {k: v for k, v in given.items() if v is not None}
        model = values.pop("model", None) or environ.get("ESENV_JUDGE_MODEL")
        own_url = values.pop("base_url", None) or environ.get("ESENV_JUDGE_BASE_URL")
        if not model:
            # OPENAI_BASE_URL alone does not make a judge: it is often set for other tools.
            if own_url:
                raise ConfigError("the judge has a base URL but no model: give one (ESENV_JUDGE_MODEL)")
            return None
        base_url = own_url or environ.get("OPENAI_BASE_URL")
        if not base_url:
            raise ConfigError("the judge has a model but no base URL: give one (ESENV_JUDGE_BASE_URL)")
        api_key = (
            values.pop("api_key", None) or environ.get("ESENV_JUDGE_API_KEY") or environ.get("OPENAI_API_KEY")
        )
        api = values.pop("api", None) or environ.get("ESENV_JUDGE_API") or "chat"
        _check("api", api)
        chosen: Api = "chat" if api == "chat" else "responses"
        url = base_url.rstrip("/") if isinstance(base_url, str) else base_url  # else refused as such
        return cls(base_url=url, model=model, api_key=api_key, api=chosen, **values)


class JudgeClient:
    """Asks an OpenAI-compatible judge; `perform` is the `"judge"` performer a server is given."""

    def __init__(self, config: JudgeConfig) -> None:
        self.config = config
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        self._closed = threading.Event()

    def close(self) -> None:
        """Stop retrying: a call in its backoff fails now, and every call gets one attempt at most
        (a healthy judge still answers it). The server's threads would otherwise keep retrying
        a failing judge, and hold the process after SIGTERM for minutes."""
        self._closed.set()

    def performers(self) -> dict[str, Callable[[Any], Any]]:
        """The performers this client provides, by effect kind."""
        return {_KIND: self.perform}

    def perform(self, request: Any) -> dict[str, Any]:
        """Ask the judge; the recordable result, or EffectFailed once the retries are spent."""
        if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
            raise EffectFailed('a judge request must be {"messages": [...], ...}', _KIND)
        key = self.config.api_key
        try:
            return self._ask(self._body(request))
        except EffectFailed as e:
            # The judge's words are recorded and returned to the agent: a judge or proxy that
            # repeats the request's Authorization header must not put the key there.
            if key and key in e.detail:
                raise EffectFailed(e.detail.replace(key, "[API key]"), _KIND) from None
            raise

    def _ask(self, body: dict[str, Any]) -> dict[str, Any]:
        """`perform`'s attempts, retries and backoff."""
        url = self.config.base_url + API_PATHS[self.config.api]
        failures = 0
        while True:
            try:
                with self._slots:
                    reply = self._post(url, body)
                text = self._text(reply)
            except _Transient as e:
                failures += 1
                if failures > self.config.max_retries:
                    raise EffectFailed(f"the judge failed {failures} time(s); last: {e}", _KIND) from e
                if self._closed.wait(self._delay(failures - 1, e.wait)):
                    raise EffectFailed(f"the server is stopping; the judge failed: {e}", _KIND) from e
                continue
            return {
                "api": self.config.api,
                "model": reply.get("model", self.config.model),
                "text": text,
                "reply": reply,
            }

    def _body(self, request: dict[str, Any]) -> dict[str, Any]:
        """The HTTP body for the configured API."""
        body: dict[str, Any] = {"model": self.config.model}
        if self.config.api == "chat":
            body["messages"] = request["messages"]
            if "max_tokens" in request:
                body["max_tokens"] = request["max_tokens"]
        else:
            body["input"] = request["messages"]
            if "max_tokens" in request:
                body["max_output_tokens"] = request["max_tokens"]
        if "temperature" in request:
            body["temperature"] = request["temperature"]
        return body

    def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """One attempt: the reply as JSON, `_Transient` for what a retry may cure, else EffectFailed."""
        headers = {"Content-Type": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        req = urllib.request.Request(url, data=orjson.dumps(body), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.config.timeout) as resp:
                raw = self._read(resp)
        except urllib.error.HTTPError as e:
            detail = f"HTTP {e.code}: {_error_body(e)}"
            if e.code == 429 or e.code >= 500:
                raise _Transient(detail, _retry_after(e.headers.get("Retry-After"))) from e
            raise EffectFailed(f"the judge refused the request: {detail}", _KIND) from e
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
            raise _Transient(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from e
        try:
            reply = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise _Transient(f"the reply is not JSON: {raw[:100]!r}") from e
        if not isinstance(reply, dict):
            raise _Transient("the reply is not a JSON object")
        return reply

    def _read(self, resp: Any) -> bytes:
        """The reply's body, within the timeout as a whole: the socket's own applies to each read,
        so a judge (or proxy) that trickles its reply in could otherwise hold the call for ever."""
        deadline = time.monotonic() + self.config.timeout
        chunks, size = [], 0
        while chunk := resp.read1(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REPLY:  # a runaway judge: each reply would be held whole, and logged twice
                raise EffectFailed(
                    f"the judge's reply is larger than {MAX_REPLY >> 20} MiB; not recorded", _KIND
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"the reply took longer than the {self.config.timeout:g} s timeout")
        return b"".join(chunks)

    def _text(self, reply: dict[str, Any]) -> str:
        """The judge's answer in a chat-completions or responses reply, or `_Transient` if it has none."""
        try:
            if self.config.api == "chat":
                text = reply["choices"][0]["message"]["content"]
            else:
                text = "".join(
                    part["text"]
                    for item in reply["output"]
                    if item.get("type") == "message"
                    for part in item["content"]
                    if part.get("type") == "output_text"
                )
        except (KeyError, IndexError, TypeError, AttributeError) as e:
            raise _Transient(f"the reply has no answer where the {self.config.api} API puts it") from e
        if not isinstance(text, str) or not text.strip():
            raise _Transient("the reply's answer is empty")
        return text

    def _delay(self, attempt: int, asked: float | None) -> float:
        """Exponential backoff with jitter (so retries of many rollouts spread out), or what 429 asked."""
        delay = min(self.config.max_backoff, self.config.backoff * 2.0**attempt) * random.uniform(0.5, 1.0)
        return min(self.config.max_backoff, max(delay, asked or 0.0))


def _error_body(error: urllib.error.HTTPError) -> str:
    """The start of an error reply's body, for the message; what could be read of it if the judge
    dropped the connection or stalled mid-body (the status alone decides whether to retry)."""
    try:
        raw = error.read(200)
    except (OSError, http.client.HTTPException) as e:
        raw = getattr(e, "partial", b"")
        raw = (raw if isinstance(raw, bytes) else b"") + f" [body cut short: {type(e).__name__}]".encode()
    return raw[:200].decode(errors="replace")


def _retry_after(value: str | None) -> float | None:
    """A `Retry-After` header in seconds, if it is a number."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None

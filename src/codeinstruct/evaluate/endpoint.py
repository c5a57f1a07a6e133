"""Generation for evaluation on any OpenAI-compatible server (vLLM, TGI, `codeinstruct serve`, ...).

`eval humaneval --endpoint URL` and `eval infill --endpoint URL` send the same prompts, stop words
and seeds as local generation to `POST {URL}/v1/completions` and write the same samples file. One
request per problem: `n` samples (1 when greedy), `seed` = the problem's seed, `temperature`,
`top_p`, `max_tokens`, `stop`. At most `concurrency` requests are in flight at once (httpx, one
connection pool).

Fill-in-the-Middle goes as `prompt` + `suffix` (the OpenAI completions API's FIM) or as one raw
prompt string `<fim_prefix>PREFIX<fim_suffix>SUFFIX<fim_middle>` (SPM:
`<fim_prefix><fim_suffix>SUFFIX<fim_middle>PREFIX`), which a StarCoder server reads as its control
tokens. `fim_format="auto"` sends the first problem with `suffix` alone and, when the server
answers 400/422 about `suffix` (vLLM does), sends everything raw; SPM is always raw.

What comes back is cut at the stop words here too (a server can miss one that ends inside a
token, and some servers cap how many stop strings a request may carry: on a 400/422 about `stop`
the request is sent again with OpenAI's four, and the rest are applied here). 429 and 503 are
retried with exponential backoff (honouring Retry-After); a network error, a timeout or any other
error status is a one-line `CodeinstructError` naming the URL.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from codeinstruct.errors import CodeinstructError
from codeinstruct.prompts import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

FIM_FORMATS = ("auto", "suffix", "raw")
RETRY_STATUSES = (429, 503)
OPENAI_MAX_STOP = 4  # the most stop strings OpenAI's API (and TGI's default) accepts


@dataclass(frozen=True)
class Endpoint:
    url: str  # the server's base URL: http://host:port or http://host:port/v1
    api_key: str | None = None
    model: str | None = None  # the served model's name; None: the first of GET /v1/models
    concurrency: int = 8  # requests in flight at once
    timeout_s: float = 600.0  # per request
    retries: int = 6  # on 429/503
    backoff_s: float = 1.0  # first retry's wait; doubles each time (with jitter)
    fim_format: str = "auto"  # auto | suffix | raw

    def __post_init__(self):
        if not self.url.startswith(("http://", "https://")):
            raise CodeinstructError(f"--endpoint must be an http(s) URL, not '{self.url}'")
        if self.concurrency < 1:
            raise CodeinstructError(f"--concurrency must be at least 1 (got {self.concurrency})")
        if self.fim_format not in FIM_FORMATS:
            raise CodeinstructError(f"unknown --fim-format '{self.fim_format}' ({', '.join(FIM_FORMATS)})")

    @property
    def base(self) -> str:
        """The URL that /v1/... is appended to."""
        return self.url.rstrip("/").removesuffix("/v1")


@dataclass(frozen=True)
class TextRequest:
    """One problem's request: n samples of `prompt` (FIM when `suffix` is not None) with `seed`."""

    prompt: str
    n: int
    seed: int
    suffix: str | None = None
    spm: bool = False


def raw_fim_prompt(prefix: str, suffix: str, spm: bool = False) -> str:
    """The FIM prompt as one string of StarCoder's control-token strings (codeinstruct.prompts' layouts)."""
    if spm:
        return f"{FIM_PREFIX}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{prefix}"
    return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops if s) if i != -1), default=len(text))
    return text[:cut]


class _Refused(Exception):
    """A 4xx answer (other than 429) the caller may work around: status and message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class EndpointClient:
    """Sends completion requests to one server; see the module docstring for the protocol."""

    def __init__(self, endpoint: Endpoint, transport=None):
        self.endpoint = endpoint
        self.transport = transport  # tests: an httpx transport instead of the network
        self.fim_format = endpoint.fim_format  # "auto" becomes "suffix" or "raw" after the first FIM request
        self.max_stop: int | None = None  # set when the server refuses long stop lists
        self.model = endpoint.model

    def run(
        self,
        requests: Sequence[TextRequest],
        *,
        temperature: float,
        top_p: float,
        max_tokens: int,
        stop: Sequence[str],
        on_done: Callable[[int], None] | None = None,
    ) -> list[list[str]]:
        """The n texts of each request, in request order, each cut before its first stop string.

        `on_done(index)` is called (in this thread) as each request finishes.
        """
        return asyncio.run(self._run(list(requests), temperature, top_p, max_tokens, list(stop), on_done))

    async def _run(self, requests, temperature, top_p, max_tokens, stop, on_done) -> list[list[str]]:
        import httpx

        headers = {"Authorization": f"Bearer {self.endpoint.api_key}"} if self.endpoint.api_key else {}
        limits = httpx.Limits(max_connections=self.endpoint.concurrency)
        timeout = httpx.Timeout(self.endpoint.timeout_s, connect=min(30.0, self.endpoint.timeout_s))
        async with httpx.AsyncClient(
            base_url=self.endpoint.base, headers=headers, limits=limits, timeout=timeout, transport=self.transport
        ) as client:
            if self.model is None:
                self.model = await self._served_model(client)
            results: list[list[str] | None] = [None] * len(requests)
            semaphore = asyncio.Semaphore(self.endpoint.concurrency)

            async def one(index: int) -> None:
                async with semaphore:
                    texts = await self._complete(client, requests[index], temperature, top_p, max_tokens, stop)
                results[index] = [cut_at_stop(t, stop) for t in texts]
                if on_done is not None:
                    on_done(index)

            first_fim = next((i for i, r in enumerate(requests) if r.suffix is not None and not r.spm), None)
            if self.fim_format == "auto" and first_fim is not None:
                await one(first_fim)  # decides suffix or raw before the rest go out
            tasks = [asyncio.ensure_future(one(i)) for i in range(len(requests)) if results[i] is None]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        return [r for r in results if r is not None]

    async def _served_model(self, client) -> str | None:
        """The first model the server lists (vLLM needs the name; a server without /v1/models gets none)."""
        try:
            body = await self._send(client, "GET", "/v1/models", None)
        except _Refused:
            return None
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, list) and data and isinstance(data[0], dict) and isinstance(data[0].get("id"), str):
            return data[0]["id"]
        return None

    async def _complete(self, client, request: TextRequest, temperature, top_p, max_tokens, stop) -> list[str]:
        while True:
            fim_as_suffix = request.suffix is not None and not request.spm and self.fim_format != "raw"
            if request.suffix is None:
                prompt = request.prompt
            elif fim_as_suffix:
                prompt = request.prompt
            else:
                prompt = raw_fim_prompt(request.prompt, request.suffix, request.spm)
            body = {
                "prompt": prompt,
                "n": request.n,
                "seed": request.seed,
                "temperature": temperature,
                "top_p": top_p,
                "max_tokens": max_tokens,
                "stop": stop[: self.max_stop] if self.max_stop else stop,
            }
            if self.model is not None:
                body["model"] = self.model
            if fim_as_suffix:
                body["suffix"] = request.suffix
            try:
                answer = await self._send(client, "POST", "/v1/completions", body)
            except _Refused as e:
                about = e.message.lower()
                if fim_as_suffix and self.fim_format == "auto" and "suffix" in about:
                    self.fim_format = "raw"  # vLLM: "suffix is not currently supported"
                    continue
                if "stop" in about and len(stop) > OPENAI_MAX_STOP and self.max_stop is None:
                    self.max_stop = OPENAI_MAX_STOP
                    continue
                raise CodeinstructError(f"{self._url('/v1/completions')}: HTTP {e.status}: {e.message}") from None
            if fim_as_suffix and self.fim_format == "auto":
                self.fim_format = "suffix"
            return _texts(answer, request.n, self._url("/v1/completions"))

    def _url(self, path: str) -> str:
        return self.endpoint.base + path

    async def _send(self, client, method: str, path: str, body: dict | None):
        import httpx

        url = self._url(path)
        for attempt in range(self.endpoint.retries + 1):
            try:
                response = await client.request(method, path, json=body)
            except httpx.TimeoutException:
                raise CodeinstructError(
                    f"{url}: no answer within {self.endpoint.timeout_s:g} s (raise --request-timeout)"
                ) from None
            except httpx.HTTPError as e:
                reason = str(e) or type(e).__name__
                raise CodeinstructError(f"{url}: cannot reach the server ({reason})") from None
            if response.status_code in RETRY_STATUSES and attempt < self.endpoint.retries:
                await asyncio.sleep(self._wait(response, attempt))
                continue
            if response.status_code >= 400:
                message = _error_message(response)
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    raise _Refused(response.status_code, message)
                tries = f" after {attempt + 1} tries" if attempt else ""
                raise CodeinstructError(f"{url}: HTTP {response.status_code}{tries}: {message}")
            try:
                return response.json()
            except ValueError:
                raise CodeinstructError(f"{url}: the answer is not JSON ({response.text[:80]!r})") from None
        raise AssertionError("unreachable")

    def _wait(self, response, attempt: int) -> float:
        retry_after = response.headers.get("retry-after")
        try:
            if retry_after is not None:
                return min(60.0, max(0.0, float(retry_after)))
        except ValueError:
            pass
        return self.endpoint.backoff_s * (2**attempt) * (0.5 + random.random() / 2)


def _error_message(response) -> str:
    """The server's error message on one line: OpenAI's {"error": {"message"}}, TGI's {"error": "..."}, or text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    message = None
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message")))
        if isinstance(error, dict):
            message = error.get("message")
        elif error is not None:
            message = str(error)
    text = message if isinstance(message, str) and message else response.text or response.reason_phrase
    return " ".join(text.split())[:300]


def _texts(answer, n: int, url: str) -> list[str]:
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or len(choices) != n:
        got = len(choices) if isinstance(choices, list) else "no"
        raise CodeinstructError(f"{url}: expected {n} choice(s) in the answer, got {got}")
    ordered = sorted(choices, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
    texts = [c.get("text") if isinstance(c, dict) else None for c in ordered]
    if not all(isinstance(t, str) for t in texts):
        raise CodeinstructError(f"{url}: a choice has no text")
    return texts

"""Proxy mode against a second instance of this server acting as the upstream.

A recording transport between the proxy and the upstream shows what the upstream was sent; one
that drops `stop` from forwarded requests plays an upstream that misses stop strings.
"""

import json
import socket

import httpx
import openai
import pytest

from codeinstruct.attribution import AttributionIndex, build_index
from codeinstruct.serve import ServerSettings, create_app
from tests.serve.conftest import (
    GatedEngine,
    client,
    new_engine,
    running,
    sse_events,
    write_corpus,
)

FIM = {"prompt": "def area(r):\n    return ", "suffix": "\n\nprint(area(2))\n", "max_tokens": 16, "temperature": 1.0}


class Recording(httpx.AsyncBaseTransport):
    def __init__(self, drop_stop: bool = False):
        self.inner = httpx.AsyncHTTPTransport()
        self.bodies: list = []
        self.drop_stop = drop_stop

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        if self.drop_stop and isinstance(body, dict) and "stop" in body:
            body = {k: v for k, v in body.items() if k != "stop"}
            headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
            request = httpx.Request(request.method, request.url, headers=headers, json=body)
        self.bodies.append(body)  # what the upstream is sent
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="module")
def upstream(model_dir):
    engine = new_engine(model_dir, slots=4, engine_class=GatedEngine)
    engine.gate.set()
    app = create_app(ServerSettings(max_concurrency=4, max_queue=8), engine=engine, model_name="tiny")
    with running(app) as s:
        s.engine = engine
        yield s
        engine.gate.set()


@pytest.fixture(scope="module")
def seeds(upstream):
    """Seeds whose FIM middle is not empty and whose completion of 'def merge' is corpus text (no NUL)."""
    c = client(upstream.url)
    fim = next(s for s in range(100) if len(c.completions.create(model="tiny", seed=s, **FIM).choices[0].text) > 3)
    merge = next(
        s
        for s in range(100)
        if "\0"
        not in c.completions.create(model="tiny", prompt="def merge(a, b):\n", max_tokens=60, temperature=1.0, seed=s)
        .choices[0]
        .text
    )
    return {"fim": fim, "merge": merge}


@pytest.fixture(scope="module")
def index(upstream, seeds, tmp_path_factory):
    answer = (
        client(upstream.url)
        .completions.create(
            model="tiny", prompt="def merge(a, b):\n", max_tokens=60, temperature=1.0, seed=seeds["merge"]
        )
        .choices[0]
        .text
    )
    root = tmp_path_factory.mktemp("proxy-index")
    build_index(
        write_corpus(root / "corpus", {"echo/merge.py": answer + "\n"}), root / "index", workers=1, min_tokens=8
    )
    return AttributionIndex.open(root / "index")


@pytest.fixture(scope="module")
def proxy(upstream, index):
    transport = Recording()
    app = create_app(
        ServerSettings(max_concurrency=2, max_queue=2),
        upstream=upstream.url,
        attribution=index,
        upstream_transport=transport,
    )
    with running(app) as s:
        s.transport = transport
        yield s


def test_models_and_health_come_through_the_proxy(proxy, upstream):
    assert [m.id for m in client(proxy.url).models.list().data] == ["tiny"]
    health = proxy.health()
    assert health["mode"] == "proxy" and health["upstream"] == upstream.url + "/v1" and health["attribution"] is True


def test_suffix_is_sent_upstream_as_a_raw_psm_prompt_and_gives_the_same_middle(proxy, upstream, seeds):
    direct = client(upstream.url).completions.create(model="tiny", seed=seeds["fim"], **FIM)
    proxied = client(proxy.url).completions.create(model="tiny", seed=seeds["fim"], **FIM)
    sent = proxy.transport.bodies[-1]
    assert "suffix" not in sent
    assert sent["prompt"] == f"<fim_prefix>{FIM['prompt']}<fim_suffix>{FIM['suffix']}<fim_middle>"
    assert proxied.choices[0].text == direct.choices[0].text
    assert proxied.usage.prompt_tokens == direct.usage.prompt_tokens
    streamed = client(proxy.url).completions.create(model="tiny", seed=seeds["fim"], stream=True, **FIM)
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == direct.choices[0].text


def test_the_proxy_adds_attribution_streamed_or_not(proxy, seeds):
    kwargs = {
        "model": "tiny",
        "prompt": "def merge(a, b):\n",
        "max_tokens": 60,
        "temperature": 1.0,
        "seed": seeds["merge"],
    }
    c = client(proxy.url)
    r = c.completions.create(**kwargs)
    [match] = r.choices[0].model_extra["attribution"]["matches"]
    assert (match["repo"], match["path"], match["license"]) == ("acme/echo", "echo/merge.py", "MIT")
    chunks = [ch for ch in c.completions.create(stream=True, **kwargs) if ch.choices]
    assert "".join(ch.choices[0].text for ch in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].model_extra["attribution"] == r.choices[0].model_extra["attribution"]
    assert not any("attribution" in ch.choices[0].model_extra for ch in chunks[:-1])
    chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert chat.choices[0].model_extra["attribution"] == {"matches": [], "licenses": {}}


def test_the_proxy_enforces_stop_strings_an_upstream_misses(upstream, index):
    transport = Recording(drop_stop=True)
    app = create_app(ServerSettings(), upstream=upstream.url, attribution=index, upstream_transport=transport)
    kwargs = {
        "model": "tiny",
        "prompt": "def parse(text):\n",
        "max_tokens": 40,
        "temperature": 1.0,
        "seed": 21,
        "extra_body": {"ignore_eos": True},
    }
    full = client(upstream.url).completions.create(**kwargs).choices[0].text
    stop = full[10:14]
    expected = full[: full.find(stop)]
    with running(app) as s:
        c = client(s.url)
        r = c.completions.create(stop=[stop], **kwargs)
        assert "stop" not in transport.bodies[-1]  # the upstream did not see it
        assert (r.choices[0].text, r.choices[0].finish_reason) == (expected, "stop")
        chunks = [ch for ch in c.completions.create(stop=[stop], stream=True, **kwargs) if ch.choices]
        assert "".join(ch.choices[0].text for ch in chunks) == expected
        assert not any(stop in ch.choices[0].text for ch in chunks)
        assert chunks[-1].choices[0].finish_reason == "stop"
        assert "attribution" in chunks[-1].choices[0].model_extra
        messages = [{"role": "user", "content": "Write a parser."}]
        chat_full = (
            client(upstream.url)
            .chat.completions.create(
                model="tiny",
                messages=messages,
                max_tokens=40,
                temperature=1.0,
                seed=21,
                extra_body={"ignore_eos": True},
            )
            .choices[0]
            .message.content
        )
        chat_stop = chat_full[8:11]
        deltas = [
            ch.choices[0].delta.content or ""
            for ch in c.chat.completions.create(
                model="tiny",
                messages=messages,
                max_tokens=40,
                temperature=1.0,
                seed=21,
                stop=chat_stop,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            if ch.choices
        ]
        # as in engine mode: the answer cut at the stop string, then extract_response (trailing whitespace dropped)
        assert "".join(deltas) == chat_full[: chat_full.find(chat_stop)].rstrip()
    upstream.wait_for(lambda h: h["active"] == 0, "the upstream requests closed once every choice had stopped")


def test_upstream_errors_pass_through_with_their_status(proxy):
    r = httpx.post(proxy.url + "/v1/completions", json={"prompt": "x " * 1100, "max_tokens": 4}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    with httpx.stream(
        "POST", proxy.url + "/v1/completions", json={"prompt": "x " * 1100, "stream": True}, timeout=30
    ) as s:
        assert s.status_code == 400 and "context" in json.loads(s.read())["error"]["message"]
    r = httpx.post(proxy.url + "/v1/completions", json={"prompt": "x", "temperature": -1}, timeout=30)
    assert r.status_code == 400 and "temperature" in r.json()["error"]["message"]  # refused here already


def test_an_unreachable_upstream_is_a_502(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    with running(create_app(ServerSettings(), upstream=f"http://127.0.0.1:{port}")) as s:
        with pytest.raises(openai.APIStatusError, match="unreachable") as e:
            client(s.url).completions.create(model="m", prompt="x", max_tokens=2)
        assert e.value.status_code == 502
        r = httpx.post(
            s.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}], "stream": True}
        )
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unavailable"


def test_a_client_leaving_the_proxy_closes_its_upstream_request(proxy, upstream):
    body = {
        "prompt": "def f(x):\n",
        "max_tokens": 900,
        "temperature": 1.0,
        "seed": 1,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", proxy.url + "/v1/completions", json=body, timeout=60) as r:
        next(line for line in r.iter_lines() if line.startswith("data: "))
        upstream.engine.gate.clear()  # the upstream cannot finish it on its own now
    upstream.wait_for(lambda h: h["active"] == 0, "the upstream request closed")
    upstream.engine.gate.set()
    upstream.wait_for(lambda h: h["free_slots"] == 4, "the upstream slot freed")
    proxy.wait_for(lambda h: h["active"] == 0, "the proxy's admission released")


def test_the_proxy_bounds_its_queue_with_429(proxy, upstream):
    upstream.engine.gate.clear()
    streams = []
    try:
        body = {"prompt": "x", "max_tokens": 4, "stream": True}
        for _ in range(4):  # capacity 2 + 2
            s = httpx.stream("POST", proxy.url + "/v1/completions", json=body, timeout=60)
            streams.append(s)
        # httpx.stream is lazy: enter them from threads, since each blocks until its upstream answers
        import threading

        results = []
        threads = [threading.Thread(target=lambda s=s: results.append(sse_events(s.__enter__()))) for s in streams]
        for t in threads:
            t.start()
        proxy.wait_for(lambda h: h["active"] == 4, "4 requests admitted")
        r = httpx.post(proxy.url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full"
        upstream.engine.gate.set()
        for t in threads:
            t.join(60)
        assert len(results) == 4 and all(events[-1] == "[DONE]" for events in results)
    finally:
        upstream.engine.gate.set()
        for s in streams:
            s.__exit__(None, None, None)
    proxy.wait_for(lambda h: h["active"] == 0, "the proxy's admission released")

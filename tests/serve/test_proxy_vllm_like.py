"""Proxy mode in front of an upstream that behaves like vLLM serving a StarCoder (tests/serve/vllm_stub.py):
no chat template, no `suffix`, logprobs and penalties supported, its own 429/503 when overloaded."""

import concurrent.futures

import httpx
import openai
import pytest

from codeinstruct.prompts import STOP_STRINGS, extract_response, format_prompt
from codeinstruct.serve import ServerSettings, create_app
from tests.serve.conftest import client, running, sse_events
from tests.serve.vllm_stub import ANSWER, Stub, create_stub_app

MESSAGES = [
    {"role": "system", "content": "r is a radius."},
    {"role": "user", "content": "Write area(r)."},
]


@pytest.fixture(scope="module")
def stub():
    s = Stub()
    with running(create_stub_app(s)) as server:
        server.stub = s
        yield server


@pytest.fixture(scope="module")
def proxy(stub):
    with running(create_app(ServerSettings(), upstream=stub.url)) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh(stub):
    stub.stub.bodies.clear()
    stub.stub.status = None
    stub.stub.gather = 0
    stub.stub.most_in_flight = 0


def test_the_stub_refuses_what_vllm_refuses(stub):
    c = client(stub.url)
    with pytest.raises(openai.BadRequestError, match="chat template"):
        c.chat.completions.create(model="m", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="suffix"):
        c.completions.create(model="m", prompt="a", suffix="b")


def test_chat_becomes_the_alpaca_prompt_through_the_upstreams_completions(proxy, stub):
    r = client(proxy.url).chat.completions.create(model="starcoder-stub", messages=MESSAGES, max_tokens=64)
    [sent] = stub.stub.bodies
    assert sent["path"] == "/v1/completions"  # never the chat route, which has no template upstream
    assert sent["prompt"] == format_prompt("Write area(r).", "r is a radius.")
    assert set(STOP_STRINGS) <= set(sent["stop"]) and sent["max_tokens"] == 64
    assert "messages" not in sent
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == extract_response(ANSWER) == "def area(r):\n    return 3.14 * r * r"
    assert r.choices[0].finish_reason == "stop"


def test_streamed_chat_adds_up_to_the_same_answer(proxy, stub):
    chunks = list(
        client(proxy.url).chat.completions.create(model="starcoder-stub", messages=MESSAGES, stream=True, max_tokens=64)
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == extract_response(ANSWER)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert [b["path"] for b in stub.stub.bodies] == ["/v1/completions"]


def test_chat_without_max_tokens_asks_for_the_rest_of_the_context(proxy, stub):
    r = client(proxy.url).chat.completions.create(model="starcoder-stub", messages=MESSAGES)
    assert stub.stub.bodies[-1]["max_tokens"] is None  # vLLM: up to the context, not the completions default 16
    assert r.choices[0].message.content == extract_response(ANSWER)


def test_options_the_upstream_supports_pass_through(proxy, stub):
    options = {
        "logprobs": 2,
        "echo": False,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "logit_bias": {"17": -100},
        "best_of": 2,
        "top_k": 5,
        "seed": 3,
    }
    r = httpx.post(proxy.url + "/v1/completions", json={"prompt": "def f():", "max_tokens": 8, **options}, timeout=30)
    assert r.status_code == 200, r.text
    sent = stub.stub.bodies[-1]
    assert {k: sent[k] for k in options} == options
    lp = r.json()["choices"][0]["logprobs"]
    assert lp["tokens"] and len(lp["top_logprobs"][0]) == 2

    chat = client(proxy.url).chat.completions.create(
        model="starcoder-stub",
        messages=MESSAGES,
        logprobs=True,
        top_logprobs=2,
        presence_penalty=0.5,
        logit_bias={"17": 5},
        max_tokens=64,
    )
    sent = stub.stub.bodies[-1]
    assert (sent["logprobs"], sent["presence_penalty"], sent["logit_bias"]) == (2, 0.5, {"17": 5})
    assert "top_logprobs" not in sent
    content = chat.choices[0].logprobs.content
    assert content and all(len(item.top_logprobs) == 2 for item in content)
    assert isinstance(content[0].logprob, float) and content[0].bytes == list(content[0].token.encode())

    streamed = list(
        client(proxy.url).chat.completions.create(
            model="starcoder-stub", messages=MESSAGES, logprobs=True, top_logprobs=1, stream=True, max_tokens=64
        )
    )
    assert any(ch.choices and ch.choices[0].logprobs and ch.choices[0].logprobs.content for ch in streamed)


def test_suffix_goes_upstream_as_a_raw_psm_prompt(proxy, stub):
    r = client(proxy.url).completions.create(model="starcoder-stub", prompt="def area(r):", suffix="\nprint(1)\n")
    sent = stub.stub.bodies[-1]
    assert "suffix" not in sent and sent["prompt"] == "<fim_prefix>def area(r):<fim_suffix>\nprint(1)\n<fim_middle>"
    assert r.choices[0].text


def test_the_default_concurrency_does_not_throttle_the_upstream(proxy, stub):
    assert proxy.health()["max_concurrency"] == 256
    stub.stub.gather = 24  # each completion waits until 24 are open upstream at once (the old default was 8)
    body = {"prompt": "x", "max_tokens": 2}
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda _: httpx.post(proxy.url + "/v1/completions", json=body, timeout=60), range(24)))
    assert [a.status_code for a in answers] == [200] * 24
    assert stub.stub.most_in_flight == 24


@pytest.mark.parametrize("status", [429, 503])
def test_the_upstreams_own_overload_answers_pass_through(proxy, stub, status):
    stub.stub.status = status
    r = httpx.post(proxy.url + "/v1/completions", json={"prompt": "x"}, timeout=30)
    assert r.status_code == status and r.headers["retry-after"] == "7"
    assert "overloaded" in r.json()["error"]["message"]
    chat = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": MESSAGES, "stream": True}, timeout=30)
    assert chat.status_code == status and chat.headers["retry-after"] == "7"


def test_infill_and_tokenizer_routes_through_the_proxy(proxy, stub):
    r = httpx.post(
        proxy.url + "/infill",
        json={"input_prefix": "def area(r):\n", "input_suffix": "\n", "prompt": "    ", "n_predict": 64},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    sent = stub.stub.bodies[-1]
    assert sent["prompt"] == "<fim_prefix>def area(r):\n<fim_suffix>\n<fim_middle>    " and sent["max_tokens"] == 64
    answer = r.json()
    assert answer["content"] == ANSWER
    assert answer["stop"] is True and answer["stop_type"] in ("eos", "limit", "word")
    with httpx.stream(
        "POST", proxy.url + "/infill", json={"input_prefix": "a", "input_suffix": "b", "stream": True}, timeout=30
    ) as s:
        events = sse_events(s)
    assert events[-1]["stop"] is True and "".join(e["content"] for e in events) == answer["content"]
    # the counts come from the upstream's usage chunk, asked for and answered after the last text
    assert stub.stub.bodies[-1]["stream_options"] == {"include_usage": True}
    assert events[-1]["tokens_predicted"] == len(events) - 1 and events[-1]["tokens_evaluated"] > 0
    t = httpx.post(proxy.url + "/tokenize", json={"prompt": "ab"}, timeout=30).json()
    assert t["tokens"] == [97, 98] and stub.stub.bodies[-1]["path"] == "/tokenize"
    chat_tokens = httpx.post(proxy.url + "/tokenize", json={"messages": MESSAGES}, timeout=30).json()
    assert chat_tokens["count"] == len(format_prompt("Write area(r).", "r is a radius."))
    assert httpx.post(proxy.url + "/detokenize", json={"tokens": [104, 105]}, timeout=30).json() == {"prompt": "hi"}


def test_llama_cpps_completion_route_and_limits_through_the_proxy(proxy, stub):
    r = httpx.post(proxy.url + "/completion", json={"prompt": "def area(r):", "n_predict": 64}, timeout=30)
    assert r.status_code == 200, r.text
    sent = stub.stub.bodies[-1]
    assert sent["path"] == "/v1/completions" and sent["prompt"] == "def area(r):" and sent["max_tokens"] == 64
    assert r.json()["content"] == ANSWER and r.json()["stop"] is True
    # n_indent: ANSWER's second line ("def area") is indented less than 4, so the text ends before it
    body = {"prompt": "x", "n_predict": 64, "n_indent": 4, "response_fields": ["content", "stop_type"]}
    assert httpx.post(proxy.url + "/completion", json=body, timeout=30).json() == {
        "content": "\n",
        "stop_type": "limit",
    }
    with httpx.stream("POST", proxy.url + "/infill", json={**body, "stream": True}, timeout=30) as s:
        events = sse_events(s)
    assert "".join(e.get("content", "") for e in events) == "\n"
    assert events[-1] == {"content": "", "stop_type": "limit"}  # response_fields shape the final object
    # n_predict 0 (an editor warming the upstream's cache): the prompt is sent for one token, none shown
    warm = httpx.post(proxy.url + "/infill", json={"input_prefix": "a", "n_predict": 0}, timeout=30).json()
    assert stub.stub.bodies[-1]["max_tokens"] == 1
    assert warm["content"] == "" and warm["tokens_predicted"] == 0 and warm["stop_type"] == "limit"


def test_a_model_is_retrieved_by_id_from_the_upstreams_list(proxy):
    r = httpx.get(proxy.url + "/v1/models/starcoder-stub", timeout=30)
    assert r.status_code == 200 and r.json()["owned_by"] == "vllm"
    assert httpx.get(proxy.url + "/v1/models/other", timeout=30).status_code == 404

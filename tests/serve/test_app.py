"""The server on the engine, driven by the official openai client (and httpx for raw HTTP) on 127.0.0.1."""

import json
import threading

import httpx
import openai
import pytest

from codeinstruct.infer.generate import fim_request, response_params
from codeinstruct.infer.sampling import SamplingParams
from codeinstruct.prompts import encode_text, extract_response, format_prompt
from codeinstruct.serve import ServerSettings, create_app
from tests.serve.conftest import GatedEngine, client, new_engine, running, sse_events


@pytest.fixture(scope="module")
def engine(model_dir):
    return new_engine(model_dir, slots=4)


@pytest.fixture(scope="module")
def server(engine):
    app = create_app(ServerSettings(max_concurrency=4, max_queue=8), engine=engine, model_name="tiny")
    with running(app) as s:
        yield s


def reference(engine, prompt, **params):
    """What the engine itself produces for a prompt (ids or text) with these sampling params."""
    ids = encode_text(engine.tokenizer, prompt) if isinstance(prompt, str) else prompt
    return engine.submit(ids, SamplingParams(**params)).result()


def test_models_and_health_name_the_served_model(server):
    assert [m.id for m in client(server.url).models.list().data] == ["tiny"]
    health = server.health()
    assert health["status"] == "ok" and health["model"] == "tiny" and health["mode"] == "engine"
    assert health["attribution"] is False and health["auth"] is False


def test_completion_is_what_the_engine_generates_streamed_or_not(server, engine):
    c = client(server.url)
    prompt = "def add(a, b):\n"
    ref = reference(engine, prompt, max_new_tokens=24, temperature=0.8, seed=11)
    kwargs = {"model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": 0.8, "seed": 11}
    r = c.completions.create(**kwargs)
    assert (r.object, r.model) == ("text_completion", "tiny") and r.id.startswith("cmpl-")
    assert r.choices[0].text == ref.text
    assert r.choices[0].finish_reason == ref.choices[0].finish_reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (ref.prompt_tokens, ref.completion_tokens)
    assert "attribution" not in r.choices[0].model_extra  # no index loaded
    chunks = list(c.completions.create(**kwargs, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == ref.text
    assert [ch.choices[0].finish_reason for ch in chunks] == [None] * (len(chunks) - 1) + [r.choices[0].finish_reason]


def test_several_prompts_and_samples_come_back_in_openai_order(server, engine):
    prompts = ["import os\n", "x = [1, 2]\n"]
    r = client(server.url).completions.create(model="tiny", prompt=prompts, n=2, max_tokens=12, temperature=1.0, seed=3)
    refs = [reference(engine, p, max_new_tokens=12, temperature=1.0, seed=3, n=2) for p in prompts]
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices] == [c.text for ref in refs for c in ref.choices]
    assert r.usage.completion_tokens == sum(ref.completion_tokens for ref in refs)


def test_sampling_without_a_seed_differs_between_requests(server):
    c = client(server.url)
    texts = {
        c.completions.create(
            model="tiny", prompt="def f():\n", max_tokens=24, temperature=1.0, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .text
        for _ in range(3)
    }
    assert len(texts) == 3


def test_fim_with_suffix_is_the_psm_prompt_and_equals_the_raw_fim_prompt(server, engine):
    c = client(server.url)
    prefix, suffix = "def area(r):\n    return ", "\n\nprint(area(2))\n"

    def fim_reference(seed):
        ids, params = fim_request(
            engine, prefix, suffix, params=SamplingParams(max_new_tokens=16, temperature=1.0, seed=seed)
        )
        return ids, engine.submit(ids, params).result()

    seed = next(s for s in range(100) if fim_reference(s)[1].completion_tokens > 3)  # a middle, not an instant stop
    ids, ref = fim_reference(seed)
    kwargs = {"model": "tiny", "max_tokens": 16, "temperature": 1.0, "seed": seed}
    with_suffix = c.completions.create(prompt=prefix, suffix=suffix, **kwargs)
    raw = c.completions.create(prompt=f"<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>", **kwargs)
    assert with_suffix.choices[0].text == raw.choices[0].text == ref.text
    # the FIM markers went in as single control tokens, not as text
    assert with_suffix.usage.prompt_tokens == raw.usage.prompt_tokens == len(ids)
    streamed = "".join(
        ch.choices[0].text for ch in c.completions.create(prompt=prefix, suffix=suffix, stream=True, **kwargs)
    )
    assert streamed == ref.text


def _stop_spanning_tokens(engine, ref_choice):
    """A 4-character stop string whose first half ends one token and whose second half starts the next."""
    tok, text = engine.tokenizer, ref_choice.text
    for k in range(4, len(ref_choice.token_ids) - 2):
        head = tok.decode(ref_choice.token_ids[:k])
        b = len(head)
        stop = text[b - 2 : b + 2]
        if (
            text.startswith(head)
            and len(stop) == 4
            and "\ufffd" not in stop
            and text.find(stop) == b - 2
            and len(tok.decode(ref_choice.token_ids[k - 1 : k])) >= 2
        ):
            return stop, text[: b - 2]
    raise AssertionError("no token boundary to put a stop string across")


def test_stop_strings_that_span_tokens_are_cut_and_never_streamed(server, engine):
    c = client(server.url)
    prompt = "def parse(text):\n"
    ref = reference(engine, prompt, max_new_tokens=48, temperature=1.0, seed=21, ignore_eos=True).choices[0]
    stop, expected = _stop_spanning_tokens(engine, ref)
    kwargs = {
        "model": "tiny",
        "prompt": prompt,
        "max_tokens": 48,
        "temperature": 1.0,
        "seed": 21,
        "extra_body": {"ignore_eos": True},
    }
    r = c.completions.create(stop=[stop, "never appears"], **kwargs)
    assert (r.choices[0].text, r.choices[0].finish_reason) == (expected, "stop")
    chunks = list(c.completions.create(stop=stop, stream=True, **kwargs))
    texts = [ch.choices[0].text for ch in chunks]
    assert "".join(texts) == expected
    assert not any(stop in t for t in texts) and chunks[-1].choices[0].finish_reason == "stop"


def test_chat_is_the_alpaca_answer_with_system_and_earlier_turns_as_input(server, engine):
    c = client(server.url)
    messages = [
        {"role": "system", "content": "Answer in Python."},
        {"role": "user", "content": "Write hello world."},
        {"role": "assistant", "content": "print('hello')"},
        {"role": "user", "content": "Now put it in a function."},
    ]
    prompt = format_prompt(
        "Now put it in a function.", "Answer in Python.\n\nUser: Write hello world.\n\nAssistant: print('hello')"
    )
    ids = encode_text(engine.tokenizer, prompt)
    ref = engine.submit(ids, response_params(SamplingParams(max_new_tokens=30, temperature=0.9, seed=5))).result()
    r = c.chat.completions.create(model="tiny", messages=messages, max_tokens=30, temperature=0.9, seed=5)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == extract_response(ref.text)
    assert r.usage.prompt_tokens == len(ids)
    chunks = list(
        c.chat.completions.create(
            model="tiny",
            messages=messages,
            max_tokens=30,
            temperature=0.9,
            seed=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == r.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == r.usage.total_tokens
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == r.choices[0].finish_reason


def test_one_user_message_uses_the_no_input_template(server, engine):
    r = client(server.url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Sort a list."}], max_tokens=4, temperature=0
    )
    assert r.usage.prompt_tokens == len(encode_text(engine.tokenizer, format_prompt("Sort a list.")))


def test_echo_returns_the_prompt_with_its_characters_whole(server):
    prompt = "# héllo wörld 🙂 — ünïcode\n"
    c = client(server.url)
    r = c.completions.create(model="tiny", prompt=prompt, echo=True, max_tokens=8, temperature=1.0, seed=2)
    assert r.choices[0].text.startswith(prompt)
    with httpx.stream(
        "POST",
        server.url + "/v1/completions",
        timeout=30,
        json={"prompt": prompt, "echo": True, "max_tokens": 8, "temperature": 1.0, "seed": 2, "stream": True},
    ) as resp:
        raw = resp.read()
    events = [
        json.loads(e[len(b"data: ") :].decode("utf-8", errors="strict"))
        for e in raw.split(b"\n\n")
        if e.startswith(b"data: {")
    ]
    assert events[0]["choices"][0]["text"] == prompt
    assert "".join(e["choices"][0]["text"] for e in events) == r.choices[0].text
    assert raw.endswith(b"data: [DONE]\n\n")


def test_max_tokens_beyond_the_context_stops_at_the_context_with_length(server, engine):
    ids = [encode_text(engine.tokenizer, "a")[0]] * (engine.max_seq_len - 3)
    r = client(server.url).completions.create(
        model="tiny", prompt=ids, max_tokens=100, temperature=0, extra_body={"ignore_eos": True}
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens + r.usage.completion_tokens == engine.max_seq_len


@pytest.mark.parametrize(
    "path,body,needle",
    [
        ("/v1/completions", {"prompt": "x", "temperature": 3}, "temperature: Input should be less than or equal to 2"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens: 0 only with echo"),
        ("/v1/completions", {"prompt": "x", "max_tokens": -1}, "max_tokens: Input should be greater than or equal"),
        ("/v1/completions", {"max_tokens": 5}, "prompt: Field required"),
        ("/v1/completions", {"prompt": []}, "prompt: must not be empty"),
        ("/v1/completions", {"prompt": "x", "logprobs": 21}, "logprobs: Input should be less than or equal to 20"),
        ("/v1/completions", {"prompt": "x", "presence_penalty": 2.5}, "presence_penalty: Input should be less than"),
        ("/v1/completions", {"prompt": "x", "logit_bias": {"5": 101}}, "logit_bias: biases must be in [-100, 100]"),
        ("/v1/completions", {"prompt": "x", "logit_bias": {"a": 1}}, "logit_bias: keys must be token ids"),
        ("/v1/completions", {"prompt": "x", "logit_bias": {"900000": 1}}, "below the vocabulary size 800"),
        ("/v1/completions", {"prompt": "x", "n": 5}, "n=5 is more than the server's 4 concurrent sequences"),
        ("/v1/completions", {"prompt": [1, 2], "suffix": "x"}, "suffix needs a text prompt"),
        ("/v1/completions", {"prompt": [10**7]}, "outside the model's vocabulary"),
        ("/v1/completions", {"prompt": "x", "suffix": "y", "echo": True}, "echo cannot be combined with suffix"),
        ("/v1/completions", {"prompt": "x " * 1100}, "the model's context is 1024"),
        (
            "/v1/completions",
            {"prompt": "x" * (64 * 1024 + 1)},
            "prompt has 65,537 characters; the model's context is 1024 tokens",
        ),
        ("/v1/chat/completions", {"messages": []}, "messages: List should have at least 1 item"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
            "the last message must be from the user",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "wizard", "content": "x"}]},
            "messages.0.role: Input should be",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
            "tools (function calling) are not supported",
        ),
    ],
)
def test_invalid_requests_get_400_with_a_clear_openai_error(server, path, body, needle):
    r = httpx.post(server.url + path, json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert needle in error["message"]
    assert error["type"] == "invalid_request_error" and set(error) == {"message", "type", "param", "code"}


def test_malformed_bodies_and_unknown_paths_answer_in_the_openai_shape(server):
    r = httpx.post(server.url + "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "the request body is not valid JSON"
    r = httpx.post(server.url + "/v1/completions", json=["a list"])
    assert r.status_code == 400 and "must be a JSON object" in r.json()["error"]["message"]
    r = httpx.get(server.url + "/v1/engines")
    assert r.status_code == 404 and r.json()["error"]["message"] == "Not Found"
    too_long = httpx.post(server.url + "/v1/completions", json={"prompt": "x " * 1100}).json()["error"]
    assert too_long["code"] == "context_length_exceeded"


def test_the_openai_client_raises_its_bad_request_error_with_our_message(server):
    with pytest.raises(openai.BadRequestError, match="top_p: Input should be greater than 0"):
        client(server.url).completions.create(model="tiny", prompt="x", top_p=0)


def test_a_failing_engine_is_an_error_not_a_hang(model_dir):
    engine = new_engine(model_dir, slots=1)

    def broken(*args):
        raise RuntimeError("out of memory")

    engine.runner.decode = broken
    with running(create_app(ServerSettings(max_concurrency=1), engine=engine, model_name="tiny")) as s:
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 8}, timeout=30)
        assert r.status_code == 500 and r.json()["error"]["message"] == "generation failed: out of memory"
        with httpx.stream(
            "POST", s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 8, "stream": True}
        ) as st:
            events = sse_events(st)
        assert events[-2]["error"]["message"] == "generation failed: out of memory" and events[-1] == "[DONE]"
        assert s.wait_for(lambda h: h["active"] == 0, "the failed requests released")["free_slots"] == 1


# --------------------------------------------------------------------------- auth


def test_an_api_key_when_set_is_required_on_the_api_but_not_for_health(model_dir):
    app = create_app(
        ServerSettings(api_key="sekrit", max_concurrency=1), engine=new_engine(model_dir, slots=1), model_name="tiny"
    )
    with running(app) as s:
        with pytest.raises(openai.AuthenticationError, match="missing or invalid API key"):
            client(s.url, api_key="wrong").models.list()
        r = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert client(s.url, api_key="sekrit").completions.create(model="tiny", prompt="x", max_tokens=2).choices
        assert s.health()["auth"] is True
        assert httpx.get(s.url + "/").status_code == 200  # the page; its requests carry the key


# --------------------------------------------------------------------------- limits and disconnects


@pytest.fixture
def gated(model_dir):
    """A server with 2 slots and room for 1 more in the queue, whose engine steps only while its gate is open."""
    engine = new_engine(model_dir, slots=2, engine_class=GatedEngine)
    app = create_app(ServerSettings(max_concurrency=2, max_queue=1), engine=engine, model_name="tiny")
    with running(app) as s:
        s.engine = engine
        try:
            yield s
        finally:
            engine.gate.set()


def _stream_in_thread(url, body, out: list):
    def run():
        with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            out.append((r.status_code, sse_events(r)))

    t = threading.Thread(target=run)
    t.start()
    return t


def test_requests_over_the_queue_bound_get_429_and_admitted_ones_finish_whole(gated):
    body = {"prompt": "def f(x):\n", "max_tokens": 20, "temperature": 1.0, "seed": 9, "ignore_eos": True}
    results: list = []
    threads = [_stream_in_thread(gated.url, body, results) for _ in range(3)]
    gated.wait_for(lambda h: h["active"] == 3, "3 requests admitted")
    r = httpx.post(gated.url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["type"] == "rate_limit_error" and r.json()["error"]["code"] == "queue_full"
    with pytest.raises(openai.RateLimitError, match="at capacity"):
        client(gated.url).completions.create(model="tiny", **{k: v for k, v in body.items() if k != "ignore_eos"})
    gated.engine.gate.set()
    for t in threads:
        t.join(60)
    expected = (
        client(gated.url)
        .completions.create(
            model="tiny", prompt=body["prompt"], max_tokens=20, temperature=1.0, seed=9, extra_body={"ignore_eos": True}
        )
        .choices[0]
        .text
    )
    assert len(results) == 3
    for status, events in results:
        assert status == 200 and events[-1] == "[DONE]"
        assert "".join(e["choices"][0]["text"] for e in events[:-1]) == expected
        assert events[-2]["choices"][0]["finish_reason"] == "length"
    health = gated.wait_for(lambda h: h["active"] == 0 and h["free_slots"] == 2, "all slots free")
    assert health["capacity"] == 3


def test_a_streaming_client_that_disconnects_frees_its_slot(gated):
    gated.engine.gate.set()
    body = {
        "prompt": "def f(x):\n",
        "max_tokens": 900,
        "temperature": 1.0,
        "seed": 1,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream("POST", gated.url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        gated.engine.gate.clear()  # the engine stops within a step: the request cannot finish on its own now
    gated.wait_for(lambda h: h["active"] == 0, "the disconnected request released")
    gated.engine.gate.set()
    gated.wait_for(lambda h: h["free_slots"] == 2, "its slot freed")
    assert not gated.engine.has_work()
    assert not gated.app.state.backend.live


def test_a_non_streaming_client_that_gives_up_is_cancelled(gated):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            gated.url + "/v1/completions", json={"prompt": "x", "max_tokens": 50}, timeout=httpx.Timeout(30, read=0.5)
        )
    gated.wait_for(lambda h: h["active"] == 0, "the abandoned request released")
    assert gated.engine.has_work()  # still queued in the gated engine, marked cancelled
    gated.engine.gate.set()
    gated.wait_for(lambda h: h["free_slots"] == 2, "its slot freed")
    assert not gated.engine.has_work()

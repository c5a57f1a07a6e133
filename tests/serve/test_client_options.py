"""What clients send, in engine mode: logprobs (and echo, as lm-eval scores with it), OpenAI's penalties and
logit_bias, vLLM's /tokenize and /detokenize, llama.cpp's /infill, and Prometheus /metrics.

References are computed here from the model's own forward (transformers), not from the engine."""

import math

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from codeinstruct.infer.generate import complete_middle
from codeinstruct.infer.sampling import SamplingParams
from codeinstruct.prompts import encode_text, format_prompt
from codeinstruct.serve import ServerSettings, create_app
from tests.serve.conftest import client, new_engine, running, sse_events


@pytest.fixture(scope="module")
def engine(model_dir):
    return new_engine(model_dir, slots=4)


@pytest.fixture(scope="module")
def server(engine):
    with running(create_app(ServerSettings(max_concurrency=4), engine=engine, model_name="tiny")) as s:
        yield s


def forward_logprobs(engine, ids: list[int]) -> torch.Tensor:
    """log_softmax of the transformers forward at every position [L, V]."""
    with torch.inference_mode():
        return torch.log_softmax(engine.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)


def penalized_greedy(engine, ids: list[int], steps: int, presence=0.0, frequency=0.0, bias=None) -> list[int]:
    """OpenAI's semantics written out: score - count * frequency - (count > 0) * presence + bias, argmax."""
    out: list[int] = []
    for _ in range(steps):
        with torch.inference_mode():
            logits = engine.model(input_ids=torch.tensor([ids + out])).logits[0, -1].float()
        logits = logits.clone()  # an ordinary tensor, to change in place
        for token, b in (bias or {}).items():
            logits[token] += b
        for token in set(out):
            logits[token] -= out.count(token) * frequency + presence
        out.append(int(logits.argmax()))
    return out


def test_completion_logprobs_are_the_models_with_top_n(server, engine):
    prompt = "def add(a, b):\n"
    r = httpx.post(
        server.url + "/v1/completions",
        json={"prompt": prompt, "max_tokens": 6, "temperature": 0, "logprobs": 3, "ignore_eos": True},
        timeout=30,
    ).json()
    choice = choice_lp = r["choices"][0]
    choice_lp = choice["logprobs"]
    ids = encode_text(engine.tokenizer, prompt)
    generated = engine.submit(ids, SamplingParams(max_new_tokens=6, ignore_eos=True)).result().choices[0].token_ids
    reference = forward_logprobs(engine, ids + generated)
    expected = [float(reference[len(ids) - 1 + i, t]) for i, t in enumerate(generated)]
    assert choice_lp["token_logprobs"] == pytest.approx(expected, abs=1e-4)
    assert choice_lp["tokens"] == [engine.tokenizer.decode([t], skip_special_tokens=True) for t in generated]
    assert "".join(choice_lp["tokens"]) == choice["text"]  # special tokens, not in the text, are empty strings
    offsets = [sum(len(t) for t in choice_lp["tokens"][:i]) for i in range(len(generated))]
    assert choice_lp["text_offset"] == offsets
    for i, (lp, top) in enumerate(zip(choice_lp["token_logprobs"], choice_lp["top_logprobs"])):
        assert max(top.values()) == pytest.approx(lp, abs=1e-5)  # greedy: the chosen is the top
        best = reference[len(ids) - 1 + i].topk(3)
        # keyed by token text (special tokens as written; two byte fragments can share "\ufffd")
        names = [engine.tokenizer.decode([t], skip_special_tokens=False) for t in best.indices.tolist()]
        assert set(top) == set(names)
        assert top[names[0]] == pytest.approx(float(best.values[0]), abs=1e-4)


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_with_logprobs_scores_the_prompt_as_lm_eval_reads_it(server, engine, max_tokens):
    ids = encode_text(engine.tokenizer, "import os\nprint(os.getcwd())\n")
    r = httpx.post(
        server.url + "/v1/completions",
        json={"prompt": [ids], "max_tokens": max_tokens, "temperature": 0, "logprobs": 1, "echo": True},
        timeout=30,
    ).json()
    lp = r["choices"][0]["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + max_tokens
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    reference = forward_logprobs(engine, ids)
    expected = [float(reference[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert lp["token_logprobs"][1 : len(ids)] == pytest.approx(expected, abs=1e-4)
    assert all(len(top) == 1 for top in lp["top_logprobs"][1:])
    assert r["choices"][0]["text"].startswith(engine.tokenizer.decode(ids))
    assert r["usage"]["completion_tokens"] == max_tokens


def test_streamed_logprobs_cover_every_generated_token(server):
    body = {"prompt": "x = 1\n", "max_tokens": 8, "temperature": 0, "logprobs": 0, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as s:
        events = [e for e in sse_events(s) if e != "[DONE]"]
    tokens = [t for e in events for t in (e["choices"][0]["logprobs"] or {}).get("tokens", [])]
    assert len(tokens) == 8 and "".join(tokens) == "".join(e["choices"][0]["text"] for e in events)


def greedy_chat_with_logprobs(server, max_tokens: int, **options):
    return client(server.url).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Add two numbers."}],
        max_tokens=max_tokens,
        temperature=0,
        logprobs=True,
        extra_body={"ignore_eos": True},
        **options,
    )


def test_chat_logprobs_come_in_the_chat_shape(server):
    r = greedy_chat_with_logprobs(server, 5, top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 5
    assert all(len(c.top_logprobs) == 2 and c.logprob <= 0 for c in content)
    assert content[0].bytes == list(content[0].token.encode())


def test_chat_logprob_bytes_are_the_tokens_own_also_inside_a_character(server, engine):
    """A token holding part of a character shows U+FFFD as text; its bytes are its own, so a client joining
    the bytes of the answer's tokens gets the answer's text."""
    tok = engine.tokenizer
    first_byte = tok.convert_tokens_to_ids("Ã")  # byte-level BPE's symbol for 0xC3, the lead byte of "é"
    r = greedy_chat_with_logprobs(server, 1, logit_bias={str(first_byte): 100})
    [entry] = r.choices[0].logprobs.content
    assert entry.bytes == [0xC3] and entry.token == "\ufffd"


@pytest.mark.parametrize(
    "options",
    [
        {"frequency_penalty": 2.0},
        {"presence_penalty": 2.0},
        {"frequency_penalty": 1.0, "presence_penalty": -1.0},
    ],
)
def test_presence_and_frequency_penalties_follow_openais_formula(server, engine, options):
    ids = encode_text(engine.tokenizer, "def f(x):\n")
    r = httpx.post(
        server.url + "/v1/completions",
        json={"prompt": [ids], "max_tokens": 12, "temperature": 0, "ignore_eos": True, **options},
        timeout=30,
    ).json()
    expected = penalized_greedy(
        engine, ids, 12, options.get("presence_penalty", 0.0), options.get("frequency_penalty", 0.0)
    )
    plain = penalized_greedy(engine, ids, 12)
    assert r["choices"][0]["text"] == engine.tokenizer.decode(expected, skip_special_tokens=True)
    assert expected != plain  # the penalty changed the answer, so the comparison means something


def test_logit_bias_adds_to_the_token_ids_scores(server, engine):
    ids = encode_text(engine.tokenizer, "print(")
    plain = penalized_greedy(engine, ids, 6)
    favourite = encode_text(engine.tokenizer, "return")[0]
    for bias in ({plain[0]: -100.0}, {favourite: 100.0}, {plain[0]: -3.0, favourite: 2.5}):
        r = httpx.post(
            server.url + "/v1/completions",
            json={
                "prompt": [ids],
                "max_tokens": 6,
                "temperature": 0,
                "ignore_eos": True,
                "logit_bias": {str(k): v for k, v in bias.items()},
            },
            timeout=30,
        ).json()
        expected = penalized_greedy(engine, ids, 6, bias=bias)
        assert r["choices"][0]["text"] == engine.tokenizer.decode(expected, skip_special_tokens=True)
    assert expected != plain


def test_tokenize_and_detokenize_in_vllms_shape(server, engine):
    text = "def f(x):\n    return x<fim_middle>"
    t = httpx.post(server.url + "/tokenize", json={"model": "tiny", "prompt": text}, timeout=30).json()
    ids = t["tokens"]
    assert t["count"] == len(ids) and t["max_model_len"] == engine.max_seq_len and t["token_strs"] is None
    assert ids[-1] == engine.tokenizer.convert_tokens_to_ids("<fim_middle>")  # as completions encodes it
    assert ids[:-1] == encode_text(engine.tokenizer, "def f(x):\n    return x")
    d = httpx.post(server.url + "/detokenize", json={"tokens": ids}, timeout=30).json()
    assert d == {"prompt": text}
    chat = httpx.post(
        server.url + "/tokenize",
        json={"messages": [{"role": "user", "content": "Sort a list."}], "return_token_strs": True},
        timeout=30,
    ).json()
    assert chat["tokens"] == encode_text(engine.tokenizer, format_prompt("Sort a list."))
    assert len(chat["token_strs"]) == chat["count"]
    bad = httpx.post(server.url + "/detokenize", json={"tokens": [10**6]}, timeout=30)
    assert bad.status_code == 400 and "vocabulary" in bad.json()["error"]["message"]
    assert httpx.post(server.url + "/tokenize", json={}, timeout=30).status_code == 400


def test_infill_takes_llama_cpps_request_and_answers_in_its_shape(server, engine):
    prefix, suffix = "def area(r):\n    return ", "\n\nprint(area(2))\n"
    body = {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 12, "temperature": 0}
    r = httpx.post(server.url + "/infill", json=body, timeout=30)
    assert r.status_code == 200, r.text
    answer = r.json()
    expected = complete_middle(engine, prefix, suffix, params=SamplingParams(max_new_tokens=12))
    assert answer["content"] == expected and answer["stop"] is True
    assert answer["tokens_predicted"] >= 1 and answer["tokens_evaluated"] > 0
    assert answer["stop_type"] in ("eos", "limit") and answer["stopped_limit"] == (answer["stop_type"] == "limit")
    with httpx.stream("POST", server.url + "/infill", json={**body, "stream": True}, timeout=30) as s:
        events = sse_events(s)
    assert events[-1]["stop"] is True and all(e["stop"] is False for e in events[:-1])
    assert "".join(e["content"] for e in events) == expected
    # what is already typed of the middle (`prompt`) follows <fim_middle>; extra files come first
    typed = httpx.post(
        server.url + "/infill",
        json={**body, "prompt": "3.14", "input_extra": [{"filename": "util.py", "text": "PI = 3.14\n"}]},
        timeout=30,
    ).json()
    tok = engine.tokenizer
    assert typed["tokens_evaluated"] == answer["tokens_evaluated"] + len(encode_text(tok, "3.14")) + 1 + len(
        encode_text(tok, "util.py\nPI = 3.14\n")
    )


def metric_samples(url: str) -> dict:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_in_prometheus_format_count_requests_tokens_and_latency(model_dir):
    with running(create_app(ServerSettings(max_concurrency=2), engine=new_engine(model_dir, 2), model_name="t")) as s:
        c = client(s.url)
        usage = [
            c.completions.create(model="t", prompt="def f():", max_tokens=5, extra_body={"ignore_eos": True}).usage
            for _ in range(3)
        ]
        assert httpx.post(s.url + "/v1/completions", json={"prompt": "x", "temperature": 9}).status_code == 400
        m = metric_samples(s.url)
    ok = m[("codeinstruct_requests_total", (("endpoint", "/v1/completions"), ("status", "200")))]
    assert ok == 3 and m[("codeinstruct_requests_total", (("endpoint", "/v1/completions"), ("status", "400")))] == 1
    assert m[("codeinstruct_prompt_tokens_total", ())] == sum(u.prompt_tokens for u in usage)
    assert m[("codeinstruct_generation_tokens_total", ())] == sum(u.completion_tokens for u in usage) == 15
    assert m[("codeinstruct_time_to_first_token_seconds_count", ())] == 3
    assert m[("codeinstruct_time_per_output_token_seconds_count", ())] == 3
    assert 0 < m[("codeinstruct_time_to_first_token_seconds_sum", ())] < math.inf
    for gauge in (
        "codeinstruct_requests_waiting",
        "codeinstruct_requests_running",
        "codeinstruct_kv_cache_usage_ratio",
    ):
        assert m[(gauge, ())] == 0  # idle now

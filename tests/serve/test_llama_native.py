"""llama.cpp's native routes as editors use them: /completion, /infill with `n_predict` 0 (warming the cache),
`n_indent` and `t_max_predict_ms` (code-completion limits, as llama.cpp's server applies them) and
`response_fields`; and OpenAI's /v1/models/ID."""

import httpx
import pytest

from codeinstruct.serve import ServerSettings, create_app
from codeinstruct.serve.llama_native import CompletionLimits
from tests.serve.conftest import new_engine, running, sse_events


def cut(text: str, n_indent: int = 0, pieces: int = 1, **kw) -> tuple[str, bool]:
    """`text` fed in `pieces` parts of about equal size: (what was shown, whether it was cut)."""
    limits = CompletionLimits(n_indent, **kw)
    size = max(1, -(-len(text) // pieces))
    shown, stopped = "", False
    for i in range(0, len(text), size):
        piece, stopped = limits.feed(text[i : i + size], 0.0)
        shown += piece
        if stopped:
            break
    assert shown == limits.text
    return shown, stopped


@pytest.mark.parametrize("pieces", [1, 3, 1000])
def test_n_indent_ends_the_text_at_the_first_line_indented_less(pieces):
    body = "x = 1\n    if x:\n        y = 2\n    return y\nprint(f())\n"
    # the first line continues the cursor's and is never judged; the line at indentation 0 ends it,
    # its own indentation kept (none here)
    assert cut(body, 4, pieces) == ("x = 1\n    if x:\n        y = 2\n    return y\n", True)
    assert cut(body, 8, pieces) == ("x = 1\n    ", True)  # the cut keeps the short line's indentation
    assert cut("a\n\tb\n", 1, pieces) == ("a\n\tb\n", False)  # a tab counts as one, as in llama.cpp
    assert cut("a\n\n    b", 4, pieces) == ("a\n", True)  # an empty line is indented 0
    assert cut(body, 0, pieces) == (body, False)


def test_a_line_not_yet_begun_is_judged_when_it_has_a_character():
    limits = CompletionLimits(4)
    assert limits.feed("    pass\n", 0.0) == ("    pass\n", False)
    assert limits.feed("  ", 0.0) == ("  ", False)  # only indentation so far: could still reach 4
    assert limits.feed("  y\n", 0.0) == ("  y\n", False)
    assert limits.feed("  z", 0.0) == ("  ", True)
    assert limits.feed("more", 0.0) == ("", True)


def test_t_max_predict_ms_ends_the_text_once_a_line_is_complete_and_time_is_up():
    limits = CompletionLimits(t_max_predict_ms=100)
    assert limits.feed("a", 0.0) == ("a", False)
    assert limits.feed("b", 0.5) == ("b", False)  # time is up, but no line is complete yet
    assert limits.feed("\nc", 0.6) == ("\nc", True)
    quick = CompletionLimits(t_max_predict_ms=100)
    assert quick.feed("a\n", 0.0) == ("a\n", False) and quick.feed("b\n", 0.05) == ("b\n", False)


def test_n_predict_zero_shows_nothing():
    assert CompletionLimits(hidden=True).feed("text", 0.0) == ("", False)


@pytest.fixture(scope="module")
def engine(model_dir):
    return new_engine(model_dir, slots=2)


@pytest.fixture(scope="module")
def server(engine):
    with running(create_app(ServerSettings(max_concurrency=2), engine=engine, model_name="tiny")) as s:
        yield s


def metric(server, name: str) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def post(server, path: str, body: dict) -> dict:
    r = httpx.post(server.url + path, json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_completion_is_the_raw_prompts_completion_in_llama_cpps_shape(server, engine):
    prompt = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\ndef mul(a, b):\n"
    openai = post(server, "/v1/completions", {"prompt": prompt, "max_tokens": 12, "temperature": 0, "ignore_eos": True})
    answer = post(server, "/completion", {"prompt": prompt, "n_predict": 12, "temperature": 0, "ignore_eos": True})
    assert answer["content"] == openai["choices"][0]["text"]
    assert answer["tokens_predicted"] == 12 and answer["stop_type"] == "limit" and answer["stopped_limit"] is True
    assert answer["tokens_evaluated"] == openai["usage"]["prompt_tokens"]
    assert answer["timings"]["predicted_n"] == 12
    # the same prompt came just before (through /v1/completions): all but its last token come from the cache
    assert answer["tokens_cached"] == answer["timings"]["cache_n"] == answer["tokens_evaluated"] - 1
    assert answer["timings"]["prompt_n"] == 1
    ids = engine.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    by_ids = post(server, "/completions", {"prompt": ids, "n_predict": 12, "temperature": 0, "ignore_eos": True})
    assert by_ids["content"] == answer["content"]
    with httpx.stream(
        "POST",
        server.url + "/completion",
        json={"prompt": prompt, "n_predict": 12, "temperature": 0, "ignore_eos": True, "stream": True},
        timeout=60,
    ) as s:
        events = sse_events(s)
    assert events[-1]["stop"] is True and "".join(e["content"] for e in events) == answer["content"]
    bad = httpx.post(server.url + "/completion", json={"prompt": [10**6]}, timeout=30)
    assert bad.status_code == 400 and "token ids" in bad.json()["error"]["message"]


def test_limits_cut_what_the_engine_generates(server):
    # sampled with a seed (reproducible whatever else runs): this one's text holds indented lines
    sampled = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 0}
    body = {"prompt": "def add(a, b):\n", "n_predict": 64, "ignore_eos": True, **sampled}
    whole = post(server, "/completion", body)["content"]
    assert whole.count("\n") >= 2
    for n_indent in (1, 2, 4, 8):
        expected, was_cut = cut(whole, n_indent)
        assert was_cut and expected != whole
        answer = post(server, "/completion", {**body, "n_indent": n_indent})
        assert answer["content"] == expected
        assert answer["stop_type"] == "limit" and answer["tokens_predicted"] < 64  # the generation ended there
    with httpx.stream(
        "POST", server.url + "/completion", json={**body, "n_indent": 4, "stream": True}, timeout=60
    ) as s:
        events = sse_events(s)
    assert "".join(e["content"] for e in events) == cut(whole, 4)[0] and events[-1]["stop"] is True


def test_infill_with_n_predict_zero_warms_the_cache_for_the_next_request(server, engine):
    extra = [{"filename": "util.py", "text": "def helper(x):\n    return x + 1\n" * 4}]
    warm = post(server, "/infill", {"input_extra": extra, "input_prefix": "", "input_suffix": "", "n_predict": 0})
    assert warm["content"] == "" and warm["tokens_predicted"] == 0 and warm["stop_type"] == "limit"
    before = engine.prefix_tokens_reused
    hits = metric(server, "codeinstruct_prefix_cache_hit_tokens_total")
    body = {"input_extra": extra, "input_prefix": "y = helper(", "input_suffix": ")\n", "n_predict": 4}
    answer = post(server, "/infill", body)
    reused = engine.prefix_tokens_reused - before
    assert reused >= len(engine.tokenizer(extra[0]["text"])["input_ids"])
    assert answer["tokens_cached"] == answer["timings"]["cache_n"] == reused  # what llama.vscode shows
    assert metric(server, "codeinstruct_prefix_cache_hit_tokens_total") - hits == reused


def test_response_fields_keep_only_what_is_named(server):
    fields = ["content", "timings/prompt_n", "timings/predicted_n", "stop_type", "no/such"]
    answer = post(server, "/infill", {"input_prefix": "x = ", "n_predict": 3, "response_fields": fields})
    assert set(answer) == {"content", "timings/prompt_n", "timings/predicted_n", "stop_type"}
    assert answer["timings/prompt_n"] > 0 and answer["timings/predicted_n"] >= 1
    whole = post(server, "/infill", {"input_prefix": "x = ", "n_predict": 3, "response_fields": []})
    assert {"content", "stop", "timings", "tokens_predicted"} <= set(whole)  # an empty list keeps everything


def test_a_model_is_retrieved_by_id(server):
    r = httpx.get(server.url + "/v1/models/tiny", timeout=30)
    assert r.status_code == 200 and r.json()["id"] == "tiny" and r.json()["object"] == "model"
    missing = httpx.get(server.url + "/v1/models/other", timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"

"""The engine against transformers' generate, and its batching, sampling, stopping and cancelling."""

import threading

import pytest
import torch

from codeinstruct.errors import CodeinstructError
from codeinstruct.infer.engine import Engine
from codeinstruct.infer.sampling import SamplingParams
from codeinstruct.modeling import preset_config

PROMPTS = ["def add(a, b):\n", "import os\nprint(", "x = [1, 2, 3]\nfor", "Write a Python function that sorts a list."]


def tiny_model(tokenizer, multi_query=True, seed=0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = preset_config("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    config.multi_query = multi_query
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model(tokenizer)


def reference_greedy(model, tokenizer, prompt, max_new_tokens, eos=True):
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id if eos else None,
    )
    return out[0, ids.shape[1] :].tolist()


def ids_of(outputs):
    return [o.choices[0].token_ids for o in outputs]


@pytest.mark.parametrize("multi_query", [True, False], ids=["multi-query", "multi-head"])
def test_greedy_equals_transformers_generate(tokenizer, multi_query):
    model = tiny_model(tokenizer, multi_query=multi_query, seed=1)
    engine = Engine(model, tokenizer, max_batch_size=4)
    outputs = engine.generate(PROMPTS, SamplingParams(max_new_tokens=48, ignore_eos=True))
    assert ids_of(outputs) == [reference_greedy(model, tokenizer, p, 48, eos=False) for p in PROMPTS]
    assert all(o.choices[0].finish_reason == "length" for o in outputs)


def test_stop_token_ends_the_sequence_as_generate_eos_does(model, tokenizer):
    # EOS and extra stop ids take the same path; use a token the model is known to produce
    free_run = [reference_greedy(model, tokenizer, p, 30, eos=False) for p in PROMPTS]
    stop_id = free_run[0][6]
    engine = Engine(model, tokenizer, max_batch_size=4)
    outputs = engine.generate(PROMPTS, SamplingParams(max_new_tokens=30, stop_token_ids=(stop_id,)))
    references = []
    for p in PROMPTS:
        ids = torch.tensor([tokenizer(p, add_special_tokens=False)["input_ids"]])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=30,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=[tokenizer.eos_token_id, stop_id],
        )
        references.append(out[0, ids.shape[1] :].tolist())
    assert ids_of(outputs) == references
    assert len(references[0]) <= 7
    for o, r in zip(outputs, references):
        assert o.choices[0].finish_reason == ("stop" if r[-1] in (stop_id, tokenizer.eos_token_id) else "length")


def test_batched_output_equals_alone_even_when_requests_join_mid_flight(model, tokenizer):
    params = SamplingParams(max_new_tokens=40, ignore_eos=True)
    alone = [ids_of(Engine(model, tokenizer, max_batch_size=1).generate([p], params))[0] for p in PROMPTS]
    engine = Engine(model, tokenizer, max_batch_size=3, max_tokens_per_step=8)
    first = engine.submit(PROMPTS[0], params)
    for _ in range(5):
        engine.step()
    rest = [engine.submit(p, params) for p in PROMPTS[1:]]  # one of them must wait for a free slot
    assert [h.result().choices[0].token_ids for h in [first, *rest]] == alone


def test_chunked_prefill_gives_the_same_tokens(model, tokenizer):
    long_prompt = "def f(x):\n    return x * 2\n" * 8
    params = SamplingParams(max_new_tokens=20, ignore_eos=True)
    whole = Engine(model, tokenizer).generate([long_prompt], params)
    chunked = Engine(model, tokenizer, max_tokens_per_step=5).generate([long_prompt], params)
    assert ids_of(whole) == ids_of(chunked) == [reference_greedy(model, tokenizer, long_prompt, 20, eos=False)]


def test_sampling_is_reproducible_per_seed_and_independent_of_the_batch(model, tokenizer):
    params = SamplingParams(max_new_tokens=30, temperature=1.0, top_k=50, top_p=0.9, seed=7, ignore_eos=True)
    engine = Engine(model, tokenizer, max_batch_size=8)
    alone = ids_of(engine.generate([PROMPTS[0]], params))[0]
    assert ids_of(engine.generate([PROMPTS[0]], params))[0] == alone
    crowd = engine.generate([PROMPTS[1], PROMPTS[0], PROMPTS[2]], params)
    assert crowd[1].choices[0].token_ids == alone
    other_seeds = {
        tuple(ids_of(engine.generate([PROMPTS[0]], SamplingParams(**{**params.__dict__, "seed": s})))[0])
        for s in (8, 9)
    }
    assert tuple(alone) not in other_seeds


def test_n_samples_share_one_prefill(model, tokenizer, monkeypatch):
    engine = Engine(model, tokenizer, max_batch_size=4)
    calls = []
    extend = engine.runner.extend
    monkeypatch.setattr(engine.runner, "extend", lambda *a: calls.append(a[2]) or extend(*a))
    out = engine.generate(
        [PROMPTS[0]], SamplingParams(max_new_tokens=20, temperature=1.0, seed=3, n=3, ignore_eos=True)
    )[0]
    assert len(calls) == 1  # the prompt went through the model once
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in out.choices}) == 3
    assert out.completion_tokens == 60 and out.prompt_tokens == len(calls[0])
    # a sample depends on (seed, index) only: sample 1 of n=3 is sample 1 of n=2
    two = engine.generate(
        [PROMPTS[0]], SamplingParams(max_new_tokens=20, temperature=1.0, seed=3, n=2, ignore_eos=True)
    )[0]
    assert two.choices[1].token_ids == out.choices[1].token_ids


def test_repetition_penalty_changes_greedy_as_transformers_does(model, tokenizer):
    ids = torch.tensor([tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"]])
    ref = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=30,
        do_sample=False,
        repetition_penalty=1.5,
        pad_token_id=0,
        eos_token_id=None,
    )[0, ids.shape[1] :].tolist()
    got = Engine(model, tokenizer).generate(
        [PROMPTS[1]], SamplingParams(max_new_tokens=30, repetition_penalty=1.5, ignore_eos=True)
    )
    assert ids_of(got) == [ref]
    assert ref != reference_greedy(model, tokenizer, PROMPTS[1], 30, eos=False)


def test_cancel_frees_the_slot_at_the_next_step(model, tokenizer):
    engine = Engine(model, tokenizer, max_batch_size=2)
    handle = engine.submit(PROMPTS[0], SamplingParams(max_new_tokens=500, ignore_eos=True))
    for _ in range(3):
        engine.step()
    assert engine.free_slots == 1
    handle.cancel()
    engine.step()
    assert engine.free_slots == 2 and not engine.has_work()
    result = handle.result()
    assert result.choices[0].finish_reason == "cancelled" and 1 <= len(result.choices[0].token_ids) <= 4


def test_stopping_early_while_streaming_frees_the_slot(model, tokenizer):
    from codeinstruct.infer.generate import stream_response

    engine = Engine(model, tokenizer, max_batch_size=1)
    pieces = stream_response(engine, "Say something.", params=SamplingParams(max_new_tokens=400, ignore_eos=True))
    next(pieces)
    pieces.close()
    engine.step()
    assert engine.free_slots == 1 and not engine.has_work()


def test_background_loop_serves_threads(model, tokenizer):
    params = SamplingParams(max_new_tokens=25, ignore_eos=True)
    expected = ids_of(Engine(model, tokenizer).generate(PROMPTS, params))
    engine = Engine(model, tokenizer, max_batch_size=2)
    engine.start()
    try:
        results = [None] * len(PROMPTS)

        def ask(i):
            results[i] = engine.submit(PROMPTS[i], params).result().choices[0].token_ids

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        engine.stop()
    assert results == expected


def test_loop_on_the_calling_thread_serves_other_threads_and_stops_when_asked(model, tokenizer):
    # What a server does: the engine steps on the thread that loaded the model (`run`), HTTP threads
    # submit requests and score prompts (echo with logprobs), and the loop ends when they are done.
    params = SamplingParams(max_new_tokens=25, ignore_eos=True)
    expected = ids_of(Engine(model, tokenizer).generate(PROMPTS, params))
    engine = Engine(model, tokenizer, max_batch_size=2)
    ids = tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    direct = engine.prompt_logits(ids)
    results, scored, runner = [None] * len(PROMPTS), [], []

    def clients():
        def ask(i):
            results[i] = engine.submit(PROMPTS[i], params).result().choices[0].token_ids

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        scored.append(engine.prompt_logits(ids))
        for t in threads:
            t.join(timeout=60)

    http = threading.Thread(target=clients)
    original = engine.step

    def step():
        runner.append(threading.current_thread())
        return original()

    engine.step = step
    engine.run(until=lambda: not http.is_alive(), on_start=http.start)
    http.join()
    assert results == expected
    assert torch.equal(scored[0], direct)
    assert set(runner) == {threading.current_thread()}  # every step on this thread
    assert not engine.running_in_background
    engine.start()  # and the engine can still run in the background afterwards
    try:
        assert ids_of([engine.submit(PROMPTS[1], params).result()]) == expected[1:2]
    finally:
        engine.stop()


def test_generation_stops_at_the_context_end(tokenizer):
    from transformers import AutoModelForCausalLM

    config = preset_config("tiny", vocab_size=len(tokenizer))
    config.n_positions = 32
    model = AutoModelForCausalLM.from_config(config).eval()
    out = Engine(model, tokenizer).generate(["x = 1\n"], SamplingParams(max_new_tokens=100, ignore_eos=True))[0]
    assert out.prompt_tokens + len(out.choices[0].token_ids) == 32
    assert out.choices[0].finish_reason == "length"


def test_bad_requests_are_refused_clearly(model, tokenizer):
    engine = Engine(model, tokenizer, max_batch_size=2)
    with pytest.raises(CodeinstructError, match="context is 1024"):
        engine.submit("1 " * 1100)
    with pytest.raises(CodeinstructError, match="empty"):
        engine.submit("")
    with pytest.raises(CodeinstructError, match="slots"):
        engine.submit("x", SamplingParams(n=3))
    with pytest.raises(CodeinstructError, match="top_p"):
        SamplingParams(top_p=0)


def test_other_architectures_run_through_their_own_forward(tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = AutoModelForCausalLM.from_config(config).eval()
    engine = Engine(model, tokenizer, max_batch_size=2)
    outputs = engine.generate(PROMPTS[:3], SamplingParams(max_new_tokens=20, ignore_eos=True))
    assert ids_of(outputs) == [reference_greedy(model, tokenizer, p, 20, eos=False) for p in PROMPTS[:3]]


# ----------------------------------------------------------------- streamed text, with a scripted model


class ScriptedRunner:
    """Stands in for the model: always predicts the next token of a fixed script."""

    def __init__(self, script, vocab):
        self.script, self.vocab = script, vocab

    def _logits(self, position):
        row = torch.zeros(self.vocab)
        row[self.script[min(position, len(self.script) - 1)]] = 1.0
        return row

    def extend(self, slot, start, ids):
        self.prompt_len = start + len(ids)
        return self._logits(0)

    def decode(self, slots, tokens, positions):
        return torch.stack([self._logits(p - self.prompt_len + 1) for p in positions])

    def copy(self, src, dst, length):
        pass

    def release(self, slot):
        pass


def scripted_engine(model, tokenizer, text):
    script = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    engine = Engine(model, tokenizer)
    engine.runner = ScriptedRunner(script, len(tokenizer))
    return engine, script


def test_multibyte_characters_split_across_tokens_stream_whole(model, tokenizer):
    text = "print('héllo 你好 🙂')\n"
    engine, script = scripted_engine(model, tokenizer, text)
    pieces = [tokenizer.decode([t]) for t in script[:-1]]
    assert any("\ufffd" in p for p in pieces)  # the tokenizer really splits some character
    events = list(engine.submit("x", SamplingParams(max_new_tokens=100)))
    assert "".join(e.text for e in events) == text
    assert all("\ufffd" not in e.text for e in events)
    assert events[-1].finish_reason == "stop"


def test_stop_string_spanning_tokens_is_cut_exactly(model, tokenizer):
    text = "x = 1\n### Instruction: more\nand more"
    engine, script = scripted_engine(model, tokenizer, text)
    stop = "\n### Instr"
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    at = text.index(stop)
    assert sum(1 for a, b in offsets if a < at + len(stop) and b > at) >= 2  # it spans tokens
    handle = engine.submit("x", SamplingParams(max_new_tokens=100, stop=(stop,)))
    events = list(handle)
    streamed = "".join(e.text for e in events)
    assert streamed == "x = 1"
    assert events[-1].finish_reason == "stop"
    assert handle.result().choices[0].text == "x = 1"


def test_text_that_only_looks_like_a_stop_string_is_released(model, tokenizer):
    text = "a ### Inst b"
    engine, _ = scripted_engine(model, tokenizer, text)
    out = engine.submit("x", SamplingParams(max_new_tokens=100, stop=("### Instruction",))).result()
    assert out.choices[0].text == text and out.choices[0].finish_reason == "stop"  # ended by EOS

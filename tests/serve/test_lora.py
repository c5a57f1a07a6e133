"""LoRA adapters served by name beside the base model, unmerged (`--lora NAME=DIR`), chosen by `model`.

The reference is the adapter merged into a copy of the base (peft's merge_and_unload) run by its own engine."""

import concurrent.futures

import httpx
import pytest
import torch

from codeinstruct.errors import CodeinstructError
from codeinstruct.infer.lora import load_adapters
from codeinstruct.infer.sampling import SamplingParams
from codeinstruct.modeling import load_for_inference
from codeinstruct.prompts import encode_text
from codeinstruct.serve import ServerSettings, build_app, create_app
from tests.serve.conftest import client, new_engine, running

PROMPT = "def merge(a, b):\n"


@pytest.fixture(scope="module")
def adapter_dir(model_dir, tmp_path_factory):
    """A peft adapter on the tiny model with random (non-zero) weights, as `finetune` writes runs/NAME/adapter."""
    from peft import LoraConfig, get_peft_model

    model, _ = load_for_inference(model_dir, device="cpu")
    torch.manual_seed(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("run") / "adapter"
    get_peft_model(model, config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def merged_engine(model_dir, adapter_dir):
    from peft import PeftModel

    from codeinstruct.infer.engine import Engine

    model, tokenizer = load_for_inference(model_dir, device="cpu")
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    return Engine(merged, tokenizer, max_batch_size=2)


@pytest.fixture(scope="module")
def server(model_dir, adapter_dir):
    engine = new_engine(model_dir, slots=4)
    load_adapters(engine, {"merge-lora": adapter_dir})
    with running(create_app(ServerSettings(max_concurrency=4), engine=engine, model_name="tiny")) as s:
        s.engine = engine
        yield s


def greedy(url: str, model: str) -> str:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    r = httpx.post(url + "/v1/completions", json=body, timeout=60).json()
    assert r.get("model") == model, r
    return r["choices"][0]["text"]


def test_models_lists_the_adapters_with_their_base(server, adapter_dir):
    models = client(server.url).models.list().data
    assert [m.id for m in models] == ["tiny", "merge-lora"]
    assert models[1].model_extra["parent"] == "tiny" and models[1].model_extra["root"] == str(adapter_dir)


def test_model_chooses_the_adapter_and_its_answer_is_the_merged_models(server, merged_engine):
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    ids = encode_text(server.engine.tokenizer, PROMPT)
    expected_lora = merged_engine.submit(ids, params).result().text
    expected_base = server.engine.submit(ids, params).result().text
    assert expected_lora != expected_base  # the adapter changes the model
    assert greedy(server.url, "merge-lora") == expected_lora
    assert greedy(server.url, "tiny") == expected_base
    # base and adapter requests sharing the engine's batches do not disturb each other
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda m: greedy(server.url, m), ["merge-lora", "tiny"] * 3))
    assert answers == [expected_lora, expected_base] * 3
    server.wait_for(lambda h: h["free_slots"] == 4, "every slot freed")


def test_adapter_prompt_logprobs_are_the_merged_models(server, merged_engine):
    ids = encode_text(server.engine.tokenizer, PROMPT)
    body = {"model": "merge-lora", "prompt": [ids], "max_tokens": 0, "echo": True, "logprobs": 1}
    lp = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["logprobs"]
    with torch.inference_mode():
        reference = torch.log_softmax(merged_engine.model(input_ids=torch.tensor([ids])).logits[0], -1)
    expected = [float(reference[i - 1, ids[i]]) for i in range(1, len(ids))]
    assert lp["token_logprobs"][1:] == pytest.approx(expected, abs=1e-4)


def test_a_directory_without_an_adapter_is_a_one_line_error(model_dir, tmp_path):
    with pytest.raises(CodeinstructError, match="not a LoRA adapter directory"):
        build_app(ServerSettings(max_concurrency=1), model=model_dir, lora={"x": tmp_path})


def test_serve_cli_refuses_a_malformed_lora_option(cli, model_dir):
    code, _, err = cli("serve", "--model", model_dir, "--lora", "no-equals-sign", "--port", "0")
    assert code != 0 and "expected NAME=DIR" in err

"""Generation on an OpenAI-compatible server: the same samples as the local engine, FIM as `suffix` or raw,
bounded concurrency, retries on 429/503, one-line errors."""

import asyncio
import json

import httpx
import pytest

from codeinstruct.errors import CodeinstructError
from codeinstruct.evaluate.endpoint import Endpoint, EndpointClient, TextRequest
from codeinstruct.evaluate.humaneval import GenerationConfig, generate_samples
from codeinstruct.evaluate.infill import InfillConfig, generate_infill_samples
from codeinstruct.evaluate.postprocess import BASE_STOP_WORDS
from codeinstruct.serve import ServerSettings, listen
from codeinstruct.serve.app import build_app, default_model_name
from tests.serve.conftest import running

from .infill_data import single_line_rows, write_rows


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("infill") / "SingleLine-small.jsonl", single_line_rows(2))


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    """`codeinstruct serve --model DIR` (the same build_app), on a free port of 127.0.0.1."""
    with running(build_app(ServerSettings(max_concurrency=4), model=tiny_model_dir)) as server:
        yield server


def samples_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def generated(rows):
    """What must agree between local and endpoint generation: everything but where the samples came from."""
    keep = ("task_id", "sample", "seed", "prompt", "raw_output", "completion", "mode", "spm")
    return [{k: r[k] for k in keep if k in r} for r in rows]


# ---------------------------------------------------------------- against `codeinstruct serve`


def test_humaneval_on_the_server_equals_local_generation_for_greedy_decoding(tiny_model_dir, served, tmp_path):
    local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    settings = dict(n=2, max_new_tokens=24, limit=4, seed=3)
    generate_samples(GenerationConfig(model=str(tiny_model_dir), **settings), local)
    endpoint = Endpoint(served.url, concurrency=3)
    generate_samples(GenerationConfig(model=None, endpoint=endpoint, **settings), remote)
    ours, theirs = samples_of(local), samples_of(remote)
    assert len(ours) == 8 and generated(theirs) == generated(ours)
    assert any(r["raw_output"] for r in ours)  # the model wrote something to compare
    config = theirs[0]["config"]
    assert config["endpoint"] == served.url and config["served_model"] == default_model_name(tiny_model_dir)
    assert config["stop_words"] == list(BASE_STOP_WORDS) and "dtype" not in config


def test_sampled_outputs_from_codeinstruct_serve_equal_local_ones_for_the_same_seeds(tiny_model_dir, served, tmp_path):
    local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    settings = dict(n=3, temperature=1.0, max_new_tokens=12, limit=2, seed=11)
    generate_samples(GenerationConfig(model=str(tiny_model_dir), **settings), local)
    generate_samples(GenerationConfig(model=None, endpoint=Endpoint(served.url), **settings), remote)
    ours = samples_of(local)
    assert generated(samples_of(remote)) == generated(ours)
    assert len({r["raw_output"] for r in ours}) > 1  # really sampled


@pytest.mark.parametrize("spm, fim_format", [(False, "suffix"), (False, "raw"), (True, "auto")])
def test_infilling_on_the_server_equals_local_generation(tiny_model_dir, served, suite, tmp_path, spm, fim_format):
    local, remote = tmp_path / "local.jsonl", tmp_path / "remote.jsonl"
    settings = dict(benchmark=suite, spm=spm, max_new_tokens=16, limit=5)
    generate_infill_samples(InfillConfig(model=str(tiny_model_dir), **settings), local)
    endpoint = Endpoint(served.url + "/v1", fim_format=fim_format)
    generate_infill_samples(InfillConfig(model=None, endpoint=endpoint, **settings), remote)
    ours, theirs = samples_of(local), samples_of(remote)
    assert len(ours) == 5 and generated(theirs) == generated(ours)
    assert theirs[0]["config"]["fim_format"] == ("raw" if spm else fim_format)


def test_eval_humaneval_with_endpoint_from_the_command_line(cli, served, tmp_path):
    out = tmp_path / "s.jsonl"
    code, stdout, err = cli(
        "eval", "humaneval", "--endpoint", served.url, "--limit", "2", "--max-new-tokens", "8", "--out", out,
        "--concurrency", "2",
    )  # fmt: skip
    assert code == 0, err
    assert "2 samples for 2 problems" in stdout and len(samples_of(out)) == 2


# ---------------------------------------------------------------- protocol, with a scripted server


class Scripted:
    """An httpx transport answering /v1/completions from `answer(body) -> (status, json, headers)`."""

    def __init__(self, answer, delay_s: float = 0.0):
        self.answer, self.delay_s = answer, delay_s
        self.bodies: list[dict] = []
        self.in_flight = self.most_in_flight = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "scripted"}]})
        body = json.loads(request.content)
        self.bodies.append(body)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            status, payload, headers = self.answer(body)
        finally:
            self.in_flight -= 1
        return httpx.Response(status, json=payload, headers=headers)

    @property
    def transport(self):
        return httpx.MockTransport(self.handle)


def texts(*values):
    return {"choices": [{"index": i, "text": t, "finish_reason": "stop"} for i, t in enumerate(values)]}


def run(scripted, requests, endpoint=None, stop=("\nclass",)):
    client = EndpointClient(endpoint or Endpoint("http://scripted.test", backoff_s=0.01), transport=scripted.transport)
    return client, client.run(requests, temperature=0.0, top_p=1.0, max_tokens=8, stop=list(stop))


def test_requests_carry_prompt_seed_stop_and_model_and_stay_within_concurrency():
    scripted = Scripted(lambda body: (200, texts(body["prompt"].upper()), {}), delay_s=0.02)
    endpoint = Endpoint("http://scripted.test/v1/", concurrency=3, api_key="sk-test")
    client, out = run(scripted, [TextRequest(f"p{i}", 1, 100 + i) for i in range(12)], endpoint)
    assert out == [[f"P{i}"] for i in range(12)]  # in request order, whatever order they finished in
    assert scripted.most_in_flight == 3
    first = next(b for b in scripted.bodies if b["prompt"] == "p0")
    assert first == {
        "prompt": "p0",
        "n": 1,
        "seed": 100,
        "temperature": 0.0,
        "top_p": 1.0,
        "max_tokens": 8,
        "stop": ["\nclass"],
        "model": "scripted",
    }


def test_outputs_are_cut_at_stop_words_the_server_missed():
    scripted = Scripted(lambda body: (200, texts("    return 1\nclass X:\n    pass", "\nclass"), {}))
    _, out = run(scripted, [TextRequest("def f():", 2, 0)])
    assert out == [["    return 1", ""]]


def test_a_server_that_refuses_suffix_gets_raw_fim_prompts():
    def answer(body):
        if "suffix" in body:
            return 400, {"error": {"message": "suffix is not currently supported", "type": "BadRequestError"}}, {}
        return 200, texts("MID"), {}

    scripted = Scripted(answer)
    requests = [TextRequest("def f():\n", 1, i, suffix="    return x\n") for i in range(3)]
    client, out = run(scripted, requests)
    assert out == [["MID"]] * 3 and client.fim_format == "raw"
    assert ["suffix" in b for b in scripted.bodies] == [True, False, False, False]  # asked once, then raw
    assert scripted.bodies[-1]["prompt"] == "<fim_prefix>def f():\n<fim_suffix>    return x\n<fim_middle>"


def test_a_server_that_caps_stop_strings_gets_four_and_the_rest_are_applied_here():
    def answer(body):
        if len(body["stop"]) > 4:
            return 422, {"error": "Input validation error: `stop` supports up to 4 stop sequences"}, {}
        return 200, texts("    return 1\n<file_sep>next file"), {}

    scripted = Scripted(answer)
    _, out = run(scripted, [TextRequest("def f():", 1, 0)], stop=BASE_STOP_WORDS)
    assert out == [["    return 1\n"]]
    assert [len(b["stop"]) for b in scripted.bodies] == [8, 4]


def test_429_and_503_are_retried_with_backoff():
    answers = iter([(429, {"error": {"message": "busy"}}, {"retry-after": "0"}), (503, {}, {})])
    scripted = Scripted(lambda body: next(answers, (200, texts("ok"), {})))
    _, out = run(scripted, [TextRequest("x", 1, 0)])
    assert out == [["ok"]] and len(scripted.bodies) == 3


def test_errors_are_one_line_and_name_the_url():
    scripted = Scripted(lambda body: (503, {"error": {"message": "overloaded\nplease wait"}}, {}))
    with pytest.raises(CodeinstructError) as e:
        run(scripted, [TextRequest("x", 1, 0)], Endpoint("http://scripted.test", retries=2, backoff_s=0.0))
    assert str(e.value) == "http://scripted.test/v1/completions: HTTP 503 after 3 tries: overloaded please wait"
    assert len(scripted.bodies) == 3

    scripted = Scripted(lambda body: (400, {"error": {"message": "the prompt has 9000 tokens"}}, {}))
    with pytest.raises(CodeinstructError, match=r"completions: HTTP 400: the prompt has 9000 tokens$"):
        run(scripted, [TextRequest("x", 1, 0)])


def test_a_timeout_is_a_one_line_error():
    def hang(request):
        raise httpx.ReadTimeout("timed out", request=request)

    client = EndpointClient(Endpoint("http://slow.test", model="m", timeout_s=5), transport=httpx.MockTransport(hang))
    with pytest.raises(CodeinstructError, match=r"^http://slow.test/v1/completions: no answer within 5 s"):
        client.run([TextRequest("x", 1, 0)], temperature=0.0, top_p=1.0, max_tokens=4, stop=[])


def test_a_server_that_is_not_there_is_a_one_line_error_from_the_command_line(cli, tmp_path):
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()  # a port nothing listens on
    code, _, err = cli(
        "eval", "humaneval", "--endpoint", f"http://127.0.0.1:{port}", "--limit", "1", "--out", tmp_path / "s.jsonl"
    )
    assert code == 1 and "Traceback" not in err
    assert f"http://127.0.0.1:{port}/v1/models: cannot reach the server" in err
    assert not (tmp_path / "s.jsonl").exists()


def test_model_and_endpoint_are_one_or_the_other(tmp_path, tiny_model_dir):
    with pytest.raises(CodeinstructError, match="either --model .* or --endpoint"):
        generate_samples(GenerationConfig(model=None), tmp_path / "s.jsonl")
    with pytest.raises(CodeinstructError, match="either --model .* or --endpoint"):
        generate_samples(GenerationConfig(model=str(tiny_model_dir), endpoint=Endpoint("http://x")), tmp_path / "s")
    with pytest.raises(CodeinstructError, match="http"):
        Endpoint("localhost:8000")

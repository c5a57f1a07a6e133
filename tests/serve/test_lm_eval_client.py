"""A real eval client through the server: lm-eval's `local-completions` model against `codeinstruct serve`
scores a multiple-choice task exactly as lm-eval's `hf` model scores the same model directory.

`local-completions` sends the context + continuation token ids with `echo: true, logprobs: 1,
max_tokens: 1` and sums the prompt tokens' log-probabilities of the continuation; `hf` runs the
model's forward itself. The task (`lm_eval_task/`) is local, and everything runs offline.
"""

from pathlib import Path

import pytest

from codeinstruct.serve import ServerSettings, create_app
from tests.serve.conftest import new_engine, running

TASKS = Path(__file__).parent / "lm_eval_task"
TASK = "codeinstruct_code_mc"


@pytest.fixture
def offline(monkeypatch, tmp_path):
    for name in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(TASKS)  # the task's data_files are relative to it


def evaluate(model: str, model_args: dict) -> tuple[float, list[list[float]]]:
    """lm-eval's accuracy on the task and each document's per-choice loglikelihoods."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(TASKS), include_defaults=False, verbosity="ERROR"),
        log_samples=True,
        batch_size=1,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    return out["results"][TASK]["acc,none"], [[float(r[0][0]) for r in s["resps"]] for s in samples]


def test_lm_eval_local_completions_through_the_server_matches_lm_eval_hf(model_dir, offline):
    accuracy_hf, loglikelihoods_hf = evaluate("hf", {"pretrained": str(model_dir), "device": "cpu", "dtype": "float32"})
    app = create_app(ServerSettings(max_concurrency=2), engine=new_engine(model_dir, slots=2), model_name="tiny")
    with running(app) as server:
        accuracy, loglikelihoods = evaluate(
            "local-completions",
            {
                "model": "tiny",
                "base_url": server.url + "/v1/completions",
                "tokenizer": str(model_dir),
                "tokenizer_backend": "huggingface",
                "tokenized_requests": True,
                "num_concurrent": 1,
                "max_retries": 1,
            },
        )
    assert len(loglikelihoods) == 10 and all(len(ll) >= 3 for ll in loglikelihoods)
    assert accuracy == accuracy_hf
    for doc, (ours, theirs) in enumerate(zip(loglikelihoods, loglikelihoods_hf)):
        assert ours == pytest.approx(theirs, abs=1e-4), f"document {doc}"
    # a random tiny model does not get everything right or wrong: the comparison says something
    assert len({tuple(sorted(range(len(ll)), key=ll.__getitem__)) for ll in loglikelihoods}) > 1

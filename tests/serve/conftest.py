"""A tiny model directory, servers on 127.0.0.1 (uvicorn in a thread, a free port), and clients for them."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch

from codeinstruct.infer.engine import Engine
from codeinstruct.serve import listen


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    """A random tiny GPTBigCode with the test tokenizer, as a Hugging Face directory (runs/tiny/final)."""
    from transformers import AutoModelForCausalLM

    from codeinstruct.modeling import preset_config, save_hf_directory

    torch.manual_seed(0)
    config = preset_config("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    model = AutoModelForCausalLM.from_config(config).eval()
    return save_hf_directory(model, tokenizer, tmp_path_factory.mktemp("runs") / "tiny" / "final")


def new_engine(model_dir: Path, slots: int = 4, engine_class=Engine) -> Engine:
    from codeinstruct.modeling import load_for_inference

    model, tokenizer = load_for_inference(model_dir, device="cpu")
    return engine_class(model, tokenizer, max_batch_size=slots)


class GatedEngine(Engine):
    """An engine whose steps wait for `gate`: requests are admitted and queued but make no progress until it opens."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def step(self) -> bool:
        self.gate.wait()
        return super().step()


class Running:
    def __init__(self, app, server, thread, port: int):
        self.app, self.server, self.thread, self.port = app, server, thread, port
        self.url = f"http://127.0.0.1:{port}"

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def wait_for(self, condition, what: str, deadline_s: float = 20.0) -> dict:
        """Poll /health until condition(health) holds; fail naming `what` if it never does."""
        end = time.monotonic() + deadline_s
        while True:
            health = self.health()
            if condition(health):
                return health
            if time.monotonic() > end:
                raise AssertionError(f"{what} never happened; last /health: {health}")
            time.sleep(0.05)


@contextmanager
def running(app):
    """Serve `app` with uvicorn on a free port of 127.0.0.1 in a thread; stop it afterwards."""
    import uvicorn

    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    end = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > end:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield Running(app, server, thread, port)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def client(url: str, api_key: str = "unused", **kwargs):
    import openai

    return openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=60, **kwargs)


def sse_events(response: httpx.Response) -> list:
    """The JSON events of a server-sent-event stream (httpx, streaming), '[DONE]' as the string."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def write_corpus(root: Path, texts: dict[str, str]) -> list[str]:
    """A JSONL corpus (one document per path: repo acme/echo, MIT) for an attribution index."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "corpus.jsonl"
    with path.open("w") as f:
        for doc_path, content in texts.items():
            f.write(json.dumps({"content": content, "repo": "acme/echo", "path": doc_path, "license": "MIT"}) + "\n")
    return [str(path)]

"""Attribution in the server: every finished choice carries its matches, computed off the event loop.

The corpus holds what the tiny model answers for two requests (seeded sampling), so that those
answers are found in the index, as a model's regurgitated training code would be.
"""

import asyncio
import threading

import httpx
import pytest

from codeinstruct.attribution import AttributionIndex, build_index
from codeinstruct.infer.generate import response_params
from codeinstruct.infer.sampling import SamplingParams
from codeinstruct.prompts import encode_text, extract_response, format_prompt
from codeinstruct.serve import ServerSettings, create_app
from tests.serve.conftest import client, new_engine, running, write_corpus

COMPLETION = {"prompt": "def merge(a, b):\n", "max_tokens": 60, "temperature": 1.0}
CHAT = {"messages": [{"role": "user", "content": "Write a merge function."}], "max_tokens": 60, "temperature": 1.0}


def _answers(engine, seed: int) -> tuple[str, str]:
    params = SamplingParams(max_new_tokens=60, temperature=1.0, seed=seed)
    completion = engine.submit(encode_text(engine.tokenizer, COMPLETION["prompt"]), params).result().text
    chat = (
        engine.submit(encode_text(engine.tokenizer, format_prompt("Write a merge function.")), response_params(params))
        .result()
        .text
    )
    return completion, extract_response(chat)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    engine = new_engine(model_dir, slots=4)
    # a random model writes any byte; a NUL would make the corpus reader skip the document as binary
    seed, (completion, chat) = next((s, a) for s in range(100) if "\0" not in "".join(a := _answers(engine, s)))
    root = tmp_path_factory.mktemp("attribution")
    corpus = write_corpus(
        root / "corpus", {"echo/completion.py": "import os\n\n" + completion + "\n", "echo/chat.py": chat + "\n"}
    )
    build_index(corpus, root / "index", workers=1, min_tokens=8)
    app = create_app(
        ServerSettings(max_concurrency=4),
        engine=engine,
        model_name="tiny",
        attribution=AttributionIndex.open(root / "index"),
    )
    with running(app) as s:
        s.completion, s.chat = {**COMPLETION, "seed": seed}, {**CHAT, "seed": seed}
        yield s


def test_a_completion_carries_its_matches_with_repo_path_license_and_lines(server):
    r = client(server.url).completions.create(model="tiny", **server.completion)
    attribution = r.choices[0].model_extra["attribution"]
    [match] = attribution["matches"]
    assert (match["repo"], match["path"], match["license"], match["kind"]) == (
        "acme/echo",
        "echo/completion.py",
        "MIT",
        "verbatim",
    )
    assert match["source_lines"][0] == 3  # after "import os" and a blank line in the source
    assert match["query_lines"][0] == 1 and match["tokens"] >= 8
    # Every document holding the code counts (the seeded chat answer in the corpus shares part of it).
    assert match["sources"][0]["path"] == "echo/completion.py"
    assert attribution["licenses"] == {"MIT": match["copies"]}
    assert server.health()["attribution"] is True


def test_a_stream_carries_the_attribution_in_the_last_event_of_the_choice(server):
    c = client(server.url)
    whole = c.completions.create(model="tiny", **server.completion).choices[0].model_extra["attribution"]
    chunks = list(c.completions.create(model="tiny", stream=True, **server.completion))
    assert [("attribution" in ch.choices[0].model_extra) for ch in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].choices[0].model_extra["attribution"] == whole


def test_chat_answers_are_attributed_streamed_or_not(server):
    c = client(server.url)
    r = c.chat.completions.create(model="tiny", **server.chat)
    [match] = r.choices[0].model_extra["attribution"]["matches"]
    assert match["path"] == "echo/chat.py"
    last = [ch for ch in c.chat.completions.create(model="tiny", stream=True, **server.chat) if ch.choices][-1]
    assert last.choices[0].finish_reason is not None
    assert last.choices[0].model_extra["attribution"] == r.choices[0].model_extra["attribution"]


def test_code_that_is_not_in_the_index_gets_an_empty_report(server):
    r = client(server.url).completions.create(
        model="tiny", prompt="class Tree:\n", max_tokens=30, temperature=1.0, seed=99
    )
    assert r.choices[0].model_extra["attribution"] == {"matches": [], "licenses": {}}


class _BlockingIndex:
    """An index whose check waits until released, and notes whether it ran on an event loop's thread."""

    def __init__(self):
        self.release = threading.Event()
        self.started = threading.Event()
        self.on_event_loop = None

    def check(self, code):
        try:
            asyncio.get_running_loop()
            self.on_event_loop = True
        except RuntimeError:
            self.on_event_loop = False
        self.started.set()
        self.release.wait(30)
        from codeinstruct.attribution import AttributionReport

        return AttributionReport(matches=[], licenses={}, min_tokens=8)


def test_the_check_runs_off_the_event_loop_so_other_requests_are_served_meanwhile(model_dir):
    index = _BlockingIndex()
    app = create_app(
        ServerSettings(max_concurrency=2), engine=new_engine(model_dir, slots=2), model_name="tiny", attribution=index
    )
    with running(app) as s:
        done = []
        t = threading.Thread(
            target=lambda: done.append(
                httpx.post(s.url + "/v1/completions", timeout=60, json={"prompt": "x", "max_tokens": 4}).json()
            )
        )
        t.start()
        assert index.started.wait(30)
        assert s.health()["status"] == "ok"  # answered while the check is still running
        assert not done
        index.release.set()
        t.join(30)
        assert index.on_event_loop is False
        assert done[0]["choices"][0]["attribution"] == {"matches": [], "licenses": {}}

"""The playground page: served as package data without external assets, and used in a real browser.

The browser test fine-tunes a tiny model until it answers one instruction with a known code block,
indexes a repository that holds that code, and then does what a person would: types the
instruction, watches the answer stream in with its code highlighted, and reads the attribution
entry beside it. Headless Chromium is Debian's `chromium` (never a browser Playwright downloads);
the screenshot is written to the test's tmp_path as playground.png.
"""

import json
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest

from codeinstruct.serve import ServerSettings, create_app
from codeinstruct.serve.app import STATIC
from tests.serve.conftest import new_engine, running

MERGE = """def merge_intervals(intervals):
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged
"""
INSTRUCTION = "Write a Python function that merges overlapping intervals."
RESPONSE = (
    "Sort the intervals by start, then grow the last merged interval while the next one overlaps:\n\n"
    "```python\n" + MERGE + "```"
)


def test_the_page_and_its_assets_are_served_and_reference_nothing_outside(model_dir):
    app = create_app(ServerSettings(max_concurrency=1), engine=new_engine(model_dir, slots=1), model_name="tiny")
    with running(app) as s:
        page = httpx.get(s.url + "/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        for element in (
            'id="instruction"',
            'id="input"',
            'id="answer"',
            'id="matches"',
            "/static/app.js",
            "/static/style.css",
        ):
            assert element in page.text
        for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
            r = httpx.get(f"{s.url}/static/{asset}")
            assert r.status_code == 200 and kind in r.headers["content-type"]
    for f in STATIC.iterdir():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", f.read_text()), (
            f"{f.name} loads something from outside"
        )


def _chromium() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> Path:
    """A tiny model fine-tuned until it answers INSTRUCTION with RESPONSE word for word (about 15 s)."""
    from typer.testing import CliRunner

    from codeinstruct.cli import app

    root = tmp_path_factory.mktemp("playground-model")
    (root / "data.json").write_text(json.dumps([{"instruction": INSTRUCTION, "input": "", "response": RESPONSE}] * 4))
    recipe = {
        "name": "playground",
        "seed": 0,
        "run_dir": str(root / "run"),
        "model": {"source": "preset:tiny", "tokenizer": str(root / "tok")},
        "data": {"train": str(root / "data.json"), "max_length": 256, "packing": False},
        "train": {
            "epochs": 60,
            "batch_size": 4,
            "lr": 3e-3,
            "warmup_ratio": 0.05,
            "precision": "fp32",
            "log_every": 10,
        },
    }
    (root / "recipe.json").write_text(json.dumps(recipe))
    runner = CliRunner()
    for args in (
        ["tokenizer", "train", str(root / "data.json"), "-o", str(root / "tok"), "--vocab-size", "400"],
        ["finetune", str(root / "recipe.json")],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    return root / "run" / "final"


@pytest.mark.slow
def test_a_person_types_an_instruction_and_sees_the_streamed_answer_and_its_attribution(trained_model, tmp_path):
    executable = _chromium()
    if executable is None:
        pytest.skip("no chromium binary (apt-get install -y chromium, or set CHROMIUM=/path/to/chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    from codeinstruct.attribution import AttributionIndex, build_index

    repo = tmp_path / "intervals"
    (repo / "intervals").mkdir(parents=True)
    (repo / "pyproject.toml").write_text('[project]\nname = "acme-intervals"\nlicense = "Apache-2.0"\n')
    (repo / "intervals" / "merge.py").write_text('"""Interval helpers."""\n\n\n' + MERGE)
    build_index([str(repo)], tmp_path / "index", workers=1)
    app = create_app(
        ServerSettings(max_concurrency=2),
        engine=new_engine(trained_model, slots=2),
        model_name="playground",
        attribution=AttributionIndex.open(tmp_path / "index"),
    )
    screenshot = tmp_path / "playground.png"
    with running(app) as s, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.goto(s.url + "/")
            sync_api.expect(page.locator("#model")).to_have_text("playground")
            page.fill("#instruction", INSTRUCTION)
            page.click("#send")
            code = page.locator("#answer pre code")
            sync_api.expect(code).to_contain_text("return merged", timeout=30_000)
            match = page.locator("#matches .match").first
            sync_api.expect(match).to_contain_text("intervals/merge.py", timeout=30_000)
            sync_api.expect(match).to_contain_text("Apache-2.0")
            sync_api.expect(page.locator("#licenses")).to_contain_text("Apache-2.0 × 1")
            sync_api.expect(page.locator("#counter")).to_contain_text("finished: stop")
            chunks = int(page.locator("#counter").inner_text().split()[0])
            assert chunks > 10  # it arrived in pieces, as a stream
            assert page.locator("#answer .prose").first.inner_text().startswith("Sort the intervals by start")
            assert code.inner_text().strip() == MERGE.strip()
            assert page.locator("#answer .tok-kw", has_text="def").count() >= 1  # highlighted
            assert page.locator("#answer .tok-fn", has_text="sorted").count() == 1
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert screenshot.stat().st_size > 10_000

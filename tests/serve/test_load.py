"""A bounded load test on loopback: `codeinstruct serve` in its own process, 32 concurrent streaming clients.

Four rounds of 32 clients started together against 8 slots and a queue of 8: some are answered
429, a quarter of them hang up after a few events, the rest must receive exactly the text the
same request gives alone. Afterwards the server is idle with every slot free, still answering,
and its resident memory is back near the baseline measured after the first round.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

CLIENTS, ROUNDS, SLOTS, QUEUE = 32, 4, 8, 8
PROMPTS = ["def add(a, b):\n", "import os\n", "class Stack:\n", "# parse a CSV file\n"]


def _rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


@pytest.fixture
def served(model_dir, tmp_path):
    if not Path("/proc/self/status").exists():
        pytest.skip("reads resident memory from /proc (Linux)")
    log = (tmp_path / "server.log").open("w+")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "codeinstruct",
            "serve",
            "--model",
            str(model_dir),
            "--port",
            "0",
            "--max-concurrency",
            str(SLOTS),
            "--max-queue",
            str(QUEUE),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        end = time.monotonic() + 120
        while not (m := re.search(r"at http://([\d.]+):(\d+)/v1", Path(log.name).read_text())):
            assert proc.poll() is None, Path(log.name).read_text()
            assert time.monotonic() < end, "the server did not start"
            time.sleep(0.1)
        yield proc, m.group(1), f"http://127.0.0.1:{m.group(2)}", Path(log.name)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def _client(url: str, body: dict, hang_up: bool, start: threading.Barrier, out: list) -> None:
    start.wait()
    try:
        with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=120) as r:
            if r.status_code != 200:
                out.append(("rejected", r.status_code, r.read()))
                return
            text, events, finish, done = "", 0, None, False
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                events += 1
                choice = httpx.Response(200, content=line[6:]).json()["choices"][0]
                text += choice["text"]
                finish = choice["finish_reason"] or finish
                if hang_up and events == 3:
                    out.append(("hung up", body["prompt"], None))
                    return
            out.append(("completed", body, (text, finish, done)))
    except httpx.HTTPError as e:
        out.append(("failed", body, repr(e)))


def _round(url: str, expected: dict) -> list:
    start = threading.Barrier(CLIENTS)
    out: list = []
    threads = []
    for i in range(CLIENTS):
        body = {
            "prompt": PROMPTS[i % len(PROMPTS)],
            "max_tokens": 128,
            "temperature": 1.0,
            "seed": i % 3,
            "ignore_eos": True,
        }
        threads.append(threading.Thread(target=_client, args=(url, body, i % 4 == 3, start, out)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(out) == CLIENTS
    for kind, body, detail in out:
        assert kind in ("completed", "rejected", "hung up"), (kind, body, detail)
        if kind == "completed":
            assert detail == (expected[body["prompt"], body["seed"]], "length", True), "a completed stream is not whole"
        if kind == "rejected":
            assert body == 429 and b'"code":"queue_full"' in detail
    return out


def _idle(url: str) -> dict:
    end = time.monotonic() + 60
    while True:
        health = httpx.get(url + "/health", timeout=10).json()
        if health["active"] == 0 and health["free_slots"] == SLOTS:
            return health
        assert time.monotonic() < end, f"the server never became idle: {health}"
        time.sleep(0.1)


def test_32_streaming_clients_some_hanging_up(served):
    proc, host, url, log = served
    assert host == "127.0.0.1"  # bound to loopback unless told otherwise
    expected = {}
    for prompt in PROMPTS:
        for seed in range(3):
            r = httpx.post(
                url + "/v1/completions",
                timeout=60,
                json={"prompt": prompt, "max_tokens": 128, "temperature": 1.0, "seed": seed, "ignore_eos": True},
            )
            expected[prompt, seed] = r.json()["choices"][0]["text"]
    outcomes = _round(url, expected)
    _idle(url)
    baseline = _rss_bytes(proc.pid)
    for _ in range(ROUNDS - 1):
        outcomes += _round(url, expected)
        _idle(url)
    kinds = [kind for kind, _, _ in outcomes]
    assert kinds.count("completed") >= ROUNDS * SLOTS  # at least the first wave of every round
    assert kinds.count("rejected") >= 1  # 32 at once cannot fit in 8 slots + 8 queued
    assert kinds.count("hung up") >= 1
    health = _idle(url)
    assert health["status"] == "ok" and proc.poll() is None
    growth = _rss_bytes(proc.pid) - baseline
    assert growth < 16 * 2**20, f"resident memory grew by {growth / 2**20:.1f} MiB over {ROUNDS - 1} rounds"
    # still serving after all that
    r = httpx.post(
        url + "/v1/completions",
        json={"prompt": PROMPTS[0], "max_tokens": 128, "temperature": 1.0, "seed": 0, "ignore_eos": True},
        timeout=60,
    )
    assert r.json()["choices"][0]["text"] == expected[PROMPTS[0], 0]
    proc.send_signal(signal.SIGINT)  # Ctrl-C: a graceful stop, the CLI's usual exit status for an interrupt
    assert proc.wait(30) in (0, 130) and "Traceback" not in log.read_text(), log.read_text()[-2000:]

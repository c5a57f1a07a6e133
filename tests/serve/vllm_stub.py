"""A stand-in for vLLM serving a StarCoder, on the points the proxy depends on.

Like vLLM with a base or fine-tuned StarCoder: `/v1/chat/completions` is refused (400: the
tokenizer has no chat template), `suffix` is refused (400), `logprobs`, `echo`, penalties,
`logit_bias`, `top_k`... are accepted; `stop` is honoured; errors come in OpenAI's shape;
`/tokenize` and `/detokenize` sit at the root. It answers every completion with `answer` (cut at
the first stop string, `max_tokens` words at most), streamed in small pieces when asked, and
records every request body it was sent (`bodies`, with `path`). `status` makes it answer every
completion with that status (429, 503), `gather` makes each completion wait until that many have
been in flight at once (20 s at most).
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

ANSWER = "\ndef area(r):\n    return 3.14 * r * r  \n\n### Instruction:\nWrite more."


class Stub:
    def __init__(self, answer: str = ANSWER):
        self.answer = answer
        self.bodies: list[dict] = []
        self.status: int | None = None
        self.gather = 0
        self.in_flight = 0
        self.most_in_flight = 0


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": "BadRequestError", "param": None, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def legacy_logprobs(pieces: list[str], top: int, offset: int = 0) -> dict:
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for i, piece in enumerate(pieces):
        out["tokens"].append(piece)
        out["token_logprobs"].append(-0.25 * (i % 4))
        out["top_logprobs"].append({piece: -0.25 * (i % 4), **{f"alt{j}": -5.0 - j for j in range(top - 1)}})
        out["text_offset"].append(offset)
        offset += len(piece)
    return out


def create_stub_app(stub: Stub) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": "starcoder-stub", "object": "model", "owned_by": "vllm"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        stub.bodies.append({"path": "/v1/chat/completions", **(await request.json())})
        return error(
            400,
            "As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat "
            "template if the tokenizer does not define one.",
        )

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await request.json()
        stub.bodies.append({"path": "/tokenize", **body})
        return {"count": len(body["prompt"]), "max_model_len": 8192, "tokens": [ord(c) for c in body["prompt"]]}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = await request.json()
        stub.bodies.append({"path": "/detokenize", **body})
        return {"prompt": "".join(chr(t) for t in body["tokens"])}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        stub.bodies.append({"path": "/v1/completions", **body})
        if stub.status is not None:
            return error(stub.status, "the server is overloaded", headers={"Retry-After": "7"})
        if body.get("suffix") is not None:
            return error(400, "suffix is not currently supported")
        stub.in_flight += 1
        stub.most_in_flight = max(stub.most_in_flight, stub.in_flight)
        try:
            end = time.monotonic() + 20
            while stub.most_in_flight < stub.gather and time.monotonic() < end:
                await asyncio.sleep(0.01)
        finally:
            stub.in_flight -= 1
        text, finish = stub.answer, "stop"
        stops = body.get("stop") or []
        stops = [stops] if isinstance(stops, str) else stops
        cuts = [text.find(s) for s in stops if s and s in text]
        if cuts:
            text = text[: min(cuts)]
        max_tokens = body.get("max_tokens", 16)
        pieces = [text[i : i + 4] for i in range(0, len(text), 4)]
        if max_tokens is not None and len(pieces) > max_tokens:
            pieces, finish = pieces[:max_tokens], "length"
        top = body.get("logprobs")
        n = body.get("n") or 1
        prompt = body["prompt"]
        rid, created, model = "cmpl-stub", int(time.time()), body.get("model") or "starcoder-stub"
        usage = {"prompt_tokens": len(str(prompt)), "completion_tokens": len(pieces)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not body.get("stream"):
            choices = [
                {
                    "index": i,
                    "text": "".join(pieces),
                    "logprobs": legacy_logprobs(pieces, top) if top is not None else None,
                    "finish_reason": finish,
                    "stop_reason": None,
                }
                for i in range(n)
            ]
            return {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": choices,
                "usage": usage,
            }

        async def events():
            for i, piece in enumerate(pieces):
                for k in range(n):
                    choice = {
                        "index": k,
                        "text": piece,
                        "logprobs": legacy_logprobs([piece], top) if top is not None else None,
                        "finish_reason": finish if i == len(pieces) - 1 else None,
                    }
                    chunk = {
                        "id": rid,
                        "object": "text_completion",
                        "created": created,
                        "model": model,
                        "choices": [choice],
                    }
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                await asyncio.sleep(0)
            if (body.get("stream_options") or {}).get("include_usage"):
                chunk = {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app

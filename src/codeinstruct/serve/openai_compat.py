"""OpenAI requests in engine terms, engine results in OpenAI shapes.

Prompts. A `/v1/completions` prompt string is encoded as vLLM and TGI encode it: the tokenizer's
special-token strings in it (`<fim_prefix>`, `<fim_suffix>`, `<fim_middle>`, `<|endoftext|>`,
`<filename>`, ...) become those control tokens, the text between them is plain text. A prompt
that holds FIM tokens also stops at any FIM token, as `codeinstruct complete` does. `prompt` +
`suffix` is Fill-in-the-Middle in PSM order, built exactly as FIM training built it (each part
tokenized as text on its own). Chat messages are always text: a message can never smuggle in a
control token.

Chat onto Alpaca. The model was tuned on single-turn Alpaca prompts, so a conversation becomes one:
the last message (which must be the user's) is the instruction; system (and developer) messages
and the earlier turns become the input, in order, separated by blank lines, earlier turns written
as `User: ...` and `Assistant: ...`. With one user message and nothing else the no-input template
is used, so `[{system: X}, {user: Y}]` is exactly `format_prompt(Y, X)`. The answer is what
`extract_response` shows: the leading separator dropped, cut at a new `### Instruction:`, trailing
whitespace dropped; streamed pieces add up to that same text.

Limits. A prompt of the model's context length or longer is refused (400,
`context_length_exceeded`), never silently cut; `max_tokens` beyond what the context leaves ends
the answer at the context with finish_reason `length`.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from functools import lru_cache

from codeinstruct.infer.sampling import SamplingParams
from codeinstruct.prompts import (
    FIM_MIDDLE,
    FIM_PAD,
    FIM_PREFIX,
    FIM_SUFFIX,
    encode_text,
)
from codeinstruct.serve.schemas import ApiError, ChatMessage

FIM_TOKEN_STRINGS = (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD)
DONE = b"data: [DONE]\n\n"


# --------------------------------------------------------------------------- prompts


@lru_cache(maxsize=8)
def _special_tokens(tokenizer) -> tuple[re.Pattern | None, dict[str, int]]:
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in tokenizer.all_special_tokens}
    ids = {tok: i for tok, i in ids.items() if isinstance(i, int) and tok}
    if not ids:
        return None, ids
    return re.compile("|".join(re.escape(t) for t in sorted(ids, key=len, reverse=True))), ids


def encode_raw_prompt(tokenizer, text: str) -> tuple[list[int], bool]:
    """Token ids of a completions prompt with special-token strings as control tokens; whether FIM tokens occur."""
    pattern, ids = _special_tokens(tokenizer)
    if pattern is None:
        return encode_text(tokenizer, text), False
    out: list[int] = []
    fim = False
    pos = 0
    for m in pattern.finditer(text):
        out += encode_text(tokenizer, text[pos : m.start()])
        out.append(ids[m.group(0)])
        fim = fim or m.group(0) in FIM_TOKEN_STRINGS
        pos = m.end()
    out += encode_text(tokenizer, text[pos:])
    return out, fim


def fim_stop_ids(tokenizer) -> tuple[int, ...]:
    _, ids = _special_tokens(tokenizer)
    return tuple(ids[t] for t in FIM_TOKEN_STRINGS if t in ids)


def alpaca_from_messages(messages: list[ChatMessage]) -> tuple[str, str]:
    """(instruction, input) of a conversation; see the module docstring for the mapping."""
    for m in messages:
        if m.role in ("tool", "function"):
            raise ApiError(400, f"'{m.role}' messages are not supported", param="messages")
    if messages[-1].role != "user":
        raise ApiError(400, "the last message must be from the user (it becomes the instruction)", param="messages")
    context = []
    for m in messages[:-1]:
        text = m.text
        if m.role in ("system", "developer"):
            context.append(text)
        else:
            context.append(f"{'User' if m.role == 'user' else 'Assistant'}: {text}")
    return messages[-1].text, "\n\n".join(c for c in context if c.strip())


def sampling_params(
    request,
    prompt_tokens: int,
    max_seq_len: int,
    max_tokens: int | None,
    param: str,
    stop_token_ids: tuple[int, ...] = (),
    extra_stops: tuple[str, ...] = (),
) -> SamplingParams:
    """SamplingParams of one prompt of a request (max_tokens None: up to the context); refuses prompts that fill it."""
    room = max_seq_len - prompt_tokens
    if room < 1:
        raise ApiError(
            400,
            f"the prompt has {prompt_tokens} tokens; the model's context is {max_seq_len} (shorten the prompt)",
            param=param,
            code="context_length_exceeded",
        )
    # Without a seed, sampled answers differ from request to request, as OpenAI's do.
    seed = request.seed if request.seed is not None else secrets.randbelow(2**62)
    return SamplingParams(
        max_new_tokens=min(max_tokens or room, room),
        temperature=request.temperature,
        top_k=request.top_k,
        top_p=request.top_p,
        repetition_penalty=request.repetition_penalty,
        seed=seed,
        n=request.n,
        stop=tuple(dict.fromkeys((*request.stop_strings, *extra_stops))),
        stop_token_ids=stop_token_ids,
        ignore_eos=request.ignore_eos,
    )


# --------------------------------------------------------------------------- responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_choice(index: int, text: str, finish_reason: str | None, attribution: dict | None = None) -> dict:
    choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}
    if attribution is not None:
        choice["attribution"] = attribution
    return choice


def chat_choice(index: int, text: str, finish_reason: str, attribution: dict | None = None) -> dict:
    choice = {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "logprobs": None,
        "finish_reason": finish_reason,
    }
    if attribution is not None:
        choice["attribution"] = attribution
    return choice


def chat_delta(index: int, delta: dict, finish_reason: str | None = None, attribution: dict | None = None) -> dict:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    if attribution is not None:
        choice["attribution"] = attribution
    return choice


def envelope(id: str, object: str, created: int, model: str, choices: list[dict], **extra) -> dict:
    return {"id": id, "object": object, "created": created, "model": model, "choices": choices, **extra}


def sse(obj: dict) -> bytes:
    """One server-sent event; JSON carries whole characters only, so no UTF-8 sequence is ever split."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"

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

Log-probabilities are the model's own (before temperature, penalties and bias), one entry per
generated token (the EOS or stop-string token included), in OpenAI's legacy completions shape
(`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`; with `echo`, the prompt's tokens
first, the first of them with null) or its chat shape (`content: [{token, logprob, bytes,
top_logprobs}]`).

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
from codeinstruct.infer.streaming import token_bytes_table
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
    logprobs: int | None = None,
    adapter: str | None = None,
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
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        logit_bias=request.bias_pairs,
        logprobs=logprobs,
        adapter=adapter,
    )


# --------------------------------------------------------------------------- log-probabilities


@lru_cache(maxsize=65536)
def _token_text(tokenizer, token: int, skip_special: bool) -> str:
    return tokenizer.decode([token], skip_special_tokens=skip_special)


def token_text(tokenizer, token: int, skip_special: bool = True) -> str:
    """A token as text on its own (a piece of a multi-byte character shows as U+FFFD, as in vLLM). Generated
    special tokens are empty, as they are in the answer's text; a prompt's show as written (echo)."""
    return _token_text(tokenizer, int(token), skip_special)


class CompletionLogprobs:
    """OpenAI's legacy `logprobs` object of one choice, built up as tokens come (streaming sends the new part)."""

    def __init__(self, tokenizer, offset: int = 0):
        self.tokenizer = tokenizer
        self.offset = offset  # text_offset of the next token
        self.reported = 0  # generated entries already sent (streaming)

    def part(self, entries: list, skip_special: bool = True) -> dict:
        """The object for `entries` (TokenLogprob, or None for the first prompt token), offsets continuing."""
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for entry in entries:
            if entry is None:
                continue
            text = token_text(self.tokenizer, entry.token, skip_special)
            out["tokens"].append(text)
            out["token_logprobs"].append(entry.logprob)
            # alternatives keyed with special tokens as written: "" for each would collide
            out["top_logprobs"].append({token_text(self.tokenizer, t, False): lp for t, lp in entry.top} or None)
            out["text_offset"].append(self.offset)
            self.offset += len(text)
        return out

    def prompt_part(self, ids: list[int], entries: list) -> dict:
        """The prompt's tokens (echo): the first has no log-probability (null), as in OpenAI's and vLLM's answers."""
        first = token_text(self.tokenizer, ids[0], skip_special=False)
        out = {"tokens": [first], "token_logprobs": [None], "top_logprobs": [None], "text_offset": [self.offset]}
        self.offset += len(first)
        rest = self.part(entries[1:], skip_special=False)
        return {key: out[key] + rest[key] for key in out}

    def new(self, generated: list) -> dict:
        """The generated entries not sent yet."""
        fresh = generated[self.reported :]
        self.reported += len(fresh)
        return self.part(fresh)


def merge_logprobs(a: dict | None, b: dict | None) -> dict | None:
    if a is None or b is None:
        return b if a is None else a
    return {key: a[key] + b[key] for key in b}


def token_bytes(tokenizer, token: int) -> list[int]:
    """A generated token's own bytes: for a byte-level BPE, the bytes it stands for, also where they are part
    of a character (whose text shows U+FFFD), so that a client joining the tokens' bytes gets the answer's
    text; a special token has none; otherwise its text's UTF-8."""
    table = token_bytes_table(tokenizer)
    if table is not None and 0 <= token < len(table):
        own = table[token]
        return [] if own is None else list(own)
    return list(token_text(tokenizer, token).encode("utf-8"))


def chat_logprobs(tokenizer, entries: list) -> dict:
    """OpenAI's chat `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs}]}."""

    def item(token: int, logprob: float) -> dict:
        return {"token": token_text(tokenizer, token), "logprob": logprob, "bytes": token_bytes(tokenizer, token)}

    return {
        "content": [{**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]} for e in entries],
        "refusal": None,
    }


def completion_to_chat_logprobs(legacy: dict | None) -> dict | None:
    """A legacy completions `logprobs` object (an upstream's) in the chat shape."""
    if not isinstance(legacy, dict) or not isinstance(legacy.get("tokens"), list):
        return None
    content = []
    tops = legacy.get("top_logprobs") or [None] * len(legacy["tokens"])
    for token, logprob, top in zip(legacy["tokens"], legacy.get("token_logprobs") or [], tops):
        alternatives = [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))} for t, lp in (top or {}).items()]
        content.append(
            {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8")), "top_logprobs": alternatives}
        )
    return {"content": content, "refusal": None}


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


def completion_choice(
    index: int, text: str, finish_reason: str | None, attribution: dict | None = None, logprobs: dict | None = None
) -> dict:
    choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
    if attribution is not None:
        choice["attribution"] = attribution
    return choice


def chat_choice(
    index: int, text: str, finish_reason: str, attribution: dict | None = None, logprobs: dict | None = None
) -> dict:
    choice = {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }
    if attribution is not None:
        choice["attribution"] = attribution
    return choice


def chat_delta(
    index: int,
    delta: dict,
    finish_reason: str | None = None,
    attribution: dict | None = None,
    logprobs: dict | None = None,
) -> dict:
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    if attribution is not None:
        choice["attribution"] = attribution
    return choice


def envelope(id: str, object: str, created: int, model: str, choices: list[dict], **extra) -> dict:
    return {"id": id, "object": object, "created": created, "model": model, "choices": choices, **extra}


def sse(obj: dict) -> bytes:
    """One server-sent event; JSON carries whole characters only, so no UTF-8 sequence is ever split."""
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"

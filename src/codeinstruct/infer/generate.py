"""Generation from the Alpaca prompt and Fill-in-the-Middle completion, on the engine.

The prompt is exactly the one training used (codeinstruct.prompts); decoding stops at EOS
or when the model starts a new `### Instruction:` turn, and only the response is returned.
FIM completion feeds the tokens training put before the middle and stops at EOS or any FIM token.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

from codeinstruct.infer.engine import Engine
from codeinstruct.infer.sampling import SamplingParams
from codeinstruct.modeling import load_for_inference  # noqa: F401  (re-exported: its home before modeling.py)
from codeinstruct.prompts import (
    RESPONSE_SEPARATOR,
    STOP_STRINGS,
    FimTokens,
    extract_response,
    fim_prompt_ids,
    format_prompt,
)


def response_params(params: SamplingParams) -> SamplingParams:
    """`params` with the Alpaca turn markers as stop strings."""
    return replace(params, stop=tuple(dict.fromkeys((*params.stop, *STOP_STRINGS))))


def generate_text(engine: Engine, prompt: str, params: SamplingParams = SamplingParams()) -> str:
    """The raw continuation of `prompt` (special tokens removed), stopped at EOS or a new instruction turn."""
    return engine.submit(prompt, response_params(params)).result().text


def generate_response(
    engine: Engine, instruction: str, input: str = "", params: SamplingParams = SamplingParams()
) -> str:
    """The answer to one instruction, as the user sees it."""
    return extract_response(generate_text(engine, format_prompt(instruction, input), params))


def stream_response(
    engine: Engine, instruction: str, input: str = "", params: SamplingParams = SamplingParams()
) -> Iterator[str]:
    """The answer as it is generated: pieces whose concatenation is `generate_response`'s text."""
    handle = engine.submit(format_prompt(instruction, input), response_params(params))
    try:
        yield from response_deltas(event.text for event in handle)
    finally:
        handle.cancel()  # a reader that stops early frees the slot


class ResponseStream:
    """`extract_response` as a stream (the engine has already cut stop strings): push(delta) returns
    what to show now; the separator is dropped and trailing whitespace held back until text follows."""

    def __init__(self):
        self.held = ""
        self.started = False
        self.text = ""  # everything shown so far

    def push(self, delta: str) -> str:
        text = self.held + delta
        if not self.started:
            if len(text) < len(RESPONSE_SEPARATOR) and RESPONSE_SEPARATOR.startswith(text):
                self.held = text
                return ""
            self.started = True
            text = text.removeprefix(RESPONSE_SEPARATOR)
        body = text.rstrip()
        self.held = text[len(body) :]
        self.text += body
        return body


def response_deltas(deltas: Iterable[str]) -> Iterator[str]:
    """`extract_response` applied to a stream of text pieces."""
    stream = ResponseStream()
    for delta in deltas:
        piece = stream.push(delta)
        if piece:
            yield piece


def fim_request(
    engine: Engine, prefix: str, suffix: str, spm: bool = False, params: SamplingParams = SamplingParams()
) -> tuple[list[int], SamplingParams]:
    """Prompt ids and parameters of a Fill-in-the-Middle request (stops at EOS or any FIM token)."""
    tokens = FimTokens.from_tokenizer(engine.tokenizer)
    ids = fim_prompt_ids(engine.tokenizer, prefix, suffix, spm, tokens)
    return ids, replace(params, stop_token_ids=tuple(dict.fromkeys((*params.stop_token_ids, *tokens.all))))


def complete_middle(
    engine: Engine, prefix: str, suffix: str, spm: bool = False, params: SamplingParams = SamplingParams()
) -> str:
    """Fill-in-the-Middle: the code between `prefix` and `suffix`."""
    ids, params = fim_request(engine, prefix, suffix, spm, params)
    return engine.submit(ids, params).result().text

"""The OpenAI request bodies the server accepts, as pydantic models, and the error shape it answers with.

Fields follow OpenAI's API reference; unknown fields are ignored (clients send newer ones), fields
that would change the answer and that the engine cannot honour (tools, response_format, best_of)
are refused with a 400 naming them rather than silently dropped (`refuse_unsupported`, called by
the engine backend; the proxy passes completions options through to its upstream). `top_k`,
`repetition_penalty` and `ignore_eos` are accepted as extensions, as vLLM does. Besides OpenAI's
bodies: vLLM's `/tokenize` and `/detokenize` and llama.cpp's `/completion` and `/infill`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_STOP_STRINGS = 16
MAX_LOGPROBS = 20  # top alternatives per token (vLLM's default limit)


class ApiError(Exception):
    """An answer in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def validation_error(e: ValidationError) -> ApiError:
    """The first problem of a pydantic error as one line: `field.path: what is wrong`."""
    first = e.errors()[0]
    loc = ".".join(str(part) for part in first["loc"] if part != "body")
    message = first["msg"].removeprefix("Value error, ")
    return ApiError(400, f"{loc}: {message}" if loc else message, param=loc or None)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=128)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # extensions (vLLM's names)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    ignore_eos: bool = False

    @field_validator(
        "temperature",
        "top_p",
        "n",
        "stream",
        "presence_penalty",
        "frequency_penalty",
        "top_k",
        "repetition_penalty",
        "ignore_eos",
        mode="before",
    )
    @classmethod
    def _null_is_default(cls, value, info):
        # Clients send explicit nulls for "not set"; OpenAI reads them as the default.
        return cls.model_fields[info.field_name].default if value is None else value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids_and_range(cls, value):
        for key, bias in (value or {}).items():
            if not key.strip().isdigit():
                raise ValueError(f"keys must be token ids, got {key!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"biases must be in [-100, 100], got {bias} for token {key}")
        return value

    @property
    def bias_pairs(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(k), float(v)) for k, v in (self.logit_bias or {}).items())

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(value)}")
        return value

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return tuple(s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def refuse_unsupported(self) -> None:
        """A 400 for options that would change the answer and that the engine cannot honour."""


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    max_tokens: int | None = Field(16, ge=0)  # null: up to the context (as vLLM); 0 only with echo
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = None

    @field_validator("echo", mode="before")
    @classmethod
    def _echo_null_is_false(cls, value):
        return False if value is None else value

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, value):
        if isinstance(value, list) and (not value or any(isinstance(p, list) and not p for p in value)):
            raise ValueError("must not be empty")
        return value

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompt as a list of prompts: strings, or token-id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)

    def check(self) -> None:
        """What no backend can do with this request (the proxy too)."""
        if self.suffix is not None and self.echo:
            raise ApiError(400, "echo cannot be combined with suffix", param="echo")
        if self.max_tokens == 0 and not self.echo:
            raise ApiError(400, "max_tokens: 0 only with echo (scoring the prompt)", param="max_tokens")

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        self.check()
        if self.best_of is not None and self.best_of != self.n:
            raise ApiError(400, "best_of is not supported (only best_of = n)", param="best_of")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ApiError(400, f"only text content is supported, got a '{part.type}' part", param="messages")
            parts.append(part.text)
        return "".join(parts)


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    response_format: dict | None = None

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def logprobs_top(self) -> int | None:
        """Alternatives per token when logprobs are asked for (0: the chosen token's only), else None."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.top_logprobs and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if self.tools:
            raise ApiError(400, "tools (function calling) are not supported", param="tools")
        kind = (self.response_format or {}).get("type", "text")
        if kind != "text":
            raise ApiError(400, f"response_format {kind!r} is not supported (only 'text')", param="response_format")


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize: a completions `prompt`, or chat `messages` (tokenized as the Alpaca prompt they become)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    return_token_strs: bool = False

    def check(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ApiError(400, "give prompt or messages (one of them)", param="prompt")
        if self.messages is not None and not self.messages:
            raise ApiError(400, "messages: must not be empty", param="messages")


class DetokenizeRequest(BaseModel):
    """vLLM's /detokenize: token ids back to text."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    tokens: list[int] = Field(min_length=1)


class InfillExtra(BaseModel):
    model_config = ConfigDict(extra="ignore")
    filename: str = ""
    text: str = ""


class _LlamaRequest(BaseModel):
    """What llama.cpp's native routes (/completion, /infill) share: its sampling names and defaults, and
    its code-completion limits. `n_predict` 0 evaluates the prompt only (editors send it to warm the cache
    with context they will send again); `t_max_predict_ms` ends the text once that long has passed since
    its first token and a line is complete; `n_indent` ends it before the first new line indented less
    than that many spaces or tabs (the line's own indentation is kept, as llama.cpp does);
    `response_fields` keeps only the fields named of the final object, a nested one under its path
    ("timings/prompt_n"), as llama.cpp does."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    n_predict: int = Field(-1, ge=-1)  # -1: up to the context
    temperature: float = Field(0.8, ge=0.0, le=2.0)  # llama.cpp's default
    top_k: int = Field(40, ge=0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, gt=0.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP_STRINGS)
    seed: int = -1  # -1: random
    stream: bool = False
    ignore_eos: bool = False
    t_max_predict_ms: int = Field(0, ge=0)  # 0: no limit
    n_indent: int = Field(0, ge=0)  # 0: no limit
    response_fields: list[str] | None = None

    @property
    def n(self) -> int:
        return 1

    @field_validator(
        "n_predict",
        "temperature",
        "top_k",
        "top_p",
        "repeat_penalty",
        "seed",
        "stream",
        "t_max_predict_ms",
        "n_indent",
        mode="before",
    )
    @classmethod
    def _null_is_default(cls, value, info):
        return cls.model_fields[info.field_name].default if value is None else value

    def fields(self, answer: dict) -> dict:
        """`answer` as asked: whole (no `response_fields`, or an empty list, as llama.cpp reads it), or only
        the fields named that it has (a missing one is left out)."""
        if not self.response_fields:
            return answer
        kept = {}
        for path in self.response_fields:
            value = answer
            for key in path.split("/"):
                if not isinstance(value, dict) or key not in value:
                    break
                value = value[key]
            else:
                kept[path] = value
        return kept


class InfillRequest(_LlamaRequest):
    """llama.cpp's /infill: the code before and after the cursor, optional extra files, and what is
    already typed of the middle (`prompt`)."""

    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[InfillExtra] = Field(default_factory=list)
    prompt: str = ""


class LlamaCompletionRequest(_LlamaRequest):
    """llama.cpp's /completion: a raw prompt, as text (special-token strings read as those tokens) or
    token ids."""

    prompt: str | list[int] = Field(min_length=1)

"""Alpaca prompt templates and response post-processing.

Training and inference must agree token for token. The prompt ends with `### Response:`
(no trailing newline) and the *target* is `RESPONSE_SEPARATOR + response + EOS`. So the
newline that separates the header from the answer is something the model learns to emit,
and the prompt the model sees at inference is exactly the prefix it was trained on. Byte-level
BPE pre-tokenizers (GPT-2's and StarCoder's) never merge `:` with a following newline, so
the tokens of the prompt alone are a prefix of the tokens of prompt + target;
`codeinstruct.data.sft` checks this for every example instead of assuming it.

Fill-in-the-Middle prompts use StarCoder's control tokens (see codeinstruct.data.fim for how
pretraining produces them):

    PSM: <fim_prefix> prefix <fim_suffix> suffix <fim_middle>   -> the model writes the middle
    SPM: <fim_prefix><fim_suffix> suffix <fim_middle> prefix     -> the model writes the middle
"""

from dataclasses import dataclass

from codeinstruct.errors import CodeinstructError
from codeinstruct.tokenizer import encode_text  # noqa: F401  (re-exported: prompts and their ids go together)

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
RESPONSE_SEPARATOR = "\n"
# A model that keeps going after its answer starts a new Alpaca turn; everything from here is cut.
STOP_STRINGS = ("### Instruction:",)


def format_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca prompt: the with-input variant only when `input` has non-whitespace text."""
    if input.strip():
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    return PROMPT_NO_INPUT.format(instruction=instruction)


def format_target(response: str) -> str:
    """The trained text after the prompt, without EOS (added as a token id, never as text)."""
    return RESPONSE_SEPARATOR + response


def extract_response(generated: str) -> str:
    """What the user sees of a generation: the separator dropped, cut at a new instruction turn,
    trailing whitespace dropped (the streamed response, `ResponseStream`, shows exactly this)."""
    if generated.startswith(RESPONSE_SEPARATOR):
        generated = generated[len(RESPONSE_SEPARATOR) :]
    for stop in STOP_STRINGS:
        cut = generated.find(stop)
        if cut != -1:
            generated = generated[:cut]
    return generated.rstrip()


FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD = "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"


@dataclass(frozen=True)
class FimTokens:
    prefix: int
    middle: int
    suffix: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "FimTokens":
        ids = {}
        for name in (FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD):
            token_id = tokenizer.convert_tokens_to_ids(name)
            if token_id is None or token_id == tokenizer.unk_token_id and name != tokenizer.unk_token:
                raise CodeinstructError(f"the tokenizer has no {name} token; FIM needs StarCoder's special tokens")
            ids[name] = token_id
        return cls(ids[FIM_PREFIX], ids[FIM_MIDDLE], ids[FIM_SUFFIX], ids[FIM_PAD])

    @property
    def all(self) -> tuple[int, ...]:
        return (self.prefix, self.middle, self.suffix, self.pad)


def fim_prompt_ids(
    tokenizer, prefix: str, suffix: str, spm: bool = False, tokens: FimTokens | None = None
) -> list[int]:
    """The tokens before the middle: what training put there, and what inference feeds the model."""
    t = tokens or FimTokens.from_tokenizer(tokenizer)
    if spm:
        return [t.prefix, t.suffix, *encode_text(tokenizer, suffix), t.middle, *encode_text(tokenizer, prefix)]
    return [t.prefix, *encode_text(tokenizer, prefix), t.suffix, *encode_text(tokenizer, suffix), t.middle]

"""Alpaca prompt templates and response post-processing.

Training and inference must agree token for token. The prompt ends with `### Response:`
(no trailing newline) and the *target* is `RESPONSE_SEPARATOR + response + EOS`. So the
newline that separates the header from the answer is something the model learns to emit,
and the prompt the model sees at inference is exactly the prefix it was trained on. Byte-level
BPE pre-tokenizers (GPT-2's and StarCoder's) never merge `:` with a following newline, so
the tokens of the prompt alone are a prefix of the tokens of prompt + target;
`codeinstruct.data.sft` checks this for every example instead of assuming it.
"""

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
    """What the user sees of a generation: the separator dropped, cut at a new instruction turn."""
    if generated.startswith(RESPONSE_SEPARATOR):
        generated = generated[len(RESPONSE_SEPARATOR) :]
    for stop in STOP_STRINGS:
        cut = generated.find(stop)
        if cut != -1:
            generated = generated[:cut].rstrip()
    return generated

import ast

import pytest

from codeinstruct.errors import CodeinstructError
from codeinstruct.evaluate.benchmarks import Problem
from codeinstruct.evaluate.postprocess import (
    BASE_STOP_WORDS,
    build_prompt,
    cut_at_stop,
    extract_code,
    instruct_completion,
    keep_function,
    stop_words,
    to_completion,
)

PROMPT = (
    "from typing import List\n\n\n"
    'def total(xs: List[int]) -> int:\n    """Sum of xs.\n    >>> total([1, 2])\n    3\n    """\n'
)
PROBLEM = Problem(
    "T/0", PROMPT, "    return sum(xs)\n", "def check(candidate):\n    assert candidate([1, 2]) == 3\n", "total"
)


def run(completion: str, xs=(1, 2, 3)):
    """What scoring would run, minus the sandbox: the program's function applied to xs."""
    namespace: dict = {}
    exec(PROMPT + completion, namespace)  # noqa: S102 - the test's own code, on purpose
    return namespace["total"](list(xs))


# ---------------------------------------------------------------- base mode


def test_base_sends_the_stripped_prompt_and_stops_at_bigcode_stop_words():
    assert build_prompt(PROBLEM, "base") == PROMPT.rstrip()
    # bigcode-evaluation-harness's current list (after its PR #180): Codex's six, a code fence, StarCoder2's <file_sep>
    assert stop_words("base") == ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```", "<file_sep>")


@pytest.mark.parametrize(
    "output",
    [
        "\n    return sum(xs)\n",
        "\n    return sum(xs)\n\n\ndef other():\n    pass\n",
        "\n    return sum(xs)\n\nif __name__ == '__main__':\n    print(total([1]))\n",
        "\n    return sum(xs)\nprint(total([1, 2]))",
        "\n    return sum(xs)\n# tests\nassert False\n",
        "\n    return sum(xs)\n@decorator\ndef g(): pass",
        "\n    return sum(xs)\nclass Foo:\n    pass",
        "\n    return sum(xs)\n```\n\nThis function adds the numbers.",
        "\n    return sum(xs)\n<file_sep>tests/test_total.py\nimport total",
    ],
)
def test_base_completion_is_the_body_before_the_first_stop_word(output):
    completion = to_completion(PROBLEM, "base", output)
    assert completion.startswith("    return sum(xs)")
    assert not any(stop in completion for stop in BASE_STOP_WORDS)
    assert run(completion) == 6


def test_base_completion_keeps_column_0_stop_words_only():
    output = "\n    # a comment inside the body\n    if xs:\n        return sum(xs)\n    return 0\n"
    assert to_completion(PROBLEM, "base", output) == output[1:]
    assert run(to_completion(PROBLEM, "base", output), []) == 0


def test_base_completion_of_nothing_is_empty_and_fails():
    assert to_completion(PROBLEM, "base", "") == ""
    assert to_completion(PROBLEM, "base", "\ndef other(): pass") == ""
    assert run("") is None  # a docstring-only function: valid Python, wrong answer


def test_cut_at_stop_takes_the_earliest_stop():
    assert cut_at_stop("a\nprint(1)\ndef f", BASE_STOP_WORDS) == "a"
    assert cut_at_stop("abc", ()) == "abc"


# ---------------------------------------------------------------- instruct mode


def test_instruct_sends_the_alpaca_prompt_with_the_function_as_input():
    prompt = build_prompt(PROBLEM, "instruct")
    assert prompt.startswith("Below is an instruction that describes a task, paired with an input")
    assert "### Instruction:\nComplete the following Python function `total`." in prompt
    assert "### Input:\n" + PROMPT in prompt
    assert prompt.endswith("### Response:")
    assert stop_words("instruct") == ("### Instruction:",)


FENCED = "\nHere is the function:\n\n```python\ndef total(xs):\n    return sum(xs)\n```\n\nIt adds the numbers."
TWO_BLOCKS = (
    "\nUsage:\n```python\nprint(total([1, 2]))\n```\nImplementation:\n```python\n"
    "def total(xs):\n    return sum(xs)\n```\n"
)
UNCLOSED = "\n```python\ndef total(xs):\n    s = 0\n    for x in xs:\n        s += x\n    return s\n\nprint(total([1, 2"
NO_FENCE_WITH_PROSE = "\nSure! Here it is:\ndef total(xs):\n    return sum(xs)\nThis works because sum adds."
WITH_TESTS = (
    "\n```py\nimport math\nLIMIT = 10\n\ndef total(xs):\n    return helper(xs)\n\n"
    "def helper(xs):\n    return sum(xs)\n\n"
    "assert total([1]) == 1\nprint(total([1, 2]))\nresult = total([3])\n\n"
    "if __name__ == '__main__':\n    raise SystemExit(1)\n```"
)
INDENTED_FENCE = "\n1. The code:\n   ```python\n   def total(xs):\n       return sum(xs)\n   ```\n"
BODY_ONLY = "\n```python\nreturn sum(xs)\n```"
CRLF = "\r\n```python\r\ndef total(xs):\r\n    return sum(xs)\r\n```\r\n"
NEXT_TURN = (
    "\n```python\ndef total(xs):\n    return sum(xs)\n```\n\n"
    "### Instruction:\nWrite something else\n\n### Response:\nraise"
)
OTHER_LANGUAGE_FIRST = "\n```text\n6\n```\n```\ndef total(xs):\n    return sum(xs)\n```"


@pytest.mark.parametrize(
    "output",
    [
        FENCED,
        TWO_BLOCKS,
        UNCLOSED,
        NO_FENCE_WITH_PROSE,
        WITH_TESTS,
        INDENTED_FENCE,
        BODY_ONLY,
        CRLF,
        NEXT_TURN,
        OTHER_LANGUAGE_FIRST,
    ],
    ids=[
        "fenced",
        "two-blocks",
        "unclosed",
        "prose-no-fence",
        "with-tests",
        "indented-fence",
        "body-only",
        "crlf",
        "next-turn",
        "other-language-first",
    ],
)
def test_instruct_outputs_become_a_working_function(output):
    completion = to_completion(PROBLEM, "instruct", output)
    ast.parse(PROMPT + completion)
    assert "print(" not in completion and "assert" not in completion and "__main__" not in completion
    assert run(completion) == 6


def test_kept_code_holds_definitions_imports_and_constants_in_order():
    kept = keep_function(extract_code(WITH_TESTS, "total"), "total")
    assert kept == (
        "import math\n\nLIMIT = 10\n\ndef total(xs):\n    return helper(xs)\n\ndef helper(xs):\n    return sum(xs)\n"
    )


def test_extract_code_prefers_the_block_defining_the_entry_point():
    assert extract_code(TWO_BLOCKS, "total").startswith("def total")
    assert extract_code(TWO_BLOCKS) == "print(total([1, 2]))"
    assert extract_code("no code at all") == "no code at all"


def test_unparseable_code_falls_back_to_the_text_of_the_function():
    kept = keep_function(
        "from x import y\nwhat a nice day\n@cache\ndef total(xs):\n    return (\n        1\n)\n\nnow prose", "total"
    )
    assert kept == "from x import y\n\n@cache\ndef total(xs):\n    return (\n        1\n)\n"


def test_an_empty_answer_is_an_empty_completion():
    assert instruct_completion("", "total") == ""


def test_unknown_mode_is_refused():
    with pytest.raises(CodeinstructError, match="unknown mode 'chat'"):
        build_prompt(PROBLEM, "chat")

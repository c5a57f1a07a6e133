"""`codeinstruct eval humaneval` then `codeinstruct eval score`, as a user runs them."""

import json


def test_generate_then_score_without_regenerating(cli, tiny_model_dir, tmp_path):
    samples = tmp_path / "samples.jsonl"
    code, out, err = cli(
        "eval",
        "humaneval",
        "--model",
        tiny_model_dir,
        "--mode",
        "base",
        "--n",
        "2",
        "--temperature",
        "0.8",
        "--max-new-tokens",
        "8",
        "--limit",
        "2",
        "--out",
        samples,
    )
    assert code == 0, err
    assert "4 samples for 2 problems" in out
    before = samples.read_text()

    code, out, err = cli("eval", "score", samples)
    assert code == 1 and "--allow-code-execution" in err and "Traceback" not in err
    assert not (tmp_path / "samples.results.json").exists()

    code, out, err = cli("eval", "score", samples, "--allow-code-execution", "--timeout", "2")
    assert code == 0, err
    assert "2 of 164 problems" in out and "pass@1" in out and "isolation" in out
    results = json.loads((tmp_path / "samples.results.json").read_text())
    assert results["samples"] == 4 and results["problems"] == 2 and set(results["pass_at_k"]) == {"pass@1"}
    assert sum(results["counts"].values()) == 4
    assert samples.read_text() == before  # scoring never touches the samples


def test_score_prints_json_and_reports_canonical_solutions(cli, tmp_path):
    from codeinstruct.evaluate.benchmarks import load_humaneval

    problems = load_humaneval().problems[:3]
    samples = tmp_path / "canonical.jsonl"
    samples.write_text(
        "".join(json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n" for p in problems)
    )
    code, out, err = cli("eval", "score", samples, "--allow-code-execution", "--json", "--out", tmp_path / "r.json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["pass_at_k"] == {"pass@1": 1.0} and summary["results"] == str(tmp_path / "r.json")


def test_a_bad_samples_file_is_one_line_error(cli, tmp_path):
    samples = tmp_path / "bad.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": ""}\nnot json\n')
    code, _, err = cli("eval", "score", samples, "--allow-code-execution")
    assert code == 1 and "bad.jsonl: line 2: invalid JSON" in err and "Traceback" not in err

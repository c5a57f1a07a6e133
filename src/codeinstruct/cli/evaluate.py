"""`codeinstruct eval`: HumanEval and HumanEval-infilling generation (local or on a server), sandboxed scoring,
leaderboard tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from codeinstruct.cli.app import console, err_console, quiet_libraries, step_progress
from codeinstruct.errors import CodeinstructError
from codeinstruct.modeling import InferenceDtype


# ---------------------------------------------------------------- eval

eval_app = typer.Typer(
    help="HumanEval with sandboxed execution and pass@k; Open LLM Leaderboard tasks.", no_args_is_help=True
)


def _eval_progress():
    return step_progress(err_console)  # on stderr, so that --json output stays parseable


ModelOption = Annotated[
    Path | None, typer.Option(help="model directory (e.g. runs/NAME/final); or generate on a server with --endpoint")
]
EndpointOption = Annotated[
    str | None,
    typer.Option(help="an OpenAI-compatible server's URL (vLLM, TGI, codeinstruct serve) instead of --model"),
]
ApiKeyOption = Annotated[
    str | None, typer.Option(envvar="OPENAI_API_KEY", help="the server's API key (default: $OPENAI_API_KEY)")
]
ServedModelOption = Annotated[
    str | None, typer.Option(help="the model name the server serves (default: the first it lists at /v1/models)")
]
ConcurrencyOption = Annotated[int, typer.Option(min=1, help="requests in flight at once, with --endpoint")]
RequestTimeoutOption = Annotated[float, typer.Option(min=1.0, help="seconds per request, with --endpoint")]


def _endpoint(url, api_key, served_model, concurrency, request_timeout, fim_format="auto"):
    from codeinstruct.evaluate.endpoint import Endpoint

    if url is None:
        return None
    return Endpoint(
        url,
        api_key=api_key,
        model=served_model,
        concurrency=concurrency,
        timeout_s=request_timeout,
        fim_format=fim_format,
    )


@eval_app.command("humaneval")
def eval_humaneval(
    out: Annotated[Path, typer.Option("--out", "-o", help="samples file to write (JSONL)")],
    model: ModelOption = None,
    mode: Annotated[
        str, typer.Option(help="base: the model completes the function; instruct: Alpaca prompt, code extracted")
    ] = "base",
    n: Annotated[int, typer.Option("--n", min=1, help="samples per problem")] = 1,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 decodes greedily")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.95,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 512,
    seed: int = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first K problems")] = None,
    problems: Annotated[
        Path | None, typer.Option(help="a JSONL suite in HumanEval's format instead of HumanEval")
    ] = None,
    endpoint: EndpointOption = None,
    api_key: ApiKeyOption = None,
    served_model: ServedModelOption = None,
    concurrency: ConcurrencyOption = 8,
    request_timeout: RequestTimeoutOption = 600.0,
    dtype: Annotated[
        InferenceDtype, typer.Option(help="the local model's weights, converted as they load (auto: the checkpoint's)")
    ] = "auto",
):
    """Generate samples (nothing is executed); score them with `codeinstruct eval score`."""
    from codeinstruct.evaluate.humaneval import GenerationConfig, generate_samples

    quiet_libraries()
    config = GenerationConfig(
        model=str(model) if model is not None else None,
        mode=mode,
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        limit=limit,
        benchmark=str(problems) if problems else "humaneval",
        endpoint=_endpoint(endpoint, api_key, served_model, concurrency, request_timeout),
        dtype=dtype,
    )
    _write_samples(generate_samples, config, out, f"{mode} samples x{n}")


def _write_samples(generate, config, out: Path, label: str) -> None:
    """Run a samples generator (humaneval's or infill's) with a progress bar, then say where they went."""
    with _eval_progress() as progress:
        task = progress.add_task(label, total=None)
        report = generate(
            config, out, on_progress=lambda done, total: progress.update(task, completed=done, total=total)
        )
    console.print(f"{report.samples} samples for {report.problems} problems written to {out}")
    console.print(f"score them with: codeinstruct eval score {out} --allow-code-execution", highlight=False)


@eval_app.command("infill")
def eval_infill(
    benchmark: Annotated[
        Path,
        typer.Option(
            help="an infilling problems file (.jsonl or .jsonl.gz) in human-eval-infilling's format, "
            "e.g. HumanEval-SingleLineInfilling.jsonl.gz"
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="samples file to write (JSONL)")],
    model: ModelOption = None,
    spm: Annotated[
        bool, typer.Option("--spm", help="suffix-prefix-middle order (default: prefix-suffix-middle)")
    ] = False,
    n: Annotated[int, typer.Option("--n", min=1, help="samples per problem")] = 1,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 decodes greedily")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.95,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="default: 128 for single-line, 256 for multi-line and random span")
    ] = None,
    seed: int = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first K problems")] = None,
    endpoint: EndpointOption = None,
    api_key: ApiKeyOption = None,
    served_model: ServedModelOption = None,
    concurrency: ConcurrencyOption = 8,
    request_timeout: RequestTimeoutOption = 600.0,
    fim_format: Annotated[
        str,
        typer.Option(
            help="with --endpoint: suffix (prompt + suffix fields), raw (one FIM prompt string), or auto "
            "(suffix, raw if the server refuses it)"
        ),
    ] = "auto",
):
    """Fill-in-the-Middle samples for HumanEval infilling (nothing is executed); score them with `eval score`."""
    from codeinstruct.evaluate.infill import InfillConfig, generate_infill_samples

    quiet_libraries()
    config = InfillConfig(
        model=str(model) if model is not None else None,
        benchmark=benchmark,
        spm=spm,
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        limit=limit,
        endpoint=_endpoint(endpoint, api_key, served_model, concurrency, request_timeout, fim_format),
    )
    _write_samples(generate_infill_samples, config, out, f"{'SPM' if spm else 'PSM'} middles x{n}")


@eval_app.command("score")
def eval_score(
    samples: Annotated[
        Path,
        typer.Argument(
            help="samples JSONL from `eval humaneval` or `eval infill` (or human-eval's task_id/completion lines)"
        ),
    ],
    allow_code_execution: Annotated[
        bool, typer.Option("--allow-code-execution", help="required: the samples' code is run (in the sandbox)")
    ] = False,
    problems: Annotated[
        Path | None,
        typer.Option(help="the suite the samples answer (default: the one in their config, else HumanEval)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="results JSON (default: SAMPLES.results.json)")
    ] = None,
    k: Annotated[
        list[int] | None, typer.Option("--k", help="pass@k to report, repeatable (default 1, 10, 100 where n allows)")
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds per program")] = 3.0,
    workers: Annotated[int | None, typer.Option(min=1, help="programs at a time (default: two per CPU)")] = None,
    memory_mb: Annotated[int, typer.Option(min=64, help="address-space limit per program")] = 1024,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    task: Annotated[
        str | None,
        typer.Option(
            help="humaneval, or infill for Fill-in-the-Middle middles (default: what the samples' config says)"
        ),
    ] = None,
):
    """Run every sample's tests in the sandbox; outcomes per sample, pass@k (and exact match for infilling)."""
    from collections import Counter

    from codeinstruct.evaluate.passk import DEFAULT_KS
    from codeinstruct.evaluate.sandbox import SandboxLimits
    from codeinstruct.evaluate.scoring import (
        default_results_path,
        score_samples,
        write_report,
    )

    if not allow_code_execution:
        raise CodeinstructError("scoring runs the samples' code (in a sandbox); add --allow-code-execution to allow it")
    with _eval_progress() as progress:
        bar = progress.add_task("running tests", total=None)
        report = score_samples(
            samples,
            allow_code_execution=True,
            benchmark=str(problems) if problems else None,
            ks=k or DEFAULT_KS,
            limits=SandboxLimits(timeout_s=timeout, memory_mb=memory_mb),
            workers=workers,
            on_progress=lambda done, total: progress.update(bar, completed=done, total=total),
            task=task,
        )
    path = write_report(report, out or default_results_path(samples))
    if as_json:
        print(
            json.dumps(
                {key: value for key, value in report.as_dict().items() if key != "tasks"} | {"results": str(path)}
            )
        )
        return
    errors = Counter(o["error_type"] for t in report.tasks for o in t["outcomes"] if o["status"] == "error")
    table = Table(
        title=(
            f"{Path(report.benchmark).name}: {report.samples} samples, "
            f"{report.problems} of {report.benchmark_problems} problems"
        ),
        show_header=False,
    )
    for name, value in report.pass_at_k.items():
        table.add_row(name, f"{100 * value:.2f}%")
    if report.exact_match is not None:
        table.add_row("exact match", f"{100 * report.exact_match:.2f}%")
    for status, count in report.counts.items():
        table.add_row(status, str(count))
    if errors:
        table.add_row("error types", ", ".join(f"{name} {count}" for name, count in errors.most_common(6)))
    table.add_row("isolation", report.isolation_detail)
    console.print(table)
    console.print(f"results: {path}", highlight=False)


@eval_app.command("leaderboard")
def eval_leaderboard(
    model: Annotated[Path, typer.Option(help="model directory (e.g. runs/NAME/final)")],
    tasks: Annotated[
        list[str] | None,
        typer.Option(
            help=(
                "arc, hellaswag, mmlu, truthfulqa, winogrande, gsm8k, drop, or any lm-eval task; "
                "comma-separated or repeated (default: all seven)"
            )
        ),
    ] = None,
    limit: Annotated[float | None, typer.Option(min=0.0, help="examples per task (a fraction if below 1)")] = None,
    include_path: Annotated[Path | None, typer.Option(help="a directory of your own lm-eval task YAML files")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 1,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write the results as JSON")] = None,
):
    """Open LLM Leaderboard v1 tasks through lm-eval, offline, beside the StarCoder GPTeacher-Codegen card's numbers."""
    from codeinstruct.files import write_json
    from codeinstruct.evaluate.leaderboard import CARD_MODEL, run_leaderboard

    quiet_libraries()
    names = [name for value in tasks or [] for name in value.split(",") if name.strip()]
    with err_console.status("loading lm-eval and the model") as status:
        report = run_leaderboard(
            model,
            tasks=names or None,
            limit=int(limit) if limit is not None and limit >= 1 else limit,
            batch_size=batch_size,
            include_path=include_path,
            on_task=lambda spec, i, total: status.update(f"{spec.label}: task {i + 1} of {total}"),
        )
    table = Table(title="Open LLM Leaderboard" + (f" (limit {report.limit} per task)" if report.limit else ""))
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    table.add_column(f"{CARD_MODEL} card", justify="right")

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    table.add_row("Avg.", fmt(report.average), fmt(report.card_average), style="bold")
    for row in report.rows:
        table.add_row(row.label, fmt(row.score), fmt(row.card))
    console.print(table)
    if out is not None:
        write_json(out, report.as_dict())
        console.print(f"results: {out}", highlight=False)

"""`codeinstruct demo`: the whole pipeline offline; the stages are library calls (codeinstruct.demo),
this prints them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from codeinstruct.cli.app import app, console, quiet_libraries
from codeinstruct.cli.train import run_finetune, train_with_progress


@app.command("demo")
def demo(
    run_dir: Annotated[Path, typer.Option(help="where the demo's run folders go")] = Path("runs/demo"),
    examples: Annotated[int, typer.Option(help="held-out instructions to answer at the end")] = 3,
    allow_code_execution: Annotated[
        bool,
        typer.Option(
            "--allow-code-execution", help="also run a few HumanEval problems written by the model, in the sandbox"
        ),
    ] = False,
    plain: Annotated[
        bool,
        typer.Option(
            "--plain",
            help="also instruction-tune without the FIM mix (about a minute more) and show how much FIM it loses",
        ),
    ] = False,
):
    """The whole StarCoder path offline, in minutes on a CPU: a small GPTBigCode pretrained with FIM on the
    local Python stdlib, instruction-tuned with FIM kept, then answers, a filled gap, FIM retention,
    attribution and (opt-in) HumanEval."""
    from codeinstruct import demo as stages
    from codeinstruct.train.prepare import prepare_pretrain

    stages.start_fresh(run_dir)
    console.rule("[bold]1/4 pretraining with Fill-in-the-Middle on the local standard library")
    pretrain_recipe = stages.pretrain_recipe(run_dir)
    quiet_libraries()
    with console.status("training a BPE tokenizer on the stdlib source and tokenizing the corpus"):
        data = prepare_pretrain(pretrain_recipe)
    base = train_with_progress(pretrain_recipe, data, False, "pretrain").final_dir

    console.rule("[bold]2/4 instruction fine-tuning (Alpaca prompts, response-only loss, packing, FIM mixed in)")
    finetune_recipe = stages.finetune_recipe(run_dir, base)
    result = run_finetune(finetune_recipe, resume=False)
    models = {"base (pretrained)": base, "FIM-aware instruction model": result.final_dir}
    if plain:
        console.rule("[bold]2/4 b. the same fine-tuning without the FIM mix, to compare")
        models["plain instruction model"] = run_finetune(stages.finetune_recipe(run_dir, base, False), False).final_dir

    console.rule("[bold]3/4 using it")
    answers = stages.answer_held_out(result.final_dir, run_dir, examples)
    for a in answers:
        console.rule("held-out instruction", style="bold")
        console.print(a.record.instruction + (f"\n[dim]input:[/] {a.record.input}" if a.record.has_input else ""))
        console.rule("model's answer", style="green")
        console.print(a.answer, markup=False, highlight=False)
        console.rule("reference (from the standard library)", style="dim")
        console.print(a.record.response, markup=False, highlight=False, style="dim")
    gap = stages.fill_gap(result.final_dir, answers[0].record.response) if answers else None
    if gap is not None:
        console.rule(
            "Fill-in-the-Middle with the instruction model (PSM): prefix | [green]middle[/] | suffix", style="bold"
        )
        console.print(escape(gap.prefix) + "[green]" + escape(gap.middle) + "[/]" + escape(gap.suffix), highlight=False)
    with console.status(f"measuring FIM retention on {stages.FIM_TASKS} held-out lines"):
        tasks = stages.held_out_fim_tasks(pretrain_recipe, finetune_recipe)
        rows = stages.fim_retention(run_dir, models, tasks)
    console.rule("Fill-in-the-Middle kept through instruction tuning", style="bold")
    console.print(f"[dim]{stages.retention_description(len(tasks))}[/]", highlight=False)
    for row in rows:
        loss = "" if row.instruction_loss is None else f"   instruction loss {row.instruction_loss:.3f}"
        console.print(
            f"{row.name:<30} FIM exact-match {row.fim_exact_match * 100:5.1f}% ({row.fim_correct}/{row.fim_tasks})"
            f"   FIM middle loss {row.fim_loss:.3f}" + (loss if "instruction" in row.name else ""),
            highlight=False,
        )
    if not plain:
        console.print(
            "[dim]what plain instruction tuning (no FIM mix) does to it: `codeinstruct demo --plain` trains that "
            "model too; benchmarks/fim_retention.py prints all three[/]"
        )

    console.rule("[bold]4/4 trusting and evaluating it")
    with console.status("indexing the pretraining corpus (the local standard library) for attribution"):
        summary, reports = stages.attribute_answers(run_dir, [a.answer for a in answers])
    console.print(
        f"attribution index: {summary.documents:,} documents, {summary.corpus_bytes / 1e6:.1f} MB -> "
        f"{summary.index_bytes / 1e6:.1f} MB in {run_dir / 'index'}"
    )
    for i, report in enumerate(reports, 1):
        if not report.matches:
            console.print(f"answer {i}: no span of {report.min_tokens}+ tokens found in the corpus")
        for m in report.matches:
            console.print(
                f"answer {i} lines {m.query_lines[0]}-{m.query_lines[1]}: {m.kind} copy ({m.tokens} tokens) of "
                f"{m.repo}/{m.path} lines {m.source_lines[0]}-{m.source_lines[1]}, license {m.license or 'unknown'}",
                highlight=False,
                soft_wrap=True,
            )
    if allow_code_execution:
        with console.status(
            f"writing HumanEval completions for {stages.HUMANEVAL_PROBLEMS} problems with the pretrained "
            "base and running them in the sandbox"
        ):
            score = stages.humaneval_in_sandbox(run_dir, base)
        console.print(
            f"HumanEval (first {stages.HUMANEVAL_PROBLEMS} problems, base mode, greedy): pass@1 "
            f"{score.pass_at_k.get('pass@1', 0.0):.2f}; outcomes {dict(score.counts)}; "
            f"isolation: {score.isolation_detail}",
            highlight=False,
            soft_wrap=True,
        )
    else:
        console.print(
            "HumanEval: run `codeinstruct demo --allow-code-execution` (or `codeinstruct eval humaneval` then "
            "`eval score --allow-code-execution`) to execute model-written code in the sandbox"
        )
    console.print(
        f"\nrun folders: {run_dir}/pretrain and {run_dir}/finetune"
        + (f" (and {run_dir}/finetune-plain)" if plain else "")
        + "  (metrics.jsonl, loss.png, final/, MODEL_CARD.md with the FIM figures)"
    )
    console.print(f'try: codeinstruct generate --model {result.final_dir} "Write a Python function that ..."')

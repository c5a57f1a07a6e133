"""FIM retention at the demo's scale: base / plain SFT / FIM-aware SFT side by side.

The claim under test (issue 15): instruction tuning with `data.fim_mix` keeps the base's
Fill-in-the-Middle, while plain instruction tuning (what TRL, axolotl, torchtune, litgpt and unsloth
do: no FIM during SFT) loses it, and the mix costs the instruction side next to nothing.

Three models, as `codeinstruct demo` makes them, on this machine's CPU:

  1. base       tiny-pretrain-cpu: a small GPTBigCode pretrained with FIM (rate 0.5, SPM 0.5) on the
                first 60 files of the local Python standard library
  2. plain SFT  tiny-cpu with data.fim_mix=null: instruction-tuned from (1) on the stdlib records
  3. FIM SFT    tiny-cpu as bundled: the same records, seed and schedule, plus FIM examples (30% of the
                training tokens) from the base's pretraining files and the training responses' code

What is measured, on every model with the same function (codeinstruct.evaluate.fim_retention):

  * FIM exact-match: one missing line in each of 60 stdlib files that neither pretraining nor the mix
    read, no line whose three-line window occurs in any trained text; greedy PSM, first generated line
    == the missing line (indentation included);
  * held-out instruction loss: mean loss per response token (response + EOS) on the 5% of records
    held out from fine-tuning;
  * a greedy answer to one held-out instruction (printed, for a look);
  * HumanEval single-line infilling (`codeinstruct.evaluate.infill.run_infill`, greedy, run in the
    sandbox) on the first --infill-limit problems, when the problems file is present (--infill PATH;
    default ../shared/data/humaneval-infilling/HumanEval-SingleLineInfilling.jsonl.gz).

Usage: .venv/bin/python benchmarks/fim_retention.py [--run-dir DIR] [--keep] [--tasks N]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import sys
import tempfile
import time
from pathlib import Path

from codeinstruct import demo
from codeinstruct.data.records import load_records
from codeinstruct.evaluate.fim_retention import measure_retention
from codeinstruct.infer.engine import Engine
from codeinstruct.infer.generate import generate_response
from codeinstruct.infer.sampling import SamplingParams
from codeinstruct.train.loop import train
from codeinstruct.train.prepare import prepare_pretrain, prepare_sft

# openai/human-eval-infilling's single-line set, where a checkout keeps it beside the repository
INFILL = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "humaneval-infilling"
    / ("HumanEval-SingleLineInfilling.jsonl.gz")
)


def _train(recipe, prepare) -> tuple[Path, float, object]:
    t = time.perf_counter()
    data = prepare(recipe)
    result = train(recipe, data)
    return result.final_dir, time.perf_counter() - t, data


def _infill(models: dict[str, Path], problems: Path | None, limit: int) -> dict[str, str]:
    """HumanEval infilling per model (codeinstruct.evaluate.infill), greedy, scored in the sandbox."""
    if problems is None or limit <= 0:
        return {}
    if importlib.util.find_spec("codeinstruct.evaluate.infill") is None:
        return {name: "n/a (codeinstruct.evaluate.infill is not installed)" for name in models}
    from codeinstruct.evaluate.infill import run_infill

    out = {}
    for name, path in models.items():
        result = run_infill(path, problems, limit=limit, device="cpu")
        out[name] = f"pass@1 {result.pass_at_1 * 100:.1f}%, exact match {result.exact_match * 100:.1f}%"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="where the three runs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the run folders")
    parser.add_argument("--tasks", type=int, default=demo.FIM_TASKS, help="held-out lines to fill")
    parser.add_argument(
        "--infill", type=Path, default=INFILL if INFILL.exists() else None, help="HumanEval infilling problems file"
    )
    parser.add_argument("--infill-limit", type=int, default=40, help="HumanEval infilling problems (0: skip)")
    args = parser.parse_args()
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="fim-retention-"))
    demo.start_fresh(run_dir)
    try:
        pretrain = demo.pretrain_recipe(run_dir)
        base, t_base, _ = _train(pretrain, prepare_pretrain)
        fim_recipe = demo.finetune_recipe(run_dir, base)
        fim, t_fim, fim_data = _train(fim_recipe, prepare_sft)
        plain, t_plain, _ = _train(demo.finetune_recipe(run_dir, base, fim_mix=False), prepare_sft)
        tasks = demo.held_out_fim_tasks(pretrain, fim_recipe, args.tasks)
        models = {"base": base, "plain SFT": plain, "FIM-aware SFT": fim}
        t = time.perf_counter()
        rows = measure_retention(models, tasks, load_records(run_dir / "finetune" / "held_out.jsonl"), 512)
        t_measure = time.perf_counter() - t
        infill = _infill(models, args.infill, args.infill_limit)

        mix = fim_data.fim_mix
        print(f"device: CPU, {len(tasks)} held-out lines from {len({task.source for task in tasks})} stdlib files")
        print(
            f"FIM mix: {mix.examples} examples ({mix.from_corpus} corpus, {mix.from_responses} responses), "
            f"{mix.fraction * 100:.1f}% of training tokens, {mix.target_fraction * 100:.1f}% of target tokens"
        )
        seconds = {"base": t_base, "plain SFT": t_plain, "FIM-aware SFT": t_fim}
        print(
            f"\n{'model':<15}{'FIM exact-match':>20}{'FIM middle loss':>17}{'held-out instr. loss':>22}{'train s':>9}"
        )
        for r in rows:
            loss = "-" if r.instruction_loss is None else f"{r.instruction_loss:.4f}"
            em = f"{r.fim_exact_match * 100:.1f}% ({r.fim_correct}/{r.fim_tasks})"
            print(f"{r.name:<15}{em:>20}{r.fim_loss:>17.4f}{loss:>22}{seconds[r.name]:>9.0f}")
        by = {r.name: r for r in rows}
        base_em, plain_em, fim_em = (by[n].fim_exact_match for n in ("base", "plain SFT", "FIM-aware SFT"))
        print(
            f"\nFIM exact-match minus the base's: plain SFT {(plain_em - base_em) * 100:+.1f} points, FIM-aware SFT "
            f"{(fim_em - base_em) * 100:+.1f}; FIM middle loss: base {by['base'].fim_loss:.3f}, plain "
            f"{by['plain SFT'].fim_loss:.3f}, FIM-aware {by['FIM-aware SFT'].fim_loss:.3f}; instruction loss "
            f"FIM-aware / plain: {by['FIM-aware SFT'].instruction_loss / by['plain SFT'].instruction_loss:.4f}"
        )
        print(f"measuring took {t_measure:.0f} s")
        for name, value in infill.items():
            print(f"HumanEval single-line infilling (first {args.infill_limit}), {name}: {value}")

        record = load_records(run_dir / "finetune" / "held_out.jsonl")[0]
        print(f"\nheld-out instruction: {record.instruction}")
        for name in ("plain SFT", "FIM-aware SFT"):
            engine = Engine.from_pretrained(models[name], device="cpu", max_batch_size=1)
            answer = generate_response(engine, record.instruction, record.input, SamplingParams(max_new_tokens=120))
            print(f"--- {name}:\n{answer}")
        task = tasks[0]
        print(f"\nexample task ({task.source} line {task.line}): missing {task.middle.rstrip()!r}")
    finally:
        if not args.keep and args.run_dir is None:
            shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

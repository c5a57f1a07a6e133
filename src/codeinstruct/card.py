"""MODEL_CARD.md for a run folder: what the model is, how it was trained, how it scored.

Everything in the card is read from the run folder (config.yaml, metrics.jsonl, final/config.json,
the weights' sizes, adapter/, held_out.jsonl, fim_mix.json, fim_retention.json) and from evaluation result files
(`codeinstruct eval score` and `eval leaderboard` JSON), so the card never states what the run
did not record. Training writes it at the end; `codeinstruct card RUN_DIR --eval RESULTS.json`
rewrites it with scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from codeinstruct.errors import CodeinstructError
from codeinstruct.files import write_text
from codeinstruct.prompts import PROMPT_NO_INPUT, PROMPT_WITH_INPUT


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CodeinstructError(f"{path}: cannot read ({e})") from None


def _parameters(final: Path) -> int | None:
    """Parameter count from the safetensors header (nothing loaded)."""
    weights = final / "model.safetensors"
    if not weights.is_file():
        return None
    from safetensors import safe_open

    total = 0
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            n = 1
            for d in f.get_slice(key).get_shape():
                n *= d
            total += n
    return total


def _duration(seconds: float) -> str:
    return (
        f"{seconds:.0f} s"
        if seconds < 90
        else f"{seconds / 60:.1f} min"
        if seconds < 5400
        else f"{seconds / 3600:.1f} h"
    )


def _evaluation_lines(paths: list[Path]) -> list[str]:
    lines = []
    for path in paths:
        report = _read_json(path)
        if "pass_at_k" in report:
            scores = ", ".join(f"{k} {v * 100:.2f}" for k, v in sorted(report["pass_at_k"].items()))
            lines.append(
                f"| {report.get('benchmark', 'code benchmark')} ({report.get('samples', '?')} samples of "
                f"{report.get('problems', '?')} problems; sandbox: {report.get('isolation', '?')}) | {scores} |"
            )
        elif "rows" in report:
            for row in report["rows"]:
                shots = f"{row['num_fewshot']}-shot " if row.get("num_fewshot") is not None else ""
                card = f" (card: {row['card']:.2f})" if row.get("card") is not None else ""
                lines.append(f"| {row['label']} ({shots}{row['metric']}) | {row['score']:.2f}{card} |")
            if report.get("average") is not None:
                lines.append(f"| average | {report['average']:.2f} |")
        else:
            raise CodeinstructError(f"{path}: not a result file of `eval score` or `eval leaderboard`")
    return lines


KIND_MARK = "<!-- codeinstruct run: {} -->"
# Written into the run folder by training (what data.fim_mix added) and by
# codeinstruct.evaluate.fim_retention.write_retention (FIM kept after fine-tuning, measured).
FIM_MIX_FILE = "fim_mix.json"
FIM_RETENTION_FILE = "fim_retention.json"


def _fim_mix_line(run: Path, mix: dict) -> str:
    """The card's line on the FIM examples mixed into fine-tuning."""
    where = []
    corpus = mix.get("corpus") or []
    corpus = [corpus] if isinstance(corpus, str) else corpus
    if corpus:
        where.append("the corpus " + ", ".join(f"`{c}`" for c in corpus))
    if mix.get("from_responses"):
        where.append("the code of the training responses")
    loss = "the middle and EOS" if mix.get("loss", "middle") == "middle" else "every token"
    line = (
        f"- Fill-in-the-Middle mixed in (`data.fim_mix`): examples from {' and '.join(where)}, "
        f"FIM rate {mix.get('fim_rate')}, SPM rate {mix.get('fim_spm_rate')}, loss on {loss}"
    )
    added = run / FIM_MIX_FILE
    if added.is_file():
        r = _read_json(added)
        line += (
            f"; {r['examples']:,} FIM examples, {r['fraction'] * 100:.1f}% of the training tokens "
            f"({r['target_fraction'] * 100:.1f}% of the target tokens; recipe: {mix.get('fraction')})"
        )
    return line


def _retention_lines(run: Path) -> list[str]:
    """The FIM retention section, when it was measured (fim_retention.json)."""
    path = run / FIM_RETENTION_FILE
    if not path.is_file():
        return []
    r = _read_json(path)
    out = [
        "## Fill-in-the-Middle retention",
        "",
        f"{r.get('description', 'FIM exact-match on held-out lines')}.",
        "",
        "| model | FIM exact-match | FIM middle loss | held-out instruction loss |",
        "| --- | --- | --- | --- |",
    ]
    for m in r.get("models", []):
        loss = m.get("instruction_loss")
        out.append(
            f"| {m['name']} | {m['fim_exact_match'] * 100:.1f}% ({m['fim_correct']}/{m['fim_tasks']}) | "
            f"{m['fim_loss']:.4f} | {'' if loss is None else f'{loss:.4f}'} |"
        )
    return [*out, ""]


def _recorded_kind(run: Path) -> str:
    card = run / "MODEL_CARD.md"
    text = card.read_text() if card.is_file() else ""
    return "pretrain" if KIND_MARK.format("pretrain") in text else "finetune"


def model_card(run_dir: str | Path, evaluations: list[str | Path] = (), kind: str | None = None) -> str:
    """The card's Markdown text for a finished run (`kind`: pretrain or finetune; default: as recorded)."""
    run = Path(run_dir)
    final = run / "final"
    if not (run / "config.yaml").is_file() or not (final / "config.json").is_file():
        raise CodeinstructError(f"{run}: not a finished run folder (needs config.yaml and final/config.json)")
    recipe = yaml.safe_load((run / "config.yaml").read_text())
    config = _read_json(final / "config.json")
    metrics = []
    if (run / "metrics.jsonl").is_file():
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    model, data, train = recipe["model"], recipe["data"], recipe["train"]
    pretraining = (kind or _recorded_kind(run)) == "pretrain"
    params = _parameters(final)
    lora = model.get("method") == "lora"
    out = [KIND_MARK.format("pretrain" if pretraining else "finetune"), f"# {recipe['name']}", ""]
    what = "pretrained from scratch" if pretraining else f"fine-tuned from `{model['source']}`"
    out += [
        f"A {config.get('model_type', 'causal')} language model {what} with codeinstruct"
        + (" (LoRA adapters, merged)." if lora else "."),
        "",
    ]
    out += ["## Model", ""]
    shape = [
        ("architecture", ", ".join(config.get("architectures", [])) or config.get("model_type")),
        ("parameters", f"{params:,}" if params else None),
        ("layers", config.get("n_layer")),
        ("hidden size", config.get("n_embd")),
        ("attention heads", config.get("n_head")),
        ("multi-query attention", config.get("multi_query")),
        ("context (positions)", config.get("n_positions")),
        ("vocabulary", config.get("vocab_size")),
    ]
    out += [f"- {k}: {v}" for k, v in shape if v is not None] + [""]
    out += ["## Training", ""]
    sources = data["train"] if isinstance(data["train"], list) else [data["train"]]
    out.append(
        f"- data: {', '.join(f'`{s}`' for s in dict.fromkeys(sources))}"
        + (f" ({len(sources)} entries)" if len(sources) > len(set(sources)) else "")
    )
    out.append(
        f"- sequence length {data['max_length']}, packing "
        f"{'on (examples isolated by a block-diagonal mask)' if data.get('packing') else 'off'}"
    )
    if pretraining:
        out.append(f"- Fill-in-the-Middle rate {data.get('fim_rate')}, SPM rate {data.get('fim_spm_rate')}")
    out.append(
        f"- {train['epochs']} epochs, learning rate {train['lr']} "
        f"({train['schedule']}, warmup {train['warmup_ratio']}), "
        f"AdamW betas {tuple(train['betas'])}, weight decay {train['weight_decay']}, "
        f"{train['batch_size']} x {train['grad_accum']} rows per step, "
        f"precision {train['precision']}, seed {recipe['seed']}"
    )
    if lora:
        lc = model.get("lora", {})
        out.append(
            f"- LoRA rank {lc.get('r')}, alpha {lc.get('alpha')}, dropout {lc.get('dropout')}; "
            "the adapter alone is in `adapter/`"
        )
    if not pretraining:
        out.append("- loss on the response and EOS only (the prompt is masked)")
        if data.get("fim_mix"):
            out.append(_fim_mix_line(run, data["fim_mix"]))
    if metrics:
        last = metrics[-1]
        out.append(
            f"- {last['step']} optimizer steps, {last['target_tokens']:,} target tokens, final loss {last['loss']:.4f}"
            + (f", {_duration(last['elapsed_s'])}" if "elapsed_s" in last else "")
        )
    if (run / "loss.png").is_file():
        out += ["", "![loss](loss.png)"]
    out.append("")
    if not pretraining:
        out += [
            "## Prompt",
            "",
            "Alpaca's template, exactly as in training (the response follows a newline and ends with EOS):",
            "",
            "```",
            PROMPT_NO_INPUT.format(instruction="{instruction}"),
            "```",
            "",
            "with context:",
            "",
            "```",
            PROMPT_WITH_INPUT.format(instruction="{instruction}", input="{input}"),
            "```",
            "",
        ]
    out += _retention_lines(run)
    rows = _evaluation_lines([Path(p) for p in evaluations])
    out += ["## Evaluation", ""]
    if rows:
        out += ["| benchmark | score |", "| --- | --- |", *rows]
    else:
        out.append(
            "Not evaluated yet: `codeinstruct eval humaneval`, `eval score`, `eval leaderboard`, then "
            "`codeinstruct card RUN_DIR --eval RESULTS.json`."
        )
    out += [
        "",
        "## Use and limits",
        "",
        "Generated code can reproduce training code; `codeinstruct attribute check` reports where a piece of "
        "code came from (repository, path, license, lines). Run model-written code only in a sandbox.",
        "",
    ]
    return "\n".join(out)


def write_model_card(run_dir: str | Path, evaluations: list[str | Path] = (), kind: str | None = None) -> Path:
    """Write RUN_DIR/MODEL_CARD.md atomically."""
    path = Path(run_dir) / "MODEL_CARD.md"
    text = model_card(run_dir, evaluations, kind)
    return write_text(path, text)

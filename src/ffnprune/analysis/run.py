"""`ffnprune analyze`: the redundancy measures of a model written as JSON, per-neuron tensors and plots; and
`--compare`: one table and one set of plots across several analysed (or to-be-analysed) models."""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import ffnprune
from ffnprune.analysis.plots import plot_max_cosine, plot_model_summary, plot_sensitivity_uniqueness, plot_widths
from ffnprune.analysis.redundancy import measure_redundancy, summarise
from ffnprune.config import AnalyzeConfig
from ffnprune.errors import FfnpruneError, FfnpruneWarning
from ffnprune.io.atomic import atomic_directory, check_not_inside, check_output_dir, write_json_atomic
from ffnprune.io.pruned_dir import read_metadata
from ffnprune.messages import say
from ffnprune.models import fit_context, load_model, pick_device
from ffnprune.tasks import task_examples

REPORT = "redundancy.json"
NEURONS = "neurons.safetensors"
NEURON_MEASURES = ("sensitivity", "max_cosine", "max_cosine_later", "r_squared")


def analyze(config: AnalyzeConfig, say=say) -> Path:
    if not config.model or not config.out:
        raise FfnpruneError("analyze needs MODEL and --out (or --compare DIR... --out)")
    check_output_dir(config.out, config.overwrite)
    pick_device(config.device)
    if Path(config.model).expanduser().exists():
        check_not_inside(config.out, config.model)
    say(f"loading {config.model} ...")
    loaded = load_model(config.model, device=config.device)
    config = replace(config, context=fit_context(loaded.model, config.context))
    examples = task_examples(config.task, loaded.tokenizer, config.data, config.split, config.context,
                             config.max_tokens)
    examples = examples.head_tokens(config.max_tokens)
    started = time.perf_counter()
    say(f"measuring {len(examples)} sequences of up to {config.context} tokens of {config.task} {config.split} ...")
    measures = measure_redundancy(loaded.model, loaded.adapter, examples, config.batch_size)
    summary = summarise(measures, config.threshold)
    tokens = measures[0].tokens if measures else 0
    report = {
        "ffnprune_version": ffnprune.__version__, "model": config.model, "model_location": loaded.location,
        "pruning": _pruning_summary(loaded.location),
        "protocol": {**asdict(config), "tokens_measured": tokens,
                     "note": "sensitivity: mean over batches of |sum theta dL/dtheta|; uniqueness: cosine of "
                             "activation vectors, pad tokens excluded; R^2: linear reconstruction from the other "
                             "neurons of the layer, with an intercept"},
        **summary,
        "seconds": round(time.perf_counter() - started, 1),
    }
    widths = [layer["kept"] for layer in summary["layers"]]
    if tokens < 4 * max(widths, default=0):
        report["warning"] = (f"{tokens} tokens for layers of up to {max(widths)} neurons: R^2 overfits when tokens are "
                             "few; use --max-tokens of at least 4x the widest layer")
        warnings.warn(report["warning"], FfnpruneWarning, stacklevel=2)
    with atomic_directory(config.out, config.overwrite) as staging:
        write_json_atomic(staging / REPORT, report)
        save_file({f"{name}.{i}": getattr(m, name).contiguous() for i, m in enumerate(measures)
                   for name in NEURON_MEASURES}, str(staging / NEURONS))
        _plot(staging, {Path(config.model).name or config.model: (report, _load_neurons(staging, len(measures)))},
              config.threshold)
    print(f"uniqueness {summary['model']['uniqueness']:.4f} (strict count "
          f"{summary['model']['uniqueness_strict']:.4f}), sensitivity sum {summary['model']['sensitivity_sum']:.4g}, "
          f"R^2 > 0.9 for {summary['model']['r2_above_0.9']:.1%}; wrote {config.out}", flush=True)
    return Path(config.out)


def _pruning_summary(location: str) -> dict:
    if not Path(location).is_dir():
        return {}
    return {k: v for k, v in read_metadata(location).items() if k in ("method", "keep", "steps", "seed")}


def _load_neurons(directory: Path, layers: int) -> dict[str, torch.Tensor]:
    tensors = load_file(str(directory / NEURONS))
    return {name: torch.cat([tensors[f"{name}.{i}"] for i in range(layers)])
            for name in NEURON_MEASURES if f"{name}.0" in tensors}


def _plot(directory: Path, models: dict[str, tuple[dict, dict]], threshold: float) -> None:
    plot_widths({n: [layer["kept"] for layer in r["layers"]] for n, (r, _) in models.items()},
                directory / "kept_width.png")
    plot_max_cosine({n: t["max_cosine"] for n, (_, t) in models.items()}, threshold, directory / "max_cosine.png")
    plot_sensitivity_uniqueness({n: t["sensitivity"] for n, (_, t) in models.items()},
                                {n: t["max_cosine"] for n, (_, t) in models.items()},
                                directory / "sensitivity_vs_uniqueness.png")
    if len(models) > 1:
        plot_model_summary({n: r for n, (r, _) in models.items()}, directory / "model_summary.png")


def compare(directories: list[str], config: AnalyzeConfig, say=say) -> Path:
    """Analyse every model directory that has no redundancy.json yet (into OUT/NAME), then compare all."""
    if not config.out:
        raise FfnpruneError("--compare needs --out, the directory for the table and plots")
    check_output_dir(config.out, config.overwrite)
    models = {}
    for directory in map(Path, directories):
        name = directory.name
        if name in models:
            raise FfnpruneError(f"two directories are named {name!r}; give each model a distinct directory name")
        if not (directory / REPORT).is_file():
            if not (directory / "config.json").is_file():
                raise FfnpruneError(f"{directory} is neither an analysis (no {REPORT}) nor a model directory "
                                    "(no config.json)")
            target = Path(config.out + ".analyses") / name
            say(f"analysing {directory} into {target} ...")
            directory = analyze(replace(config, model=str(directory), out=str(target), overwrite=True), say)
        report = json.loads((directory / REPORT).read_text())
        models[name] = (report, _load_neurons(directory, len(report["layers"])))
    with atomic_directory(config.out, config.overwrite) as staging:
        table = _table(models)
        (staging / "table.md").write_text(table)
        write_json_atomic(staging / "comparison.json",
                          {n: {"pruning": r.get("pruning", {}), "model": r["model"]} for n, (r, _) in models.items()})
        _plot(staging, models, config.threshold)
    print(table, flush=True)
    return Path(config.out)


def _table(models: dict[str, tuple[dict, dict]]) -> str:
    lines = ["| model | method | keep | kept neurons | uniqueness | redundant | uniqueness (strict) | "
             "sensitivity sum | R^2 > 0.9 | R^2 > 0.99 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, (report, _) in models.items():
        m, p = report["model"], report.get("pruning", {})
        lines.append(f"| {name} | {p.get('method', 'dense')} | {p.get('keep', 1.0)} | {m['kept']:,} | "
                     f"{m['uniqueness']:.4f} | {m['redundant']:,} | {m.get('uniqueness_strict', float('nan')):.4f} | "
                     f"{m['sensitivity_sum']:.4g} | "
                     f"{m['r2_above_0.9']:.3f} | {m['r2_above_0.99']:.3f} |")
    return "\n".join(lines) + "\n"

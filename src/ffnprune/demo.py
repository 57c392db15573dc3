"""The README's main job: fine-prune SmolLM2-135M with GUM and with random pruning, then compare the compacted
models with the dense one on WikiText test perplexity, size, FLOPs and measured speed."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ffnprune import __version__
from ffnprune.analysis.footprint import footprint
from ffnprune.benchmark.run import check_speed, machine, measure_speed, speed_table
from ffnprune.config import DemoConfig, PruneConfig, build_config, to_flat_dict
from ffnprune.criteria import get_method
from ffnprune.errors import FfnpruneError
from ffnprune.io.atomic import write_json_atomic
from ffnprune.messages import say
from ffnprune.metrics.perplexity import block_perplexity, token_ids
from ffnprune.models import load_model
from ffnprune.pipeline import prune
from ffnprune.pruning.selection import check_keep
from ffnprune.tasks import data_record
from ffnprune.tasks.wikitext import read_wikitext

RESULTS = "results.json"


def demo_methods(config: DemoConfig) -> list[str]:
    methods = [name.strip() for name in config.methods.split(",") if name.strip()]
    if not methods:
        raise FfnpruneError("--methods names no method: give one or more, comma-separated (e.g. gum,random)")
    return [get_method(name).name for name in methods]


def prune_config(config: DemoConfig, method: str, out: Path) -> PruneConfig:
    values = {"model": config.model, "out": str(out), "method": method, "keep": config.keep, "steps": config.steps,
              "seed": config.seed, "data": config.data, "overwrite": True}
    if config.steps:
        values.update(context=config.train_context, batch_size=config.train_batch_size)
    if get_method(method).uses_mu:
        values["mu"] = config.mu
    if get_method(method).calibrated:  # one-shot, then recovery with distillation from the dense model
        values["calibration_context"] = config.train_context
        if config.steps:
            values.update(distill=True, lr=config.recovery_lr)
    return build_config(PruneConfig, values)


def _plan(method: str, steps: int) -> str:
    if get_method(method).calibrated:
        return "one-shot" + (f", then {steps} recovery steps with distillation" if steps else "")
    return f"fine-pruning for {steps} steps" if steps else "one-shot"


def run_demo(config: DemoConfig, say=say) -> dict:
    check_keep(config.keep)
    methods = demo_methods(config)
    check_speed(config.speed)
    text, data_path = read_wikitext(config.data, "test")
    started = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    say(f"loading {config.model} ...")
    loaded = load_model(config.model)
    ids = token_ids(loaded.tokenizer, text, config.max_tokens or None)
    say(f"WikiText test: {data_path} ({len(ids)} tokens evaluated, blocks of {config.context})")

    def describe(model) -> dict:
        return {**block_perplexity(model, ids, config.context, config.batch_size),
                **_size(footprint(model, loaded.adapter, config.context))}

    rows = {"dense": describe(loaded.model)}
    say(f"dense perplexity {rows['dense']['perplexity']:.2f}")
    models = {"dense": loaded}
    settings = {}
    for method in methods:
        settings[method] = prune_config(config, method, out / method)
        say(f"{method}: {_plan(method, config.steps)}, to keep {config.keep} ...")
        method_started = time.perf_counter()
        prune(settings[method], say=say)
        models[method] = load_model(str(out / method))  # the saved, compacted model, as a user would load it
        rows[method] = {**describe(models[method].model), "seconds": round(time.perf_counter() - method_started, 1)}
        say(f"{method}: perplexity {rows[method]['perplexity']:.2f}")
    say("timing the dense and pruned models in turn ...")
    speed = measure_speed(models, config.speed, config.seed)

    result = {
        "ffnprune_version": __version__,
        "model": config.model,
        "data": data_record("wikitext", config.data, "test"),
        "split": "test",
        "train_split": "validation",
        "methods": methods,
        "keep": config.keep,
        "steps": config.steps,
        "seed": config.seed,
        "protocol": {"context": config.context, "tokens_scored": rows["dense"]["tokens_scored"]},
        "hyperparameters": {method: to_flat_dict(prune_settings) for method, prune_settings in settings.items()},
        "out": str(out),
        "models": {method: str(out / method) for method in methods},
        "results": rows,
        "speed": speed,
        "machine": machine(torch.device("cpu")),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(out / RESULTS, result)
    print(_table(result), flush=True)
    return result


def _size(size: dict) -> dict:
    keys = ("parameters", "mlp_parameters", "mlp_widths", "flops_per_token", "flops_context")
    return {key: size[key] for key in keys}


def _table(result: dict) -> str:
    lines = [f"{'':<18}{'WikiText ppl':>13}{'parameters':>14}{'MLP parameters':>16}{'GFLOPs/token':>14}"]
    for name, row in result["results"].items():
        label = name if name == "dense" else f"{name} keep {result['keep']:g}"
        lines.append(f"{label:<18}{row['perplexity']:>13.2f}{row['parameters']:>14,}{row['mlp_parameters']:>16,}"
                     f"{row['flops_per_token'] / 1e9:>14.3f}")
    budget = "; ".join(f"{method}: {_plan(method, result['steps'])}" for method in result["methods"])
    budget += " (on WikiText validation)" if result["steps"] else ""
    lines.append(f"({result['protocol']['tokens_scored']:,} test tokens scored in blocks of "
                 f"{result['protocol']['context']}; {budget}; models and results.json in {result['out']})")
    return "\n".join(lines) + "\n\n" + speed_table(result["speed"])

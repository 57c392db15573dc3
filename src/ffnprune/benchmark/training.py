"""`ffnprune bench-training MODEL`: what fine-pruning costs next to plain fine-tuning, step time and peak memory.

Every variant trains a fresh copy of the model on the same batches with the four FinePruner hook calls of the
training loop (none for plain fine-tuning). Rounds rotate the order of the variants; step times are medians over
all timed steps of all rounds. Memory (see PeakMemory) is measured afterwards, one short run per variant.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import statistics
import time
from contextlib import nullcontext

import torch

from ffnprune.benchmark.memory import PeakMemory, return_freed_memory_promptly
from ffnprune.benchmark.run import machine
from ffnprune.config import TrainingBenchConfig
from ffnprune.criteria import get_method
from ffnprune.errors import FfnpruneError
from ffnprune.io.atomic import write_json_atomic
from ffnprune.messages import say
from ffnprune.metrics.perplexity import causal_lm_loss
from ffnprune.models import LoadedModel, load_model, pick_device
from ffnprune.schedules import CubicSchedule
from ffnprune.tasks import task_examples
from ffnprune.training.hooks import FinePruner, PenaltySettings
from ffnprune.training.loop import parameter_groups

PLAIN = "fine-tuning"
GUM_OPTIONS = {"tokens": "gum_tokens", "every": "gum_every"}


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str
    method: str | None  # None: plain fine-tuning
    penalty: PenaltySettings


def parse_variants(text: str, mu: float) -> list[Variant]:
    variants = []
    for spec in (part.strip() for part in text.split(",") if part.strip()):
        name, *options = spec.split(":")
        if name == PLAIN:
            if options:
                raise FfnpruneError(f"variant {spec!r}: plain fine-tuning takes no options")
            variants.append(Variant(spec, None, PenaltySettings()))
            continue
        method = get_method(name)
        settings = {"mu": mu if method.uses_mu else None}
        for option in options:
            key, _, value = option.partition("=")
            if key not in GUM_OPTIONS or not method.uses_mu or not value.isdigit() or int(value) < 1:
                raise FfnpruneError(f"variant {spec!r}: options are tokens=N and every=N (N >= 1), for gum and "
                                    "anti-gum only, e.g. gum:tokens=128:every=4")
            settings[GUM_OPTIONS[key]] = int(value)
        variants.append(Variant(spec, method.name, PenaltySettings(**settings)))
    if not variants:
        raise FfnpruneError("--variants names nothing to time; e.g. fine-tuning,global-movement,gum")
    return variants


def _run_variant(base: LoadedModel, variant: Variant, batches: list[dict], config: TrainingBenchConfig,
                 device: torch.device, total: int) -> tuple[list[float], PeakMemory]:
    """Step times after the warm-up, and the memory the variant's copy of the model and its training used."""
    with PeakMemory(device) as peak:
        model = copy.deepcopy(base.model).to(device).train()
        pruner = None
        if variant.method is not None:
            schedule = CubicSchedule(max(config.warmup + config.steps, 10), config.keep)
            pruner = FinePruner(model, base.adapter, get_method(variant.method), schedule, variant.penalty,
                                config.seed)
        optimizer = torch.optim.AdamW(parameter_groups(model, pruner, 5e-5, 1e-2, 0.1), eps=1e-4)
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if config.mixed_precision == "bf16"
                    else nullcontext())
        times = []
        for step in range(total):
            batch = batches[step % len(batches)]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            if pruner is not None:
                pruner.before_forward(batch["attention_mask"])
            with autocast:
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                               use_cache=False).logits
            loss = causal_lm_loss(logits, batch["labels"])
            if pruner is not None:
                loss = loss + pruner.penalty()
            loss.backward()
            if pruner is not None:
                pruner.after_backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if pruner is not None:
                pruner.after_optimizer_step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= config.warmup:
                times.append(time.perf_counter() - started)
        if pruner is not None:
            pruner.detach()
        del model, pruner, optimizer
        gc.collect()
    return times, peak


def run_training_bench(config: TrainingBenchConfig, say=say) -> dict:
    if not config.model:
        raise FfnpruneError("no MODEL given: name a hub id, a model directory, a .gguf file or 'smollm2-135m'")
    if config.steps < 1 or config.warmup < 0 or config.rounds < 1:
        raise FfnpruneError("--steps and --rounds must be >= 1 and --warmup >= 0")
    device = pick_device(config.device)
    variants = parse_variants(config.variants, config.mu)
    say(f"loading {config.model} ...")
    base = load_model(config.model)
    examples = task_examples("wikitext", base.tokenizer, config.data, "validation", config.context)
    needed = config.warmup + config.steps
    if len(examples) < config.batch_size:
        raise FfnpruneError(f"the data holds {len(examples)} sequences of {config.context} tokens, fewer than "
                            f"--batch-size {config.batch_size}")
    batches = [{k: v.to(device) for k, v in examples.batch(
        [(step * config.batch_size + i) % len(examples) for i in range(config.batch_size)]).items()}
        for step in range(needed)]
    torch.manual_seed(config.seed)
    times = {variant.label: [] for variant in variants}
    for round_index in range(config.rounds):
        shift = round_index % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            say(f"round {round_index + 1}/{config.rounds}: {variant.label}")
            times[variant.label].extend(_run_variant(base, variant, batches, config, device, needed)[0])
    # Memory in a pass of its own, after the timings: on a CPU it needs an allocator setting that slows steps.
    if device.type == "cpu" and not return_freed_memory_promptly():
        say("this C library cannot be told to return freed memory; CPU memory figures may be low after the first")
    rows = {}
    for variant in variants:
        say(f"memory: {variant.label}")
        peak = _run_variant(base, variant, batches, config, device, config.warmup + 1)[1]
        rows[variant.label] = {"step_seconds": statistics.median(times[variant.label]),
                               "step_seconds_all": [round(t, 4) for t in times[variant.label]],
                               "peak_memory_bytes": peak.bytes, "peak_memory_added_bytes": peak.added}
    _add_ratios(rows, variants)
    result = {"model": config.model, "data": "wikitext validation", "settings": dataclasses.asdict(config),
              "memory": ("CUDA memory allocated" if device.type == "cuda" else
                         "resident set of the process, freed blocks returned to the OS at once; 'added' excludes "
                         "what it held before the variant began")
              + " (measured in a pass of its own: model copy, training state, warm-up + 1 steps)",
              "machine": machine(device), "variants": rows}
    print(training_table(result), flush=True)
    if config.out:
        write_json_atomic(config.out, result)
        say(f"wrote {config.out}")
    return result


def _add_ratios(rows: dict, variants: list[Variant]) -> None:
    """Each variant against plain fine-tuning; GUM variants also against global movement."""
    def ratio(label: str, other: str, key: str) -> float | None:
        a, b = rows[label][key], rows.get(other, {}).get(key)
        return a / b if a is not None and b else None

    for variant in variants:
        row = rows[variant.label]
        if variant.method is not None:
            row["time_vs_fine_tuning"] = ratio(variant.label, PLAIN, "step_seconds")
            row["memory_vs_fine_tuning"] = ratio(variant.label, PLAIN, "peak_memory_added_bytes")
        if variant.method in ("gum", "anti-gum"):
            row["time_vs_global_movement"] = ratio(variant.label, "global-movement", "step_seconds")


def training_table(result: dict) -> str:
    def show(value, form):
        return "-" if value is None else format(value, form)

    width = max(len(label) for label in result["variants"]) + 2
    lines = [f"{'variant':<{width}}{'step s':>9}{'peak MiB':>10}{'added MiB':>11}{'time / FT':>11}"
             f"{'memory / FT':>13}{'time / GM':>11}"]
    for label, row in result["variants"].items():
        peak, added = row["peak_memory_bytes"], row["peak_memory_added_bytes"]
        lines.append(f"{label:<{width}}{row['step_seconds']:>9.3f}{show(peak and peak / 2**20, '.0f'):>10}"
                     f"{show(added and added / 2**20, '.0f'):>11}{show(row.get('time_vs_fine_tuning'), '.3f'):>11}"
                     f"{show(row.get('memory_vs_fine_tuning'), '.3f'):>13}"
                     f"{show(row.get('time_vs_global_movement'), '.3f'):>11}")
    settings = result["settings"]
    lines.append(f"(FT: plain fine-tuning, GM: global movement; batch {settings['batch_size']} x {settings['context']} "
                 f"tokens; medians of {settings['steps']} steps x {settings['rounds']} rounds after "
                 f"{settings['warmup']} warm-up steps)")
    return "\n".join(lines)

"""`ffnprune bench DENSE PRUNED`: measured speed against the speed-up the removed arithmetic allows."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch
import transformers

from ffnprune import __version__
from ffnprune.analysis.footprint import footprint
from ffnprune.benchmark.speed import compare_speed
from ffnprune.config import BenchConfig, SpeedConfig
from ffnprune.errors import FfnpruneError
from ffnprune.io.atomic import write_json_atomic
from ffnprune.messages import say
from ffnprune.models import LoadedModel, load_model, peek_model, pick_device


def int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise FfnpruneError(f"--{what} {text!r} must be positive whole numbers, comma-separated (e.g. 1,8)")
    return values


def check_speed(settings: SpeedConfig) -> tuple[list[int], list[int]]:
    """The batch sizes and prompt lengths to time, or an error naming the bad option."""
    if settings.repeats < 1 or settings.warmup < 0 or settings.new_tokens < 1:
        raise FfnpruneError("--repeats and --new-tokens must be >= 1 and --warmup >= 0")
    return int_list(settings.batch_sizes, "batch-sizes"), int_list(settings.prompt_lengths, "prompt-lengths")


def machine(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    about = {"device": str(device), "cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
             "torch": torch.__version__, "transformers": transformers.__version__, "ffnprune": __version__}
    if device.type == "cuda":
        about["gpu"] = torch.cuda.get_device_name(device)
    return about


def _size(loaded: LoadedModel) -> dict:
    size = footprint(loaded.model, loaded.adapter)
    weights = sum(t.numel() * t.element_size() for t in [*loaded.model.parameters(), *loaded.model.buffers()])
    return {key: size[key] for key in ("parameters", "mlp_parameters", "mlp_widths")} | {"weights_bytes": weights}


def measure_speed(models: dict[str, LoadedModel], settings: SpeedConfig, seed: int = 0) -> dict:
    """Every model against the first at each batch size and prompt length: measured speed-ups next to the FLOP
    ratio at the same context (prefill attends (L + 1) / 2 tokens on average, decode L + (new + 1) / 2)."""
    names = list(models)
    reference = names[0]
    batch_sizes, prompt_lengths = check_speed(settings)

    def flops(name: str, context: float) -> float:
        return footprint(models[name].model, models[name].adapter, context)["flops_per_token"]

    runs = []
    for batch_size in batch_sizes:
        for length in prompt_lengths:
            measured = compare_speed({name: loaded.model for name, loaded in models.items()}, settings, batch_size,
                                     length, seed)
            contexts = {"prefill": (length + 1) / 2, "decode": length + (settings.new_tokens + 1) / 2}
            for name in names:
                row = {"model": name, "batch_size": batch_size, "prompt_length": length, **measured[name]}
                for phase, context in contexts.items():
                    row[f"{phase}_flops_per_token"] = flops(name, context)
                if name != reference:
                    base = measured[reference]
                    row["speedup_prefill"] = base["prefill_ms"] / row["prefill_ms"]
                    row["speedup_decode"] = row["decode_tokens_per_second"] / base["decode_tokens_per_second"]
                    for phase, context in contexts.items():
                        theoretical = flops(reference, context) / row[f"{phase}_flops_per_token"]
                        row[f"speedup_{phase}_flops"] = theoretical
                        row[f"{phase}_efficiency"] = row[f"speedup_{phase}"] / theoretical
                runs.append(row)
    return {"reference": reference, "sizes": {name: _size(loaded) for name, loaded in models.items()},
            "settings": {"batch_sizes": batch_sizes, "prompt_lengths": prompt_lengths,
                         "new_tokens": settings.new_tokens, "repeats": settings.repeats, "warmup": settings.warmup,
                         "seed": seed, "prompt": "random token ids"},
            "runs": runs}


def speed_table(result: dict) -> str:
    width = max(len(row["model"]) for row in result["runs"]) + 2
    lines = [f"{'model':<{width}}{'batch':>6}{'prompt':>8}{'prefill ms':>12}{'decode tok/s':>14}"
             f"{'prefill speed-up':>19}{'decode speed-up':>18}   (measured / FLOPs)"]
    for row in result["runs"]:
        speedups = ""
        if "speedup_prefill" in row:
            speedups = (f"{row['speedup_prefill']:>8.2f}x / {row['speedup_prefill_flops']:.2f}x"
                        f"{row['speedup_decode']:>8.2f}x / {row['speedup_decode_flops']:.2f}x")
        lines.append(f"{row['model']:<{width}}{row['batch_size']:>6}{row['prompt_length']:>8}{row['prefill_ms']:>12.1f}"
                     f"{row['decode_tokens_per_second']:>14.1f}{speedups}")
    settings = result["settings"]
    lines.append(f"(medians of {settings['repeats']} rounds after {settings['warmup']} warm-up, models in turn; "
                 f"decode: {settings['new_tokens']} greedy tokens on the KV cache)")
    return "\n".join(lines)


def check_roles(dense: str, pruned: str) -> None:
    """Speed-ups are pruned against dense: models given the other way round would report their inverse."""
    dense_shape, pruned_shape = peek_model(dense), peek_model(pruned)
    if dense_shape and pruned_shape and sum(pruned_shape.mlp_widths) > sum(dense_shape.mlp_widths):
        raise FfnpruneError(f"{pruned} has more MLP neurons ({sum(pruned_shape.mlp_widths):,}) than {dense} "
                            f"({sum(dense_shape.mlp_widths):,}): the two look swapped; give the dense reference "
                            "first, then the pruned model")


def run_bench(config: BenchConfig, say=say) -> dict:
    if not config.dense or not config.pruned:
        raise FfnpruneError("bench needs two models: DENSE (the reference) and PRUNED (a pruned directory)")
    device = pick_device(config.device)
    check_roles(config.dense, config.pruned)
    models = {}
    for role, spec in (("dense", config.dense), ("pruned", config.pruned)):
        say(f"loading {role} model {spec} ...")
        loaded = load_model(spec, config.dtype, config.device)
        models[f"{role}: {Path(spec).name or spec}"] = loaded
    result = {"models": {"dense": config.dense, "pruned": config.pruned}, "dtype": config.dtype,
              "machine": machine(device), **measure_speed(models, config.speed, config.seed)}
    print(speed_table(result), flush=True)
    if config.out:
        write_json_atomic(config.out, result)
        say(f"wrote {config.out}")
    return result

"""Prefill latency and decode throughput, measured on several models in one run.

The models take turns within every repeat (in a rotating order), so a machine that slows down or speeds up during
the run affects them alike; figures are medians over the repeats after warm-up rounds that are not recorded.
"""

from __future__ import annotations

import inspect
import statistics
import time

import torch
from torch import nn
from transformers import DynamicCache

from ffnprune.benchmark.memory import PeakMemory
from ffnprune.config import SpeedConfig


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_argument(model: nn.Module) -> str:
    """transformers 5.x renamed `past_key_values` to `cache` (the old name warns until 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.inference_mode()
def _prefill_and_decode(model: nn.Module, prompt: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """Seconds for the prompt's forward pass, then for `new_tokens` greedy steps on the KV cache."""
    device = prompt.device
    # Our own cache object, filled in place, passed under the name this transformers version takes.
    cache = {_cache_argument(model): DynamicCache(config=model.config)}
    _synchronize(device)
    started = time.perf_counter()
    output = model(input_ids=prompt, use_cache=True, **cache)
    _synchronize(device)
    prefilled = time.perf_counter()
    next_ids = output.logits[:, -1:].argmax(-1)
    for _ in range(new_tokens):
        next_ids = model(input_ids=next_ids, use_cache=True, **cache).logits[:, -1:].argmax(-1)
    _synchronize(device)
    return prefilled - started, time.perf_counter() - prefilled


def compare_speed(models: dict[str, nn.Module], settings: SpeedConfig, batch_size: int, prompt_length: int,
                  seed: int = 0) -> dict[str, dict]:
    """Per model: median prefill milliseconds, prefill and decode tokens per second, and the peak memory added
    while it ran (weights excluded; see PeakMemory)."""
    first = next(iter(models.values()))
    device = next(first.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(first.config.vocab_size, (batch_size, prompt_length), generator=generator).to(device)
    names = list(models)
    timings = {name: {"prefill": [], "decode": [], "memory": []} for name in names}
    for round_index in range(settings.warmup + settings.repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            with PeakMemory(device) as peak:
                prefill, decode = _prefill_and_decode(models[name].eval(), prompt, settings.new_tokens)
            if round_index >= settings.warmup:
                timings[name]["prefill"].append(prefill)
                timings[name]["decode"].append(decode)
                timings[name]["memory"].append(peak.added)
    results = {}
    for name, measured in timings.items():
        prefill, decode = statistics.median(measured["prefill"]), statistics.median(measured["decode"])
        memory = [value for value in measured["memory"] if value is not None]
        results[name] = {
            "prefill_ms": 1000 * prefill,
            "prefill_tokens_per_second": batch_size * prompt_length / prefill,
            "decode_tokens_per_second": batch_size * settings.new_tokens / decode if decode else None,
            "peak_memory_added_bytes": max(memory) if memory else None,
            "prefill_ms_all": [round(1000 * value, 3) for value in measured["prefill"]],
            "decode_ms_all": [round(1000 * value, 3) for value in measured["decode"]],
        }
    return results

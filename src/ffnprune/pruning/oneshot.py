"""One-shot pruning: score every neuron, keep each layer's top-v, compact."""

from __future__ import annotations

from datetime import datetime, timezone

import torch
from torch import nn

import ffnprune
from ffnprune.adapters import MlpAdapter
from ffnprune.compaction import compact_mlps
from ffnprune.config import PruneConfig
from ffnprune.criteria import get_method
from ffnprune.errors import FfnpruneError
from ffnprune.models import LoadedModel
from ffnprune.pruning.selection import check_keep, local_top_v, round_widths


def select_kept(model: nn.Module, adapter: MlpAdapter, method: str, keep: float, seed: int,
                round_to: int = 1) -> list[torch.Tensor]:
    """Indices of the neurons each layer keeps, by the named method's fixed scores and local Top_v, each layer's
    width rounded to a multiple of `round_to`."""
    resolved = get_method(method)
    if resolved.learned:
        raise FfnpruneError(f"method {method!r} learns its scores while fine-tuning: give --steps N (N > 0), or use "
                            "random or magnitude for one-shot pruning")
    scores = resolved.fixed_scores(model, adapter, torch.Generator().manual_seed(seed))
    return round_widths(local_top_v(scores, check_keep(keep)), scores, round_to)


def compact_with_metadata(loaded: LoadedModel, config: PruneConfig, kept: list[torch.Tensor], **extra) -> dict:
    """Compact `loaded.model` in place to `kept`; returns the metadata saved beside the model."""
    model, adapter = loaded.model, loaded.adapter
    widths_before, parameters_before = adapter.mlp_widths(model), model.num_parameters()
    compact_mlps(model, adapter, kept)
    method = get_method(config.method)
    return {
        "ffnprune_version": ffnprune.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_model": loaded.source,
        "source_location": loaded.location,
        "architecture": adapter.name,
        "method": config.method,
        "keep": config.keep,
        "keep_actual": sum(len(k) for k in kept) / sum(widths_before),
        "selection": f"{method.selection} top-v" if method.selection != "threshold" else "threshold",
        "steps": config.steps,
        "seed": config.seed,
        "round_to": config.round_to,
        "mlp_widths_before": widths_before,
        "parameters_before": parameters_before,
        "parameters_after": model.num_parameters(),
        "kept_neurons": [k.tolist() for k in kept],
        **extra,
    }


def prune_loaded(loaded: LoadedModel, config: PruneConfig) -> dict:
    """One-shot: select and compact in place; returns the metadata."""
    kept = select_kept(loaded.model, loaded.adapter, config.method, config.keep, config.seed, config.round_to)
    return compact_with_metadata(loaded, config, kept)

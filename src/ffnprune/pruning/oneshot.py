"""One-shot pruning: score every neuron, keep each layer's top-v, compact, save."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

import ffnprune
from ffnprune.adapters import MlpAdapter
from ffnprune.compaction import compact_mlps
from ffnprune.config import PruneConfig
from ffnprune.criteria import get_criterion
from ffnprune.errors import FfnpruneError
from ffnprune.io.atomic import check_output_dir
from ffnprune.io.pruned_dir import save_pruned
from ffnprune.models import LoadedModel, load_model
from ffnprune.pruning.selection import check_keep, local_top_v


def select_kept(model: nn.Module, adapter: MlpAdapter, method: str, keep: float, seed: int) -> list[torch.Tensor]:
    """Indices of the neurons each layer keeps, by the named criterion and local Top_v."""
    criterion = get_criterion(method)
    scores = criterion(model, adapter, torch.Generator().manual_seed(seed))
    return local_top_v(scores, check_keep(keep))


def prune_loaded(loaded: LoadedModel, config: PruneConfig) -> dict:
    """Prune and compact `loaded.model` in place; returns the pruning metadata saved beside the model."""
    model, adapter = loaded.model, loaded.adapter
    widths_before = adapter.mlp_widths(model)
    parameters_before = model.num_parameters()
    kept = select_kept(model, adapter, config.method, config.keep, config.seed)
    compact_mlps(model, adapter, kept)
    return {
        "ffnprune_version": ffnprune.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_model": loaded.source,
        "source_location": loaded.location,
        "architecture": adapter.name,
        "method": config.method,
        "keep": config.keep,
        "selection": "local top-v",
        "steps": config.steps,
        "seed": config.seed,
        "mlp_widths_before": widths_before,
        "parameters_before": parameters_before,
        "parameters_after": model.num_parameters(),
        "kept_neurons": [k.tolist() for k in kept],
    }


def prune(config: PruneConfig) -> Path:
    """The `ffnprune prune` command: check the inputs, load, prune, compact and save atomically."""
    check_keep(config.keep)
    get_criterion(config.method)
    if config.steps != 0:
        raise FfnpruneError("fine-pruning (--steps > 0) is not available in this version; use --steps 0 for "
                            "one-shot pruning")
    check_output_dir(config.out, config.overwrite)
    loaded = load_model(config.model)
    metadata = prune_loaded(loaded, config)
    return save_pruned(loaded.model, loaded.tokenizer, config.out, metadata, overwrite=config.overwrite)

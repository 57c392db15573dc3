"""Replace MLP projections by smaller (kept neurons only) or padded (zero neurons appended) ones.

After either operation `model.config.ffnprune` records the per-layer widths and where the projections live, which
is what the saved model's self-contained modelling file needs to rebuild it. One-shot pruning compacts layer by
layer as calibration reaches them (`compact_layer`, then `finish_compaction`); its reconstruction hands new output
columns and a bias, which architectures without an MLP output bias (the LLaMA family) gain.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ffnprune.adapters import MlpAdapter
from ffnprune.io.remote_modeling import pruned_causal_lm, resize_layer


def layer_spec(model: nn.Module, adapter: MlpAdapter, output_bias: bool = False) -> dict:
    """config.ffnprune without the widths (those are set by finish_compaction); keeps an earlier output bias."""
    earlier = getattr(model.config, "ffnprune", None) or {}
    return {**adapter.spec(adapter.mlp_widths(model)), "base_class": base_class(model).__name__,
            "model_type": model.config.model_type,
            "output_bias": bool(output_bias or earlier.get("output_bias"))}


def _resize_and_fill(layer: nn.Module, adapter: MlpAdapter, spec: dict, width: int, fill) -> None:
    """Give the layer projections of `width` neurons, then fill(old_rows, new_rows) copies neuron rows over."""
    old_inputs, old_output = adapter.input_projections(layer), adapter.output_projection(layer)
    resize_layer(layer, spec, width)
    with torch.no_grad():
        for old_input, new_input in zip(old_inputs, adapter.input_projections(layer)):
            pairs = [(adapter.input_rows(old_input), adapter.input_rows(new_input))]
            if old_input.bias is not None:
                pairs.append((old_input.bias, new_input.bias))
            for old_rows, new_rows in pairs:
                for old_block, new_block in zip(adapter.neuron_blocks(old_rows), adapter.neuron_blocks(new_rows)):
                    fill(old_block, new_block)
        new_output = adapter.output_projection(layer)
        fill(adapter.output_columns(old_output), adapter.output_columns(new_output))
        if new_output.bias is not None:
            new_output.bias.copy_(old_output.bias if old_output.bias is not None else 0.0)


def compact_layer(layer: nn.Module, adapter: MlpAdapter, spec: dict, kept: torch.Tensor,
                  output_columns: torch.Tensor | None = None, output_bias: torch.Tensor | None = None) -> None:
    """Slice one layer's MLP to its kept neuron indices; `output_columns` ([kept, hidden]) and `output_bias`
    ([hidden]) replace the kept output columns and the output bias (reconstruction)."""
    kept = torch.as_tensor(kept, dtype=torch.long, device=adapter.output_projection(layer).weight.device)
    _resize_and_fill(layer, adapter, spec, len(kept), lambda old, new: new.copy_(old[kept]))
    output = adapter.output_projection(layer)
    with torch.no_grad():
        if output_columns is not None:
            adapter.output_columns(output).copy_(output_columns)
        if output_bias is not None:
            output.bias.copy_(output_bias)


def finish_compaction(model: nn.Module, adapter: MlpAdapter, spec: dict) -> None:
    """Record the layers' widths in config.ffnprune and make the model what load_pruned returns. Being custom code,
    it saves and loads its weights under its module names, without transformers' key conversions: the conversions
    remembered from loading the dense checkpoint (GPT-NeoX's lm_head -> embed_out on save) are forgotten, or the
    saved checkpoint would not match what loads it."""
    base = base_class(model)
    model.config.ffnprune = {**spec, "mlp_widths": adapter.mlp_widths(model)}
    model.__class__ = pruned_causal_lm(base)
    model.__dict__.pop("_weight_conversions", None)


def base_class(model: nn.Module) -> type:
    """The transformers class a (possibly already pruned) model derives from, e.g. LlamaForCausalLM."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith("transformers.models."):
            return cls
    raise ValueError(f"{type(model).__name__} does not derive from a transformers model class")


def compact_mlps(model: nn.Module, adapter: MlpAdapter, kept: Sequence[torch.Tensor]) -> None:
    """Slice every layer's MLP to its kept neuron indices (any count from 0 to all)."""
    spec = layer_spec(model, adapter)
    for layer, indices in zip(adapter.decoder_layers(model), kept):
        compact_layer(layer, adapter, spec, indices)
    finish_compaction(model, adapter, spec)


def pad_mlps(model: nn.Module, adapter: MlpAdapter, width: int) -> None:
    """Pad every layer's MLP with zero neurons (zero rows, biases and columns: they contribute 0) to `width`."""
    widths = adapter.mlp_widths(model)
    if width < max(widths):
        raise ValueError(f"cannot pad to width {width}: a layer already has {max(widths)} neurons")
    spec = layer_spec(model, adapter)

    def fill(old_rows, new_rows):
        new_rows.zero_()
        new_rows[: old_rows.shape[0]].copy_(old_rows)

    for layer in adapter.decoder_layers(model):
        _resize_and_fill(layer, adapter, spec, width, fill)
    finish_compaction(model, adapter, spec)

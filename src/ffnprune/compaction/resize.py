"""Replace MLP projections by smaller (kept neurons only) or padded (zero neurons appended) ones.

After either operation `model.config.ffnprune` records the per-layer widths and where the projections live, which
is what the saved model's self-contained modelling file needs to rebuild it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ffnprune.adapters import MlpAdapter
from ffnprune.io.remote_modeling import pruned_causal_lm, resize_mlps


def _rebuild(model: nn.Module, adapter: MlpAdapter, widths: Sequence[int], fill) -> None:
    """Give every layer projections of width widths[l] (as the saved model's modelling code does on load), then
    fill(l, old_rows, new_rows) copies the neuron rows from the old projections."""
    layers = adapter.decoder_layers(model)
    old = [(adapter.input_projections(layer), adapter.output_projection(layer)) for layer in layers]
    base = base_class(model)
    spec = {**adapter.spec(list(widths)), "base_class": base.__name__}
    resize_mlps(model, spec)
    with torch.no_grad():
        for index, (layer, (old_inputs, old_output)) in enumerate(zip(layers, old)):
            for old_input, new_input in zip(old_inputs, adapter.input_projections(layer)):
                fill(index, adapter.input_rows(old_input), adapter.input_rows(new_input))
                if old_input.bias is not None:
                    fill(index, old_input.bias, new_input.bias)
            new_output = adapter.output_projection(layer)
            fill(index, adapter.output_columns(old_output), adapter.output_columns(new_output))
            if old_output.bias is not None:
                new_output.bias.copy_(old_output.bias)
    model.config.ffnprune = spec
    # From here on the model is what load_pruned returns. Being custom code, it saves and loads its weights under
    # its module names, without the key conversions transformers applies to its own classes.
    model.__class__ = pruned_causal_lm(base)


def base_class(model: nn.Module) -> type:
    """The transformers class a (possibly already pruned) model derives from, e.g. LlamaForCausalLM."""
    for cls in type(model).__mro__:
        if cls.__module__.startswith("transformers.models."):
            return cls
    raise ValueError(f"{type(model).__name__} does not derive from a transformers model class")


def compact_mlps(model: nn.Module, adapter: MlpAdapter, kept: Sequence[torch.Tensor]) -> None:
    """Slice every layer's MLP to its kept neuron indices (any count from 0 to all)."""
    kept = [torch.as_tensor(k, dtype=torch.long) for k in kept]

    def fill(index, old_rows, new_rows):
        new_rows.copy_(old_rows[kept[index]])

    _rebuild(model, adapter, [len(k) for k in kept], fill)


def pad_mlps(model: nn.Module, adapter: MlpAdapter, width: int) -> None:
    """Pad every layer's MLP with zero neurons (zero rows, biases and columns: they contribute 0) to `width`."""
    widths = adapter.mlp_widths(model)
    if width < max(widths):
        raise ValueError(f"cannot pad to width {width}: a layer already has {max(widths)} neurons")

    def fill(index, old_rows, new_rows):
        new_rows.zero_()
        new_rows[: widths[index]].copy_(old_rows)

    _rebuild(model, adapter, [width] * len(widths), fill)

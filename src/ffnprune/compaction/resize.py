"""Replace MLP projections by smaller (kept neurons only) or padded (zero neurons appended) ones.

After either operation `model.config.ffnprune` records the per-layer widths and where the projections live, which
is what the saved model's self-contained modelling file needs to rebuild it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ffnprune.adapters import MlpAdapter
from ffnprune.io.remote_modeling import new_projection, projection_features, pruned_causal_lm


def _rebuild(model: nn.Module, adapter: MlpAdapter, widths: Sequence[int], fill) -> None:
    """For every layer, new projections of width widths[l]; fill(l, old_rows, new_rows) copies neuron slices."""
    layers = adapter.decoder_layers(model)
    if len(widths) != len(layers):
        raise ValueError(f"{len(widths)} widths given for {len(layers)} layers")
    with torch.no_grad():
        for index, (layer, width) in enumerate(zip(layers, widths)):
            for path in adapter.inputs:
                old = layer.get_submodule(path)
                hidden, _ = projection_features(adapter.layout, old)
                new = new_projection(adapter.layout, hidden, width, like=old)
                fill(index, adapter.input_rows(old), adapter.input_rows(new))
                if old.bias is not None:
                    fill(index, old.bias, new.bias)
                layer.set_submodule(path, new)
            old = layer.get_submodule(adapter.output)
            _, hidden = projection_features(adapter.layout, old)
            new = new_projection(adapter.layout, width, hidden, like=old)
            fill(index, adapter.output_columns(old), adapter.output_columns(new))
            if old.bias is not None:
                new.bias.copy_(old.bias)
            layer.set_submodule(adapter.output, new)
    base = base_class(model)
    model.config.ffnprune = {**adapter.spec(list(widths)), "base_class": base.__name__}
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

"""Neuron masks applied with forward hooks, so any supported model runs "as if pruned" without being edited.

Following METHOD section 2, a mask m scales each input projection's rows (with their bias) and the output
projection's columns: z' = m * (W1 x) + m * b1 and the output projection sees m * h. A masked neuron therefore
contributes exactly 0. When m carries a gradient (learned scores through a straight-through estimator), the bias is
masked with m detached, so dL/dm is exactly the neuron-level movement sum_j W1[i,j] dL/dW1'[i,j] + sum_k W2[k,i]
dL/dW2'[k,i] (gated MLPs: plus the W_up rows' term).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ffnprune.adapters import MlpAdapter


def _mask_projection_output(output: torch.Tensor, projection: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(output.dtype)
    bias = projection.bias
    if bias is None or not mask.requires_grad:
        return output * mask
    return (output - bias) * mask + bias * mask.detach()


class NeuronMasks:
    """Multiply every MLP neuron by its layer's mask while attached.

    `masks[l]` is a tensor of shape [N_l] (0/1, or straight-through values in training). The list may be replaced
    between forward passes (`neuron_masks.masks = ...`); use as a context manager or call attach/detach.
    """

    def __init__(self, model: nn.Module, adapter: MlpAdapter, masks: Sequence[torch.Tensor]):
        self.model = model
        self.adapter = adapter
        self.masks = list(masks)
        widths = adapter.mlp_widths(model)
        if [int(m.numel()) for m in self.masks] != widths:
            raise ValueError(f"mask sizes {[int(m.numel()) for m in self.masks]} do not match MLP widths {widths}")
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self) -> NeuronMasks:
        if self._handles:
            return self
        for index, layer in enumerate(self.adapter.decoder_layers(self.model)):
            for projection in self.adapter.input_projections(layer):
                self._handles.append(projection.register_forward_hook(self._input_hook(index)))
            output = self.adapter.output_projection(layer)
            self._handles.append(output.register_forward_pre_hook(self._output_pre_hook(index)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> NeuronMasks:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def _input_hook(self, index: int):
        def hook(module, args, output):
            return _mask_projection_output(output, module, self.masks[index])

        return hook

    def _output_pre_hook(self, index: int):
        def hook(module, args):
            return (args[0] * self.masks[index].to(args[0].dtype), *args[1:])

        return hook


def masks_from_kept(widths: Sequence[int], kept: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """0/1 masks from kept neuron indices."""
    masks = []
    for width, indices in zip(widths, kept):
        mask = torch.zeros(width)
        mask[indices] = 1.0
        masks.append(mask)
    return masks

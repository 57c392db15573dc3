"""Neuron masks applied to the MLP projections' weights, so any supported model runs "as if pruned" unedited.

Following METHOD section 2, a mask m scales each input projection's rows (with their bias) and the output
projection's columns: z' = (m * W1) x + m * b1 and W2' = W2 * m. A masked neuron therefore contributes exactly 0.
The mask multiplies the weights, not the activations: the same values and gradients, but autograd keeps a copy of
the MLP weights for backward instead of three activation tensors of every token (2.2 GB at 16 x 512 tokens on
SmolLM2-135M). When m carries a gradient (learned scores through a straight-through estimator), the bias is masked
with m detached, so dL/dm is exactly the neuron-level movement sum_j W1[i,j] dL/dW1'[i,j] + sum_k W2[k,i]
dL/dW2'[k,i] (gated MLPs: plus the W_up rows' term).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from ffnprune.adapters import MlpAdapter


def _project(module: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The projection's own arithmetic with substituted parameters (Linear: x W^T + b; Conv1D: x W + b)."""
    if isinstance(module, Conv1D):
        flat = x.reshape(-1, x.shape[-1]) @ weight
        out = flat if bias is None else flat + bias
        return out.view(*x.shape[:-1], weight.shape[1])
    return F.linear(x, weight, bias)


class NeuronMasks:
    """Multiply every MLP neuron by its layer's mask while attached.

    `masks[l]` is a tensor of shape [N_l] (0/1, or straight-through values in training). The list may be replaced
    between forward passes (`neuron_masks.masks = ...`); use as a context manager or call attach/detach. While
    attached, each projection's `forward` is replaced by one that uses the masked weight; detach restores it.
    """

    def __init__(self, model: nn.Module, adapter: MlpAdapter, masks: Sequence[torch.Tensor]):
        self.model = model
        self.adapter = adapter
        self.masks = list(masks)
        widths = adapter.mlp_widths(model)
        if [int(m.numel()) for m in self.masks] != widths:
            raise ValueError(f"mask sizes {[int(m.numel()) for m in self.masks]} do not match MLP widths {widths}")
        self._patched: list[nn.Module] = []

    def attach(self) -> NeuronMasks:
        if self._patched:
            return self
        for index, layer in enumerate(self.adapter.decoder_layers(self.model)):
            for projection in self.adapter.input_projections(layer):
                self._patch(projection, index, rows=True)
            self._patch(self.adapter.output_projection(layer), index, rows=False)
        return self

    def detach(self) -> None:
        for projection in self._patched:
            del projection.forward  # the class's forward shows through again
        self._patched.clear()

    def __enter__(self) -> NeuronMasks:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def _patch(self, projection: nn.Module, index: int, rows: bool) -> None:
        if not isinstance(projection, (nn.Linear, Conv1D)) or "forward" in vars(projection):
            raise TypeError(f"cannot mask {type(projection).__name__}: neuron masks need a plain nn.Linear or "
                            "Conv1D projection whose forward is not already replaced (e.g. by a device map)")
        # Neurons are weight rows of a Linear input projection and columns of a Linear output projection;
        # Conv1D stores the transpose.
        neuron_axis = 0 if rows == isinstance(projection, nn.Linear) else 1

        blocks = self.adapter.fused if rows else 1  # a fused input projection repeats the mask per block

        def forward(x: torch.Tensor) -> torch.Tensor:
            mask = self.masks[index].to(projection.weight.dtype).repeat(blocks)
            weight = projection.weight * (mask[:, None] if neuron_axis == 0 else mask[None, :])
            bias = projection.bias
            if rows and bias is not None:
                bias = bias * (mask.detach() if mask.requires_grad else mask)
            return _project(projection, x, weight, bias)

        projection.forward = forward
        self._patched.append(projection)


def masks_from_kept(widths: Sequence[int], kept: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """0/1 masks from kept neuron indices."""
    masks = []
    for width, indices in zip(widths, kept):
        mask = torch.zeros(width)
        mask[indices] = 1.0
        masks.append(mask)
    return masks

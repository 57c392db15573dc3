"""Neuron scores and straight-through masks (METHOD section 2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class NeuronScores(nn.Module):
    """One score vector per layer: trainable parameters starting at 0 (learned methods), or fixed buffers."""

    def __init__(self, widths: Sequence[int], learned: bool, initial: Sequence[torch.Tensor] | None = None):
        super().__init__()
        self.learned = learned
        values = [torch.zeros(w) for w in widths] if initial is None else [t.detach().float().clone() for t in initial]
        if learned:
            self.values = nn.ParameterList([nn.Parameter(v) for v in values])
        else:
            for index, value in enumerate(values):
                self.register_buffer(f"fixed_{index}", value)

    def layers(self) -> list[torch.Tensor]:
        if self.learned:
            return list(self.values)
        return [getattr(self, f"fixed_{i}") for i in range(len(self._buffers))]

    def set_fixed(self, values: Sequence[torch.Tensor]) -> None:
        for index, value in enumerate(values):
            getattr(self, f"fixed_{index}").copy_(value)


def straight_through(kept: Sequence[torch.Tensor], scores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """0/1 masks of the kept indices whose gradient flows unchanged to the scores (Bin with a straight-through
    estimator): the forward value is exactly the hard mask, and dL/ds = dL/dm."""
    masks = []
    for indices, layer_scores in zip(kept, scores):
        hard = torch.zeros_like(layer_scores, dtype=torch.float32)
        hard[indices] = 1.0
        if layer_scores.requires_grad:
            hard = hard + (layer_scores - layer_scores.detach())
        masks.append(hard)
    return masks

"""Magnitude pruning: the L2 norms of each neuron's weights (W1 rows, W2 columns; gated: gate and up rows too).

The authors keep the top-v neurons of each weight matrix and intersect the sets, which keeps fewer than v * N. We
rank each neuron by its worst rank across the matrices: the top int(v * N) by that rank are exactly the
intersection, filled up to int(v * N) with the neurons that come next, so every keep fraction is met exactly.
`magnitude-sum` ranks by the sum of the norms instead.
"""

from __future__ import annotations

import torch

from ffnprune.criteria import register_scores
from ffnprune.training.sharding import whole


def neuron_norms(layer, adapter) -> torch.Tensor:
    """[parts, N]: the L2 norm of each neuron's row in every input projection (each block of a fused one) and its
    output column."""
    with torch.no_grad():
        parts = [block for p in adapter.input_projections(layer)
                 for block in adapter.neuron_blocks(whole(adapter.input_rows(p)))]  # FSDP: gather the shards
        parts.append(whole(adapter.output_columns(adapter.output_projection(layer))))
        return torch.stack([part.float().norm(dim=1) for part in parts])


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Rank of each entry along the last dim, 0 for the largest."""
    order = values.argsort(dim=-1, descending=True, stable=True)
    return order.argsort(dim=-1, stable=True).float()


@register_scores("magnitude")
def magnitude_intersect_scores(model, adapter, generator=None) -> list[torch.Tensor]:
    scores = []
    for layer in adapter.decoder_layers(model):
        ranks = _ranks(neuron_norms(layer, adapter))
        parts, width = ranks.shape
        # Worst rank decides; the sum of ranks (scaled below 1) only breaks ties.
        scores.append(-(ranks.max(dim=0).values + ranks.sum(dim=0) / (parts * width + 1)))
    return scores


@register_scores("magnitude-sum")
def magnitude_sum_scores(model, adapter, generator=None) -> list[torch.Tensor]:
    return [neuron_norms(layer, adapter).sum(dim=0) for layer in adapter.decoder_layers(model)]

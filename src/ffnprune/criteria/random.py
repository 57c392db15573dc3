"""Random pruning: scores drawn once from U(-1, 1) (METHOD section 4), reproducible from the seed."""

from __future__ import annotations

import torch

from ffnprune.criteria import register_scores


@register_scores("random")
def random_scores(model, adapter, generator: torch.Generator) -> list[torch.Tensor]:
    return [torch.rand(width, generator=generator) * 2 - 1 for width in adapter.mlp_widths(model)]

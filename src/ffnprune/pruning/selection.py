"""Selection operators: which neurons a score vector keeps."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ffnprune.errors import FfnpruneError


def check_keep(keep: float) -> float:
    if not isinstance(keep, (int, float)) or isinstance(keep, bool) or not 0.0 < keep <= 1.0 or math.isnan(keep):
        raise FfnpruneError(
            f"keep fraction {keep!r} is out of range: it is the share of MLP neurons kept, a number in (0, 1], "
            "for example --keep 0.5"
        )
    return float(keep)


def check_round_to(multiple: int) -> int:
    if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
        raise FfnpruneError(f"--round-to {multiple!r} must be a whole number >= 1 (1: no rounding; 8, 64, 128)")
    return multiple


def kept_count(keep: float, width: int) -> int:
    """int(v * N), guarded against float error (0.29 * 100 is 28.999...)."""
    return min(width, math.floor(keep * width + 1e-9))


def top_indices(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The indices (ascending) of the `count` highest scores."""
    return torch.sort(torch.topk(scores.detach().float(), count, sorted=False).indices).values


def local_top_v(scores: Sequence[torch.Tensor], keep: float) -> list[torch.Tensor]:
    """Per layer, the indices (ascending) of the int(v * N_l) highest scores."""
    return [top_indices(layer_scores, kept_count(keep, layer_scores.numel())) for layer_scores in scores]


def global_top_v(scores: Sequence[torch.Tensor], keep: float) -> list[torch.Tensor]:
    """Rank every layer's scores together and keep the floor(v * sum N_l) highest: layers end with different widths,
    possibly 0 (no per-layer minimum)."""
    flat = torch.cat([s.detach().float().reshape(-1) for s in scores])
    count = kept_count(keep, flat.numel())
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    chosen[torch.topk(flat, count, sorted=False).indices] = True
    return [indices.nonzero().flatten() for indices in chosen.split([s.numel() for s in scores])]


def threshold_selection(scores: Sequence[torch.Tensor], threshold: float, final_keep: float) -> list[torch.Tensor]:
    """Soft movement: keep neuron i where sigmoid(s_i) > threshold, but never fewer than int(v_f * N_l) + 1 of a
    layer (the authors' minimum: the highest scores then). Without it the L1 pull drags every score down together
    and whole layers cross the threshold at once, whatever the requested keep fraction."""
    kept = []
    for layer_scores in scores:
        passing = (torch.sigmoid(layer_scores.detach().float()) > threshold).nonzero().flatten()
        minimum = min(layer_scores.numel(), kept_count(final_keep, layer_scores.numel()) + 1)
        kept.append(passing if len(passing) >= minimum else top_indices(layer_scores, minimum))
    return kept


def rounded_count(count: int, width: int, multiple: int) -> int:
    """`count` rounded to the nearest non-zero multiple of `multiple`, at most `width` (a full layer stays full, an
    empty one empty: rounding never removes a layer's MLP)."""
    if count in (0, width):
        return count
    return min(width, multiple * max(1, round(count / multiple)))


def round_widths(kept: Sequence[torch.Tensor], scores: Sequence[torch.Tensor], multiple: int) -> list[torch.Tensor]:
    """Each layer's kept count rounded to the nearest multiple of `multiple` (a full layer stays full), for
    hardware-friendly shapes: the lowest-scored kept neurons go first, the highest-scored pruned ones come back."""
    if check_round_to(multiple) == 1:
        return list(kept)
    rounded = []
    for indices, layer_scores in zip(kept, scores):
        width = layer_scores.numel()
        target = rounded_count(len(indices), width, multiple)
        chosen = torch.zeros(width, dtype=torch.bool, device=layer_scores.device)
        chosen[indices] = True
        by_score = torch.argsort(layer_scores.detach().float(), descending=True)
        ranked = torch.cat([by_score[chosen[by_score]], by_score[~chosen[by_score]]])
        rounded.append(torch.sort(ranked[:target]).values)
    return rounded

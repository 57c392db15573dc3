"""The score penalty of soft movement and GUM, and GUM's running cosine statistics (METHOD section 5).

    R = (1 / 3L) sum_l (1 / N_l) sum_i sigmoid(s_i) c_i,   loss += lambda_t R
    lambda_t = lambda v_t / v_f (Top_v methods), lambda tau_t / tau_f (soft movement: 0 while dense)
The 3L is the authors' normalisation (their code averages over a score module and two masked matrices per layer):
with it lambda = 2 means what it meant in the paper.
    c_i = 1 (soft movement), 1 + mu u_i (GUM), max(mu u) - mu u + 1 (anti-GUM),
    u_i = sum_j |C_ij| / (N_l v_t), C the cosine similarity of neurons' activation vectors (running statistics).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def penalty_weights(kind: str, mu: float | None, u: torch.Tensor | None, width: int, device) -> torch.Tensor:
    """c_i for one layer: 1 for soft movement (and for GUM before any statistics exist)."""
    if kind == "l1" or u is None:
        return torch.ones(width, device=device)
    scaled = mu * u.to(device)
    if kind == "gum":
        return 1.0 + scaled
    if kind == "anti-gum":
        return scaled.max() - scaled + 1.0
    raise ValueError(f"unknown penalty {kind!r}")


def score_penalty(scores: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """R = (1 / 3L) sum_l mean_i sigmoid(s_i) c_i (a layer with no neuron adds 0)."""
    terms = [(torch.sigmoid(s) * c).mean() for s, c in zip(scores, weights) if s.numel() > 0]
    return torch.stack(terms).sum() / (3 * len(scores))

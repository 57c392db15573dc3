"""Reconstruction after one-shot selection (METHOD section 10): the kept neurons' output columns and a bias are set
so that the layer's MLP output on the calibration tokens stays as close as possible to what it was.

- none: the kept columns as they are.
- bias (FLAP): b' = b + W[:, P] mean(X_P), the pruned neurons' mean contribution.
- lstsq: [W'_K | b'] = [W | b] G[:, K+] (G[K+, K+] + damping)^-1, G the Gram of [X, 1] and K+ the kept neurons
  with the intercept: the ridge least-squares refit of the dense layer's output.
With --calibration-target dense, lstsq's target is the dense model's output of the layer rather than the layer's own
output on the (already drifted) inputs: the refit also corrects what the pruned layers before it changed. Every mode
reports the relative output error against the layer's own output, ||Y - Y'||^2 / ||Y||^2, computed from G.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ffnprune.calibration.sequential import LayerStatistics
from ffnprune.criteria.calibrated import damped, neuron_damping, target_cross

RECONSTRUCTIONS = ("none", "bias", "lstsq")


@dataclass
class Reconstruction:
    weight: torch.Tensor  # [hidden, kept]
    bias: torch.Tensor | None  # [hidden]
    relative_error: float  # of the reconstructed layer
    relative_error_sliced: float  # of the kept columns alone (what "none" gives)


def _relative_error(stats: LayerStatistics, dense: torch.Tensor, pruned: torch.Tensor, total: float) -> float:
    """||[W|b] Z^T - [W'|b'] Z^T||^2 / ||[W|b] Z^T||^2 for Z = [X, 1], from G = Z^T Z (`total` the denominator)."""
    difference = dense - pruned
    return float((stats.times_augmented(difference) * difference).sum()) / total if total > 0 else 0.0


def reconstruct(stats: LayerStatistics, weight: torch.Tensor, bias: torch.Tensor | None, kept: torch.Tensor,
                mode: str, damp: float) -> Reconstruction:
    """New output columns (and bias, None where the layer has none and `mode` adds none) for the kept neurons."""
    width = stats.width
    dense = torch.cat([weight, (bias if bias is not None else weight.new_zeros(weight.shape[0]))[:, None]], dim=1)
    own_cross = stats.times_augmented(dense)  # [W | b] G: the refit's target without drift, and the errors' scale
    total = float((own_cross * dense).sum())
    sliced = torch.zeros_like(dense)
    sliced[:, kept] = dense[:, kept]
    sliced[:, width] = dense[:, width]
    if mode == "none":
        new_weight, new_bias = dense[:, kept], bias
    elif mode == "bias":
        pruned = torch.ones(width, dtype=torch.bool, device=weight.device)
        pruned[kept] = False
        new_weight = dense[:, kept]
        new_bias = dense[:, width] + dense[:, :width][:, pruned] @ stats.mean[pruned]
    elif mode == "lstsq":
        columns = torch.cat([kept.to(weight.device), torch.tensor([width], device=weight.device)])
        system = damped(stats.kept_block(kept.to(weight.device)), neuron_damping(stats.gram.diagonal(), damp))
        target = target_cross(stats, own_cross)[:, columns]  # [hidden, kept + 1]
        factor, info = torch.linalg.cholesky_ex(system)
        solution = (torch.cholesky_solve(target.T, factor) if int(info) == 0
                    else torch.linalg.lstsq(system, target.T).solution).T
        new_weight, new_bias = solution[:, :-1], solution[:, -1]
    else:
        raise ValueError(f"unknown reconstruction {mode!r}; known: {', '.join(RECONSTRUCTIONS)}")
    result = torch.zeros_like(dense)
    result[:, kept] = new_weight
    result[:, width] = new_bias if new_bias is not None else 0.0
    return Reconstruction(new_weight, new_bias, _relative_error(stats, dense, result, total),
                          _relative_error(stats, dense, sliced, total))

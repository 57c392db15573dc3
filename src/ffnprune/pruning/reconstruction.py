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


ROWS_AT_ONCE = 256  # rows of [W | b] multiplied by G at once: no [hidden, N] temporaries beside the layer's own


def _relative_error(stats: LayerStatistics, difference: torch.Tensor, total: float) -> float:
    """||D Z^T||^2 / ||[W|b] Z^T||^2 for D = [W|b] - [W'|b'] and Z = [X, 1], from G = Z^T Z (`total` the
    denominator)."""
    squared = sum(float(torch.dot(stats.times_augmented(rows).flatten(), rows.flatten()))
                  for rows in difference.split(ROWS_AT_ONCE))
    return squared / total if total > 0 else 0.0


def reconstruct(stats: LayerStatistics, weight: torch.Tensor, bias: torch.Tensor | None, kept: torch.Tensor,
                mode: str, damp: float) -> Reconstruction:
    """New output columns (and bias, None where the layer has none and `mode` adds none) for the kept neurons."""
    width = stats.width
    dense = torch.cat([weight, (bias if bias is not None else weight.new_zeros(weight.shape[0]))[:, None]], dim=1)
    # [W | b] G: the refit's target without drift, and the errors' scale
    own_cross = torch.cat([stats.times_augmented(rows) for rows in dense.split(ROWS_AT_ONCE)])
    total = float(torch.dot(own_cross.flatten(), dense.flatten()))
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
        target = target_cross(stats, own_cross[:, columns], columns)  # [hidden, kept + 1]
        del own_cross
        factor, info = torch.linalg.cholesky_ex(system)
        solution = (torch.cholesky_solve(target.T, factor) if int(info) == 0
                    else torch.linalg.lstsq(system, target.T).solution).T
        del factor, system, target
        new_weight, new_bias = solution[:, :-1], solution[:, -1]
    else:
        raise ValueError(f"unknown reconstruction {mode!r}; known: {', '.join(RECONSTRUCTIONS)}")
    # The two errors from one buffer, in turn: D = [W|b] - [W'|b'] (the result), then the pruned columns alone
    # (what "none" gives)
    difference = dense.clone()
    difference[:, kept] -= new_weight
    difference[:, width] -= new_bias if new_bias is not None else 0.0
    relative_error = _relative_error(stats, difference, total)
    difference.copy_(dense)
    difference[:, kept] = 0.0
    difference[:, width] = 0.0
    return Reconstruction(new_weight, new_bias, relative_error, _relative_error(stats, difference, total))

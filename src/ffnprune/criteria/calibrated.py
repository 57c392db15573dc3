"""Calibrated criteria (METHOD section 10): neurons scored from the statistics of the output projection's input X
(tokens x N) on calibration data, and the projection W as [hidden, neurons] (float64). Higher score = keep.

- activation (Minitron): sqrt(sum over sequences of (mean over the sequence of |h_j|)^2)
- wanda-sp: ||X[:, j]|| * mean_i |W[i, j]|
- flap (WIFV): Var(X[:, j]) * ||W[:, j]||^2
- obs (structured OBS, ZipLM / SlimGPT): ||W[:, j]||^2 / [H^-1]_jj with H the damped Gram of [X, 1]: the output
  error of removing j and letting the others (and a bias) absorb it. 1 / [H^-1]_jj is what of j's activation the
  other neurons cannot linearly reproduce (the paper's uniqueness, in closed form), ||W[:, j]||^2 its reach (its
  sensitivity). Selection is greedy: remove the cheapest, update W and H^-1 by the rank-one formulas, repeat.
"""

from __future__ import annotations

import torch

from ffnprune.calibration.sequential import LayerStatistics
from ffnprune.criteria import CalibratedCriterion, register_calibrated


def damping(gram: torch.Tensor, damp: float) -> float:
    """damp * the mean diagonal of the neurons' part of an augmented Gram (damp itself where that is 0)."""
    return neuron_damping(gram.diagonal()[: gram.shape[0] - 1], damp)


def neuron_damping(diagonal: torch.Tensor, damp: float) -> float:
    """damp * the mean of the neurons' Gram diagonal (damp itself where that is 0 or there are no neurons)."""
    mean_diagonal = float(diagonal.mean()) if diagonal.numel() else 0.0
    return damp * mean_diagonal if mean_diagonal > 0 else damp


def damped(gram: torch.Tensor, amount: float) -> torch.Tensor:
    """The augmented Gram plus `amount` on the neurons' diagonal. The intercept (last) is not damped: its entry is
    the token count, and damping it would shrink the bias."""
    result = gram.clone()
    result.diagonal()[: gram.shape[0] - 1] += amount
    return result


def inverse(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of a symmetric positive-definite matrix (Cholesky), or the pseudo-inverse where it is singular."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    return torch.cholesky_inverse(factor) if int(info) == 0 else torch.linalg.pinv(matrix, hermitian=True)


def _augmented_weight(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    column = bias if bias is not None else weight.new_zeros(weight.shape[0])
    return torch.cat([weight, column[:, None]], dim=1)


def target_cross(stats: LayerStatistics, own_cross: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
    """Y^T Z for the refit's target Y and Z = [X, 1] ([hidden, N + 1]), from the layer's own output's [W | b] G:
    plus, where the calibration carried the dense model along, the drift towards the dense model's output. With
    `columns`, `own_cross` holds only those columns of [W | b] G, and so does the result."""
    if stats.drift is None:
        return own_cross
    drift = stats.drift if columns is None else stats.drift[columns]
    return own_cross + drift.T.to(own_cross)


def activation_scores(stats: LayerStatistics, weight: torch.Tensor, bias, damp: float) -> torch.Tensor:
    return stats.sequence_means.sqrt()


def wanda_sp_scores(stats: LayerStatistics, weight: torch.Tensor, bias, damp: float) -> torch.Tensor:
    return stats.gram.diagonal().clamp_min(0).sqrt() * weight.abs().mean(dim=0)


def flap_scores(stats: LayerStatistics, weight: torch.Tensor, bias, damp: float) -> torch.Tensor:
    return stats.variance * weight.square().sum(dim=0)


def obs_scores(stats: LayerStatistics, weight: torch.Tensor, bias, damp: float) -> torch.Tensor:
    """The cost of removing each neuron alone (the first greedy step)."""
    inverse_hessian = inverse(damped(gram := stats.augmented(), damping(gram, damp)))
    return weight.square().sum(dim=0) / inverse_hessian.diagonal()[: stats.width]


def obs_select(stats: LayerStatistics, weight: torch.Tensor, bias, count: int, damp: float) -> torch.Tensor:
    """Greedy structured OBS down to `count` neurons; returns the kept indices (ascending). The inverse is taken in
    float64 and the greedy updates run in float32 (only the choice of neurons comes from them; the weights are
    refit afterwards). The matrices shrink to the surviving neurons every eighth of the way, so the later (smaller)
    updates cost less."""
    inverse_hessian = inverse(damped(gram := stats.augmented(), damping(gram, damp)))
    # The unconstrained optimum of the (damped) refit, from which every removal is priced: [W | b] itself unless the
    # target carries the dense model's drift.
    columns = _augmented_weight(weight, bias)  # [hidden, N + 1], the intercept last
    if stats.drift is not None:
        columns = target_cross(stats, columns @ gram) @ inverse_hessian
    columns = columns.float()
    inverse_hessian = inverse_hessian.float()
    alive = torch.arange(stats.width, device=weight.device)
    to_remove = stats.width - count
    while to_remove > 0:
        width = len(alive)
        removed = torch.zeros(width, dtype=torch.bool, device=weight.device)
        for _ in range(min(to_remove, max(1, width // 8))):
            cost = columns[:, :width].square().sum(dim=0).div_(inverse_hessian.diagonal()[:width])
            j = int(cost.masked_fill_(removed, torch.inf).argmin())
            row = inverse_hessian[j] / inverse_hessian[j, j]
            columns.addr_(columns[:, j].clone(), row, alpha=-1)
            inverse_hessian.addr_(inverse_hessian[:, j].clone(), row, alpha=-1)
            removed[j] = True
            to_remove -= 1
        survivors = torch.cat([(~removed).nonzero().flatten(), torch.tensor([width], device=weight.device)])
        inverse_hessian = inverse_hessian[survivors][:, survivors]
        columns = columns[:, survivors]
        alive = alive[~removed]
    return alive


register_calibrated("activation", CalibratedCriterion(activation_scores, needs_sequence_means=True))
register_calibrated("wanda-sp", CalibratedCriterion(wanda_sp_scores))
register_calibrated("flap", CalibratedCriterion(flap_scores))
register_calibrated("obs", CalibratedCriterion(obs_scores, obs_select))

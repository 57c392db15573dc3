"""The score penalty of soft movement and GUM, and GUM's running cosine statistics (METHOD section 5).

    R = (1 / L) sum_l (1 / N_l) sum_i sigmoid(s_i) c_i,   loss += lambda_t R,   lambda_t = lambda v_t / v_f
    c_i = 1 (soft movement), 1 + mu u_i (GUM), max(mu u) - mu u + 1 (anti-GUM),
    u_i = sum_j |C_ij| / (N_l v_t), C the cosine similarity of neurons' activation vectors (running statistics).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ffnprune.adapters import MlpAdapter


class CosineStatistics:
    """Running G <- (1 - beta) G + beta H^T H of every layer's post-activation outputs H (tokens x N, pad tokens
    excluded), captured at the output projection's input, i.e. after masking. Only training forwards (gradients
    enabled) are counted. diag(G) is the running n of METHOD section 5: both follow the same update."""

    def __init__(self, model: nn.Module, adapter: MlpAdapter, beta: float):
        self.beta = beta
        self.gram: list[torch.Tensor | None] = [None] * len(adapter.decoder_layers(model))
        self._pending: list[torch.Tensor | None] = [None] * len(self.gram)
        self.token_mask: torch.Tensor | None = None
        self._handles = [
            adapter.output_projection(layer).register_forward_pre_hook(self._capture(index))
            for index, layer in enumerate(adapter.decoder_layers(model))
        ]

    def _capture(self, index: int):
        def hook(module, args):
            if not torch.is_grad_enabled():
                return None
            with torch.no_grad():
                activations = args[0].reshape(-1, args[0].shape[-1]).float()
                if self.token_mask is not None:
                    activations = activations[self.token_mask.reshape(-1).to(activations.device).bool()]
                second_moment = activations.T @ activations
                pending = self._pending[index]
                self._pending[index] = second_moment if pending is None else pending + second_moment
            return None

        return hook

    def update(self, reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        """Fold the activations seen since the last update into the running statistics (after each backward).
        `reduce` averages across processes, so every process holds the same statistics."""
        for index, pending in enumerate(self._pending):
            if pending is None:
                continue
            pending = reduce(pending)
            gram = self.gram[index]
            self.gram[index] = self.beta * pending if gram is None else (1 - self.beta) * gram + self.beta * pending
            self._pending[index] = None

    def cosine(self, index: int) -> torch.Tensor:
        gram = self.gram[index]
        norms = torch.sqrt(torch.diagonal(gram).clamp_min(0))
        cosine = gram / (norms[:, None] * norms[None, :] + 1e-6)
        return cosine.fill_diagonal_(0.0)

    def uniqueness_penalty(self, keep_fraction: float) -> list[torch.Tensor | None]:
        """u per layer (None for a layer not yet seen)."""
        return [
            None if gram is None else self.cosine(index).abs().sum(dim=1) / (gram.shape[0] * keep_fraction)
            for index, gram in enumerate(self.gram)
        ]

    def state(self) -> dict[str, torch.Tensor]:
        return {f"gram.{i}": g for i, g in enumerate(self.gram) if g is not None}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for index in range(len(self.gram)):
            self.gram[index] = state.get(f"gram.{index}")

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()


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
    """R = (1 / L) sum_l mean_i sigmoid(s_i) c_i (a layer with no neuron adds 0)."""
    terms = [(torch.sigmoid(s) * c).mean() for s, c in zip(scores, weights) if s.numel() > 0]
    return torch.stack(terms).sum() / len(scores)

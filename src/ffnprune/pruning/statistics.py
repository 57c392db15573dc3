"""Statistics of MLP activations, captured by one hook at the output projection's input: GUM's running cosine
statistics, the redundancy analysis's plain sums, and the calibration of one-shot pruning (the Gram with an
intercept, in float64, and the per-sequence mean |h| that the activation criterion ranks by)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ffnprune.adapters import MlpAdapter
from ffnprune.errors import FfnpruneError


class ActivationStatistics:
    """Second moments G of every layer's post-activation outputs H (tokens x N, pad tokens excluded), captured at
    the output projection's input, i.e. after masking. With `training_only` (GUM, the analysis) only forwards with
    gradients enabled are counted; calibration counts every forward.

    With a rate `beta` (GUM, METHOD section 5) G is a running average, G <- (1 - beta) G + beta H^T H, and diag(G)
    is the running n. With beta None (the redundancy analysis, section 7) G, the column sums of H and the token
    count are plain sums over everything seen.

    Each pass is folded into G as it is captured, so no second N x N buffer per layer is held: under GUM the first
    pass of a step decays G by (1 - beta) and every pass of the step adds beta H^T H. Across processes `update`
    then averages G, which equals averaging the step's H^T H because every process enters the step with the same G.

    `max_tokens` bounds the cost of H^T H (tokens x N^2 per layer and forward): only that many of a pass's token
    positions, evenly strided, are counted (pads among them excluded); `active` False skips passes altogether.
    Both depend on nothing but the step, so a resumed run counts what the uninterrupted one did.

    Plain sums are folded into accumulators of `dtype` (calibration uses float64: each pass's H^T H is computed in
    float32, then added). `sequence_means` also sums, over sequences, the square of each neuron's mean |h| over the
    sequence's tokens (Minitron's activation criterion)."""

    FOLD_COLUMNS = 1024  # columns of a plain sum's H^T H computed at once

    def __init__(self, model: nn.Module, adapter: MlpAdapter, beta: float | None, max_tokens: int | None = None,
                 training_only: bool = True, dtype: torch.dtype = torch.float32, sequence_means: bool = False):
        self.beta = beta
        self.max_tokens = max_tokens
        self.training_only = training_only
        self.dtype = dtype
        self.active = True
        layers = len(adapter.decoder_layers(model))
        self.gram: list[torch.Tensor | None] = [None] * layers
        self.sums: list[torch.Tensor | None] = [None] * layers
        self.counts = [0] * layers
        self.sequence_means: list[torch.Tensor | None] | None = [None] * layers if sequence_means else None
        self._decayed = [False] * layers  # G already scaled by (1 - beta) in this step
        self._strided: dict[tuple[int, torch.device], torch.Tensor] = {}  # positions kept, per pass length
        self.token_mask: torch.Tensor | None = None
        self._handles = [
            adapter.output_projection(layer).register_forward_pre_hook(self._capture(index))
            for index, layer in enumerate(adapter.decoder_layers(model))
        ]

    def _capture(self, index: int):
        def hook(module, args):
            if (self.training_only and not torch.is_grad_enabled()) or not self.active:
                return None
            # Outside autocast: under fp16 a 2,048-token H^T H overflows at activation RMS ~5.7 (u becomes 0 or NaN).
            with torch.no_grad(), torch.autocast(args[0].device.type, enabled=False):
                if self.sequence_means is not None:
                    self._fold_sequence_means(index, args[0])
                activations = args[0].flatten(0, -2)  # [tokens, N]; N may be 0
                # Pad tokens are zeroed rather than dropped: boolean indexing would stop the GPU to count them.
                weights = None if self.token_mask is None else self.token_mask.reshape(-1).to(activations.device)
                if self.max_tokens and activations.shape[0] > self.max_tokens:
                    rows = self._strided_rows(activations.shape[0], activations.device)
                    activations = activations[rows]
                    weights = None if weights is None else weights[rows]
                activations = activations.float()
                if weights is None:
                    count = activations.shape[0]
                else:
                    activations = activations * weights.float()[:, None]
                    count = weights.sum()
                self._fold(index, activations, count)
            return None

        return hook

    def _strided_rows(self, length: int, device: torch.device) -> torch.Tensor:
        key = (length, device)
        if key not in self._strided:
            rows = torch.linspace(0, length - 1, self.max_tokens, device=device)
            self._strided[key] = rows.round().long()
        return self._strided[key]

    def _fold_sequence_means(self, index: int, activations: torch.Tensor) -> None:
        """sum over sequences of (mean over the sequence's real tokens of |h_j|)^2."""
        magnitudes = activations.float().abs().reshape(-1, activations.shape[-2], activations.shape[-1])
        if self.token_mask is None:
            means = magnitudes.mean(dim=1)
        else:
            mask = self.token_mask.reshape(magnitudes.shape[:2]).to(magnitudes)
            means = (magnitudes * mask[..., None]).sum(dim=1) / mask.sum(dim=1).clamp_min(1)[:, None]
        folded = means.square().sum(dim=0).to(self.dtype)
        previous = self.sequence_means[index]
        self.sequence_means[index] = folded if previous is None else previous.add_(folded)

    def _fold(self, index: int, activations: torch.Tensor, count) -> None:
        gram = self.gram[index]
        if self.beta is None:
            if gram is None:
                width = activations.shape[1]
                self.gram[index] = gram = torch.zeros(width, width, dtype=self.dtype, device=activations.device)
            # H^T H in float32, folded a block of columns at a time: no N x N float32 buffer beside the accumulator
            for start in range(0, gram.shape[1], self.FOLD_COLUMNS):
                block = activations[:, start:start + self.FOLD_COLUMNS]
                gram[:, start:start + block.shape[1]].add_(activations.T @ block)
            first = activations.sum(dim=0).to(self.dtype)
            self.sums[index] = first if self.sums[index] is None else self.sums[index].add_(first)
            self.counts[index] += int(count)
            return
        second = activations.T @ activations
        if gram is None:
            self.gram[index] = gram = torch.zeros(second.shape, dtype=torch.float32, device=second.device)
        elif not self._decayed[index]:
            gram.mul_(1 - self.beta)
        self._decayed[index] = True
        gram.add_(second, alpha=self.beta)

    def update(self, reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        """End the step (after each backward): GUM's G is averaged across processes by `reduce`, so every process
        holds the same statistics; the next pass starts a new step."""
        for index, decayed in enumerate(self._decayed):
            if decayed:
                self.gram[index] = reduce(self.gram[index])
                self._decayed[index] = False

    def check_finite(self, indices) -> None:
        """Refuse non-finite statistics of the given layers, with one device synchronisation for all of them."""
        indices = [index for index in indices if self.gram[index] is not None]
        if not indices:
            return
        finite = torch.stack([torch.isfinite(self.gram[index]).all() for index in indices]).cpu()
        if not finite.all():
            index = indices[int((~finite).nonzero()[0])]
            raise FfnpruneError(f"the activation statistics of layer {index} are not finite (the activations "
                                "overflowed or are NaN); train in bf16 or fp32 (--mixed-precision bf16 or no), or "
                                "lower the learning rate if the loss diverged")

    def cosine(self, index: int) -> torch.Tensor:
        self.check_finite([index])
        return self._cosine(index)

    def _cosine(self, index: int) -> torch.Tensor:
        gram = self.gram[index]
        norms = torch.sqrt(torch.diagonal(gram).clamp_min(0))
        cosine = gram / (norms[:, None] * norms[None, :] + 1e-6)
        return cosine.fill_diagonal_(0.0)

    def uniqueness_penalty(self, keep_fraction: float) -> list[torch.Tensor | None]:
        """u per layer (None for a layer not yet seen)."""
        self.check_finite(range(len(self.gram)))
        return [
            None if gram is None else self._cosine(index).abs().sum(dim=1) / (gram.shape[0] * keep_fraction)
            for index, gram in enumerate(self.gram)
        ]

    def release(self, index: int) -> None:
        """Forget a layer's statistics (calibration holds one layer's at a time)."""
        self.gram[index] = self.sums[index] = None
        self.counts[index] = 0
        if self.sequence_means is not None:
            self.sequence_means[index] = None

    def state(self) -> dict[str, torch.Tensor]:
        return {f"gram.{i}": g for i, g in enumerate(self.gram) if g is not None}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for index in range(len(self.gram)):
            self.gram[index] = state.get(f"gram.{index}")

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()

"""Calibration layer by layer (as SparseGPT's sequential loop and llm-compressor's sequential pipeline do).

The calibration batches are run up to the first decoder layer once; from there each layer in turn visits the
calibration device, sees the outputs of the layers before it (already pruned, when a visitor prunes them), has its
MLP activation statistics collected by the one capture hook ffnprune has (ActivationStatistics), is handed to a
visitor that may prune and reconstruct it, and then produces the next layer's inputs. Only one layer's weights and
statistics are on the device at a time, so the model itself may stay in CPU memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ffnprune.adapters import MlpAdapter
from ffnprune.errors import FfnpruneError
from ffnprune.pruning.statistics import ActivationStatistics


@dataclass
class LayerStatistics:
    """One layer's calibration statistics of X, the output projection's inputs (tokens x N, pads excluded)."""

    gram: torch.Tensor  # X^T X, float64 [N, N]
    sums: torch.Tensor  # column sums of X [N]
    count: int  # tokens
    sequence_means: torch.Tensor | None  # sum over sequences of (mean |h_j| over the sequence)^2 [N]

    @property
    def width(self) -> int:
        return self.gram.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.sums / max(self.count, 1)

    @property
    def variance(self) -> torch.Tensor:
        return (self.gram.diagonal() / max(self.count, 1) - self.mean.square()).clamp_min(0)

    def augmented(self) -> torch.Tensor:
        """[X, 1]^T [X, 1]: the Gram with an intercept, (N + 1) x (N + 1); the intercept is the last index."""
        width = self.width
        gram = self.gram.new_empty(width + 1, width + 1)
        gram[:width, :width] = self.gram
        gram[width, :width] = gram[:width, width] = self.sums
        gram[width, width] = self.count
        return gram


class _Captured(Exception):
    """Stops the model's forward at the first decoder layer once its inputs are recorded."""


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value


def _hidden(output):
    return output[0] if isinstance(output, (tuple, list)) else output


Visitor = Callable[[int, nn.Module, LayerStatistics], bool]


class SequentialCalibration:
    """Feeds calibration batches through a model's decoder layers one at a time, on `device`."""

    def __init__(self, model: nn.Module, adapter: MlpAdapter, batches: list[dict[str, torch.Tensor]],
                 device: torch.device, sequence_means: bool = False):
        self.model, self.adapter, self.batches, self.device = model, adapter, batches, torch.device(device)
        self.sequence_means = sequence_means

    def _first_layer_inputs(self) -> list[tuple[torch.Tensor, tuple, dict]]:
        """(hidden states, other positional args, keyword args) with which the model calls its first layer."""
        captured = []

        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            captured.append((hidden.detach().to(self.device), _to(args[1:], self.device), _to(kwargs, self.device)))
            raise _Captured

        first = self.adapter.decoder_layers(self.model)[0]
        home = next(self.model.parameters()).device
        handle = first.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            for batch in self.batches:
                try:
                    self.model(**{k: v.to(home) for k, v in batch.items()}, use_cache=False)
                except _Captured:
                    pass
        finally:
            handle.remove()
        return captured

    @torch.no_grad()
    def run(self, visit: Visitor, progress: Callable[[int, int], None] = lambda done, total: None) -> None:
        """For each layer in order: collect its statistics on the current inputs, call visit(index, layer,
        statistics) (which returns True if it changed the layer), and compute the next layer's inputs with the
        layer as the visitor left it."""
        was_training = self.model.training
        self.model.eval()
        inputs = self._first_layer_inputs()
        layers = self.adapter.decoder_layers(self.model)
        statistics = ActivationStatistics(self.model, self.adapter, beta=None, training_only=False,
                                          dtype=torch.float64, sequence_means=self.sequence_means)
        try:
            for index, layer in enumerate(layers):
                home = next(layer.parameters()).device
                layer.to(self.device)
                outputs = []
                for (hidden, args, kwargs), batch in zip(inputs, self.batches):
                    statistics.token_mask = batch["attention_mask"].to(self.device)
                    outputs.append(_hidden(layer(hidden, *args, **kwargs)))
                statistics.token_mask = None
                layer_statistics = self._layer_statistics(statistics, index)
                statistics.release(index)
                if visit(index, layer, layer_statistics):  # the layer's projections were replaced: run it again
                    outputs = [_hidden(layer(hidden, *args, **kwargs)) for hidden, args, kwargs in inputs]
                inputs = [(output, args, kwargs) for output, (_, args, kwargs) in zip(outputs, inputs)]
                layer.to(home)
                progress(index + 1, len(layers))
        finally:
            statistics.detach()
            self.model.train(was_training)

    def _layer_statistics(self, statistics: ActivationStatistics, index: int) -> LayerStatistics:
        gram, sums = statistics.gram[index], statistics.sums[index]
        if gram is None:
            raise FfnpruneError(f"layer {index}: the calibration forward never reached its MLP output projection")
        means = None if statistics.sequence_means is None else statistics.sequence_means[index]
        for name, tensor in (("activation Gram", gram), ("activation sums", sums), ("sequence means", means)):
            if tensor is not None and not bool(torch.isfinite(tensor).all()):
                raise FfnpruneError(
                    f"layer {index}: the calibration statistics ({name}) are not finite (NaN or infinite): the "
                    "layer's activations overflowed or the weights hold NaN. Prune a float32 copy of the model, or "
                    "check its weights"
                )
        return LayerStatistics(gram, sums, statistics.counts[index], means)

"""Calibration layer by layer (as SparseGPT's sequential loop and llm-compressor's sequential pipeline do).

The calibration batches are run up to the first decoder layer once; from there each layer in turn visits the
calibration device, sees the outputs of the layers before it (already pruned, when a visitor prunes them), has its
MLP activation statistics collected by the one capture hook ffnprune has (ActivationStatistics), is handed to a
visitor that may prune and reconstruct it, and then produces the next layer's inputs. Only one layer's weights and
statistics are on the device at a time, so the model itself may stay in CPU memory.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
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
    # [X, 1]^T (O_dense - O): how far this layer's output on the pruned model's inputs is from the dense model's
    # output of the same layer, seen from the activations [N + 1, hidden] (only with `dense_target`)
    drift: torch.Tensor | None = None

    @property
    def width(self) -> int:
        return self.gram.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        return self.sums / max(self.count, 1)

    @property
    def variance(self) -> torch.Tensor:
        return (self.gram.diagonal() / max(self.count, 1) - self.mean.square()).clamp_min(0)

    def times_augmented(self, matrix: torch.Tensor) -> torch.Tensor:
        """matrix @ [X, 1]^T [X, 1] for a matrix [rows, N + 1], without building the (N + 1)^2 augmented Gram."""
        width = self.width
        left, right = matrix[:, :width], matrix[:, width:]
        return torch.cat([left @ self.gram + right * self.sums, left @ self.sums[:, None] + right * self.count], dim=1)

    def kept_block(self, kept: torch.Tensor) -> torch.Tensor:
        """The augmented Gram's rows and columns of the kept neurons and the intercept (last), built directly."""
        count = len(kept)
        block = self.gram.new_empty(count + 1, count + 1)
        block[:count, :count] = self.gram[kept[:, None], kept]
        block[count, :count] = block[:count, count] = self.sums[kept]
        block[count, count] = self.count
        return block

    def augmented(self) -> torch.Tensor:
        """[X, 1]^T [X, 1]: the Gram with an intercept, (N + 1) x (N + 1); the intercept is the last index."""
        width = self.width
        gram = self.gram.new_empty(width + 1, width + 1)
        gram[:width, :width] = self.gram
        gram[width, :width] = gram[:width, width] = self.sums
        gram[width, width] = self.count
        return gram


@contextmanager
def _captured_input(module: nn.Module):
    """The input of `module`'s next forward, in a list filled when it runs."""
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0]) or None)
    try:
        yield seen
    finally:
        handle.remove()


def _fold_drift(total, activations: torch.Tensor, difference: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """total + [X, 1]^T (O_dense - O) over the batch's real tokens: each batch's product in float32 (as the Gram's),
    summed in float64."""
    difference = difference.flatten(0, -2).float() * mask.reshape(-1, 1).float()  # pads contribute nothing
    folded = torch.cat([activations.flatten(0, -2).float().T @ difference, difference.sum(dim=0, keepdim=True)])
    return folded.double() if total is None else total.add_(folded)


def _process_group() -> tuple[int, int]:
    """This process's rank and the number of processes (0, 1 outside torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


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


def _same(a, b) -> bool:
    """Structural equality of nested tuples, lists and dicts of tensors and plain values."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and bool(torch.equal(a.cpu(), b.cpu())))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if hasattr(a, "__dict__"):  # an object (a cache, say): only itself
        return a is b
    return type(a) is type(b) and a == b


def _hidden(output):
    return output[0] if isinstance(output, (tuple, list)) else output


Visitor = Callable[[int, nn.Module, LayerStatistics], bool]


class HiddenStates:
    """One hidden-state tensor per calibration batch: in memory, or with a directory in one file per batch, written
    when set and read back when needed (only the batch at hand is then in memory)."""

    def __init__(self, tensors: list[torch.Tensor], device: torch.device, directory: Path | None = None):
        self.device, self.directory = device, directory
        self._memory: list[torch.Tensor | None] = [None] * len(tensors)
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        for index, tensor in enumerate(tensors):
            self[index] = tensor

    def __len__(self) -> int:
        return len(self._memory)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.directory is None:
            return self._memory[index]
        return load_file(str(self.directory / f"{index}.safetensors"))["hidden"].to(self.device)

    def __setitem__(self, index: int, tensor: torch.Tensor) -> None:
        if self.directory is None:
            self._memory[index] = tensor
        else:
            save_file({"hidden": tensor.detach().contiguous().cpu()}, str(self.directory / f"{index}.safetensors"))


class SequentialCalibration:
    """Feeds calibration batches through a model's decoder layers one at a time, on `device`."""

    def __init__(self, model: nn.Module, adapter: MlpAdapter, batches: list[dict[str, torch.Tensor]],
                 device: torch.device, sequence_means: bool = False, dense_target: bool = False, stream=None,
                 spill: Path | None = None, hidden_memory: float = float("inf")):
        self.model, self.adapter, self.device = model, adapter, torch.device(device)
        # Under torchrun or accelerate launch each process takes every world-th batch; the statistics are summed
        # across processes before a layer is pruned, so every process prunes it the same way.
        self.rank, self.world = _process_group()
        if len(batches) < self.world:
            raise FfnpruneError(f"{len(batches)} calibration batches for {self.world} processes: give more "
                                "--calibration-tokens or a smaller --calibration-batch-size, or fewer processes")
        self.batches = batches[self.rank::self.world]
        # With a stream (io.streamed.LayerStream), each layer is read from the checkpoint when its turn comes and
        # written out and freed after it: the model in memory is the embeddings and one layer.
        self.stream = stream
        # Hidden states beyond `hidden_memory` GiB go to files in a directory made inside `spill` (removed after)
        self.spill, self.hidden_memory = spill, hidden_memory
        self.spilled = False
        self.sequence_means = sequence_means
        # Also carry the dense model's hidden states, so that a layer can be refit towards the dense model's output
        # of that layer (correcting the drift of the pruned layers before it), not only its own.
        self.dense_target = dense_target

    def _layer_kinds(self) -> list:
        """Each layer's attention kind: models that mix full and sliding-window layers (config.layer_types) give
        each kind its own mask, so every layer must be called with the arguments of its kind."""
        layers = len(self.adapter.decoder_layers(self.model))
        kinds = getattr(self.model.config, "layer_types", None)
        return list(kinds) if kinds and len(kinds) == layers else [None] * layers

    def _first_layer_inputs(self, kinds: list) -> list[tuple[torch.Tensor, dict]]:
        """Per batch: the hidden states with which the model calls its first layer, and per attention kind the
        other positional and keyword arguments with which it calls the first layer of that kind."""
        first_of = {kind: kinds.index(kind) for kind in dict.fromkeys(kinds)}
        last = max(first_of.values())
        captured: list[tuple[torch.Tensor, dict]] = []

        def hook_for(kind, index):
            def hook(module, args, kwargs):
                if index == 0:
                    hidden = args[0] if args else kwargs["hidden_states"]
                    captured.append((hidden.detach().to(self.device), {}))
                rest = (args[1:], {k: v for k, v in kwargs.items() if k != "hidden_states"})
                previous = captured[-2][1][kind] if len(captured) > 1 else None
                # equal-shaped batches share position embeddings and masks: keep one copy
                captured[-1][1][kind] = previous if previous is not None and _same(previous, rest) \
                    else (_to(rest[0], self.device), _to(rest[1], self.device))
                if index == last:
                    raise _Captured
            return hook

        layers = self.adapter.decoder_layers(self.model)
        home = next(self.model.parameters()).device
        handles = [layers[index].register_forward_pre_hook(hook_for(kind, index), with_kwargs=True)
                   for kind, index in first_of.items()]
        # Only the arguments matter on the way to the last kind's first layer: the layers before it pass their
        # input through (they may not even be loaded yet)
        for layer in layers[:last]:
            layer.forward = lambda hidden_states, *args, **kwargs: hidden_states
        try:
            for batch in self.batches:
                try:
                    self.model(**{k: v.to(home) for k, v in batch.items()}, use_cache=False)
                except _Captured:
                    pass
        finally:
            for handle in handles:
                handle.remove()
            for layer in layers[:last]:
                del layer.forward
        return captured

    @torch.no_grad()
    def run(self, visit: Visitor, progress: Callable[[int, int], None] = lambda done, total: None) -> None:
        """For each layer in order: collect its statistics on the current inputs, call visit(index, layer,
        statistics) (which returns True if it changed the layer), and compute the next layer's inputs with the
        layer as the visitor left it."""
        was_training = self.model.training
        self.model.eval()
        kinds = self._layer_kinds()
        captured = self._first_layer_inputs(kinds)
        rests = [rest for _, rest in captured]
        layers = self.adapter.decoder_layers(self.model)
        statistics = ActivationStatistics(self.model, self.adapter, beta=None, training_only=False,
                                          dtype=torch.float64, sequence_means=self.sequence_means)
        copies = 3 if self.dense_target else 2  # inputs, outputs and the dense model's
        needed = copies * sum(hidden.numel() * hidden.element_size() for hidden, _ in captured)
        files, created = None, False
        if self.spill is not None and needed > self.hidden_memory * 2**30:
            created = not self.spill.exists()
            self.spill.mkdir(parents=True, exist_ok=True)
            files = Path(tempfile.mkdtemp(prefix="hidden-", dir=self.spill))
            self.spilled = True
        first = [hidden for hidden, _ in captured]
        del captured
        inputs = HiddenStates(first, self.device, files and files / "a")
        outputs = HiddenStates(first, self.device, files and files / "b")
        dense_hidden = HiddenStates(first, self.device, files and files / "dense") if self.dense_target else None
        del first
        try:
            for index, layer in enumerate(layers):
                if self.stream is not None:
                    self.stream.load(index, layer)
                home = next(layer.parameters()).device
                layer.to(self.device)
                drift = None
                for batch_index, batch in enumerate(self.batches):
                    args, kwargs = rests[batch_index][kinds[index]]
                    mask = batch["attention_mask"].to(self.device)
                    if dense_hidden is not None:
                        statistics.active = False
                        dense = _hidden(layer(dense_hidden[batch_index], *args, **kwargs))
                        dense_hidden[batch_index] = dense
                        statistics.active = True
                    statistics.token_mask = mask
                    with _captured_input(self.adapter.output_projection(layer)) as activations:
                        output = _hidden(layer(inputs[batch_index], *args, **kwargs))
                    outputs[batch_index] = output
                    if dense_hidden is not None:
                        drift = _fold_drift(drift, activations[0], dense - output, mask)
                        del dense
                    del output, activations
                statistics.token_mask = None
                layer_statistics = self._layer_statistics(statistics, index, drift)
                statistics.release(index)
                changed = visit(index, layer, layer_statistics)
                del layer_statistics, drift  # one layer's statistics at a time
                if changed:  # the layer's projections were replaced: run it again
                    for batch_index, rest in enumerate(rests):
                        args, kwargs = rest[kinds[index]]
                        outputs[batch_index] = _hidden(layer(inputs[batch_index], *args, **kwargs))
                inputs, outputs = outputs, inputs
                layer.to(home)
                if self.stream is not None:
                    self.stream.store(index, layer)
                progress(index + 1, len(layers))
        finally:
            statistics.detach()
            self.model.train(was_training)
            if files is not None:
                # the directory itself only where this process made it and no other process may be using it
                shutil.rmtree(self.spill if created and self.world == 1 else files, ignore_errors=True)

    def _layer_statistics(self, statistics: ActivationStatistics, index: int, drift) -> LayerStatistics:
        gram, sums = statistics.gram[index], statistics.sums[index]
        if gram is None:
            raise FfnpruneError(f"layer {index}: the calibration forward never reached its MLP output projection")
        means = None if statistics.sequence_means is None else statistics.sequence_means[index]
        count = statistics.counts[index]
        if self.world > 1:
            count = torch.tensor([count], dtype=torch.float64, device=gram.device)
            for tensor in (gram, sums, means, drift, count):
                if tensor is not None:
                    torch.distributed.all_reduce(tensor)
            count = int(count.item())
        for name, tensor in (("activation Gram", gram), ("activation sums", sums), ("sequence means", means)):
            # A sum is finite only if every entry is: no N x N temporaries (isfinite builds two)
            if tensor is not None and not math.isfinite(float(tensor.sum())):
                raise FfnpruneError(
                    f"layer {index}: the calibration statistics ({name}) are not finite (NaN or infinite): the "
                    "layer's activations overflowed or the weights hold NaN. Prune a float32 copy of the model, or "
                    "check its weights"
                )
        return LayerStatistics(gram, sums, count, means, drift)

"""Where a decoder layer's MLP neurons live, for one architecture.

An adapter names the MLP's input projections (two for gated MLPs: gate first, then up), its output projection and
the weight layout, so that every other part of ffnprune can read, mask and slice neurons without knowing the
modelling code. Neuron i is row i of each input projection (with its bias entry) and column i of the output one;
a fused input projection (Phi-3's gate_up_proj) stacks its blocks, so neuron i is row i of each block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ffnprune.errors import FfnpruneError

Layout = Literal["linear", "conv1d"]


@dataclass(frozen=True)
class MlpAdapter:
    """The MLP of one architecture family.

    Paths are dotted attribute paths: `layers` from the causal-LM model to its list of decoder layers; `inputs` and
    `output` from one decoder layer to its projections. `layout` is "linear" (weight [out, in]) or "conv1d"
    (GPT-2's Conv1D, weight [in, out]). `width_key` is the config attribute that holds the MLP width. `fused` is the
    number of neuron blocks each input projection stacks (2 for Phi-3's gate_up_proj: gate rows, then up rows).
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    inputs: tuple[str, ...]
    output: str
    layout: Layout
    width_key: str
    fused: int = 1

    def decoder_layers(self, model: nn.Module) -> list[nn.Module]:
        return list(model.get_submodule(self.layers))

    def input_projections(self, layer: nn.Module) -> list[nn.Module]:
        return [layer.get_submodule(path) for path in self.inputs]

    def output_projection(self, layer: nn.Module) -> nn.Module:
        return layer.get_submodule(self.output)

    def mlp_widths(self, model: nn.Module) -> list[int]:
        return [self.output_columns(self.output_projection(layer)).shape[0] for layer in self.decoder_layers(model)]

    def rows(self, weight: torch.Tensor) -> torch.Tensor:
        """An input projection's weight (or its gradient) as [neurons, hidden] (a view)."""
        return weight.t() if self.layout == "conv1d" else weight

    def columns(self, weight: torch.Tensor) -> torch.Tensor:
        """An output projection's weight (or its gradient) as [neurons, hidden] (a view)."""
        return weight if self.layout == "conv1d" else weight.t()

    def input_rows(self, projection: nn.Module) -> torch.Tensor:
        return self.rows(projection.weight)

    def neuron_blocks(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """An input projection's rows (or bias, or gradient rows) as its `fused` blocks, each indexed by neuron."""
        if rows.shape[0] % self.fused:
            raise FfnpruneError(
                f"a fused {self.name} input projection has {rows.shape[0]} rows, which do not split into "
                f"{self.fused} equal blocks (gate, then up): the checkpoint is damaged or is not {self.name}"
            )
        return list(rows.chunk(self.fused, dim=0)) if self.fused > 1 else [rows]

    def input_blocks(self, layer: nn.Module) -> list[torch.Tensor]:
        """Every input projection's weight rows, block by block, each [neurons, hidden] (views)."""
        return [block for projection in self.input_projections(layer)
                for block in self.neuron_blocks(self.input_rows(projection))]

    def output_columns(self, projection: nn.Module) -> torch.Tensor:
        return self.columns(projection.weight)

    def mlp_parameter_count(self, model: nn.Module) -> int:
        total = 0
        for layer in self.decoder_layers(model):
            for projection in [*self.input_projections(layer), self.output_projection(layer)]:
                total += sum(p.numel() for p in projection.parameters())
        return total

    def spec(self, widths: list[int]) -> dict:
        """What the self-contained modelling file needs to rebuild a model with these per-layer widths."""
        return {
            "format_version": 1,
            "architecture": self.name,
            "layers": self.layers,
            "inputs": list(self.inputs),
            "output": self.output,
            "layout": self.layout,
            "fused": self.fused,
            "mlp_widths": list(widths),
        }

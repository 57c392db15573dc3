"""Pruning methods, registered by name (`--method gum`), and the score functions they are built from.

A method is a criterion (how neurons are scored) and a selection operator (which scores are kept), plus an optional
penalty on the scores (METHOD sections 4 and 5). Fixed criteria are small callables `fn(model, adapter, generator)`
returning one score tensor per layer (higher = keep); learned criteria train their scores through straight-through
masks during fine-pruning; calibrated criteria (METHOD section 10) score one layer at a time from its activation
statistics on calibration data, and may select greedily instead of by their scores (obs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ffnprune.adapters import MlpAdapter
from ffnprune.errors import FfnpruneError
from ffnprune.pruning.selection import top_indices

ScoreFunction = Callable[[nn.Module, MlpAdapter, torch.Generator], list[torch.Tensor]]

SCORE_FUNCTIONS: dict[str, ScoreFunction] = {}

LEARNED = "learned"


@dataclass(frozen=True)
class CalibratedCriterion:
    """scores(stats, W, b, damp) -> [N] for one layer (W the output projection as [hidden, N] in float64, b its bias
    or None); select(stats, W, b, count, damp) -> kept indices, or None to keep the `count` highest scores."""

    scores: Callable
    select: Callable | None = None
    needs_sequence_means: bool = False

    def kept(self, stats, weight, bias, count: int, damp: float) -> torch.Tensor:
        if self.select is not None:
            return self.select(stats, weight, bias, count, damp)
        return top_indices(self.scores(stats, weight, bias, damp), count)


CALIBRATED: dict[str, CalibratedCriterion] = {}


def register_calibrated(name: str, criterion: CalibratedCriterion) -> None:
    CALIBRATED[name] = criterion


def register_scores(name: str) -> Callable[[ScoreFunction], ScoreFunction]:
    def add(function: ScoreFunction) -> ScoreFunction:
        SCORE_FUNCTIONS[name] = function
        return function

    return add


@dataclass(frozen=True)
class Method:
    name: str
    scores: str  # LEARNED, or a key of SCORE_FUNCTIONS
    selection: Literal["local", "global", "threshold"]
    penalty: Literal["none", "l1", "gum", "anti-gum"] = "none"
    frozen: bool = True  # fixed scores: drawn once (True) or recomputed from the weights every step (False)

    @property
    def learned(self) -> bool:
        return self.scores == LEARNED

    @property
    def calibrated(self) -> bool:
        return self.scores in CALIBRATED

    @property
    def uses_mu(self) -> bool:
        return self.penalty in ("gum", "anti-gum")

    def fixed_scores(self, model: nn.Module, adapter: MlpAdapter, generator: torch.Generator) -> list[torch.Tensor]:
        return SCORE_FUNCTIONS[self.scores](model, adapter, generator)


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("random", "random", "local"),
        Method("magnitude", "magnitude", "local", frozen=False),
        Method("magnitude-sum", "magnitude-sum", "local", frozen=False),
        Method("movement", LEARNED, "local"),
        Method("soft-movement", LEARNED, "threshold", "l1"),
        Method("global-movement", LEARNED, "global"),
        Method("gum", LEARNED, "global", "gum"),
        Method("anti-gum", LEARNED, "global", "anti-gum"),
        Method("activation", "activation", "local"),
        Method("wanda-sp", "wanda-sp", "local"),
        Method("flap", "flap", "local"),
        Method("obs", "obs", "local"),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise FfnpruneError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


# Importing the modules registers their score functions.
from ffnprune.criteria import calibrated, magnitude, random  # noqa: E402,F401

__all__ = ["CALIBRATED", "METHODS", "SCORE_FUNCTIONS", "CalibratedCriterion", "Method", "get_method",
           "register_calibrated", "register_scores"]

"""Pruning criteria: small callables, registered by name, that score every MLP neuron (higher = keep).

A criterion is called as `criterion(model, adapter, generator)` and returns one score tensor per layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ffnprune.adapters import MlpAdapter
from ffnprune.errors import FfnpruneError

Criterion = Callable[[nn.Module, MlpAdapter, torch.Generator], list[torch.Tensor]]

CRITERIA: dict[str, Criterion] = {}


def register(name: str) -> Callable[[Criterion], Criterion]:
    def add(criterion: Criterion) -> Criterion:
        CRITERIA[name] = criterion
        return criterion

    return add


def get_criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise FfnpruneError(f"unknown method {name!r}; known methods: {', '.join(sorted(CRITERIA))}") from None


# Importing the modules registers their criteria.
from ffnprune.criteria import magnitude, random  # noqa: E402,F401

__all__ = ["CRITERIA", "Criterion", "get_criterion", "register"]

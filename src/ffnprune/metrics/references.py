"""Checks shared by the generation metrics."""

from __future__ import annotations

from ffnprune.errors import FfnpruneError


def check_references(predictions: list[str], references: list[list[str]]) -> None:
    if len(predictions) != len(references):
        raise FfnpruneError(f"{len(predictions)} predictions for {len(references)} reference sets")
    if not predictions:
        raise FfnpruneError("nothing to score: no predictions")
    for index, refs in enumerate(references):
        if not refs or not all(isinstance(r, str) and r.strip() for r in refs):
            raise FfnpruneError(f"item {index} has an empty reference; every item needs at least one non-empty one")

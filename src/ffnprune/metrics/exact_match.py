"""Exact match (x100) of whole strings, ignoring case and runs of white space."""

from __future__ import annotations

from ffnprune.metrics.references import check_references


def normalise(text: str) -> str:
    return " ".join(text.split()).lower()


def exact_match(predictions: list[str], references: list[list[str]]) -> dict:
    check_references(predictions, references)
    hits = sum(normalise(p) in {normalise(r) for r in refs} for p, refs in zip(predictions, references))
    return {"exact_match": 100 * hits / len(predictions), "implementation": "case- and space-insensitive string match"}

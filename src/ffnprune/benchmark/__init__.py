"""Measured inference speed of dense and pruned models."""

from ffnprune.benchmark.speed import compare_speed

__all__ = ["compare_speed"]

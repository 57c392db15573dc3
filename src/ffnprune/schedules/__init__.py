"""Pruning schedules: plain functions of the step."""

from ffnprune.schedules.cubic import CubicSchedule

__all__ = ["CubicSchedule"]

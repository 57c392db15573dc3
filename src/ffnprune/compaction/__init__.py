"""Physically resizing MLPs: slicing to kept neurons, padding with zero neurons to a uniform width."""

from ffnprune.compaction.resize import (
    base_class,
    compact_layer,
    compact_mlps,
    finish_compaction,
    layer_spec,
    pad_mlps,
)

__all__ = ["base_class", "compact_layer", "compact_mlps", "finish_compaction", "layer_spec", "pad_mlps"]

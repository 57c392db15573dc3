"""The peers' own pruning code, shared by the benchmark scripts: Torch-Pruning on the MLP channel groups only."""

from __future__ import annotations

import importlib.metadata
import math

import torch

TORCH_PRUNING_IMPORTANCES = ("group-magnitude", "taylor")


def torch_pruning_version() -> str | None:
    """Torch-Pruning's installed version (its __version__ attribute says 1.6.0 in 1.6.1), or None."""
    try:
        import torch_pruning  # noqa: F401
    except ImportError:
        print("torch-pruning is not installed (pip install torch-pruning==1.6.1); skipping its rows")
        return None
    return importlib.metadata.version("torch-pruning")


def torch_pruning_mlp(model, adapter, ids: torch.Tensor, keep: float, importance_name: str):
    """Prune every MLP to floor(keep x width) channels with Torch-Pruning's dependency graph, importance and pruning
    (no reconstruction); Taylor importance from the gradients of the first 8 sequences of `ids`. Returns the widths."""
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=ids[:1, :64],
                                                  output_transform=lambda out: out.logits)
    if importance_name == "taylor":
        importance = tp.importance.GroupTaylorImportance()
        model.zero_grad()
        for start in range(0, 8, 2):
            model(ids[start:start + 2], labels=ids[start:start + 2]).loss.backward()
    else:
        importance = tp.importance.GroupMagnitudeImportance(p=2)
    for layer in adapter.decoder_layers(model):
        up = adapter.input_projections(layer)[-1]
        width = up.out_features
        scores = importance(graph.get_pruning_group(up, tp.prune_linear_out_channels, list(range(width))))
        drop = torch.argsort(scores)[: width - math.floor(keep * width + 1e-9)].tolist()
        graph.get_pruning_group(up, tp.prune_linear_out_channels, drop).prune()
    model.zero_grad(set_to_none=True)
    return [adapter.input_projections(layer)[0].out_features for layer in adapter.decoder_layers(model)]

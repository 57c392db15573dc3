"""Parameter counts and forward FLOPs per token, in total and for the MLPs."""

from __future__ import annotations

from torch import nn
from transformers.pytorch_utils import Conv1D

from ffnprune.adapters import MlpAdapter


def attention_width(config) -> int:
    heads = config.num_attention_heads
    return heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)


def footprint(model: nn.Module, adapter: MlpAdapter, context: int = 1024) -> dict:
    """Forward FLOPs per token = 2 x every matmul weight (LM head included, embedding lookups excluded)
    + 4 x context x attention width per layer (scores and weighted sum at `context` tokens attended)."""
    parameters = model.num_parameters()
    mlp_parameters = adapter.mlp_parameter_count(model)
    matmul_flops = sum(2 * m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, Conv1D)))
    mlp_flops = 0
    for layer in adapter.decoder_layers(model):
        for projection in [*adapter.input_projections(layer), adapter.output_projection(layer)]:
            mlp_flops += 2 * projection.weight.numel()
    layers = len(adapter.decoder_layers(model))
    attention_flops = 4 * layers * context * attention_width(model.config)
    total_flops = matmul_flops + attention_flops
    return {
        "architecture": adapter.name,
        "model_type": model.config.model_type,
        "layers": layers,
        "mlp_widths": adapter.mlp_widths(model),
        "parameters": parameters,
        "mlp_parameters": mlp_parameters,
        "mlp_parameter_share": mlp_parameters / parameters,
        "flops_per_token": total_flops,
        "mlp_flops_per_token": mlp_flops,
        "mlp_flop_share": mlp_flops / total_flops,
        "flops_context": context,
    }


def format_widths(widths: list[int]) -> str:
    return f"{len(widths)} x {widths[0]}" if len(set(widths)) == 1 else ", ".join(map(str, widths))

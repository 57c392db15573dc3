"""Architecture adapters, found from a model's config (`config.model_type`)."""

from __future__ import annotations

from ffnprune.adapters.base import MlpAdapter
from ffnprune.errors import FfnpruneError

ADAPTERS: tuple[MlpAdapter, ...] = (
    MlpAdapter("gpt2", ("gpt2",), "transformer.h", ("mlp.c_fc",), "mlp.c_proj", "conv1d", "n_inner"),
    MlpAdapter("gpt_neo", ("gpt_neo",), "transformer.h", ("mlp.c_fc",), "mlp.c_proj", "linear", "intermediate_size"),
    MlpAdapter(
        "gpt_neox", ("gpt_neox",), "gpt_neox.layers", ("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h", "linear",
        "intermediate_size",
    ),
    MlpAdapter("opt", ("opt",), "model.decoder.layers", ("fc1",), "fc2", "linear", "ffn_dim"),
    MlpAdapter(
        "llama", ("llama", "mistral", "qwen2", "qwen3"), "model.layers", ("mlp.gate_proj", "mlp.up_proj"),
        "mlp.down_proj", "linear", "intermediate_size",
    ),
    # Gemma 2 and 3 (text): gated GELU-tanh MLPs under the LLaMA names; their MLP output is normalised before the
    # residual (post_feedforward_layernorm), which neither masking nor slicing neurons has to know.
    MlpAdapter(
        "gemma", ("gemma2", "gemma3_text"), "model.layers", ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj",
        "linear", "intermediate_size",
    ),
    MlpAdapter("phi3", ("phi3",), "model.layers", ("mlp.gate_up_proj",), "mlp.down_proj", "linear",
               "intermediate_size", fused=2),
)

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for adapter in ADAPTERS for t in adapter.model_types)


def adapter_for(config) -> MlpAdapter:
    """The adapter for a transformers config, or an error that lists what is supported."""
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    raise FfnpruneError(
        f"unsupported architecture {model_type!r}: ffnprune knows the MLPs of "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}. Use a model of one of these types "
        "(SmolLM2 is 'llama', Pythia is 'gpt_neox'; a multimodal Gemma 3 is 'gemma3': prune its text model, "
        "Gemma3ForCausalLM, model_type 'gemma3_text')."
    )


__all__ = ["ADAPTERS", "SUPPORTED_MODEL_TYPES", "MlpAdapter", "adapter_for"]

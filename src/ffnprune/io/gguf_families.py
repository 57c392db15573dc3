"""GGUF for the families that llama.cpp runs as their own architectures: Gemma 2, Gemma 3 (text) and Phi-3.

Tensor names come from the gguf package's own map (the one llama.cpp's converter uses); the hyper-parameters are those
its converter writes for each (convert_hf_to_gguf.py: Gemma2Model, Gemma3Model, Phi3MiniModel), and what llama.cpp
fixes in code instead of reading (Gemma 3's every-sixth-layer global attention and 10,000 local rotary base, the
attention scale) is checked, so that a model llama.cpp would run differently is refused, never written. These
architectures build every layer at one MLP width: per-layer widths are padded with zero neurons to the widest layer,
which contributes exactly 0 (Phi-3's fused gate_up_proj padded block by block).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from gguf import MODEL_ARCH, GGUFWriter, get_tensor_name_map

from ffnprune.adapters import adapter_for
from ffnprune.errors import FfnpruneError

logger = logging.getLogger("ffnprune")


@dataclass(frozen=True)
class GgufFamily:
    architecture: str  # llama.cpp's name
    arch: MODEL_ARCH
    check: Callable[[object], None]
    hyperparameters: Callable[[GGUFWriter, object], None]
    norm_plus_one: bool  # Gemma's RMSNorm scales by (1 + w); llama.cpp's by w


def _refuse(family: str, why: str) -> None:
    raise FfnpruneError(f"GGUF export of this {family} model: {why}; llama.cpp would run it as a different model")


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _check_gemma(config, family: str, large_layers: int) -> None:
    if config.hidden_activation != "gelu_pytorch_tanh":
        _refuse(family, f"hidden_activation is {config.hidden_activation!r}, and llama.cpp's {family} MLP is GELU "
                        "(tanh approximation)")
    # llama.cpp scales queries by 1/sqrt(head_dim), or by 1/sqrt(hidden / heads) for the 27B shape
    expected = config.hidden_size // config.num_attention_heads if config.num_hidden_layers == large_layers else \
        _head_dim(config)
    if config.query_pre_attn_scalar != expected:
        _refuse(family, f"query_pre_attn_scalar is {config.query_pre_attn_scalar}, and llama.cpp scales attention "
                        f"by 1/sqrt({expected}) for this shape")


def _check_gemma2(config) -> None:
    _check_gemma(config, "gemma2", large_layers=46)
    if config.attn_logit_softcapping is None or config.final_logit_softcapping is None:
        _refuse("gemma2", "a logit soft-capping is switched off, and llama.cpp's gemma2 always applies both")
    kinds = ["sliding_attention" if index % 2 == 0 else "full_attention" for index in range(config.num_hidden_layers)]
    if list(config.layer_types) != kinds:
        _refuse("gemma2", "its layers do not alternate sliding-window (even) and full attention, as llama.cpp's do")
    if dict(config.rope_parameters).get("rope_type", "default") != "default":
        _refuse("gemma2", "its rotary embeddings are scaled")


def _check_gemma3(config) -> None:
    _check_gemma(config, "gemma3", large_layers=62)
    if config.attn_logit_softcapping is not None or config.final_logit_softcapping is not None:
        _refuse("gemma3", "it soft-caps logits, which llama.cpp's gemma3 does not")
    kinds = ["full_attention" if index % 6 == 5 else "sliding_attention" for index in range(config.num_hidden_layers)]
    if list(config.layer_types) != kinds:
        _refuse("gemma3", "its global-attention layers are not every sixth, as llama.cpp fixes them")
    local, full = config.rope_parameters["sliding_attention"], config.rope_parameters["full_attention"]
    if local.get("rope_type", "default") != "default" or local["rope_theta"] != 10000.0:
        _refuse("gemma3", "its sliding-window layers' rotary embeddings are not plain with base 10,000, which "
                          "llama.cpp fixes")
    if full.get("rope_type", "default") not in ("default", "linear"):
        _refuse("gemma3", f"its rotary scaling {full.get('rope_type')!r} is not linear")


def _check_phi3(config) -> None:
    rope = dict(config.rope_parameters)
    if rope.get("rope_type", "default") != "default":
        _refuse("phi3", f"rotary scaling {rope.get('rope_type')!r} (the 128k-context Phi-3) is not written yet")
    if config.hidden_act != "silu":
        _refuse("phi3", f"hidden_act is {config.hidden_act!r}, and llama.cpp's phi3 MLP is SiLU-gated")


def _shared(writer: GGUFWriter, config, context: int | None = None) -> None:
    writer.add_context_length(context or config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))


def _gemma2_hyperparameters(writer: GGUFWriter, config) -> None:
    _shared(writer, config)
    writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
    writer.add_final_logit_softcapping(config.final_logit_softcapping)
    writer.add_sliding_window(config.sliding_window)


def _gemma3_hyperparameters(writer: GGUFWriter, config) -> None:
    from gguf import RopeScalingType

    _shared(writer, config)
    full = config.rope_parameters["full_attention"]
    writer.add_rope_freq_base(float(full["rope_theta"]))
    if full.get("rope_type") == "linear":
        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(full["factor"]))
    writer.add_sliding_window(config.sliding_window)


def _phi3_hyperparameters(writer: GGUFWriter, config) -> None:
    window = config.sliding_window
    bounded = window is not None and window < config.max_position_embeddings
    _shared(writer, config, context=window if bounded else None)
    rope = dict(config.rope_parameters)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    writer.add_rope_dimension_count(int(_head_dim(config) * rope.get("partial_rotary_factor", 1.0)))
    writer.add_rope_scaling_orig_ctx_len(config.original_max_position_embeddings)
    if bounded:
        # measured: llama.cpp's phi3 and transformers part beyond the window (0.2 in the logits of a tiny model),
        # and agree within it; the file claims only the context where both agree
        logger.info("the model attends within a sliding window of %d tokens, which llama.cpp's phi3 does not apply "
                    "as transformers does: the file's context length is set to %d, within which both agree", window,
                    window)


FAMILIES: dict[str, GgufFamily] = {
    "gemma2": GgufFamily("gemma2", MODEL_ARCH.GEMMA2, _check_gemma2, _gemma2_hyperparameters, norm_plus_one=True),
    "gemma3_text": GgufFamily("gemma3", MODEL_ARCH.GEMMA3, _check_gemma3, _gemma3_hyperparameters,
                              norm_plus_one=True),
    "phi3": GgufFamily("phi3", MODEL_ARCH.PHI3, _check_phi3, _phi3_hyperparameters, norm_plus_one=False),
}


def check_no_bias(model, family: GgufFamily) -> None:
    """None of these llama.cpp architectures reads a bias, before anything is written."""
    biases = [name for name, _ in model.named_parameters() if name.endswith(".bias")]
    if biases:
        raise FfnpruneError(
            f"GGUF export: {biases[0]} is a bias, which llama.cpp's {family.architecture} blocks do not read (one-shot "
            "reconstruction adds an MLP output bias: prune with --reconstruct none for llama.cpp, or export with "
            "--format uniform)"
        )


def family_tensors(model, family: GgufFamily, width: int) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor) for every parameter, MLPs padded to `width` neurons; a parameter the map does not name is
    an error, never dropped."""
    adapter = adapter_for(model.config)
    names = get_tensor_name_map(family.arch, model.config.num_hidden_layers)
    padded = {}
    for index, layer in enumerate(adapter.decoder_layers(model)):
        prefix = f"{adapter.layers}.{index}."
        for path in adapter.inputs:
            rows = adapter.input_rows(adapter.input_projections(layer)[adapter.inputs.index(path)]).detach()
            padded[f"{prefix}{path}.weight"] = torch.cat([_pad(block, width) for block in adapter.neuron_blocks(rows)])
        columns = adapter.output_columns(adapter.output_projection(layer)).detach()
        padded[f"{prefix}{adapter.output}.weight"] = _pad(columns, width).T
    left = []
    for name, parameter in model.named_parameters():
        base, suffix = name.rsplit(".", 1)
        mapped = names.get_name(base)
        if mapped is None:
            left.append(name)
            continue
        tensor = padded.get(name, parameter.detach())
        if family.norm_plus_one and base.endswith("norm"):
            tensor = tensor + 1
        yield f"{mapped}.{suffix}", tensor
    if left:
        raise FfnpruneError(f"GGUF export: {len(left)} parameters have no place in llama.cpp's {family.architecture} "
                            f"blocks ({', '.join(left[:5])}); this model cannot be exported to GGUF as it is")


def _pad(rows: torch.Tensor, width: int) -> torch.Tensor:
    """[neurons, hidden] rows with zero rows appended up to `width` neurons."""
    return torch.cat([rows, rows.new_zeros(width - rows.shape[0], rows.shape[1])]) if rows.shape[0] < width else rows

"""GGUF files of llama.cpp's `llama` and `deci` architectures read into a model, every tensor accounted for.

transformers' GGUF reader skips any tensor it has no name for (the `ffn_down.bias` that one-shot reconstruction adds)
and does not know `deci`, the architecture ffnprune writes for per-layer MLP widths. This reader is the inverse of
ffnprune.io.gguf_export: every tensor of the file lands in the model or the load stops with an error naming it, and
every parameter of the model comes from the file. Files of other architectures go through transformers, with a
check that it used every tensor.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import transformers
from gguf import GGUFReader
from gguf.quants import dequantize
from torch import nn

from ffnprune.adapters import adapter_for
from ffnprune.compaction import compact_layer, finish_compaction, layer_spec
from ffnprune.errors import FfnpruneError
from ffnprune.io.strict_load import check_loading_info, from_pretrained_strictly, load_failure

logger = logging.getLogger("ffnprune")

OWN_ARCHITECTURES = ("llama", "deci")
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_LAYER_NAMES = {"attn_norm.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
                "attn_k.weight": "self_attn.k_proj.weight", "attn_v.weight": "self_attn.v_proj.weight",
                "attn_output.weight": "self_attn.o_proj.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
                "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
                "ffn_down.weight": "mlp.down_proj.weight", "ffn_down.bias": "mlp.down_proj.bias"}


def load_gguf(path: Path, dtype) -> tuple[nn.Module, object]:
    """(model, tokenizer) of a GGUF file, dequantised to float."""
    failure = f"could not read the GGUF file {path}: {{error}}. It may be incomplete or corrupt"
    try:
        reader = GGUFReader(path)
        architecture = str(reader.fields["general.architecture"].contents())
    except Exception as error:  # the gguf reader raises many types for a damaged file
        raise load_failure(failure, error) from error
    if architecture in OWN_ARCHITECTURES:
        model = _load_llama_family(reader, path, architecture, failure)
    else:
        model = _load_with_transformers(reader, path, dtype, failure)
    try:
        tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as error:
        raise load_failure(failure, error) from error
    return model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype), tokenizer


def _config(reader: GGUFReader, path: Path, architecture: str, failure: str):
    """transformers' own reading of the file's hyperparameters, as a llama config; `deci`'s per-layer widths are
    returned beside it."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    try:
        values = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
    except Exception as error:
        raise load_failure(failure, error) from error
    widths = values.pop("intermediate_size")
    widths = [int(w) for w in widths] if isinstance(widths, list) else [int(widths)] * values["num_hidden_layers"]
    head_dim = reader.fields.get(f"{architecture}.rope.dimension_count")
    if head_dim is not None:
        values["head_dim"] = int(head_dim.contents())
    values.update(model_type="llama", intermediate_size=max(widths))
    return transformers.LlamaConfig.from_dict(values), widths


def _unpermute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """The inverse of the export's rotary reordering: llama.cpp's adjacent pairs back to transformers' halves."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}"
    return None


def _tensors(reader: GGUFReader, config, path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the file under its transformers name, dequantised; a tensor with no place is an error."""
    tensors, unplaced = {}, []
    for tensor in reader.tensors:
        name = _hf_name(tensor.name)
        if name is None:
            unplaced.append(tensor.name)
            continue
        values = dequantize(tensor.data, tensor.tensor_type)
        values = torch.from_numpy(np.array(values.reshape([int(n) for n in reversed(tensor.shape)])))
        if name.endswith("q_proj.weight"):
            values = _unpermute_rotary(values, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            values = _unpermute_rotary(values, config.num_key_value_heads)
        tensors[name] = values.float()
    if unplaced:
        raise FfnpruneError(f"the GGUF file {path} holds tensors that ffnprune's llama/deci reader has no place for: "
                            f"{', '.join(unplaced[:6])}{' ...' if len(unplaced) > 6 else ''}; loading it without them "
                            "would give another model than the file describes")
    return tensors


def _empty_neuron(tensors: dict, index: int) -> bool:
    """The export stores a layer of width 0 as one neuron of zeros (llama.cpp cannot build width 0)."""
    prefix = f"model.layers.{index}.mlp."
    stored = [tensors.get(prefix + name) for name in ("gate_proj.weight", "up_proj.weight", "down_proj.weight")]
    return all(t is not None and 1 in t.shape and not t.any() for t in stored)


def _load_llama_family(reader: GGUFReader, path: Path, architecture: str, failure: str) -> nn.Module:
    config, widths = _config(reader, path, architecture, failure)
    tensors = _tensors(reader, config, path)
    config.tie_word_embeddings = "lm_head.weight" not in tensors
    widths = [0 if _empty_neuron(tensors, index) else width for index, width in enumerate(widths)]
    output_bias = any(name.endswith("mlp.down_proj.bias") for name in tensors)
    model = transformers.LlamaForCausalLM(config)
    if output_bias or len(set(widths)) > 1:  # ffnprune's pruned class, as load_pruned builds it
        adapter = adapter_for(config)
        spec = layer_spec(model, adapter, output_bias=output_bias)
        for layer, width in zip(adapter.decoder_layers(model), widths):
            compact_layer(layer, adapter, spec, torch.arange(width))
        finish_compaction(model, adapter, spec)
        expected = model.state_dict()
        for index in (index for index, width in enumerate(widths) if width == 0):
            for name in ("gate_proj.weight", "up_proj.weight", "down_proj.weight"):
                name = f"model.layers.{index}.mlp.{name}"
                tensors[name] = expected[name].new_zeros(expected[name].shape)
    _load_strictly(model, tensors, path)
    return model


def _load_strictly(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    mismatched = [(name, tuple(tensor.shape), tuple(expected[name].shape)) for name, tensor in tensors.items()
                  if name in expected and tensor.shape != expected[name].shape]
    check_loading_info({"missing_keys": sorted(set(expected) - set(tensors) - tied),
                        "unexpected_keys": sorted(set(tensors) - set(expected)), "mismatched_keys": mismatched}, path)
    with torch.no_grad():
        for name, tensor in tensors.items():
            expected[name].copy_(tensor)


def _load_with_transformers(reader: GGUFReader, path: Path, dtype, failure: str) -> nn.Module:
    """transformers reads the file; a file with more tensors than the model it built has parameters lost some."""
    try:
        config = transformers.AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as error:
        raise load_failure(failure, error) from error
    adapter_for(config)
    model = from_pretrained_strictly(transformers.AutoModelForCausalLM, path.parent, failure, dtype=dtype,
                                     gguf_file=path.name)
    stored = len(reader.tensors)
    parameters = len(dict(model.named_parameters()))
    if stored > parameters:
        raise FfnpruneError(f"the GGUF file {path} holds {stored} tensors and transformers' reader placed them in a "
                            f"model of {parameters} parameters: {stored - parameters} were dropped. Load the model "
                            "from its transformers checkpoint instead")
    return model

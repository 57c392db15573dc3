"""`ffnprune export --format nemotron-nas`: per-layer MLP widths in the one config dialect that vLLM, SGLang,
TensorRT-LLM and mlx-lm read them from, NVIDIA's Nemotron-NAS ("DeciLM", model_type `nemotron-nas`).

Each layer's block config gives `ffn.ffn_mult`, which every runtime turns into a width as
`_find_multiple(int(2 * ffn_mult * hidden / 3), 256)` (vLLM `models/nemotron_nas.py`, mlx-lm `models/nemotron-nas.py`,
TensorRT-LLM `_ffn_mult_to_intermediate_size`): only multiples of 256 are exact, so other widths are refused
(prune with `--round-to 256`). A layer that kept no neuron is `ffn.no_op` (no MLP and no post-attention norm),
unless one-shot reconstruction left it an output bias: that layer keeps 256 zero neurons carrying the bias, which is
exact. The weights keep LLaMA's names; an output bias is written with `mlp_bias: true` and zero gate/up biases
(vLLM and mlx-lm read them; SGLang and TensorRT-LLM drop them: the model card says so).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict

from ffnprune.adapters import adapter_for
from ffnprune.errors import FfnpruneError
from ffnprune.io import decilm_config
from ffnprune.io.atomic import atomic_directory, write_json_atomic
from ffnprune.io.pruned_dir import METADATA_FILE, read_metadata

FFN_MULTIPLE = 256
CONFIG_FILE = "configuration_decilm.py"
LLAMA_BLOCK_TYPES = ("llama", "mistral")


@dataclass
class NemotronExport:
    path: Path
    mlp_widths: list[int]  # as the runtimes build them (a bias-only layer: 256 zero neurons)
    no_op_layers: list[int]
    mlp_bias: bool


def runtime_width(ffn_mult: float, hidden: int) -> int:
    """The MLP width the runtimes build from `ffn_mult` (their formula, written out again here)."""
    width = int(2 * ffn_mult * hidden / 3)
    return width if width % FFN_MULTIPLE == 0 else width + FFN_MULTIPLE - width % FFN_MULTIPLE


def ffn_mult(width: int, hidden: int) -> float:
    """The `ffn_mult` that the runtimes turn back into exactly `width` (a multiple of 256)."""
    mult = round(3 * width / (2 * hidden), 6)  # mlx-lm rounds ffn_mult to 6 decimals: so does the export
    if runtime_width(mult, hidden) != width:
        raise FfnpruneError(f"no ffn_mult gives width {width} at hidden size {hidden} through the runtimes' formula")
    return mult


def check_exportable(config, widths: list[int]) -> None:
    """Refuse, before any weight is read, what the dialect cannot hold."""
    model_type = config.model_type
    if model_type not in LLAMA_BLOCK_TYPES:
        raise FfnpruneError(
            f"--format nemotron-nas holds LLaMA blocks, not {model_type!r} ones (Nemotron-NAS has no Qwen attention "
            "biases or q/k norms, no Gemma or Phi-3 MLP); export this model with --format uniform, which its "
            "architecture's own loaders read"
        )
    if config.hidden_act != "silu":
        raise FfnpruneError(
            f"--format nemotron-nas: the config's hidden_act is {config.hidden_act!r}, and the Nemotron-NAS MLP is "
            "SiLU-gated (runtimes disagree on honouring another activation); export with --format uniform"
        )
    if getattr(config, "sliding_window", None) is not None:
        raise FfnpruneError(
            f"--format nemotron-nas: the model attends through a sliding window of {config.sliding_window} tokens, "
            "which the dialect cannot say; export with --format uniform"
        )
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and head_dim * config.num_attention_heads != config.hidden_size:
        raise FfnpruneError(
            f"--format nemotron-nas: head_dim {head_dim} x {config.num_attention_heads} heads is not the hidden size "
            f"{config.hidden_size}, and the runtimes derive head_dim from it; export with --format uniform"
        )
    odd = {index: width for index, width in enumerate(widths) if width % FFN_MULTIPLE}
    if odd:
        shown = ", ".join(f"layer {index}: {width}" for index, width in list(odd.items())[:4])
        raise FfnpruneError(
            f"--format nemotron-nas needs MLP widths that are multiples of {FFN_MULTIPLE} (the runtimes round "
            f"ffn_mult up to one), and {len(odd)} layer(s) are not ({shown}); prune again with --round-to "
            f"{FFN_MULTIPLE}, or export with --format gguf (llama.cpp) or --format uniform"
        )


def _rope(config) -> tuple[float, dict | None]:
    """rope_theta and rope_scaling in the keys the runtimes' configs read (transformers 5 keeps rope_parameters)."""
    parameters = dict(getattr(config, "rope_parameters", None) or {})
    theta = parameters.pop("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise FfnpruneError("--format nemotron-nas: the config has no rope_theta")
    scaling = parameters if parameters.get("rope_type", "default") != "default" else None
    return float(theta), scaling


def _config(config, blocks: list[dict], mlp_bias: bool, dtype: str) -> dict:
    rope_theta, rope_scaling = _rope(config)
    return {
        "architectures": ["DeciLMForCausalLM"],
        "model_type": "nemotron-nas",
        "auto_map": {"AutoConfig": f"{CONFIG_FILE[:-3]}.DeciLMConfig"},
        "block_configs": blocks,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        # the per-layer values live in block_configs; these stay null as in NVIDIA's own checkpoints
        "intermediate_size": None,
        "num_key_value_heads": None,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "attention_bias": bool(getattr(config, "attention_bias", False)),
        "mlp_bias": mlp_bias,
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "initializer_range": getattr(config, "initializer_range", 0.02),
        "torch_dtype": dtype,
    }


def export_nemotron_nas(model, tokenizer, out: str | os.PathLike, *, location: str, dtype: str,
                        overwrite: bool = False) -> NemotronExport:
    """Write a loaded LLaMA-family model (pruned or not) as a Nemotron-NAS checkpoint in `out`, its tensors in
    `dtype`."""
    config = model.config
    adapter = adapter_for(config)
    widths = adapter.mlp_widths(model)
    check_exportable(config, widths)
    layers = adapter.decoder_layers(model)
    hidden, heads = config.hidden_size, config.num_attention_heads
    mlp_bias = any(adapter.output_projection(layer).bias is not None for layer in layers)
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    blocks, built, no_op = [], [], []
    prefix = adapter.layers
    for index, (layer, width) in enumerate(zip(layers, widths)):
        down = adapter.output_projection(layer)
        attention = {"n_heads_in_group": heads // config.num_key_value_heads, "no_op": False,
                     "replace_with_linear": False}
        if width == 0 and (down.bias is None or not bool(down.bias.any())):
            for name in [n for n in state if n.startswith(f"{prefix}.{index}.mlp.")
                         or n.startswith(f"{prefix}.{index}.post_attention_layernorm.")]:
                del state[name]
            blocks.append({"attention": attention, "ffn": {"no_op": True, "replace_with_linear": False}})
            built.append(0)
            no_op.append(index)
            continue
        if width == 0:  # only the reconstruction bias is left: 256 zero neurons carry it exactly
            width = FFN_MULTIPLE
            zeros = down.weight.new_zeros
            state[f"{prefix}.{index}.mlp.gate_proj.weight"] = zeros(width, hidden)
            state[f"{prefix}.{index}.mlp.up_proj.weight"] = zeros(width, hidden)
            state[f"{prefix}.{index}.mlp.down_proj.weight"] = zeros(hidden, width)
        if mlp_bias:  # mlp_bias gives every projection a bias: gate and up get zero ones, which change nothing
            for name in ("gate_proj", "up_proj"):
                state.setdefault(f"{prefix}.{index}.mlp.{name}.bias", down.weight.new_zeros(width))
            state.setdefault(f"{prefix}.{index}.mlp.down_proj.bias", down.weight.new_zeros(hidden))
        blocks.append({"attention": attention,
                       "ffn": {"ffn_mult": ffn_mult(width, hidden), "no_op": False, "replace_with_linear": False}})
        built.append(width)
    stored = getattr(torch, dtype)
    state = {name: tensor.to(stored).contiguous() for name, tensor in state.items()}
    metadata = read_metadata(location) if Path(location).is_dir() else {}
    with atomic_directory(out, overwrite) as staging:
        save_torch_state_dict(state, staging, metadata={"format": "pt"})
        write_json_atomic(staging / "config.json", _config(config, blocks, mlp_bias, dtype))
        if read_block_widths(staging) != built:  # the runtimes' formula must give back every width
            raise FfnpruneError(f"internal error: ffn_mult does not give back the widths {built}")
        shutil.copyfile(decilm_config.__file__, staging / CONFIG_FILE)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        export = {"from": str(location), "kept_widths": widths, "built_widths": built, "no_op_layers": no_op,
                  "mlp_bias": mlp_bias, "dtype": dtype}
        write_json_atomic(staging / METADATA_FILE, {**metadata, "nemotron_nas_export": export})
        (staging / "README.md").write_text(model_card(Path(out).name, metadata, built, no_op, mlp_bias))
    return NemotronExport(Path(out), built, no_op, mlp_bias)


def model_card(name: str, metadata: dict, widths: list[int], no_op: list[int], mlp_bias: bool) -> str:
    source = metadata.get("source_model") or "a LLaMA-family model"
    bias = ("This export carries the MLP output bias that one-shot reconstruction added (`mlp_bias: true`, with zero "
            "gate and up biases). vLLM and mlx-lm read it. **SGLang skips MLP biases it does not expect and "
            "TensorRT-LLM's DeciLM MLP has none: there the bias is lost and the model is not the one measured.** "
            "Prune with `--reconstruct none` (or fine-prune) for a model that every runtime runs the same."
            if mlp_bias else "No MLP biases: every runtime below runs the same model.")
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation",
        "tags:", "- ffnprune", "- pruned", "- nemotron-nas", "---", "",
        f"# {name}", "",
        f"{source} with MLP neurons pruned by [ffnprune](https://pypi.org/project/ffnprune/), written in NVIDIA's "
        "Nemotron-NAS (\"DeciLM\") config dialect, whose `block_configs` give every layer its own MLP width.", "",
        f"MLP widths per layer: {', '.join(map(str, widths))}"
        + (f" (layers {', '.join(map(str, no_op))} have no MLP: `ffn.no_op`)" if no_op else ""), "",
        "| runtime | how | status |", "|---|---|---|",
        f"| vLLM | `vllm serve {name} --trust-remote-code` | reads `block_configs` (models/nemotron_nas.py); not run "
        "by ffnprune |",
        f"| SGLang | `python -m sglang.launch_server --model-path {name} --trust-remote-code` | reads `block_configs`; "
        "drops MLP biases; not run by ffnprune |",
        "| TensorRT-LLM | its DeciLM / Nemotron-NAS checkpoint conversion | no MLP bias; not run by ffnprune |",
        f"| MLX | `mlx_lm.generate --model {name} --prompt ...` | tested by ffnprune: logits equal transformers' |",
        "", bias, "",
        f"`{CONFIG_FILE}` is the configuration class the servers load with `--trust-remote-code` (transformers only). "
        "transformers itself has no Nemotron-NAS model class: load the pruned directory this came from "
        "(`trust_remote_code=True`) to run it in transformers. `pruning.json` holds the pruning recipe.", "",
    ]
    return "\n".join(lines)


def read_block_widths(directory: str | os.PathLike) -> list[int]:
    """The widths a runtime builds from an export's config.json (0 for a no_op layer)."""
    values = json.loads((Path(directory) / "config.json").read_text())
    return [0 if block["ffn"].get("no_op") else runtime_width(block["ffn"]["ffn_mult"], values["hidden_size"])
            for block in values["block_configs"]]

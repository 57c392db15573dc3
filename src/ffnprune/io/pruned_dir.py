"""The pruned-model directory: safetensors weights, tokenizer, config with per-layer widths, pruning.json, and a
self-contained modelling file, so that the model loads with or without ffnprune installed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import transformers
from torch import nn

from ffnprune.adapters import adapter_for
from ffnprune.compaction import base_class, pad_mlps
from ffnprune.errors import FfnpruneError
from ffnprune.io import remote_modeling
from ffnprune.io.atomic import atomic_directory, write_json_atomic
from ffnprune.io.model_card import header_summary, model_card
from ffnprune.io.strict_load import from_pretrained_strictly

METADATA_FILE = "pruning.json"
CARD_FILE = "README.md"


def _save_plain(model: nn.Module, tokenizer, directory: Path, stream=None) -> None:
    """save_pretrained; a streamed model's layers were written already (io.streamed): only the rest is saved here,
    then the layer shards join it."""
    model.save_pretrained(directory, state_dict=None if stream is None else stream.outside_layers())
    if stream is not None:
        stream.finish(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def save_pruned(model: nn.Module, tokenizer, out: str | os.PathLike, metadata: dict, overwrite: bool = False,
                extra_files: dict[str, Path] | None = None, dtype: str | None = None, stream=None) -> Path:
    """Save a compacted model (see compaction.compact_mlps) atomically, with `extra_files` (name -> source file or
    directory) copied beside it; returns the directory. `dtype` (float32, bfloat16, float16; default: the model's
    own) is what the weights are stored in, as `ffnprune prune --dtype` (whose default for a GGUF source is
    bfloat16); the model in memory keeps its dtype."""
    spec = getattr(model.config, "ffnprune", None)
    if spec is None:
        raise ValueError("the model has not been compacted (config.ffnprune is missing); call compact_mlps first")
    computed = next(model.parameters()).dtype
    try:
        if dtype is not None:
            model.to(getattr(torch, dtype))
        return _save_pruned(model, tokenizer, out, metadata, overwrite, extra_files, spec, stream)
    finally:
        model.to(computed)


def _save_pruned(model, tokenizer, out, metadata, overwrite, extra_files, spec, stream=None) -> Path:
    with atomic_directory(out, overwrite) as staging:
        _save_plain(model, tokenizer, staging, stream)  # the pruned class writes its modelling file and auto_map
        write_json_atomic(staging / METADATA_FILE, {**metadata, "mlp_widths": spec["mlp_widths"]})
        (staging / CARD_FILE).write_text(model_card(metadata, spec["mlp_widths"], Path(out).name))
        stamp_safetensors(staging, header_summary(metadata, spec["mlp_widths"]))
        for name, source in (extra_files or {}).items():
            if Path(source).is_dir():
                shutil.copytree(source, staging / name)
            else:
                shutil.copyfile(source, staging / name)
    return Path(out)


def is_pruned_directory(directory: str | os.PathLike) -> bool:
    """Whether config.json carries ffnprune's per-layer widths (read as JSON: the stock config class refuses it)."""
    try:
        return "ffnprune" in json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError):
        return False


def stamp_safetensors(directory: Path, summary: dict[str, str]) -> None:
    """Add the pruning summary to the header of every safetensors file in `directory` (tools that read only the
    weights still see what they are). Only the header is rewritten; the tensor bytes are streamed across as they are
    (their offsets count from the header's end), so no tensor is read into memory."""
    for path in sorted(directory.glob("*.safetensors")):
        with path.open("rb") as source:
            length = int.from_bytes(source.read(8), "little")
            header = json.loads(source.read(length))
            header["__metadata__"] = {**header.get("__metadata__", {}), **summary}
            encoded = json.dumps(header, separators=(",", ":")).encode()
            encoded += b" " * (-len(encoded) % 8)  # keep the tensor data 8-byte aligned
            staged = path.with_name(path.name + ".stamping")
            with staged.open("wb") as target:
                target.write(len(encoded).to_bytes(8, "little") + encoded)
                shutil.copyfileobj(source, target, 16 * 2**20)
        os.replace(staged, path)


def read_metadata(directory: str | os.PathLike) -> dict:
    path = Path(directory) / METADATA_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def load_pruned(directory: str | os.PathLike, **from_pretrained_kwargs) -> nn.Module:
    """Load a model saved by save_pruned with ffnprune's own copy of the modelling code (no remote code)."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FfnpruneError(f"{directory} is not a model directory (no config.json); give the --out of a prune run")
    try:
        config = remote_modeling.FfnprunedConfig.from_pretrained(directory)
    except (OSError, ValueError, KeyError) as error:
        raise FfnpruneError(f"could not read {directory / 'config.json'}: {error}") from error
    spec = getattr(config, "ffnprune", None)
    if spec is None:
        raise FfnpruneError(
            f"{directory} holds a model that ffnprune did not prune (config.json has no 'ffnprune' entry); "
            "load it with transformers' from_pretrained, or pass it as MODEL to ffnprune"
        )
    adapter_for(config)
    model_class = remote_modeling.pruned_causal_lm(getattr(transformers, spec["base_class"]))
    failure = (f"could not load the pruned model in {directory}: {{error}}. The weights may be incomplete or corrupt; "
               "prune again or restore the directory from a copy")
    return from_pretrained_strictly(model_class, directory, failure, config=config, **from_pretrained_kwargs)


def export_uniform(directory: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Pad every layer with zero neurons to the widest layer's width and save as a plain transformers model."""
    model = load_pruned(directory)
    tokenizer = _load_tokenizer(directory, model.config)
    adapter = adapter_for(model.config)
    spec = model.config.ffnprune
    width = max(1, *spec["mlp_widths"])  # a width of 0 everywhere would not build in every architecture
    if spec.get("output_bias"):
        _stock_mlp_bias(model, adapter, directory)
    pad_mlps(model, adapter, width)
    # Now an ordinary model of its architecture: save it as one, in that architecture's checkpoint format.
    model.__class__ = base_class(model)
    setattr(model.config, adapter.width_key, width)
    del model.config.ffnprune
    del model.config.auto_map
    metadata = {
        **read_metadata(directory),
        "parameters_after": model.num_parameters(),  # as stored: padding and zero input biases included
        "uniform_export": {"from": str(directory), "width": width, "kept_widths": spec["mlp_widths"],
                           "note": "padded neurons have zero weights and biases and contribute exactly 0"},
    }
    with atomic_directory(out, overwrite) as staging:
        _save_plain(model, tokenizer, staging)
        _add_legacy_rope_keys(staging / "config.json")
        write_json_atomic(staging / METADATA_FILE, metadata)
        (staging / CARD_FILE).write_text(model_card(metadata, [width] * len(spec["mlp_widths"]), Path(out).name,
                                                    remote_code=False))
    return Path(out)


def _add_legacy_rope_keys(path: Path) -> None:
    """transformers 5 saves the rotary settings as `rope_parameters` only; runtimes that read configs themselves
    (mlx-lm 0.32, older vLLM and converters) read `rope_theta` and `rope_scaling`, and without them take their own
    default base: the stock export spells both (Gemma 3's local base as `rope_local_base_freq`)."""
    values = json.loads(path.read_text())
    rope = values.get("rope_parameters") or {}
    if "full_attention" in rope:  # per attention kind (Gemma 3)
        values.setdefault("rope_local_base_freq", rope.get("sliding_attention", {}).get("rope_theta"))
        rope = rope["full_attention"]
    if "rope_theta" in rope:
        values.setdefault("rope_theta", rope["rope_theta"])
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        values.setdefault("rope_scaling", scaling if scaling.get("rope_type", "default") != "default" else None)
    write_json_atomic(path, values)


def _stock_mlp_bias(model: nn.Module, adapter, directory) -> None:
    """A stock config can carry the output bias that one-shot reconstruction added only through `mlp_bias`, which
    gives every MLP projection a bias: the input projections get zero ones, which change nothing."""
    if not hasattr(model.config, "mlp_bias"):
        raise FfnpruneError(
            f"{directory} carries an MLP output bias added by reconstruction, and the stock {model.config.model_type} "
            "architecture has no MLP bias to hold it; load the pruned directory itself (trust_remote_code or "
            "ffnprune.load_pruned), or prune with --reconstruct none"
        )
    model.config.mlp_bias = True
    for layer in adapter.decoder_layers(model):
        for projection in adapter.input_projections(layer):
            if projection.bias is None:
                projection.bias = nn.Parameter(projection.weight.new_zeros(projection.weight.shape[0]))


def _load_tokenizer(directory: str | os.PathLike, config):
    try:  # with the model's config: transformers would otherwise ask whether to run the directory's config code
        return transformers.AutoTokenizer.from_pretrained(directory, config=config)
    except (OSError, ValueError):
        return None  # a model saved without a tokenizer stays usable

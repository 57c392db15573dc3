"""GGUF files for llama.cpp, written with the `gguf` package.

llama.cpp's `llama` architecture builds every layer at one MLP width (layer 0's), so a model whose layers kept
different numbers of neurons is written as the `deci` architecture, whose `feed_forward_length` is a per-layer
array (llama.cpp `src/models/deci.cpp`); equal widths are written as plain `llama`. Both read an optional
`ffn_down.bias`, which carries the output bias that one-shot reconstruction adds. Every parameter of the model must
find its place in the file: anything left over (an attention bias, a q/k norm) is an error, never dropped. Gemma 2,
Gemma 3 and Phi-3 are written as llama.cpp's own architectures (io/gguf_families.py). K-quant outtypes (q4_k_m,
q5_k_m, q6_k) are llama.cpp's own mixtures: an F16 file is written, then run through its quantiser.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType, TokenType
from gguf.constants import GGML_QUANT_SIZES, GGML_QUANT_VERSION
from gguf.quants import quantize
from gguf.vocab import BpeVocab, SpecialVocab

from ffnprune.adapters import adapter_for
from ffnprune.errors import FfnpruneError
from ffnprune.io.atomic import PARTIAL_MARK, atomic_file, check_writable
from ffnprune.io.gguf_families import FAMILIES, check_no_bias, family_tensors
from ffnprune.io.model_card import header_summary
from ffnprune.io.pruned_dir import read_metadata

logger = logging.getLogger("ffnprune")

OUTTYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "bf16": (GGMLQuantizationType.BF16, LlamaFileType.MOSTLY_BF16),
    "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
# K-quant mixtures, made by llama.cpp's own quantiser (llama-cpp-python) from an F16 file: its llama_ftype names.
QUANTISER_OUTTYPES = {"q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
                      "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
GGUF_MODEL_TYPES = ("llama", "mistral")  # the transformers classes whose layers are llama.cpp's llama/deci blocks
# tokenizer.json pre-tokenizers that llama.cpp knows by name; others need the tokenizer of a GGUF of the same model.
KNOWN_PRE_TOKENIZERS = {json.dumps({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                    "use_regex": True}, sort_keys=True): "gpt-2"}


@dataclass
class GgufExport:
    """What was written: the file, its llama.cpp architecture, the MLP widths, and the tensors stored in F16
    because their rows do not split into the outtype's blocks."""

    path: Path
    architecture: str
    outtype: str
    mlp_widths: list[int]
    tokenizer_from: str
    kept_in_f16: list[str] = field(default_factory=list)
    tensor_types: dict[str, int] = field(default_factory=dict)  # GGML type -> tensors of it (K-quant mixtures)


def check_gguf_output(out: str | os.PathLike, overwrite: bool) -> Path:
    out = check_writable(out)
    if out.suffix != ".gguf":
        raise FfnpruneError(f"--out {out} must be a file name ending in .gguf")
    if out.exists() and (out.is_dir() or not overwrite):
        raise FfnpruneError(f"output {out} already exists; pass --overwrite to replace it, or choose another --out")
    return out


def check_quantiser(outtype: str) -> None:
    """The K-quant outtypes need llama.cpp's quantiser, which llama-cpp-python brings."""
    if outtype in QUANTISER_OUTTYPES and importlib.util.find_spec("llama_cpp") is None:
        raise FfnpruneError(
            f"--outtype {outtype} runs llama.cpp's quantiser, which comes with llama-cpp-python, not installed here: "
            "pip install 'ffnprune[llama-cpp]' (compiles llama.cpp, about 35 min on 2 cores), or choose --outtype "
            "q8_0, f16, bf16 or f32, which ffnprune writes itself"
        )


def export_gguf(model, tokenizer, out: str | os.PathLike, outtype: str = "f16", *, location: str | None = None,
                tokenizer_from: str | os.PathLike | None = None, overwrite: bool = False) -> GgufExport:
    """Write `model` (dense or compacted, any MLP widths) with its tokenizer as one GGUF file.

    The tokenizer is copied from `tokenizer_from` (a GGUF file of the same model), else from the GGUF the model was
    read from (`location`, or the source recorded in the pruned directory at `location`), else built from
    `tokenizer` (byte-level BPE). A K-quant outtype is written as F16 first, then quantised by llama.cpp."""
    out = check_gguf_output(out, overwrite)
    check_quantiser(outtype)
    if outtype in QUANTISER_OUTTYPES:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}{PARTIAL_MARK}f16-") as scratch:
            f16 = export_gguf(model, tokenizer, Path(scratch) / out.name, "f16", location=location,
                              tokenizer_from=tokenizer_from)
            with atomic_file(out) as staging:
                _quantise(f16.path, staging, outtype)
            types = Counter(GGMLQuantizationType(t.tensor_type).name for t in GGUFReader(out).tensors)
        return GgufExport(out, f16.architecture, outtype, f16.mlp_widths, f16.tokenizer_from,
                          tensor_types=dict(sorted(types.items())))
    config = model.config
    family = FAMILIES.get(getattr(config, "model_type", None))
    check_exportable(config)
    widths = adapter_for(config).mlp_widths(model)
    if family is not None:
        check_no_bias(model, family)
        architecture = family.architecture
    else:
        architecture = "llama" if len(set(widths)) == 1 and widths[0] > 0 else "deci"
    metadata = read_metadata(location) if location and Path(location).is_dir() else {}
    gguf_source = _tokenizer_gguf(tokenizer_from, location, metadata)
    result = GgufExport(out, architecture, outtype, widths, str(gguf_source or "tokenizer.json"))
    with atomic_file(out) as staging:
        writer = GGUFWriter(staging, architecture)
        _write_file_type(writer, outtype, Path(out).stem)
        if family is not None:
            family.hyperparameters(writer, config)
            writer.add_feed_forward_length(max(1, *widths))  # one width: narrower layers padded with zero neurons
            tensors = family_tensors(model, family, max(1, *widths))
        else:
            _write_hyperparameters(writer, config, widths)
            tensors = _gguf_tensors(model, widths)
        for name, value in header_summary(metadata, widths).items():
            writer.add_string(f"{name}.summary", value)
        if gguf_source is not None:
            _copy_tokenizer(writer, gguf_source, config.vocab_size)
        else:
            _build_tokenizer(writer, tokenizer, config.vocab_size)
        for name, tensor in tensors:
            _add_tensor(writer, name, tensor, outtype, result)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    if any(width % 32 for width in widths):
        logger.info("MLP widths that are not multiples of 32 run slowly in llama.cpp (measured: GUM's 723-948 "
                    "prefilled at 0.75-1.09x the dense speed, 1.32-1.43x once pruned with --round-to 32)")
    if result.kept_in_f16:
        logger.info("%d tensors kept in F16: their rows do not split into %s blocks of %d (prune with --round-to "
                    "32 to avoid this): %s", len(result.kept_in_f16), outtype,
                    GGML_QUANT_SIZES[OUTTYPES[outtype][0]][0], ", ".join(result.kept_in_f16[:4]))
    return result


def _quantise(source: Path, target: Path, outtype: str) -> None:
    """llama.cpp's llama_model_quantize: its K-quant mixture, with its own fallbacks for rows that do not split into
    256-value blocks."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTISER_OUTTYPES[outtype])
    params.nthread = os.cpu_count() or 1
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    if code != 0:
        raise FfnpruneError(f"llama.cpp's quantiser failed on {source.name} (code {code}); its log above says why")


def check_exportable(config) -> None:
    """llama.cpp's blocks hold this model exactly, or an error says what they cannot hold."""
    model_type = getattr(config, "model_type", None)  # a loaded pruned model has its source's config class
    if model_type in FAMILIES:
        FAMILIES[model_type].check(config)
        return
    if model_type not in GGUF_MODEL_TYPES:
        raise FfnpruneError(
            f"GGUF export writes llama.cpp's llama/deci architectures, which hold {', '.join(GGUF_MODEL_TYPES)} "
            f"models, and its {', '.join(f.architecture for f in FAMILIES.values())} ones, not {model_type!r}; for "
            f"a {model_type} model with equal widths use `export --format uniform` and llama.cpp's "
            "convert_hf_to_gguf.py"
        )
    activation = getattr(config, "hidden_act", "silu")
    if activation != "silu":
        raise FfnpruneError(f"GGUF export: this model's MLP uses hidden_act {activation!r}, and llama.cpp's llama/deci "
                            "blocks always apply SiLU: it would run as a different model. Only SiLU-gated models "
                            "export to GGUF")
    rope = _rope(config)
    if rope.get("rope_type", "default") != "default":
        raise FfnpruneError(f"GGUF export: rope scaling {rope.get('rope_type')!r} is not written yet; only models "
                            "with plain rotary embeddings (rope_type 'default') export")
    if getattr(config, "attention_bias", False):
        raise FfnpruneError("GGUF export: this model has attention biases, which llama.cpp's llama/deci blocks do "
                            "not read")


def _rope(config) -> dict:
    parameters = getattr(config, "rope_parameters", None)
    if parameters:
        return dict(parameters)
    return {"rope_theta": getattr(config, "rope_theta", 10000.0),
            **({"rope_type": config.rope_scaling.get("rope_type", config.rope_scaling.get("type"))}
               if getattr(config, "rope_scaling", None) else {})}


def _write_file_type(writer: GGUFWriter, outtype: str, name: str) -> None:
    writer.add_name(name)
    writer.add_file_type(OUTTYPES[outtype][1])
    if outtype == "q8_0":
        writer.add_quantization_version(GGML_QUANT_VERSION)


def _write_hyperparameters(writer: GGUFWriter, config, widths: list[int]) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(_exact_context(config))
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    # A layer of width 0 is stored with one zero neuron: deci's FFN-free layers also skip the attention residual.
    writer.add_feed_forward_length(widths[0] if len(set(widths)) == 1 else [max(1, w) for w in widths])
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(_rope(config)["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _exact_context(config) -> int:
    """The longest context llama.cpp computes as transformers does: llama/deci attend to every earlier token, so a
    Mistral-style sliding window bounds it (llama.cpp warns when asked for more than this)."""
    window = getattr(config, "sliding_window", None)
    if window and window < config.max_position_embeddings:
        logger.info("the model attends within a sliding window of %d tokens, which llama.cpp's llama/deci blocks do "
                    "not apply: the file's context length is set to %d, within which both agree", window, window)
        return window
    return config.max_position_embeddings


def _permute_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers rotates the two halves of each head; llama.cpp (rope type NORM) rotates adjacent pairs: reorder
    the rows of q_proj/k_proj so that each head's halves interleave (as llama.cpp's converter does)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _gguf_tensors(model, widths: list[int]):
    """(GGUF name, tensor) for every parameter; a parameter with no place in the llama/deci blocks is an error."""
    config = model.config
    named = dict(model.named_parameters())
    written: set[str] = set()

    def take(name: str) -> torch.Tensor:
        written.add(name)
        return named[name].detach()

    yield "token_embd.weight", take("model.embed_tokens.weight")
    yield "output_norm.weight", take("model.norm.weight")
    if "lm_head.weight" in named:  # absent when tied to the embedding (llama.cpp then reuses token_embd)
        yield "output.weight", take("lm_head.weight")
    for index, _ in enumerate(model.model.layers):
        prefix, block = f"model.layers.{index}.", f"blk.{index}."
        yield block + "attn_norm.weight", take(prefix + "input_layernorm.weight")
        yield block + "attn_q.weight", _permute_rotary(take(prefix + "self_attn.q_proj.weight"),
                                                       config.num_attention_heads)
        yield block + "attn_k.weight", _permute_rotary(take(prefix + "self_attn.k_proj.weight"),
                                                       config.num_key_value_heads)
        yield block + "attn_v.weight", take(prefix + "self_attn.v_proj.weight")
        yield block + "attn_output.weight", take(prefix + "self_attn.o_proj.weight")
        yield block + "ffn_norm.weight", take(prefix + "post_attention_layernorm.weight")
        gate, up, down = (take(prefix + f"mlp.{p}_proj.weight") for p in ("gate", "up", "down"))
        if widths[index] == 0:
            gate, up, down = gate.new_zeros(1, gate.shape[1]), up.new_zeros(1, up.shape[1]), down.new_zeros(
                down.shape[0], 1)
        yield block + "ffn_gate.weight", gate
        yield block + "ffn_up.weight", up
        yield block + "ffn_down.weight", down
        for projection, gguf_name in (("gate", "ffn_gate"), ("up", "ffn_up")):
            if prefix + f"mlp.{projection}_proj.bias" in named:
                bias = take(prefix + f"mlp.{projection}_proj.bias")
                if bias.any():
                    raise FfnpruneError(f"GGUF export: {prefix}mlp.{projection}_proj.bias is not zero; llama.cpp "
                                        "would read it, but ffnprune does not write input-projection biases")
        if prefix + "mlp.down_proj.bias" in named:
            yield block + "ffn_down.bias", take(prefix + "mlp.down_proj.bias")
    left = sorted(set(named) - written)
    if left:
        raise FfnpruneError(f"GGUF export: {len(left)} parameters have no place in llama.cpp's llama/deci blocks "
                            f"({', '.join(left[:5])}); this model cannot be exported to GGUF as it is")


def _add_tensor(writer: GGUFWriter, name: str, tensor: torch.Tensor, outtype: str, result: GgufExport) -> None:
    """Vectors (norms, biases) stay F32, as in llama.cpp's converter; matrices take the outtype, or F16 when a row
    does not split into the outtype's blocks (Q8_0: 32 values)."""
    data = tensor.to(torch.float32).cpu().numpy()
    kind = OUTTYPES[outtype][0] if data.ndim > 1 else GGMLQuantizationType.F32
    block = GGML_QUANT_SIZES[kind][0]
    if data.shape[-1] % block:
        kind = GGMLQuantizationType.F16
        result.kept_in_f16.append(name)
    if kind == GGMLQuantizationType.F32:
        writer.add_tensor(name, data)
    else:
        writer.add_tensor(name, quantize(data, kind), raw_dtype=kind)


def check_tokenizer_gguf(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file() or path.suffix != ".gguf":
        raise FfnpruneError(f"--tokenizer-from {path} is not a .gguf file; give a GGUF file of the same model")
    return path


def _tokenizer_gguf(tokenizer_from, location, metadata: dict) -> Path | None:
    if tokenizer_from is not None:
        return check_tokenizer_gguf(tokenizer_from)
    for candidate in (location, metadata.get("source_location")):
        if candidate and str(candidate).endswith(".gguf") and Path(candidate).is_file():
            return Path(candidate)
    return None


def _copy_tokenizer(writer: GGUFWriter, source: Path, vocab_size: int) -> None:
    """Every tokenizer.* entry of a GGUF file of the same model, as stored there."""
    try:
        reader = GGUFReader(source)
    except Exception as error:  # the reader raises many types for a damaged file
        raise FfnpruneError(f"could not read the tokenizer from {source}: {error}") from error
    fields = {name: entry for name, entry in reader.fields.items() if name.startswith("tokenizer.")}
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != vocab_size:
        found = "no tokens" if tokens is None else f"{len(tokens.data)} tokens"
        raise FfnpruneError(f"the tokenizer in {source} ({found}) does not fit the model's {vocab_size} embeddings; "
                            "give --tokenizer-from a GGUF file of the same model")
    for name, entry in fields.items():
        kind = entry.types[0]
        sub_type = entry.types[1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(name, entry.contents(), kind, sub_type)


def _build_tokenizer(writer: GGUFWriter, tokenizer, vocab_size: int) -> None:
    """A byte-level BPE tokenizer as llama.cpp's gpt2 tokenizer, read by gguf's own vocabulary readers from the files
    the loaded tokenizer saves (whatever it was loaded from: a directory, the hub, a GGUF file)."""
    if tokenizer is None:
        raise FfnpruneError("GGUF export needs the model's tokenizer: give a model saved with its tokenizer, or "
                            "--tokenizer-from a GGUF file of the same model")
    with tempfile.TemporaryDirectory() as saved:
        directory = Path(saved)
        tokenizer.save_pretrained(directory)
        _write_bpe_tokenizer(writer, directory, vocab_size)


def _write_bpe_tokenizer(writer: GGUFWriter, directory: Path, vocab_size: int) -> None:
    tokenizer_json = directory / "tokenizer.json"
    try:
        pre_tokenizer = json.loads(tokenizer_json.read_text()).get("pre_tokenizer")
        vocab = BpeVocab(directory)
    except (OSError, ValueError, KeyError) as error:
        raise FfnpruneError(f"GGUF export builds byte-level BPE tokenizers, and the model's tokenizer is not one "
                            f"({error}); give --tokenizer-from a GGUF file of the same model") from error
    pre = KNOWN_PRE_TOKENIZERS.get(json.dumps(pre_tokenizer, sort_keys=True))
    if pre is None:
        raise FfnpruneError(
            f"the tokenizer's pre-tokenizer ({pre_tokenizer and pre_tokenizer.get('type')}) is not one ffnprune can "
            "name for llama.cpp (it would split text differently from transformers); give --tokenizer-from a GGUF "
            "file of the same model"
        )
    tokens, types = [], []
    for text, _, kind in vocab.all_tokens():
        tokens.append(text)
        types.append(kind)
    if len(tokens) > vocab_size:
        raise FfnpruneError(f"the tokenizer has {len(tokens)} tokens for the model's {vocab_size} embeddings")
    for index in range(len(tokens), vocab_size):  # embedding rows no token uses
        tokens.append(f"[PAD{index}]")
        types.append(TokenType.UNUSED)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    SpecialVocab(directory, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer, quiet=True)


__all__ = ["OUTTYPES", "QUANTISER_OUTTYPES", "GgufExport", "check_exportable", "check_gguf_output", "check_quantiser",
           "check_tokenizer_gguf", "export_gguf"]

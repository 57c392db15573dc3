"""`ffnprune export`: a pruned model in the formats other tools load (a stock transformers checkpoint, GGUF)."""

from __future__ import annotations

from pathlib import Path

from ffnprune.config import ExportConfig, flag
from ffnprune.errors import FfnpruneError
from ffnprune.io.atomic import check_not_inside, check_output_dir


def export(config: ExportConfig) -> str:
    """Export as the config says (options are checked before any model loads); returns what to tell the user."""
    if config.format is None:
        raise FfnpruneError("export needs a format: --format uniform (a stock transformers checkpoint), --format "
                            "gguf (a llama.cpp file) or --format nemotron-nas (vLLM, SGLang, TensorRT-LLM, MLX)")
    if config.out is None:
        raise FfnpruneError(f"export needs --out ({'a .gguf file' if config.format == 'gguf' else 'a directory'})")
    if config.model is None:
        raise FfnpruneError("export needs the model to export (a pruned directory)")
    if Path(config.model).expanduser().exists():
        check_not_inside(config.out, config.model)
    if config.format == "uniform":
        return _export_uniform(config)
    if config.format == "nemotron-nas":
        return _export_nemotron_nas(config)
    return _export_gguf(config)


def _check_directory_output(config: ExportConfig) -> None:
    for name in ("outtype", "tokenizer_from"):
        if getattr(config, name) is not None:
            raise FfnpruneError(f"{flag(name)} applies to --format gguf only")
    if Path(config.out).suffix == ".gguf":
        raise FfnpruneError(f"--out {config.out} names a GGUF file, and --format {config.format} writes a directory; "
                            "use --format gguf for a GGUF file, or another --out")
    check_output_dir(config.out, config.overwrite)


def _export_uniform(config: ExportConfig) -> str:
    from ffnprune.io.pruned_dir import export_uniform

    _check_directory_output(config)
    out = export_uniform(config.model, config.out, overwrite=config.overwrite)
    return f"saved a uniform-width copy to {out}; it loads with plain from_pretrained"


def _export_gguf(config: ExportConfig) -> str:
    from ffnprune.io.gguf_export import check_gguf_output, check_quantiser, check_tokenizer_gguf, export_gguf
    from ffnprune.models import check_model_spec, load_model

    outtype = config.outtype or "f16"
    check_gguf_output(config.out, config.overwrite)
    check_quantiser(outtype)
    if config.tokenizer_from is not None:
        check_tokenizer_gguf(config.tokenizer_from)
    check_model_spec(config.model)
    loaded = load_model(config.model)
    written = export_gguf(loaded.model, loaded.tokenizer, config.out, outtype, location=loaded.location,
                          tokenizer_from=config.tokenizer_from, overwrite=config.overwrite)
    widths = written.mlp_widths
    shown = f"{widths[0]}" if len(set(widths)) == 1 else f"{min(widths)}-{max(widths)} per layer"
    types = f" ({', '.join(f'{n} {t}' for t, n in written.tensor_types.items())})" if written.tensor_types else ""
    return (f"saved {written.path} ({written.architecture} architecture, MLP width {shown}, {outtype}{types}, "
            f"tokenizer from {written.tokenizer_from}); "
            f"run it with llama.cpp: llama-cli -m {written.path}")


def _export_nemotron_nas(config: ExportConfig) -> str:
    from ffnprune.io.nemotron_nas import check_exportable, export_nemotron_nas
    from ffnprune.models import check_model_spec, load_model, peek_config

    _check_directory_output(config)
    check_model_spec(config.model)
    peeked = peek_config(config.model)  # refuse before the weights load where the config can be read alone
    if peeked is not None:
        check_exportable(*peeked)
    loaded = load_model(config.model)
    written = export_nemotron_nas(loaded.model, loaded.tokenizer, config.out, location=loaded.location,
                                  dtype=loaded.source_dtype or "bfloat16", overwrite=config.overwrite)
    dropped = f"; layers {written.no_op_layers} have no MLP (ffn.no_op)" if written.no_op_layers else ""
    return (f"saved a Nemotron-NAS checkpoint to {written.path} (MLP widths {written.mlp_widths}{dropped}); "
            f"serve it with vLLM or SGLang (--trust-remote-code) or MLX: mlx_lm.generate --model {written.path}")

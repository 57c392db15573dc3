"""`ffnprune export`: a pruned model in the formats other tools load (a stock transformers checkpoint, GGUF)."""

from __future__ import annotations

from pathlib import Path

from ffnprune.config import ExportConfig, flag
from ffnprune.errors import FfnpruneError
from ffnprune.io.atomic import check_not_inside


def export(config: ExportConfig) -> str:
    """Export as the config says (options are checked before any model loads); returns what to tell the user."""
    if config.format is None:
        raise FfnpruneError("export needs a format: --format uniform (a stock transformers checkpoint) or --format "
                            "gguf (a llama.cpp file)")
    if config.out is None:
        raise FfnpruneError(f"export needs --out ({'a .gguf file' if config.format == 'gguf' else 'a directory'})")
    if config.model is None:
        raise FfnpruneError("export needs the model to export (a pruned directory)")
    if Path(config.model).expanduser().exists():
        check_not_inside(config.out, config.model)
    if config.format == "uniform":
        return _export_uniform(config)
    return _export_gguf(config)


def _export_uniform(config: ExportConfig) -> str:
    from ffnprune.io.pruned_dir import export_uniform

    for name in ("outtype", "tokenizer_from"):
        if getattr(config, name) is not None:
            raise FfnpruneError(f"{flag(name)} applies to --format gguf only")
    if Path(config.out).suffix == ".gguf":
        raise FfnpruneError(f"--out {config.out} names a GGUF file, and --format uniform writes a directory; use "
                            "--format gguf for a GGUF file, or another --out")
    out = export_uniform(config.model, config.out, overwrite=config.overwrite)
    return f"saved a uniform-width copy to {out}; it loads with plain from_pretrained"


def _export_gguf(config: ExportConfig) -> str:
    from ffnprune.io.gguf_export import check_gguf_output, check_tokenizer_gguf, export_gguf
    from ffnprune.models import check_model_spec, load_model

    outtype = config.outtype or "f16"
    check_gguf_output(config.out, config.overwrite)
    if config.tokenizer_from is not None:
        check_tokenizer_gguf(config.tokenizer_from)
    check_model_spec(config.model)
    loaded = load_model(config.model)
    written = export_gguf(loaded.model, loaded.tokenizer, config.out, outtype, location=loaded.location,
                          tokenizer_from=config.tokenizer_from, overwrite=config.overwrite)
    widths = written.mlp_widths
    shown = f"{widths[0]}" if len(set(widths)) == 1 else f"{min(widths)}-{max(widths)} per layer"
    return (f"saved {written.path} ({written.architecture} architecture, MLP width {shown}, {outtype}, tokenizer "
            f"from {written.tokenizer_from}); "
            f"run it with llama.cpp: llama-cli -m {written.path}")

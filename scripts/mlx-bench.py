"""Pruned SmolLM2 exported for MLX and run in mlx-lm: WikiText perplexity in MLX beside transformers' on the same
token ids and blocks, for the Nemotron-NAS export (per-layer widths) and the uniform export. Writes results.json and
table.md. Needs `make test-mlx` (or pip install 'ffnprune[mlx]').

    .venv/bin/python scripts/mlx-bench.py --models dense=smollm2-135m obs=out/serving/obs \
        obs-global-256=out/serving/obs-global-256
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from ffnprune.io.nemotron_nas import export_nemotron_nas
from ffnprune.io.pruned_dir import export_uniform, is_pruned_directory
from ffnprune.metrics.perplexity import block_perplexity, causal_lm_loss, token_ids
from ffnprune.models import load_model
from ffnprune.tasks.examples import Examples
from ffnprune.tasks.wikitext import read_wikitext


def mlx_perplexity(directory: Path, blocks: torch.Tensor, dtype: str) -> tuple[float, float]:
    """(perplexity, tokens/s) in mlx-lm over the same blocks as block_perplexity, computed in `dtype`."""
    import mlx.core as mx
    from mlx_lm.utils import load_model as mlx_load

    model, _ = mlx_load(directory)
    model.set_dtype(getattr(mx, dtype))
    nll, scored, start = 0.0, 0, time.perf_counter()
    for block in blocks:
        logits = model(mx.array(block[None].numpy())).astype(mx.float32)
        mx.eval(logits)
        nll += causal_lm_loss(torch.from_numpy(np.array(logits)), block[None], reduction="sum").item()
        scored += len(block) - 1
    return math.exp(nll / scored), blocks.numel() / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="NAME=MODEL pairs (LLaMA family)")
    parser.add_argument("--data", help="WikiText folder (default: ../shared/data)")
    parser.add_argument("--max-tokens", type=int, default=2048, help="MLX's CPU build runs ~7 tokens/s here")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--files", default="out/serving/exports", help="where the exports are written")
    parser.add_argument("--exports", nargs="+", default=["nemotron-nas", "uniform"],
                        choices=["nemotron-nas", "uniform"])
    parser.add_argument("--out", default="results/serving")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows, ids = [], None
    for name, spec in (pair.split("=", 1) for pair in args.models):
        loaded = load_model(spec)
        if ids is None:
            text, data_path = read_wikitext(args.data, "test")
            ids = token_ids(loaded.tokenizer, text, args.max_tokens)
            blocks = Examples.blocks(ids, args.context).input_ids
        reference = block_perplexity(loaded.model, ids, args.context)["perplexity"]
        widths = loaded.adapter.mlp_widths(loaded.model)
        bias = any(loaded.adapter.output_projection(layer).bias is not None
                   for layer in loaded.adapter.decoder_layers(loaded.model))
        exports = {}
        if "nemotron-nas" in args.exports:
            exports["nemotron-nas"] = export_nemotron_nas(
                loaded.model, loaded.tokenizer, Path(args.files) / f"{name}-nemotron-nas", location=loaded.location,
                dtype=loaded.source_dtype or "bfloat16", overwrite=True).path
        if "uniform" in args.exports and is_pruned_directory(spec):
            exports["uniform"] = export_uniform(spec, Path(args.files) / f"{name}-uniform", overwrite=True)
        del loaded
        for kind, directory in exports.items():
            row = {"model": name, "source": spec, "export": kind, "directory": str(directory),
                   "mlp_widths": f"{min(widths)}-{max(widths)}", "mlp_bias": bias, "transformers_ppl": reference}
            row["mlx_ppl"], row["mlx_tokens_per_s"] = mlx_perplexity(directory, blocks, "float32")
            row["ppl_vs_transformers"] = row["mlx_ppl"] / reference - 1
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {
        "data": str(data_path), "split": "test",
        "protocol": {"perplexity": f"non-overlapping blocks of {args.context} tokens, the first {len(blocks)} blocks "
                                   f"of the first {args.max_tokens} tokens, the same ids in both runtimes, no BOS; "
                                   "both in float32 (MLX casts the export's stored weights)",
                     "speed": "MLX's CPU build on Linux, one block at a time: prefill tokens/s over the run (this "
                              "build runs about 7 tokens/s here; informative only, not the Apple-silicon speed)"},
        "versions": {p: version(p) for p in ("ffnprune", "mlx", "mlx-lm", "transformers", "torch")},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "mlx.json").exists():  # rows of earlier runs stay, unless this run measured them again
        measured = {(r["model"], r["export"]) for r in rows}
        earlier = json.loads((out / "mlx.json").read_text())["rows"]
        rows[:0] = [r for r in earlier if (r["model"], r["export"]) not in measured]
        result["rows"] = rows
    (out / "mlx.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| model | export | MLP widths | MLP bias | ppl transformers | ppl MLX | difference | MLX CPU tok/s |",
             "|" + "---|" * 8]
    for r in rows:
        lines.append(f"| {r['model']} | {r['export']} | {r['mlp_widths']} | {r['mlp_bias']} | "
                     f"{r['transformers_ppl']:.3f} | {r['mlx_ppl']:.3f} | {r['ppl_vs_transformers']:+.4%} | "
                     f"{r['mlx_tokens_per_s']:.1f} |")
    (out / "mlx.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

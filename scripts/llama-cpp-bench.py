"""Pruned and dense models exported to GGUF and run in llama.cpp (llama-cpp-python): WikiText perplexity beside the
transformers model's on the same token ids and blocks, and llama.cpp's prompt and generation speed, pruned against
dense at the same outtype, beside the FLOP ratio. Writes results.json and table.md.

    make bench-llama-cpp ARGS="--models dense=smollm2-135m gum=out/demo/gum obs=out/obs-bf16"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from ffnprune.analysis.footprint import footprint
from ffnprune.io.gguf_export import export_gguf
from ffnprune.metrics.perplexity import block_perplexity, causal_lm_loss, token_ids
from ffnprune.models import load_model
from ffnprune.tasks.examples import Examples
from ffnprune.tasks.wikitext import read_wikitext


def llama_cpp_perplexity(path: Path, blocks: torch.Tensor, threads: int) -> float:
    """The same blocks as block_perplexity: every token but each block's first is scored, no BOS added."""
    from llama_cpp import Llama

    model = Llama(str(path), n_ctx=blocks.shape[1], n_batch=blocks.shape[1], n_threads=threads, logits_all=True,
                  verbose=False)
    try:
        nll, scored = 0.0, 0
        for block in blocks:
            model.reset()
            model.eval(block.tolist())
            logits = torch.from_numpy(np.array(model.scores[: model.n_tokens]))
            nll += causal_lm_loss(logits[None], block[None], reduction="sum").item()
            scored += len(block) - 1
    finally:
        model.close()
    return math.exp(nll / scored)


def llama_cpp_speed(paths: dict[str, Path], prompt: list[int], new_tokens: int, repeats: int,
                    threads: int) -> dict[str, dict]:
    """Median tokens/s of prefill (the whole prompt in one batch) and of decode (one token at a time on the cache),
    the models timed in turns, each round in a rotated order, so that the machine's drift falls on all alike."""
    from llama_cpp import Llama

    models = {name: Llama(str(path), n_ctx=len(prompt) + new_tokens, n_batch=len(prompt), n_threads=threads,
                          n_threads_batch=threads, verbose=False) for name, path in paths.items()}
    times = {name: {"prefill": [], "decode": []} for name in paths}
    names = list(paths)
    decoded = (prompt * (new_tokens // len(prompt) + 1))[:new_tokens]  # fed one at a time after the prompt
    try:
        for round_ in range(repeats + 1):  # the first round warms up
            for name in names[round_ % len(names):] + names[: round_ % len(names)]:
                model = models[name]
                model.reset()
                start = time.perf_counter()
                model.eval(prompt)
                middle = time.perf_counter()
                for token in decoded:
                    model.eval([token])
                end = time.perf_counter()
                if round_:
                    times[name]["prefill"].append(len(prompt) / (middle - start))
                    times[name]["decode"].append(new_tokens / (end - middle))
    finally:
        for model in models.values():
            model.close()
    return {name: {"prefill_tokens_per_s": statistics.median(t["prefill"]),
                   "decode_tokens_per_s": statistics.median(t["decode"])} for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dense=smollm2-135m", "obs=out/obs-bf16",
                                                         "obs-global=out/obs-global", "gum=out/demo/gum",
                                                         "gum-uniform=out/gum-uniform"],
                        help="NAME=MODEL pairs; the first is the dense reference")
    parser.add_argument("--outtypes", nargs="+", default=["f32", "f16", "q8_0"])
    parser.add_argument("--data", help="WikiText folder (default: ../shared/data)")
    parser.add_argument("--max-tokens", type=int, default=16384)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--prompt", type=int, default=256, help="prompt tokens of the speed runs")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--files", default="out/gguf", help="where the GGUF files are written")
    parser.add_argument("--out", default="results/gguf")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)

    models = dict(pair.split("=", 1) for pair in args.models)
    dense_name = next(iter(models))
    rows, ids = [], None
    for name, spec in models.items():
        loaded = load_model(spec)
        if ids is None:
            text, data_path = read_wikitext(args.data, "test")
            ids = token_ids(loaded.tokenizer, text, args.max_tokens)
            blocks = Examples.blocks(ids, args.context).input_ids
        size = footprint(loaded.model, loaded.adapter, args.prompt)
        transformers_ppl = block_perplexity(loaded.model, ids, args.context)["perplexity"]
        for outtype in args.outtypes:
            path = Path(args.files) / f"{name}-{outtype}.gguf"
            written = export_gguf(loaded.model, loaded.tokenizer, path, outtype, location=loaded.location,
                                  overwrite=True)
            row = {"model": name, "source": spec, "outtype": outtype, "file": str(path),
                   "gguf_architecture": written.architecture,
                   "mlp_widths": f"{min(written.mlp_widths)}-{max(written.mlp_widths)}",
                   "kept_in_f16": len(written.kept_in_f16), "file_mb": round(path.stat().st_size / 2**20, 1),
                   "parameters": size["parameters"], "flops_per_token": size["flops_per_token"],
                   "transformers_ppl": transformers_ppl,
                   "llama_cpp_ppl": llama_cpp_perplexity(path, blocks, args.threads)}
            row["ppl_vs_transformers"] = row["llama_cpp_ppl"] / transformers_ppl - 1
            print(json.dumps(row), flush=True)
            rows.append(row)
        del loaded

    prompt = blocks[0, : args.prompt].tolist()
    for outtype in args.outtypes:
        same_type = [row for row in rows if row["outtype"] == outtype]
        speeds = llama_cpp_speed({row["model"]: Path(row["file"]) for row in same_type}, prompt, args.new_tokens,
                                 args.repeats, args.threads)
        dense = next(row for row in same_type if row["model"] == dense_name)
        for row in same_type:
            row.update(speeds[row["model"]])
        for row in same_type:
            row["flop_ratio"] = dense["flops_per_token"] / row["flops_per_token"]
            row["prefill_speedup"] = row["prefill_tokens_per_s"] / dense["prefill_tokens_per_s"]
            row["decode_speedup"] = row["decode_tokens_per_s"] / dense["decode_tokens_per_s"]
    result = {
        "data": str(data_path), "split": "test",
        "protocol": {"perplexity": f"non-overlapping blocks of {args.context} tokens, the first {len(blocks)} "
                                   f"blocks of the first {args.max_tokens} tokens, the same ids in both runtimes, "
                                   "no BOS", "speed": f"prompt {args.prompt} tokens in one batch, then "
                                                      f"{args.new_tokens} tokens one at a time; models of one "
                                                      f"outtype in turns, median of {args.repeats} rounds after "
                                                      "one warm-up",
                     "threads": args.threads, "flops": f"per token at context {args.prompt}"},
        "versions": {p: version(p) for p in ("ffnprune", "llama-cpp-python", "gguf", "transformers", "torch")},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| model | outtype | GGUF arch | MLP widths | file MB | ppl transformers | ppl llama.cpp | diff | "
             "FLOP ratio | prefill tok/s | speed-up | decode tok/s | speed-up |", "|" + "---|" * 13]
    for r in rows:
        lines.append(f"| {r['model']} | {r['outtype']} | {r['gguf_architecture']} | {r['mlp_widths']} | "
                     f"{r['file_mb']} | {r['transformers_ppl']:.2f} | {r['llama_cpp_ppl']:.2f} | "
                     f"{r['ppl_vs_transformers']:+.2%} | {r['flop_ratio']:.2f}x | {r['prefill_tokens_per_s']:.0f} | "
                     f"{r['prefill_speedup']:.2f}x | {r['decode_tokens_per_s']:.1f} | {r['decode_speedup']:.2f}x |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

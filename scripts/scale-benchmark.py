"""Pruning at scale (issue 21): `ffnprune prune --stream` on random LLaMAs of real shapes (scripts/random-llama.py)
and on SmolLM2, each run as its own process, with its wall time, peak resident memory (the process's maximum RSS)
and the bytes on disk before and after. Rows land in OUT/rows.jsonl as they finish (a rerun skips them); the table
goes to OUT/table.md.

    python scripts/random-llama.py out/wide-3.5gb --tokenizer ../shared/data/gpt2_tokenizer --shape wide-3.5gb \
        --dtype bfloat16
    python scripts/scale-benchmark.py --models out --out results/scale [--only wide-3.5gb-flap]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import ffnprune
from ffnprune.models.resolve import smollm2_gguf_path

CALIBRATION = ["--calibration-tokens", "2048", "--calibration-context", "512"]
# name: (model directory under --models, prune options, what the row shows)
ROWS = {
    "wide-3.5gb-flap": ("wide-3.5gb", ["--stream", "--method", "flap", "--keep", "0.5", *CALIBRATION],
                        "28 layers, hidden 2048, MLP 8192, bf16 (3.8 GB): FLAP selection + lstsq refit, streamed"),
    "llama2-7b-flap": ("llama2-7b", ["--stream", "--method", "flap", "--keep", "0.5", *CALIBRATION],
                       "Llama-2-7B's shape, bf16 (13.5 GB): FLAP selection + lstsq refit, streamed"),
    "smollm2-64k-obs": ("smollm2-135m", ["--method", "obs", "--keep", "0.5", "--calibration-tokens", "65536"],
                        "SmolLM2-135M (0.54 GB of float32 weights), the default obs + lstsq on 65,536 calibration "
                        "tokens, in memory"),
    "smollm2-64k-obs-spilled": ("smollm2-135m", ["--method", "obs", "--keep", "0.5", "--calibration-tokens", "65536",
                                                 "--hidden-memory", "0"],
                                "the same with every hidden state spilled to OUT.work (--hidden-memory 0)"),
}
ALIASES = ("smollm2-135m",)  # models ffnprune finds itself


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def run_row(name: str, models: Path, data: str, scratch: Path) -> dict:
    model, options, what = ROWS[name]
    source = smollm2_gguf_path() if model in ALIASES else models / model
    out = scratch / f"{name}-pruned"
    spec = model if model in ALIASES else str(source)
    command = [sys.executable, "-m", "ffnprune.cli.main", "prune", spec, "--out", str(out), "--overwrite",
               "--data", data, *options]
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    if peak_kib <= before:
        print(f"note: an earlier child's peak RSS ({before} KiB) hides this row's", file=sys.stderr)
    metadata = json.loads((out / "pruning.json").read_text())
    row = {"name": name, "what": what, "command": "ffnprune prune MODEL " + " ".join(options),
           "wall_seconds": round(seconds, 1), "peak_rss_gib": round(peak_kib / 2**20, 3),
           "source_bytes": _bytes(source), "pruned_bytes": _bytes(out),
           "parameters_before": metadata["parameters_before"], "parameters_after": metadata["parameters_after"],
           "one_shot_seconds": metadata["one_shot"]["seconds"], "ffnprune_version": ffnprune.__version__,
           "machine": f"{os.cpu_count()} CPU cores"}
    shutil.rmtree(out)
    return row


def report(out: Path) -> None:
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    lines = ["| row | parameters | on disk | pruned on disk | wall s | one-shot s | peak RSS GiB |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['parameters_before'] / 1e9:.2f}B -> {row['parameters_after'] / 1e9:.2f}B"
                     f" | {row['source_bytes'] / 1e9:.2f} GB | {row['pruned_bytes'] / 1e9:.2f} GB | "
                     f"{row['wall_seconds']:.0f} | {row['one_shot_seconds']:.0f} | {row['peak_rss_gib']:.2f} |")
    lines += ["", *[f"- **{row['name']}**: {row['what']}; `{row['command']}`" for row in rows]]
    (out / "table.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="out", help="where scripts/random-llama.py wrote the models")
    parser.add_argument("--out", default="results/scale")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--scratch", default="out/scale", help="where the pruned models go (removed after)")
    parser.add_argument("--only", help="comma-separated row names")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "rows.jsonl"
    done = {json.loads(line)["name"] for line in rows_path.read_text().splitlines()} if rows_path.exists() else set()
    for name in args.only.split(",") if args.only else ROWS:
        if name in done:
            continue
        row = run_row(name, Path(args.models), str(Path(args.data).resolve()), Path(args.scratch))
        with rows_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        report(out)


if __name__ == "__main__":
    main()

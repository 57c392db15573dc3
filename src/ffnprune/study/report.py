"""The study's results.json, table.md and plots, rebuilt from the finished cells each time one lands."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ffnprune.io.atomic import write_json_atomic  # noqa: E402
from ffnprune.study.claims import check_claims, claims_table, plot_claims, shown, target_loss  # noqa: E402

PRIMARY_METRIC = {"wikitext": "perplexity", "samsum": "rougeL", "wikisql": "exact_match", "e2e": "bleu"}


def _cell_text(records: list[dict], keep: float, value) -> str:
    """The figure, with the share actually kept where it missed the requested one (soft movement's threshold)."""
    values = [v for r in records if (v := value(r)) is not None]
    if not values:
        return ""
    text = shown(values, count=True)
    kept = statistics.mean(r["keep_actual"] for r in records)
    return text if abs(kept - keep) < 0.005 else f"{text} (kept {kept:.2f})"


def _table(title: str, cells: list[dict], dense: list[dict], value) -> list[str]:
    keeps = sorted({r["keep"] for r in cells}, reverse=True)
    lines = [title, "", "| method | " + " | ".join(f"keep {k:g}" for k in keeps) + " |", "|---|" + "---|" * len(keeps)]
    if dense and value(dense[0]) is not None:
        lines.append("| dense (reference) | " + " | ".join(shown([value(dense[0])]) for _ in keeps) + " |")
    grouped = defaultdict(list)
    for r in cells:
        grouped[(r["method"], r["keep"])].append(r)
    for method in dict.fromkeys(r["method"] for r in cells):
        lines.append(f"| {method} | " + " | ".join(_cell_text(grouped[(method, k)], k, value) for k in keeps) + " |")
    return lines + [""]


def write_report(results: Path, records: list[dict]) -> None:
    write_json_atomic(results / "results.json", records)
    lines = []
    for task in sorted({r["task"] for r in records}):
        metric = PRIMARY_METRIC[task]
        dense = [r for r in records if r["task"] == task and r["method"] == "dense"]
        for distill in sorted({r["distill"] for r in records if r["task"] == task and r["method"] != "dense"}):
            cells = [r for r in records if r["task"] == task and r["method"] != "dense" and r["distill"] == distill]
            with_or_without = "with" if distill else "without"
            lines += _table(f"## {task}: {metric} on test, {with_or_without} distillation", cells, dense,
                            lambda r: r["metric"])
            if any(target_loss(r) is not None for r in cells):
                lines += _table(f"{task}: loss per target token (teacher-forced, first reference, nats), "
                                f"{with_or_without} distillation", cells, dense, target_loss)
            _plot(results / f"{task}-{'kd' if distill else 'nokd'}.png", task, metric, cells, dense)
    lines.append("Each cell's record (configuration, evaluation, redundancy, training log) is in cells/.")
    (results / "table.md").write_text("\n".join(lines) + "\n")
    (results / "claims.md").write_text(claims_table(check_claims(records)))
    plot_claims(results, records, PRIMARY_METRIC)


def _plot(path: Path, task: str, metric: str, cells: list[dict], dense: list[dict]) -> None:
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.8))
    for method in dict.fromkeys(r["method"] for r in cells):
        rows = sorted((r for r in cells if r["method"] == method), key=lambda r: r["keep"])
        keeps = sorted({r["keep"] for r in rows})
        for axis, value in ((left, "metric"), (middle, "uniqueness"), (right, "sensitivity_sum")):
            points = [statistics.mean([r[value] for r in rows if r["keep"] == k and r.get(value) is not None] or
                                      [float("nan")]) for k in keeps]
            axis.plot(keeps, points, marker="o", label=method)
    if dense:
        left.axhline(dense[0]["metric"], color="black", linestyle="--", linewidth=1, label="dense")
    left.set(xlabel="keep fraction", ylabel=metric, title=f"{task}: {metric} (test)")
    if metric == "perplexity":
        left.set_yscale("log")
    middle.set(xlabel="keep fraction", ylabel="uniqueness", title="Uniqueness of kept neurons")
    right.set(xlabel="keep fraction", ylabel="sum of sensitivity", title="Sensitivity of kept neurons")
    left.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def load_records(cells_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(cells_dir.glob("*.json"))]

"""PNG plots of the redundancy measures, one model or several side by side."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_widths(widths: dict[str, list[int]], path: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 3.5))
    for name, values in widths.items():
        axis.plot(range(len(values)), values, marker="o", markersize=3, label=name)
    axis.set(xlabel="layer", ylabel="MLP neurons kept", title="Kept width per layer", ylim=(0, None))
    if len(widths) > 1:
        axis.legend(fontsize=7)
    _save(figure, path)


def plot_max_cosine(max_cosines: dict[str, torch.Tensor], threshold: float, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 3.5))
    for name, values in max_cosines.items():
        values = values[~torch.isnan(values)].numpy()
        axis.hist(values, bins=50, range=(-0.2, 1.0), histtype="step", density=True, label=name)
    axis.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"redundant at {threshold}")
    axis.set(xlabel="highest cosine to another neuron of the layer", ylabel="density",
             title="How alike each neuron's activations are to its closest neighbour")
    axis.legend(fontsize=7)
    _save(figure, path)


def plot_sensitivity_uniqueness(sensitivity: dict[str, torch.Tensor], max_cosine: dict[str, torch.Tensor],
                                path: Path) -> None:
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for name in sensitivity:
        axis.scatter(max_cosine[name].numpy(), sensitivity[name].clamp_min(1e-12).numpy(), s=2, alpha=0.3, label=name)
    axis.set(yscale="log", xlabel="highest cosine to another neuron (right: redundant)",
             ylabel="sensitivity (first-order loss change)", title="Sensitivity against uniqueness, per neuron")
    if len(sensitivity) > 1:
        axis.legend(fontsize=7, markerscale=4)
    _save(figure, path)


def plot_model_summary(summaries: dict[str, dict], path: Path) -> None:
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    names = list(summaries)
    left.bar(names, [summaries[n]["model"]["uniqueness"] for n in names])
    left.set(ylabel="uniqueness", title="1 - redundant / kept", ylim=(0, 1))
    right.bar(names, [summaries[n]["model"]["sensitivity_sum"] for n in names])
    right.set(ylabel="sum of sensitivity", title="Sensitivity of the kept neurons")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=30, labelsize=7)
    _save(figure, path)

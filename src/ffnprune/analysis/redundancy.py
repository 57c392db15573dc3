"""The paper's redundancy measures for every MLP neuron (METHOD section 7).

- Sensitivity: mean over batches of |sum over the neuron's parameters of theta * dL/dtheta| (input rows with their
  bias, output column): the first-order loss change of removing the neuron.
- Uniqueness: cosine similarity C of neurons' activation vectors over the data (plain sums, pad tokens excluded).
  As the authors count (the paper's figure): neuron i is redundant when a later neuron j > i of its layer reaches
  C_ij >= threshold, so one neuron of each similar pair stays; uniqueness = 1 - redundant / kept. The strict count
  (every neuron with any partner at C >= threshold, both of a pair) is reported beside it.
- Linear span: R^2 of each neuron's activations reconstructed linearly (with an intercept) from the others of its
  layer, in closed form: R^2_i = 1 - 1 / (S_ii (S^-1)_ii), S the activations' covariance.
One forward and backward pass per batch serves all three; memory stays at one N x N matrix per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ffnprune.adapters import MlpAdapter
from ffnprune.errors import FfnpruneError
from ffnprune.messages import progress_bar
from ffnprune.metrics.perplexity import causal_lm_loss
from ffnprune.pruning.statistics import ActivationStatistics
from ffnprune.tasks.examples import IGNORE, Examples


@dataclass
class LayerMeasures:
    sensitivity: torch.Tensor  # [N]
    max_cosine: torch.Tensor  # [N], highest cosine to another neuron of the layer
    max_cosine_later: torch.Tensor  # [N], highest cosine to a later neuron j > i (-inf for the last)
    r_squared: torch.Tensor  # [N], NaN for a neuron whose activations never vary
    tokens: int


def first_order_effects(layer: nn.Module, adapter: MlpAdapter) -> torch.Tensor:
    """sum over each neuron's parameters of theta * dL/dtheta (gradients must be populated)."""
    total = 0
    for projection in adapter.input_projections(layer):
        products = [(adapter.rows(projection.weight) * adapter.rows(projection.weight.grad)).sum(dim=1)]
        if projection.bias is not None:
            products.append(projection.bias * projection.bias.grad)
        for product in products:
            total = total + sum(adapter.neuron_blocks(product))  # each block of a fused projection
    output = adapter.output_projection(layer)
    return (total + (adapter.columns(output.weight) * adapter.columns(output.weight.grad)).sum(dim=1)).detach()


def linear_span_r_squared(gram: torch.Tensor, sums: torch.Tensor, count: int) -> torch.Tensor:
    """R^2 of each neuron regressed on the others, from the second moments, first moments and token count."""
    mean = sums.double() / count
    covariance = gram.double() / count - torch.outer(mean, mean)
    variance = covariance.diagonal().clone()
    varies = variance > 1e-12 * max(float(variance.max()), 1e-30)
    r_squared = torch.full_like(variance, float("nan"))
    if int(varies.sum()) >= 2:
        sub = covariance[varies][:, varies]
        ridge = 1e-9 * float(sub.diagonal().mean())  # keeps the solve finite when neurons are exactly collinear
        precision = torch.linalg.inv(sub + ridge * torch.eye(len(sub), dtype=sub.dtype))
        r_squared[varies] = (1 - 1 / (sub.diagonal() * precision.diagonal())).clamp(0.0, 1.0)
    elif int(varies.sum()) == 1:
        r_squared[varies] = 0.0
    return r_squared.float()


def measure_redundancy(model: nn.Module, adapter: MlpAdapter, examples: Examples, batch_size: int = 4,
                       progress=lambda done, total: None) -> list[LayerMeasures]:
    if int((examples.labels[:, 1:] != IGNORE).sum()) == 0 or int(examples.attention_mask.sum()) == 0:
        raise FfnpruneError("the task gave no usable tokens (nothing carries a label); give more data or another task")
    model.eval()  # no dropout: the measures describe the model, not a noisy copy
    device = next(model.parameters()).device
    statistics = ActivationStatistics(model, adapter, beta=None)
    layers = adapter.decoder_layers(model)
    sensitivity = [torch.zeros(w, device=device) for w in adapter.mlp_widths(model)]
    batches = range(0, len(examples), batch_size)
    try:
        for done, start in enumerate(progress_bar(batches, desc="analysis"), start=1):
            rows = range(start, min(start + batch_size, len(examples)))
            batch = {k: v.to(device) for k, v in examples.batch(rows).items()}
            statistics.token_mask = batch["attention_mask"]
            model.zero_grad(set_to_none=True)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            causal_lm_loss(logits, batch["labels"]).backward()
            statistics.update()
            for index, layer in enumerate(layers):
                sensitivity[index] += first_order_effects(layer, adapter).abs()
            progress(done, len(batches))
    finally:
        statistics.detach()
        model.zero_grad(set_to_none=True)
    measures = []
    for index in range(len(layers)):
        width = sensitivity[index].numel()
        if width == 0 or statistics.gram[index] is None:
            empty = torch.zeros(0)
            measures.append(LayerMeasures(empty, empty, empty, empty, statistics.counts[index]))
            continue
        cosine = statistics.cosine(index)
        max_cosine = cosine.max(dim=1).values if width > 1 else torch.full((1,), float("nan"), device=device)
        later = torch.ones_like(cosine, dtype=torch.bool).triu(diagonal=1)
        measures.append(LayerMeasures(
            sensitivity=(sensitivity[index] / len(batches)).cpu(),
            max_cosine=max_cosine.cpu(),
            max_cosine_later=cosine.masked_fill(~later, float("-inf")).max(dim=1).values.cpu(),
            r_squared=linear_span_r_squared(statistics.gram[index], statistics.sums[index],
                                            statistics.counts[index]).cpu(),
            tokens=statistics.counts[index],
        ))
    return measures


def _distribution(values: torch.Tensor) -> dict:
    values = values[~torch.isnan(values)].double()
    if values.numel() == 0:
        return {}
    quantiles = torch.quantile(values, torch.tensor([0.1, 0.5, 0.9], dtype=values.dtype)).tolist()
    return {"mean": float(values.mean()), "p10": quantiles[0], "median": quantiles[1], "p90": quantiles[2],
            "max": float(values.max())}


def summarise(measures: list[LayerMeasures], threshold: float) -> dict:
    """Per layer and per model: kept neurons, sensitivity, uniqueness, linear-span shares."""
    layers = []
    for index, m in enumerate(measures):
        kept = m.sensitivity.numel()
        redundant = int((m.max_cosine_later >= threshold).sum())
        strict = int((m.max_cosine >= threshold).sum())
        valid_r2 = m.r_squared[~torch.isnan(m.r_squared)]
        layers.append({
            "layer": index, "kept": kept, "tokens": m.tokens,
            "sensitivity_sum": float(m.sensitivity.sum()), "sensitivity": _distribution(m.sensitivity),
            "redundant": redundant, "uniqueness": 1 - redundant / kept if kept else None,
            "redundant_strict": strict, "uniqueness_strict": 1 - strict / kept if kept else None,
            "max_cosine": _distribution(m.max_cosine),
            "r2_above_0.9": float((valid_r2 > 0.9).double().mean()) if valid_r2.numel() else None,
            "r2_above_0.99": float((valid_r2 > 0.99).double().mean()) if valid_r2.numel() else None,
            "constant_neurons": int(torch.isnan(m.r_squared).sum()),
        })
    kept = sum(layer["kept"] for layer in layers)
    all_r2 = torch.cat([m.r_squared for m in measures])
    all_r2 = all_r2[~torch.isnan(all_r2)]
    model = {
        "kept": kept,
        "sensitivity_sum": sum(layer["sensitivity_sum"] for layer in layers),
        "redundant": sum(layer["redundant"] for layer in layers),
        "uniqueness": 1 - sum(layer["redundant"] for layer in layers) / kept if kept else None,
        "redundant_strict": sum(layer["redundant_strict"] for layer in layers),
        "uniqueness_strict": 1 - sum(layer["redundant_strict"] for layer in layers) / kept if kept else None,
        "max_cosine": _distribution(torch.cat([m.max_cosine for m in measures])),
        "r2_above_0.9": float((all_r2 > 0.9).double().mean()) if all_r2.numel() else None,
        "r2_above_0.99": float((all_r2 > 0.99).double().mean()) if all_r2.numel() else None,
        "constant_neurons": sum(layer["constant_neurons"] for layer in layers),
    }
    return {"model": model, "layers": layers}

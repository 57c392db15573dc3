"""One-shot pruning: decide each layer's width, score its neurons, keep the best, reconstruct, compact.

Fixed criteria (random, magnitude) without reconstruction need no data. Calibrated criteria, and any criterion with
a reconstruction, go through SequentialCalibration: layer by layer, each fed by the already-pruned layers, each
selected, reconstructed and compacted before the next is calibrated.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

import ffnprune
from ffnprune.adapters import MlpAdapter
from ffnprune.calibration import CalibrationData, LayerStatistics, SequentialCalibration
from ffnprune.compaction import compact_layer, compact_mlps, finish_compaction, layer_spec
from ffnprune.config import CalibrationConfig, PruneConfig
from ffnprune.criteria import CALIBRATED, Method, get_method
from ffnprune.errors import FfnpruneError, FfnpruneWarning
from ffnprune.models import LoadedModel
from ffnprune.pruning.reconstruction import reconstruct
from ffnprune.pruning.selection import (
    check_keep,
    kept_count,
    local_top_v,
    round_widths,
    rounded_count,
    top_indices,
)


def parse_layer_keep(spec: str | dict | None, layers: int | None = None) -> dict[int, float]:
    """'0:1,-1:0.8' (or a mapping) -> {layer: keep}; negative layers count from the end when `layers` is known."""
    if spec is None or spec == "":
        return {}
    items = spec.items() if isinstance(spec, dict) else (part.split(":", 1) for part in str(spec).split(","))
    result = {}
    for item in items:
        try:
            layer, keep = int(str(item[0]).strip()), float(str(item[1]).strip())
        except (ValueError, IndexError):
            raise FfnpruneError(f"--layer-keep {spec!r}: expected LAYER:KEEP pairs separated by commas, e.g. "
                                "'0:1,-1:1' (layers from 0; negative ones count from the last)") from None
        if layers is not None:
            if not -layers <= layer < layers:
                raise FfnpruneError(f"--layer-keep names layer {layer}, but the model has {layers} layers "
                                    f"(0 to {layers - 1}, or -1 to -{layers})")
            layer %= layers
        if keep != 0:  # 0: the layer loses its whole MLP, asked for by name
            check_keep(keep)
        result[layer] = keep
    return result


def layer_counts(widths: list[int], keep: float, layer_keep: dict[int, float], round_to: int) -> list[int]:
    """Neurons each layer keeps: int(keep_l * N_l) rounded to a multiple of `round_to` (a full layer stays full)."""
    return [rounded_count(kept_count(layer_keep.get(i, keep), width), width, round_to)
            for i, width in enumerate(widths)]


def global_counts(scores: list[torch.Tensor], keep: float, layer_keep: dict[int, float], round_to: int) -> list[int]:
    """FLAP's global widths: every layer's scores standardised ((s - mean) / std), one threshold across the layers
    that --layer-keep does not fix, which keep as many neurons in all as uniform widths would."""
    widths = [s.numel() for s in scores]
    counts = layer_counts(widths, keep, layer_keep, 1)
    free = [i for i in range(len(scores)) if i not in layer_keep and widths[i] > 0]
    if free:
        standardised = [(s.double() - s.double().mean()) / (s.double().std() + 1e-12) if s.numel() > 1
                        else torch.zeros_like(s, dtype=torch.float64) for s in (scores[i] for i in free)]
        flat = torch.cat(standardised)
        chosen = torch.zeros(flat.numel(), dtype=torch.bool)
        chosen[torch.topk(flat, sum(counts[i] for i in free)).indices] = True
        for i, part in zip(free, chosen.split([widths[i] for i in free])):
            counts[i] = int(part.sum())
    return [rounded_count(count, width, round_to) for count, width in zip(counts, widths)]


def select_kept(model: nn.Module, adapter: MlpAdapter, method: str, keep: float, seed: int,
                round_to: int = 1) -> list[torch.Tensor]:
    """Indices of the neurons each layer keeps, by a fixed criterion (random, magnitude) and local Top_v, each
    layer's width rounded to a multiple of `round_to`. No data is needed."""
    resolved = get_method(method)
    if resolved.learned:
        raise FfnpruneError(f"method {method!r} learns its scores while fine-tuning: give --steps N (N > 0), or use "
                            "a one-shot criterion")
    if resolved.calibrated:
        raise FfnpruneError(f"method {method!r} needs calibration data; use prune_one_shot")
    scores = resolved.fixed_scores(model, adapter, torch.Generator().manual_seed(seed))
    return round_widths(local_top_v(scores, check_keep(keep)), scores, round_to)


def reconstruction_mode(method: Method, settings: CalibrationConfig) -> str:
    return settings.reconstruct or ("lstsq" if method.calibrated else "none")


def needs_calibration(method: Method, settings: CalibrationConfig) -> bool:
    return method.calibrated or reconstruction_mode(method, settings) != "none"


def _output(layer: nn.Module, adapter: MlpAdapter) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The output projection as W [hidden, N] and its bias, in float64."""
    projection = adapter.output_projection(layer)
    bias = None if projection.bias is None else projection.bias.detach().double()
    return adapter.output_columns(projection).detach().T.double(), bias


def _warn_few_tokens(calibration: CalibrationData, widths: list[int], damp: float) -> None:
    if calibration.tokens <= max(widths):
        warnings.warn(f"{calibration.tokens} calibration tokens for layers of up to {max(widths)} neurons: the "
                      f"activation Gram is singular, and only the damping (--damp {damp} of its mean diagonal) makes "
                      f"OBS and the least-squares refit solvable; give --calibration-tokens of at least "
                      f"{4 * max(widths)} for a refit the data determines", FfnpruneWarning, stacklevel=3)


def _fixed_scores(model: nn.Module, adapter: MlpAdapter, method: Method, seed: int) -> list[torch.Tensor] | None:
    """A fixed criterion's scores of the dense model (None for calibrated criteria, which score layer by layer)."""
    return None if method.calibrated else method.fixed_scores(model, adapter, torch.Generator().manual_seed(seed))


def _calibration_pass(model: nn.Module, adapter: MlpAdapter, method: Method, calibration: CalibrationData,
                      settings: CalibrationConfig, device: torch.device, dense_target: bool = False, stream=None,
                      spill: Path | None = None):
    needs_means = method.calibrated and CALIBRATED[method.scores].needs_sequence_means
    return SequentialCalibration(model, adapter, calibration.batches(settings.calibration_batch_size), device,
                                 needs_means, dense_target, stream, spill, settings.hidden_memory)


def dense_scores(model: nn.Module, adapter: MlpAdapter, method: Method, calibration: CalibrationData,
                 settings: CalibrationConfig, device: torch.device, seed: int, progress=None) -> list[torch.Tensor]:
    """Every layer's criterion scores on the dense model (one calibration pass, nothing pruned)."""
    fixed = _fixed_scores(model, adapter, method, seed)
    scores: list[torch.Tensor] = []

    def visit(index, layer, stats):
        if method.calibrated:
            weight, bias = _output(layer, adapter)
            scores.append(CALIBRATED[method.scores].scores(stats, weight, bias, settings.damp).float().cpu())
        else:
            scores.append(fixed[index].float().cpu())
        return False

    _calibration_pass(model, adapter, method, calibration, settings, device).run(visit, progress or _quiet)
    return scores


def _quiet(done, total):
    return None


@dataclass
class OneShotResult:
    kept: list[torch.Tensor]
    layers: list[dict] = field(default_factory=list)  # per layer: kept, relative output errors
    spilled: bool = False  # hidden states went to files


def prune_one_shot(model: nn.Module, adapter: MlpAdapter, method: Method, keep: float, settings: CalibrationConfig,
                   calibration: CalibrationData | None, device: torch.device, seed: int = 0, round_to: int = 1,
                   progress=None, stream=None, spill: Path | None = None) -> OneShotResult:
    """Select, reconstruct and compact every layer in place (see the module docstring); with a `stream`
    (io.streamed.LayerStream) each layer is read before and written out after its turn; hidden states beyond
    settings.hidden_memory go to files in `spill`."""
    widths = adapter.mlp_widths(model)
    layer_keep = parse_layer_keep(settings.layer_keep, len(widths))
    mode = reconstruction_mode(method, settings)
    if not needs_calibration(method, settings):
        fixed = _fixed_scores(model, adapter, method, seed)
        counts = (global_counts(fixed, keep, layer_keep, round_to) if settings.selection == "global"
                  else layer_counts(widths, keep, layer_keep, round_to))
        kept = [top_indices(s, c) for s, c in zip(fixed, counts)]
        compact_mlps(model, adapter, kept)
        return OneShotResult(kept, [{"layer": i, "kept": len(k)} for i, k in enumerate(kept)])
    if calibration is None:
        raise FfnpruneError(f"method {method.name} with reconstruction {mode!r} needs calibration data")
    _warn_few_tokens(calibration, widths, settings.damp)
    if settings.selection == "global":
        scores = dense_scores(model, adapter, method, calibration, settings, device, seed, progress)
        counts = global_counts(scores, keep, layer_keep, round_to)
    else:
        counts = layer_counts(widths, keep, layer_keep, round_to)
    fixed = _fixed_scores(model, adapter, method, seed)
    spec = one_shot_spec(model, adapter, mode)
    records: list[dict] = []

    def visit(index: int, layer: nn.Module, stats: LayerStatistics) -> bool:
        records.append(prune_layer(layer, adapter, spec, stats, method, counts[index], mode, settings.damp,
                                   None if fixed is None else fixed[index]))
        records[-1]["layer"] = index
        return records[-1]["kept"] < widths[index] and settings.calibration_inputs == "pruned"

    dense_target = settings.calibration_target == "dense" and settings.calibration_inputs == "pruned"
    calibration_pass = _calibration_pass(model, adapter, method, calibration, settings, device, dense_target, stream,
                                         spill)
    calibration_pass.run(visit, progress or _quiet)
    finish_compaction(model, adapter, spec)
    return OneShotResult([torch.tensor(r.pop("indices")) for r in records], records, calibration_pass.spilled)


def one_shot_spec(model: nn.Module, adapter: MlpAdapter, mode: str) -> dict:
    """The layers' spec: a reconstruction gives architectures without an MLP output bias one."""
    output_has_bias = adapter.output_projection(adapter.decoder_layers(model)[0]).bias is not None
    return layer_spec(model, adapter, output_bias=mode != "none" and not output_has_bias)


def prune_layer(layer: nn.Module, adapter: MlpAdapter, spec: dict, stats: LayerStatistics, method: Method,
                count: int, mode: str, damp: float, fixed_scores: torch.Tensor | None = None) -> dict:
    """Select `count` neurons of one layer by the criterion, reconstruct, compact; returns what was done."""
    weight, bias = _output(layer, adapter)
    width = weight.shape[1]
    if count == width:  # nothing to remove: the layer keeps its weights (and gains a zero bias if others do)
        compact_layer(layer, adapter, spec, torch.arange(width))
        return {"kept": width, "relative_error": 0.0, "indices": list(range(width))}
    if method.calibrated:
        indices = CALIBRATED[method.scores].kept(stats, weight, bias, count, damp)
    else:
        indices = top_indices(fixed_scores, count)
    result = reconstruct(stats, weight, bias, indices.to(weight.device), mode, damp)
    projection = adapter.output_projection(layer)
    new_bias = None if result.bias is None else result.bias.to(projection.weight.dtype)
    compact_layer(layer, adapter, spec, indices, result.weight.T.to(projection.weight.dtype), new_bias)
    return {"kept": count, "tokens": stats.count, "relative_error": result.relative_error,
            "relative_error_sliced": result.relative_error_sliced, "indices": indices.cpu().tolist()}


def compact_with_metadata(loaded: LoadedModel, config: PruneConfig, kept: list[torch.Tensor],
                          compact: bool = True, **extra) -> dict:
    """The metadata saved beside the model; compacts `loaded.model` in place to `kept` first unless `compact` is
    False (one-shot pruning compacted it already)."""
    model, adapter = loaded.model, loaded.adapter
    widths_before = extra.pop("widths_before", None) or adapter.mlp_widths(model)
    parameters_before = extra.pop("parameters_before", None) or model.num_parameters()
    if compact:
        compact_mlps(model, adapter, kept)
    warn_empty_layers(kept, widths_before, parse_layer_keep(config.calibration.layer_keep, len(kept)))
    method = get_method(config.method)
    gradual = "local (uniform widths)" if config.uniform_widths else method.selection
    selection = ("threshold" if method.selection == "threshold" else f"{gradual} top-v") if config.steps \
        and not method.calibrated else f"one-shot, {config.calibration.selection} widths"
    return {
        "ffnprune_version": ffnprune.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_model": loaded.source,
        "source_location": loaded.location,
        "architecture": adapter.name,
        "method": config.method,
        "keep": config.keep,
        "keep_actual": sum(len(k) for k in kept) / sum(widths_before),
        "selection": selection,
        "steps": config.steps,
        "seed": config.seed,
        "round_to": config.round_to,
        "mlp_widths_before": widths_before,
        "parameters_before": parameters_before,
        "parameters_after": model.num_parameters(),
        "kept_neurons": [k.tolist() for k in kept],
        **extra,
    }


def warn_empty_layers(kept: list[torch.Tensor], widths: list[int], layer_keep: dict[int, float]) -> None:
    """A layer left with no MLP neuron is worth a word, unless --layer-keep asked for exactly that."""
    empty = [index for index, indices in enumerate(kept) if len(indices) == 0 and widths[index] > 0
             and layer_keep.get(index) != 0]
    if empty:
        warnings.warn(f"{len(empty)} of {len(kept)} layers kept no MLP neuron (layers {', '.join(map(str, empty))}): "
                      "their MLPs are removed. Give a larger --keep, --uniform-widths (global methods), or name those "
                      "layers in --layer-keep to say this is what you want", FfnpruneWarning, stacklevel=3)


def calibration_metadata(method: Method, settings: CalibrationConfig, calibration: CalibrationData | None,
                         result: OneShotResult, seconds: float, device: torch.device) -> dict:
    """What pruning.json records of a one-shot prune: criterion, reconstruction, calibration data, per-layer error."""
    errors = [r["relative_error"] for r in result.layers if "relative_error_sliced" in r]
    return {
        "criterion": method.name,
        "reconstruct": reconstruction_mode(method, settings),
        "damp": settings.damp,
        "selection": settings.selection,
        "calibration_inputs": settings.calibration_inputs,
        "calibration_target": settings.calibration_target,
        "layer_keep": parse_layer_keep(settings.layer_keep, len(result.kept)) or None,
        "calibration": None if calibration is None else {**calibration.source,
                                                         "batch_size": settings.calibration_batch_size,
                                                         "device": str(device)},
        "seconds": round(seconds, 1),
        "hidden_states": {"memory_gib": settings.hidden_memory, "spilled_to_files": result.spilled},
        "mean_relative_error": sum(errors) / len(errors) if errors else None,
        "layers": result.layers,
    }


__all__ = ["OneShotResult", "calibration_metadata", "compact_with_metadata", "dense_scores", "global_counts",
           "layer_counts", "needs_calibration", "one_shot_spec", "parse_layer_keep", "prune_layer",
           "prune_one_shot", "reconstruction_mode", "select_kept"]

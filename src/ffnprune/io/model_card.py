"""The model card (README.md) every pruned directory carries: hub metadata, the recipe, the measured metrics, and
how to load it; and the summary stamped into the safetensors header."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import ffnprune

HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # ffnprune's aliases and what they are


def base_model(source: str | None) -> str | None:
    """The hub id the pruned model derives from, when the source was one (not a local path)."""
    if not source:
        return None
    if source.lower() in HUB_IDS:
        return HUB_IDS[source.lower()]
    looks_local = source.startswith((".", "/", "~")) or source.endswith(".gguf") or Path(source).exists()
    return None if looks_local or source.count("/") != 1 else source


def _front_matter(metadata: dict) -> str:
    tags = ["ffnprune", "pruned", "structured-pruning"] + ([metadata["method"]] if metadata.get("method") else [])
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:"]
    lines += [f"- {tag}" for tag in tags]
    base = base_model(metadata.get("source_model"))
    if base:
        lines.append(f"base_model: {base}")
    return "\n".join(lines + ["---", ""])


def _metrics(metadata: dict) -> list[str]:
    evaluation = metadata.get("evaluation") or {}
    metrics = {k: v for k, v in (evaluation.get("metrics") or {}).items() if isinstance(v, (int, float))}
    if not metrics:
        return ["No evaluation was run with the pruning (`ffnprune prune --evaluate` records one; `ffnprune evaluate "
                "DIR` measures it later).", ""]
    protocol = evaluation.get("protocol") or {}
    how = {"perplexity": protocol.get("block"), "sliding_window_perplexity": protocol.get("sliding_window")}
    tokens = f", the first {evaluation['tokens']:,} tokens" if evaluation.get("tokens") else ""
    lines = [f"Measured on {evaluation.get('task')} {evaluation.get('split')}{tokens}:", "",
             "| metric | value | protocol |", "|---|---|---|"]
    lines += [f"| {name} | {value:.4g} | {_protocol(how.get(name))} |" for name, value in metrics.items()]
    return lines + [""]


def _protocol(window: dict | None) -> str:
    if not window:
        return ""
    return f"context {window.get('context')}, stride {window.get('stride')}, {window.get('tokens_scored'):,} scored"


def model_card(metadata: dict, widths: list[int], name: str, remote_code: bool = True) -> str:
    """README.md for a pruned directory named `name` (`remote_code` False: a uniform export, a stock checkpoint)."""
    before = metadata.get("mlp_widths_before") or []
    source = metadata.get("source_model") or "an unrecorded model"
    recipe = [("method", metadata.get("method")), ("keep fraction asked", metadata.get("keep")),
              ("neurons kept", f"{sum(widths):,} of {sum(before):,}" if before else f"{sum(widths):,}"),
              ("steps", metadata.get("steps")), ("seed", metadata.get("seed")),
              ("selection", metadata.get("selection")), ("saved dtype", metadata.get("saved_dtype")),
              ("parameters", f"{metadata['parameters_after']:,} (from {metadata['parameters_before']:,})"
               if metadata.get("parameters_after") and metadata.get("parameters_before") else None),
              ("ffnprune", metadata.get("ffnprune_version", ffnprune.__version__))]
    recipe.append(("source weights", _dequantised(metadata.get("source_location"))))
    one_shot = metadata.get("one_shot") or {}
    if one_shot.get("criterion"):
        recipe.append(("one-shot", f"{one_shot['criterion']} with {one_shot.get('reconstruct')} reconstruction"))
    recipe += _training(metadata)
    uniform = len(set(widths)) == 1
    lines = [_front_matter(metadata), f"# {name}", "",
             f"{source}, with the MLP neurons of every decoder layer pruned by "
             f"[ffnprune](https://pypi.org/project/ffnprune/) (structured pruning after Santacroce et al., 2023, "
             "\"What Matters in the Structured Pruning of Generative Language Models?\"). Whole neurons are removed, "
             "so the model is physically smaller.", "", "## Recipe", "", "| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in recipe if value is not None]
    trust = ", trust_remote_code=True" if remote_code else ""
    why = ("The per-layer widths need the modelling file shipped here (`modeling_ffnprune.py`, torch and "
           "transformers only), hence `trust_remote_code=True`." if remote_code else
           "A stock checkpoint of its architecture: every layer has the same MLP width (a uniform export).")
    shown = f"{widths[0]} in every layer" if uniform else ", ".join(map(str, widths))
    lines += ["", f"MLP widths per layer: {shown}", "", "## Metrics", "", *_metrics(metadata), "## Loading", "",
              "```python", "import transformers",
              f'model = transformers.AutoModelForCausalLM.from_pretrained("{name}"{trust})',
              f'tokenizer = transformers.AutoTokenizer.from_pretrained("{name}"{trust})', "```", "",
              f"{why} `pruning.json` holds the whole recipe and the kept neuron indices. For llama.cpp (LLaMA-family "
              f"models): `ffnprune export {shlex.quote(name)} --format gguf --out {shlex.quote(name + '.gguf')}`.",
              ""]
    return "\n".join(lines)


def _dequantised(location: str | None) -> str | None:
    """A GGUF source was quantised: the pruned model inherits that rounding, and a reader should know."""
    if not location or not str(location).endswith(".gguf"):
        return None
    kind = re.search(r"\.((?:I?Q\d\w*)|F16|BF16|F32)\.gguf$", str(location), re.IGNORECASE)
    stored = f"{kind.group(1).upper()} " if kind else ""
    return f"dequantised from the {stored}GGUF file {Path(location).name}: the pruned model keeps that file's rounding"


def _training(metadata: dict) -> list[tuple[str, object]]:
    """The fine-pruning or recovery run: its data, learning rate, context and batch."""
    training, protocol = metadata.get("training") or {}, metadata.get("protocol") or {}
    options = metadata.get("hyperparameters") or {}
    if not training:
        return []
    data = f"{protocol.get('task')} {protocol.get('train_split')} ({protocol.get('file') or protocol.get('data')})"
    if protocol.get("train_data"):
        packed = protocol["train_data"]
        data = ("text the dense model sampled itself" if packed.get("generated") else
                ", ".join(f"{Path(s['path']).name} ({s['tokens']:,} tokens)" for s in packed["sources"]))
        data += f"; {protocol.get('tokens_seen', 0):,} tokens seen"
    batch = options.get("batch_size", 0) * options.get("grad_accum", 1)
    return [("training", f"{training.get('kind')}, {metadata.get('steps')} steps"), ("training data", data),
            ("learning rate", options.get("lr")), ("context x batch", f"{protocol.get('context')} x {batch}"),
            ("distillation", (f"from the dense model ({options.get('distill_loss', 'mixed')} loss)"
                              if training.get("distilled") else "none"))]


def header_summary(metadata: dict, widths: list[int]) -> dict[str, str]:
    """What the safetensors header carries beside "format": the pruning, as one JSON string."""
    keys = ("ffnprune_version", "source_model", "method", "keep", "steps", "seed", "saved_dtype")
    return {"ffnprune": json.dumps({**{k: metadata.get(k) for k in keys}, "mlp_widths": widths})}

"""The README's main job: prune SmolLM2-135M in one shot, save, reload, and compare WikiText perplexity."""

from __future__ import annotations

import time
from pathlib import Path

from ffnprune.analysis.footprint import footprint
from ffnprune.config import DemoConfig, PruneConfig
from ffnprune.io.atomic import write_json_atomic
from ffnprune.io.pruned_dir import load_pruned, save_pruned
from ffnprune.metrics.perplexity import block_perplexity, token_ids
from ffnprune.models import load_model
from ffnprune.pruning.oneshot import prune_loaded
from ffnprune.pruning.selection import check_keep
from ffnprune.tasks.wikitext import read_wikitext


def run_demo(config: DemoConfig, say=print) -> dict:
    check_keep(config.keep)
    text, data_path = read_wikitext(config.data, "test")
    started = time.perf_counter()
    say(f"loading {config.model} ...")
    loaded = load_model(config.model)
    ids = token_ids(loaded.tokenizer, text, config.max_tokens or None)
    say(f"WikiText test: {data_path} ({len(ids)} tokens evaluated, blocks of {config.context})")

    def evaluate(model):
        return block_perplexity(model, ids, config.context, config.batch_size)

    dense = evaluate(loaded.model)
    dense_size = footprint(loaded.model, loaded.adapter, config.context)
    say(f"dense perplexity {dense['perplexity']:.2f}")

    prune_config = PruneConfig(model=config.model, out=config.out, method=config.method, keep=config.keep,
                               seed=config.seed, overwrite=True)
    metadata = prune_loaded(loaded, prune_config)
    model_dir = save_pruned(loaded.model, loaded.tokenizer, config.out, metadata, overwrite=True)
    reloaded = load_pruned(model_dir).eval()
    pruned = evaluate(reloaded)
    pruned_size = footprint(reloaded, loaded.adapter, config.context)

    result = {
        "ffnprune_version": metadata["ffnprune_version"],
        "model": config.model,
        "data": str(data_path),
        "split": "test",
        "method": config.method,
        "keep": config.keep,
        "steps": 0,
        "seed": config.seed,
        "pruned_model": str(model_dir),
        "dense": {**dense, **_size(dense_size)},
        "pruned": {**pruned, **_size(pruned_size)},
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(Path(config.out).with_name(Path(config.out).name + "-results.json"), result)
    say(_table(result))
    return result


def _size(size: dict) -> dict:
    keys = ("parameters", "mlp_parameters", "flops_per_token", "mlp_flops_per_token", "flops_context")
    return {key: size[key] for key in keys}


def _table(result: dict) -> str:
    dense, pruned = result["dense"], result["pruned"]
    rows = [
        ("", "dense", f"{result['method']} keep {result['keep']}"),
        ("WikiText test perplexity", f"{dense['perplexity']:.2f}", f"{pruned['perplexity']:.2f}"),
        ("parameters", f"{dense['parameters']:,}", f"{pruned['parameters']:,}"),
        ("MLP parameters", f"{dense['mlp_parameters']:,}", f"{pruned['mlp_parameters']:,}"),
        ("GFLOPs per token", f"{dense['flops_per_token'] / 1e9:.3f}", f"{pruned['flops_per_token'] / 1e9:.3f}"),
    ]
    lines = [f"{a:<26}{b:>16}{c:>22}" for a, b, c in rows]
    protocol = dense["protocol"]
    lines.append(f"({dense['tokens_scored']:,} tokens scored, blocks of {protocol['context']}, one-shot pruning "
                 f"without fine-tuning; pruned model in {result['pruned_model']})")
    return "\n".join(lines)

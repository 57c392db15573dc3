"""Typed configuration shared by the CLI and the Python API. Each field's metadata holds its command-line help."""

from __future__ import annotations

from dataclasses import dataclass, field

from ffnprune.models import SMOLLM2_ALIAS


def option(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


def positional(help: str):
    return field(metadata={"help": help, "positional": True})


def required(help: str):
    return field(metadata={"help": help, "required": True})


@dataclass
class PruneConfig:
    model: str = positional("hub id, local model directory, .gguf file, or 'smollm2-135m'")
    out: str = required("directory to write the pruned model to")
    method: str = option("magnitude", "pruning criterion (random, magnitude, magnitude-sum)")
    keep: float = option(0.5, "fraction of MLP neurons kept, in (0, 1]")
    steps: int = option(0, "fine-pruning steps; 0 prunes in one shot")
    seed: int = option(0, "random seed")
    overwrite: bool = option(False, "replace --out if it exists")


@dataclass
class DemoConfig:
    model: str = option(SMOLLM2_ALIAS, "model to prune")
    data: str = option(None, "WikiText data folder or file (default: ../shared/data)")
    method: str = option("magnitude", "pruning criterion")
    keep: float = option(0.5, "fraction of MLP neurons kept")
    context: int = option(512, "tokens per perplexity block")
    max_tokens: int = option(16384, "WikiText test tokens to evaluate (0: all)")
    batch_size: int = option(4, "blocks per forward pass")
    out: str = option("out/demo", "directory for the pruned model (replaced on each run) and demo.json")
    seed: int = option(0, "random seed")

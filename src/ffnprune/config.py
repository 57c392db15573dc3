"""Typed configuration shared by the CLI, YAML config files and the Python API.

Each leaf field's metadata holds its command-line help. Flags and YAML keys are the leaf names (a trailing "_" is
dropped: `lambda_` is `--lambda` and `lambda:`), flat, whatever group a field sits in.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ffnprune.errors import FfnpruneError
from ffnprune.models import SMOLLM2_ALIAS


def option(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


def group(cls):
    return field(default_factory=cls, metadata={"group": True})


@dataclass
class ScheduleConfig:
    warmup_share: float = option(0.1, "share of steps kept dense before pruning starts")
    cooldown_share: float = option(0.3, "share of steps trained at the final keep fraction at the end")


@dataclass
class PenaltyConfig:
    lambda_: float = option(2.0, "penalty weight lambda (soft-movement, gum, anti-gum)")
    mu: float = option(None, "GUM's uniqueness weight mu > 0 (gum, anti-gum; the paper sweeps 0.5-2)")
    beta: float = option(0.999, "GUM's running-statistics rate beta")
    soft_threshold: float = option(0.1, "soft movement's final sigmoid threshold")
    gum_tokens: int = option(None, "GUM's statistics see at most N tokens per micro-batch, evenly strided (default: "
                                   "all)")
    gum_every: int = option(1, "GUM updates its statistics (and u) every N steps")


@dataclass
class TrainingConfig:
    lr: float = option(5e-4, "learning rate of the weights")
    score_lr: float = option(1e-2, "learning rate of learned scores")
    weight_decay: float = option(0.1, "AdamW weight decay (none on biases, norms, scores)")
    adam_eps: float = option(1e-4, "AdamW epsilon")
    lr_warmup: float = option(0.1, "share of steps of linear learning-rate warm-up")
    clip: float = option(1.0, "gradient-norm clip")
    batch_size: int = option(4, "sequences per micro-batch and process")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    context: int = option(512, "tokens per training sequence")
    mixed_precision: str = option("no", "no, fp16 or bf16 (GPU)", choices=("no", "fp16", "bf16"))
    eval_every: int = option(0, "evaluate at the current density every N steps (0: never)")
    eval_tokens: int = option(8192, "tokens of the evaluation split used by periodic evaluation")
    checkpoint_every: int = option(0, "write a resumable checkpoint every N steps (0: never)")


@dataclass
class DistillConfig:
    distill: bool = option(False, "distil from the dense model (loss = 0.5 CE + 0.5 T^2 KL)")
    teacher: str = option(None, "teacher model (default: the model before pruning)")
    temperature: float = option(2.0, "distillation temperature T")


@dataclass
class CalibrationConfig:
    calibration_data: str = option(None, "text or JSONL file (one string or {'text': ...} per line) to calibrate on "
                                         "(default: the task's --train-split)")
    calibration_tokens: int = option(32768, "calibration tokens (calibrated criteria, reconstruction, --init-scores)")
    calibration_context: int = option(512, "tokens per calibration sequence")
    calibration_batch_size: int = option(8, "calibration sequences per forward pass")
    calibration_device: str = option("auto", "where the layers visit, one at a time, during calibration: auto (the "
                                             "GPU when there is one), cpu or cuda", choices=("auto", "cpu", "cuda"))
    calibration_inputs: str = option("pruned", "each layer is calibrated on the outputs of the already-pruned layers "
                                               "before it (pruned), or of the dense model (dense: one forward per "
                                               "layer instead of two)", choices=("pruned", "dense"))
    calibration_target: str = option("dense", "what lstsq and obs reproduce: each layer's own dense output on the "
                                             "pruned model's inputs (own), or the dense model's output of that layer "
                                             "(dense: corrects the drift of earlier layers; one more forward per "
                                             "layer)", choices=("own", "dense"))
    reconstruct: str = option(None, "after one-shot selection: none, bias (FLAP) or lstsq (ridge refit of the kept "
                                    "output columns and a bias); default lstsq for calibrated criteria, else none",
                              choices=("none", "bias", "lstsq"))
    damp: float = option(0.01, "damping of obs and lstsq, a share of the activation Gram's mean diagonal")
    selection: str = option("uniform", "one-shot widths: uniform (every layer keeps --keep) or global (scores "
                                       "standardised per layer, one cross-layer threshold, as FLAP)",
                            choices=("uniform", "global"))
    layer_keep: str = option(None, "one-shot keep fractions of chosen layers, overriding --keep: '0:1,-1:1' keeps the "
                                   "first and last layers dense")
    init_scores: str = option("zeros", "learned methods start from zeros or from a calibrated criterion's "
                                       "standardised scores on the dense model (activation, wanda-sp, flap, obs)")


@dataclass
class PruneConfig:
    model: str = option(None, "hub id, local model directory, .gguf file, or 'smollm2-135m'", positional=True)
    out: str = option(None, "directory to write the pruned model to")
    method: str = option("magnitude", "pruning method (ffnprune prune --help lists them)")
    keep: float = option(0.5, "fraction of MLP neurons kept, in (0, 1]")
    steps: int = option(0, "optimizer steps: fine-pruning for random, magnitude and the learned methods; recovery "
                           "(fine-tuning the one-shot pruned model) for calibrated criteria; 0: one-shot only")
    round_to: int = option(1, "round each layer's kept width to a multiple of N (8, 64, 128: faster kernels)")
    seed: int = option(0, "random seed")
    task: str = option("wikitext", "task to fine-prune on")
    data: str = option(None, "task data folder or file (default: ../shared/data)")
    train_split: str = option("validation", "split to fine-prune on (offline, only validation and test exist)")
    eval_split: str = option("test", "split for periodic and final evaluation")
    loss_on_prompt: bool = option(False, "let prompt tokens carry the loss too (the authors' SAMSum variant)")
    strict: bool = option(False, "stop at the first malformed data row instead of skipping it")
    evaluate: bool = option(False, "evaluate the pruned model on --eval-split at the end (ffnprune evaluate's metric)")
    eval_limit: int = option(None, "with --evaluate: only the first N items of a generation task")
    overwrite: bool = option(False, "replace --out if it exists")
    schedule: ScheduleConfig = group(ScheduleConfig)
    penalty: PenaltyConfig = group(PenaltyConfig)
    training: TrainingConfig = group(TrainingConfig)
    distill: DistillConfig = group(DistillConfig)
    calibration: CalibrationConfig = group(CalibrationConfig)


@dataclass
class EvaluateConfig:
    model: str = option(None, "hub id, model directory (pruned or not), .gguf file, or 'smollm2-135m'",
                        positional=True)
    task: str = option("wikitext", "wikitext, samsum, wikisql or e2e")
    split: str = option("test", "split to evaluate")
    data: str = option(None, "task data folder or file (default: ../shared/data)")
    out: str = option(None, "write the results JSON here")
    limit: int = option(None, "evaluate the first N items only (generation tasks)")
    strict: bool = option(False, "stop at the first malformed data row instead of skipping it")
    num_beams: int = option(10, "beam-search width")
    length_penalty: float = option(0.9, "beam-search length penalty")
    no_repeat_ngram_size: int = option(4, "never repeat an n-gram of this size")
    max_new_tokens: int = option(None, "tokens generated at most (default: the task's)")
    batch_size: int = option(8, "prompts or blocks per forward pass")
    context: int = option(1024, "WikiText: tokens per block and window; generation tasks: teacher-forcing length")
    stride: int = option(512, "WikiText: sliding-window stride")
    max_tokens: int = option(None, "WikiText: evaluate the first N tokens only")
    device: str = option("auto", "auto (the GPU when there is one), cpu or cuda", choices=("auto", "cpu", "cuda"))


@dataclass
class AnalyzeConfig:
    model: str = option(None, "model (dense or pruned) to analyse", positional=True)
    out: str = option(None, "directory for redundancy.json, neurons.safetensors and the plots")
    task: str = option("wikitext", "task whose data the measures run on")
    split: str = option("test", "split of the task")
    data: str = option(None, "task data folder or file (default: ../shared/data)")
    max_tokens: int = option(16384, "tokens of data (WikiText), or about that many for generation tasks")
    context: int = option(512, "tokens per sequence")
    batch_size: int = option(4, "sequences per forward and backward pass")
    threshold: float = option(0.8, "cosine at which a neuron counts as redundant")
    device: str = option("auto", "auto (the GPU when there is one), cpu or cuda", choices=("auto", "cpu", "cuda"))
    overwrite: bool = option(False, "replace --out if it exists")


@dataclass
class SpeedConfig:
    batch_sizes: str = option("1,8", "timed batch sizes, comma-separated")
    prompt_lengths: str = option("128", "timed prompt lengths (prefill), comma-separated")
    new_tokens: int = option(32, "tokens generated greedily on the KV cache after the prompt (decode)")
    repeats: int = option(5, "timed rounds; medians are reported")
    warmup: int = option(1, "untimed rounds first")


@dataclass
class TrainingBenchConfig:
    model: str = option(None, "hub id, model directory, .gguf file or 'smollm2-135m'", positional=True)
    variants: str = option("fine-tuning,movement,global-movement,gum",
                           "what to time, comma-separated: fine-tuning (no pruning) or a method, with GUM's cost "
                           "options after colons (gum:tokens=128:every=4)")
    data: str = option(None, "WikiText data folder or file (default: ../shared/data)")
    keep: float = option(0.5, "final keep fraction of the pruning methods")
    mu: float = option(1.0, "GUM's uniqueness weight")
    batch_size: int = option(2, "sequences per step")
    context: int = option(256, "tokens per sequence")
    steps: int = option(6, "timed steps per variant and round")
    warmup: int = option(2, "untimed steps first (the optimizer's state is allocated there)")
    rounds: int = option(2, "rounds over all variants, each in a rotated order")
    device: str = option("cpu", "where to run", choices=("cpu", "cuda"))
    mixed_precision: str = option("no", "no or bf16 (GPU)", choices=("no", "bf16"))
    out: str = option(None, "write the results JSON here")
    seed: int = option(0, "random seed")


@dataclass
class DemoConfig:
    model: str = option(SMOLLM2_ALIAS, "model to prune")
    data: str = option(None, "WikiText data folder or file (default: ../shared/data)")
    methods: str = option("obs,gum", "pruning methods to compare, comma-separated (calibrated ones prune in one "
                                     "shot, then recover for --steps)")
    keep: float = option(0.5, "fraction of MLP neurons kept")
    steps: int = option(40, "fine-pruning (or recovery) steps per method on WikiText validation (0: one-shot)")
    recovery_lr: float = option(2e-4, "learning rate of the recovery after one-shot pruning")
    mu: float = option(1.0, "GUM's uniqueness weight (gum, anti-gum)")
    train_context: int = option(256, "tokens per training sequence")
    train_batch_size: int = option(2, "training sequences per step")
    context: int = option(512, "tokens per perplexity block")
    max_tokens: int = option(16384, "WikiText test tokens to evaluate (0: all)")
    batch_size: int = option(4, "blocks per evaluation forward pass")
    out: str = option("out/demo", "directory for the pruned models (replaced on each run) and results.json")
    seed: int = option(0, "random seed")
    speed: SpeedConfig = group(SpeedConfig)


@dataclass
class BenchConfig:
    dense: str = option(None, "the reference model: hub id, directory, .gguf file or 'smollm2-135m'", positional=True)
    pruned: str = option(None, "the pruned model directory to compare with it", positional=True)
    device: str = option("cpu", "where to run", choices=("cpu", "cuda"))
    dtype: str = option("float32", "weights' dtype", choices=("float32", "bfloat16", "float16"))
    out: str = option(None, "write the results JSON here")
    seed: int = option(0, "seed of the random prompt tokens")
    speed: SpeedConfig = group(SpeedConfig)


def leaf_fields(config_class, path: tuple[str, ...] = ()):
    """(path of entry names, entry, type) for every non-group entry, depth first."""
    hints = typing.get_type_hints(config_class)
    for entry in dataclasses.fields(config_class):
        if entry.metadata.get("group"):
            yield from leaf_fields(hints[entry.name], (*path, entry.name))
        else:
            yield (*path, entry.name), entry, hints[entry.name]


def key(entry) -> str:
    return entry.name.rstrip("_")


def load_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """A YAML file that must exist and hold a mapping, or an error naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FfnpruneError(f"{what} {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise FfnpruneError(f"{what} {path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise FfnpruneError(f"{what} {path} must hold a mapping of names to values")
    return values


def read_yaml(path: str | Path, config_class) -> dict:
    values = load_yaml_mapping(path)
    known = {key(entry) for _, entry, _ in leaf_fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise FfnpruneError(f"config file {path}: unknown option(s) {', '.join(unknown)}; "
                            f"known options: {', '.join(sorted(known))}")
    return values


def build_config(config_class, values: dict):
    """An instance of config_class from flat option values (missing ones keep their defaults)."""
    hints = typing.get_type_hints(config_class)
    kwargs = {}
    for entry in dataclasses.fields(config_class):
        if entry.metadata.get("group"):
            kwargs[entry.name] = build_config(hints[entry.name], values)
        elif key(entry) in values:
            value = values[key(entry)]
            kind = hints[entry.name]
            if value is not None and kind in (int, float) and not isinstance(value, bool):
                try:
                    value = kind(value)
                except ValueError:
                    raise FfnpruneError(f"option {key(entry)}: {value!r} is not a{'n' if kind is int else ''} "
                                        f"{kind.__name__}") from None
            kwargs[entry.name] = value
    return config_class(**kwargs)


def to_flat_dict(config) -> dict:
    """The config as flat option names -> values (what a YAML config file holds)."""
    flat = {}
    for path, entry, _ in leaf_fields(type(config)):
        value = config
        for name in path:
            value = getattr(value, name)
        flat[key(entry)] = value
    return flat

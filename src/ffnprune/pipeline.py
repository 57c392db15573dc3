"""`ffnprune prune`: one-shot (--steps 0) or fine-pruning, from a typed config to a saved pruned model."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import math
import shlex
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch
import yaml
from accelerate import PartialState

from ffnprune.benchmark.memory import PeakMemory
from ffnprune.calibration import CalibrationData, calibration_data, check_calibration_file
from ffnprune.config import EvaluateConfig, PruneConfig, flag, read_yaml, to_flat_dict
from ffnprune.criteria import CALIBRATED, Method, get_method
from ffnprune.errors import FfnpruneError, FfnpruneWarning
from ffnprune.evaluation.run import evaluate_model
from ffnprune.io.atomic import check_not_inside, check_output_dir, check_writable, write_json_atomic
from ffnprune.io.hub import check_push, push_directory
from ffnprune.io.pruned_dir import read_metadata, save_pruned
from ffnprune.io.streamed import LayerStream, check_streamable
from ffnprune.messages import say
from ffnprune.models import (
    LoadedModel,
    check_model_spec,
    fit_context,
    load_model,
    load_tokenizer,
    peek_model,
    pick_device,
    stored_dtype,
)
from ffnprune.pruning.oneshot import (
    calibration_metadata,
    compact_with_metadata,
    dense_scores,
    layer_counts,
    needs_calibration,
    parse_layer_keep,
    prune_one_shot,
    reconstruction_mode,
)
from ffnprune.pruning.selection import check_keep
from ffnprune.schedules import CubicSchedule
from ffnprune.tasks import data_record, get_task, task_data_path, task_examples
from ffnprune.tasks.base import GenerationTask
from ffnprune.training.checkpoint import check_launch_matches, resumable_checkpoint
from ffnprune.training.data import (
    GENERATED,
    GENERATED_FILE,
    PackedSequences,
    Source,
    generate_documents,
    pack,
    parse_sources,
)
from ffnprune.training.hooks import PenaltySettings
from ffnprune.training.loop import CHECKPOINT, LOG, train
from ffnprune.training.sharding import fsdp_plugin

RUN_CONFIG = "run.yaml"


def work_dir(out: str | Path) -> Path:
    """Checkpoints and the log of a fine-pruning run live beside its output until the model is saved."""
    out = Path(out)
    return out.with_name(out.name + ".work")


def check_config(config: PruneConfig) -> Method:
    if not config.model:
        raise FfnpruneError("no MODEL given: name a hub id, a model directory, a .gguf file or 'smollm2-135m'")
    if not config.out:
        raise FfnpruneError("no --out given: name the directory to write the pruned model to")
    check_model_spec(config.model)
    if Path(config.model).expanduser().exists():
        check_not_inside(config.out, config.model)
    if config.push_to_hub:
        check_push(config.push_to_hub)
    if config.training.report_to:
        check_tracker(config.training.report_to)
    if config.steps:
        fsdp_plugin()  # DeepSpeed, FSDP1 and FSDP options ffnprune cannot honour are refused here
    if config.distill.teacher:
        check_model_spec(config.distill.teacher, "--teacher")
    check_keep(config.keep)
    method = get_method(config.method)
    mu = config.penalty.mu
    if method.uses_mu and (mu is None or mu <= 0):
        raise FfnpruneError(f"method {method.name} needs --mu > 0, the weight of uniqueness in its penalty "
                            "(the paper sweeps 0.5-2; --mu 1 is a fair start)")
    if method.learned and config.steps == 0:
        raise FfnpruneError(f"method {method.name!r} learns its scores while fine-tuning: give --steps N (N > 0), or "
                            f"prune in one shot with {', '.join(CALIBRATED)}, random or magnitude")
    if config.steps == 0 and not method.calibrated and config.calibration.reconstruct in (None, "none"):
        warnings.warn(f"method {method.name} in one shot, without training or reconstruction, leaves a far worse "
                      "model than the calibrated default (SmolLM2-135M at keep 0.5: random 28,467x and magnitude "
                      "693,902x the dense perplexity, obs 1.61x); prefer `ffnprune prune "
                      f"{shlex.quote(config.model)} --method obs --keep {config.keep} --out {shlex.quote(config.out)}`,"
                      " add --reconstruct lstsq, or fine-prune with --steps N", FfnpruneWarning, stacklevel=2)
    if mu is not None and not method.uses_mu:
        warnings.warn(f"--mu {mu} is ignored by method {method.name}: only gum and anti-gum use it",
                      FfnpruneWarning, stacklevel=2)
    if config.steps == 0:
        unused = [name for group in (config.training, config.penalty, config.schedule, config.distill)
                  for name in _changed_options(group) if name != "mu"]
        if unused:
            raise FfnpruneError(f"{', '.join(unused)} appl{'ies' if len(unused) == 1 else 'y'} to training, and "
                                "--steps 0 trains nothing; give --steps N, or drop them")
    if config.uniform_widths and method.selection != "global":
        how = "by threshold" if method.selection == "threshold" else "per layer already"
        raise FfnpruneError(f"--uniform-widths applies to the global methods (global-movement, gum, anti-gum); "
                            f"{method.name} selects {how}")
    if config.eval_limit is not None and not config.evaluate:
        raise FfnpruneError("--eval-limit limits the final evaluation; add --evaluate, or drop it")
    check_calibration_options(config, method)
    pick_device(config.calibration.calibration_device, "--calibration-device")
    check_widths_and_space(config, method)
    if config.training.eval_every and config.training.eval_tokens < config.training.context:
        raise FfnpruneError(f"--eval-tokens {config.training.eval_tokens} is less than one sequence of --context "
                            f"{config.training.context}; give --eval-tokens of at least {config.training.context}")
    check_training_data(config)
    if config.steps > 0 and config.training.train_data is None:  # found before any model loads or OUT.work exists
        task_data_path(config.task, config.data, config.train_split)
        if config.training.eval_every:
            task_data_path(config.task, config.data, config.eval_split)
    if config.evaluate:
        task_data_path(config.task, config.data, config.eval_split)
    return method


def with_token_budget(config: PruneConfig) -> PruneConfig:
    """--train-tokens sets --steps: the budget over the tokens of one step (batch x accumulation x processes x
    context), rounded up."""
    settings = config.training
    if settings.train_tokens is None:
        return config
    if settings.train_data is None:
        raise FfnpruneError("--train-tokens is the budget of --train-data; give --train-data (files, or "
                            f"'{GENERATED}'), or --steps N to train on the task's split")
    processes = process_state().num_processes
    per_step = settings.batch_size * settings.grad_accum * processes * settings.context
    if settings.train_tokens < per_step:
        raise FfnpruneError(f"--train-tokens {settings.train_tokens} is less than one step of {per_step} tokens "
                            f"(--batch-size {settings.batch_size} x --grad-accum {settings.grad_accum} x --context "
                            f"{settings.context}{f' x {processes} processes' if processes > 1 else ''}); give more "
                            "tokens or smaller steps")
    steps = math.ceil(settings.train_tokens / per_step)
    if config.steps not in (0, steps):
        raise FfnpruneError(f"--steps {config.steps} and --train-tokens {settings.train_tokens} both set how long "
                            f"to train ({settings.train_tokens} tokens are {steps} steps); give one of them")
    return dataclasses.replace(config, steps=steps)


def check_training_data(config: PruneConfig) -> None:
    settings = config.training
    if settings.train_data == GENERATED and settings.train_tokens is None:
        raise FfnpruneError(f"--train-data {GENERATED} needs --train-tokens N: how many tokens of text the dense "
                            "model writes (and the student then trains on)")
    if settings.train_data is not None and settings.train_data != GENERATED:
        parse_sources(settings.train_data)
    if config.distill.distill_loss == "kl" and not config.distill.distill:
        raise FfnpruneError("--distill-loss kl trains on the teacher's logits alone: add --distill")
    if config.train_rows and (settings.train_data is not None or config.steps == 0):
        raise FfnpruneError("--train-rows draws rows of the task's train split to fine-prune on; it applies with "
                            "--steps N and without --train-data")


def check_widths_and_space(config: PruneConfig, method: Method) -> None:
    """What the model's config tells before its weights load: layers --layer-keep names, widths --round-to and --keep
    leave, and the disk space the saved model needs."""
    layer_keep = parse_layer_keep(config.calibration.layer_keep)
    if method.calibrated and config.keep == 1 and all(value == 1 for value in layer_keep.values()):
        raise FfnpruneError(f"--keep 1 keeps every neuron: {method.name} would calibrate every layer to prune none, "
                            "and its refit would give the model an MLP bias that needs remote code to load; give "
                            "--keep below 1 (or --layer-keep), or fine-tune without pruning: --method magnitude --keep "
                            "1 --steps N")
    shape = peek_model(config.model)
    if shape is None:
        return
    widths = shape.mlp_widths
    layer_keep = parse_layer_keep(config.calibration.layer_keep, len(widths))
    pruned = [width for index, width in enumerate(widths) if layer_keep.get(index, config.keep) < 1 and width > 0]
    if config.round_to > 1 and pruned and config.round_to > min(pruned):
        raise FfnpruneError(f"--round-to {config.round_to} is wider than the narrowest MLP to prune ({min(pruned)} "
                            "neurons): its width would round to the whole layer or to nothing; give a multiple of at "
                            f"most {min(pruned)} (8, 64 and 128 suit most hardware)")
    counts = layer_counts(widths, config.keep, layer_keep, config.round_to)
    if sum(counts) == 0:
        raise FfnpruneError(f"--keep {config.keep} keeps no neuron at all: int({config.keep} x {max(widths)}) = 0 in "
                            f"every layer; give a larger --keep (at least {1 / min(w for w in widths if w):.2g})")
    share = sum(counts) / max(1, sum(widths))
    bytes_per = torch.finfo(getattr(torch, config.dtype or stored_dtype(config.model) or "bfloat16")).bits // 8
    needed = int((shape.parameters - (1 - share) * shape.mlp_parameters) * bytes_per)
    what = "the pruned model needs"
    if config.steps and config.training.checkpoint_every:
        needed += shape.parameters * CHECKPOINT_BYTES_PER_PARAMETER
        what = "the pruned model and the run's checkpoints (OUT.work) need"
    check_free_space(Path(config.out), needed, what)


CHECKPOINT_BYTES_PER_PARAMETER = 14  # float32 weights, AdamW's two moments, scores (1.9 GB for SmolLM2-135M)


def check_free_space(out: Path, needed: int, what: str) -> None:
    """Refuse before the work when the disk cannot hold what it will write (with a 5% margin)."""
    ancestor = out.absolute()
    while not ancestor.exists():
        ancestor = ancestor.parent
    free = shutil.disk_usage(ancestor).free
    if free < needed * 1.05:
        raise FfnpruneError(f"--out {out}: {what} about {needed / 2**30:.2f} GiB and {ancestor} has "
                            f"{free / 2**30:.2f} GiB free; free some space or choose another --out")


def check_tracker(name: str) -> None:
    """accelerate refuses a tracker whose package is missing only once training starts; say so before any work."""
    packages = ("tensorboard", "tensorboardX") if name == "tensorboard" else (name,)
    if not any(importlib.util.find_spec(package) for package in packages):
        raise FfnpruneError(f"--report-to {name} needs the {name} package: pip install {name}")


def _changed_options(group) -> list[str]:
    """The flags of a config group whose values differ from their defaults."""
    return [flag(entry.name) for entry in dataclasses.fields(group)
            if getattr(group, entry.name) != entry.default]


CALIBRATION_DATA_OPTIONS = ("--calibration-data", "--calibration-tokens", "--calibration-context",
                            "--calibration-batch-size", "--calibration-inputs", "--calibration-target", "--damp")


def one_shot(method: Method, steps: int) -> bool:
    """Calibrated criteria always select in one shot (then recover for `steps`); the others do at --steps 0."""
    return method.calibrated or steps == 0


def check_calibration_options(config: PruneConfig, method: Method) -> None:
    """Every calibration option is checked, and the calibration data found, before any model is loaded."""
    settings = config.calibration
    if settings.init_scores != "zeros" and settings.init_scores not in CALIBRATED:
        raise FfnpruneError(f"--init-scores {settings.init_scores!r}: use zeros or one of {', '.join(CALIBRATED)}")
    if settings.init_scores != "zeros" and not method.learned:
        raise FfnpruneError(f"--init-scores starts learned scores (movement, global-movement, gum, ...); method "
                            f"{method.name} learns none")
    parse_layer_keep(settings.layer_keep)
    if settings.stream:
        check_stream_options(config, method)
    if settings.spill_dir is not None:
        check_writable(Path(settings.spill_dir) / "hidden", "--spill-dir")
    if not one_shot(method, config.steps):
        for name, value, default in (("reconstruct", settings.reconstruct, None), ("selection", settings.selection,
                                     "uniform"), ("layer-keep", settings.layer_keep, None)):
            if value != default:
                raise FfnpruneError(f"--{name} applies to one-shot pruning; method {method.name} with --steps "
                                    f"{config.steps} prunes gradually. Use --steps 0, or a calibrated criterion "
                                    f"({', '.join(CALIBRATED)}), which prunes in one shot and then recovers")
    calibrating = (one_shot(method, config.steps) and needs_calibration(method, settings)) or \
        settings.init_scores != "zeros"
    if calibrating:
        if settings.calibration_data not in (None, GENERATED):
            check_calibration_file(settings.calibration_data, load_tokenizer(config.model),
                                   settings.calibration_context)
        else:
            task_data_path(config.task, config.data, config.train_split)
    else:
        unused = [name for name in _changed_options(settings) if name in CALIBRATION_DATA_OPTIONS]
        if unused:
            raise FfnpruneError(f"{', '.join(unused)} appl{'ies' if len(unused) == 1 else 'y'} to calibration, and "
                                f"method {method.name} without reconstruction reads no calibration data; use a "
                                f"calibrated method ({', '.join(CALIBRATED)}) or --reconstruct lstsq, or drop them")


def check_stream_options(config: PruneConfig, method: Method) -> None:
    """--stream holds one layer at a time: what needs the whole model at once is refused, with the alternative."""
    if config.steps:
        raise FfnpruneError("--stream is for one-shot pruning (--steps 0); fine-pruning and recovery train the whole "
                            "model: stream the one-shot prune, then recover the pruned model with --steps")
    if not method.calibrated:
        raise FfnpruneError(f"--stream calibrates layer by layer; method {method.name} scores every layer's weights "
                            f"up front: use a calibrated criterion ({', '.join(CALIBRATED)})")
    if config.calibration.selection == "global":
        raise FfnpruneError("--selection global ranks every layer's scores before pruning any, a second pass over the "
                            "model: with --stream use uniform widths or --layer-keep")
    if config.evaluate:
        raise FfnpruneError("--evaluate scores the whole pruned model in memory, which --stream avoids holding; "
                            "evaluate OUT afterwards with `ffnprune evaluate OUT` where it fits")
    check_streamable(config.model)


def prune(config: PruneConfig, resume: str | Path | None = None, say=say) -> Path:
    """Prune as configured; with `resume`, continue the fine-pruning or recovery run whose work directory it names."""
    config = with_token_budget(config)
    method = check_config(config)
    out = _prune(config, method, resume, say)
    if config.push_to_hub and process_state().is_main_process:
        say(f"pushing {out} to {config.push_to_hub} ...")
        say(f"pushed: {push_directory(out, config.push_to_hub)}")
    return out


def _prune(config: PruneConfig, method: Method, resume, say) -> Path:
    if config.steps == 0:
        if resume is not None:
            raise FfnpruneError("--resume continues a fine-pruning run; one-shot pruning (--steps 0) has nothing to "
                                "resume")
        check_output_dir(config.out, config.overwrite)
        # Under torchrun / accelerate launch every process calibrates on its share of the sequences and prunes
        # the same way (calibration.sequential); the main process alone speaks and writes.
        state = process_state()
        if not state.is_main_process:
            say = _quiet_say
        if config.calibration.stream:
            out = prune_streamed(config, method, say, state.is_main_process)
        else:
            say(f"loading {config.model} ...")
            loaded = load_model(config.model)
            metadata = prune_once(loaded, config, method, say)
            metadata["processes"] = state.num_processes
            out = evaluate_and_save(loaded, config, metadata, say) if state.is_main_process else Path(config.out)
        state.wait_for_everyone()
        if state.is_main_process and work_dir(config.out).is_dir() and not any(work_dir(config.out).iterdir()):
            work_dir(config.out).rmdir()  # where several processes spilled hidden states
        return out
    return fine_prune(config, method, Path(resume) if resume else None, say)


def process_state() -> PartialState:
    """accelerate's view of the processes, as the training loop's Accelerator sets it up (on a machine without a
    GPU, torchrun's processes are CPU processes over gloo, not one process)."""
    return PartialState(cpu=not torch.cuda.is_available())


def _quiet_say(*args, **kwargs) -> None:
    return None


def prune_streamed(config: PruneConfig, method: Method, say=say, writes: bool = True) -> Path:
    """One-shot pruning that reads each layer from the checkpoint when calibration reaches it and writes it to
    OUT.work once pruned (io.streamed); the shards move into OUT when all are done."""
    location = check_streamable(config.model)
    workdir = work_dir(config.out)
    if writes:
        shutil.rmtree(workdir, ignore_errors=True)
    say(f"reading {config.model} layer by layer (--stream); pruned layers wait in {workdir}")
    try:
        stream = LayerStream(location, workdir / "shards", torch.float32, writes)
        loaded = LoadedModel(stream.model, load_tokenizer(str(location)), stream.adapter, config.model, str(location),
                             stored_dtype(location))
        dtype = saved_dtype(loaded, config)
        stream.dtype = getattr(torch, dtype)
        metadata = {**prune_once(loaded, config, method, say, stream), "saved_dtype": dtype, "streamed": True,
                    "processes": process_state().num_processes}
        if not writes:
            return Path(config.out)
        return save_pruned(loaded.model, loaded.tokenizer, config.out, metadata, overwrite=config.overwrite,
                           stream=stream)
    finally:
        if writes:
            shutil.rmtree(workdir, ignore_errors=True)


def saved_dtype(loaded: LoadedModel, config: PruneConfig) -> str:
    """--dtype, else the source checkpoint's dtype, else bfloat16 (a GGUF source: its weights were quantised, and
    float32 would quadruple them on disk for nothing)."""
    return config.dtype or loaded.source_dtype or "bfloat16"


def evaluate_and_save(loaded: LoadedModel, config: PruneConfig, metadata: dict, say, **save_kwargs) -> Path:
    """Round the weights to the dtype they are saved in (computing stays float32), so that what --evaluate measures
    is exactly what is saved; evaluate; save."""
    metadata["saved_dtype"] = saved_dtype(loaded, config)
    dtype = getattr(torch, metadata["saved_dtype"])
    if dtype != torch.float32:
        with torch.no_grad():
            for parameter in loaded.model.parameters():
                parameter.copy_(parameter.to(dtype))
    metadata["evaluation"] = final_evaluation(config, loaded, say)
    try:
        return save_pruned(loaded.model, loaded.tokenizer, config.out, metadata, overwrite=config.overwrite,
                           dtype=metadata["saved_dtype"], **save_kwargs)
    except OSError as error:
        workdir = shlex.quote(str(work_dir(config.out)))
        kept = (f"the run's last checkpoint stays in {workdir}: free space, then `ffnprune prune --resume {workdir}`"
                if config.steps and config.training.checkpoint_every else
                "the pruning is lost: free space and run it again")
        raise FfnpruneError(f"could not write the pruned model to {config.out}: {error.strerror or error}; nothing "
                            f"was left there, and {kept}") from error


def load_calibration(config: PruneConfig, loaded: LoadedModel, say=say) -> CalibrationData:
    """The calibration sequences: the task's split, the user's file, or (`generated`) text the dense model samples
    itself, as many tokens as calibration takes."""
    settings = config.calibration
    context = fit_context(loaded.model, settings.calibration_context, "--calibration-context")
    if settings.calibration_data != GENERATED:
        return calibration_data(loaded.tokenizer, tokens=settings.calibration_tokens, context=context,
                                seed=config.seed, file=settings.calibration_data, task=config.task, data=config.data,
                                split=config.train_split, strict=config.strict)
    with tempfile.TemporaryDirectory() as folder:
        say(f"the dense model writes {settings.calibration_tokens:,} tokens of calibration text ...")
        written = generate_documents(loaded.model, loaded.tokenizer, settings.calibration_tokens, context,
                                     config.seed, Path(folder) / GENERATED_FILE,
                                     progress=_token_progress(say, "generated"))
        calibration = calibration_data(loaded.tokenizer, tokens=settings.calibration_tokens, context=context,
                                       seed=config.seed, file=str(Path(folder) / GENERATED_FILE))
    calibration.source = {**{k: v for k, v in calibration.source.items() if k != "file"}, "generated": written}
    return calibration


def _layer_progress(say, what: str):
    """One line per layer, with the time spent and an estimate of the time left."""
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        elapsed = time.perf_counter() - started
        left = f", about {_duration(elapsed / done * (total - done))} left" if 0 < done < total else ""
        say(f"{what}: layer {done} of {total}, {_duration(elapsed)}{left}")
    return progress


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"


def prune_once(loaded: LoadedModel, config: PruneConfig, method: Method, say=say, stream=None) -> dict:
    """One-shot: calibrate if the criterion or reconstruction needs it, select, reconstruct, compact in place;
    returns the metadata."""
    settings = config.calibration
    calibration = None
    if needs_calibration(method, settings):
        calibration = load_calibration(config, loaded, say)
        say(f"calibrating on {calibration.tokens:,} tokens ({len(calibration.examples)} sequences of "
            f"{calibration.source['context']}); {method.name} selection, {reconstruction_mode(method, settings)} "
            "reconstruction, layer by layer")
    device = pick_device(settings.calibration_device, "--calibration-device")
    widths_before, parameters_before = loaded.adapter.mlp_widths(loaded.model), loaded.model.num_parameters()
    started = time.perf_counter()
    with PeakMemory(device) as peak:
        result = prune_one_shot(loaded.model, loaded.adapter, method, config.keep, settings, calibration, device,
                                config.seed, config.round_to, _layer_progress(say, "one-shot pruning"), stream,
                                Path(settings.spill_dir or work_dir(config.out)))
    seconds = time.perf_counter() - started
    say(f"one-shot pruning took {seconds:.0f} s" + (f", peak memory {peak.bytes / 2**30:.2f} GiB" if peak.bytes
                                                      else ""))
    one_shot = calibration_metadata(method, settings, calibration, result, seconds, device)
    one_shot["peak_memory"] = {"device": str(device), "bytes": peak.bytes, "added_bytes": peak.added,
                               "what": "CUDA allocations" if device.type == "cuda" else "process resident set"}
    return compact_with_metadata(loaded, config, result.kept, compact=False, widths_before=widths_before,
                                 parameters_before=parameters_before, one_shot=one_shot)


def final_evaluation(config: PruneConfig, loaded: LoadedModel, say=say) -> dict | None:
    """With --evaluate, the compacted model on the evaluation split, as `ffnprune evaluate` would score it."""
    if not config.evaluate:
        return None
    say(f"evaluating the pruned model on {config.task} {config.eval_split} ...")
    generation = isinstance(get_task(config.task), GenerationTask)
    settings = EvaluateConfig(model=config.model, task=config.task, split=config.eval_split, data=config.data,
                              limit=config.eval_limit if generation else None,
                              max_tokens=None if generation else config.eval_limit, strict=config.strict)
    result = evaluate_model(loaded.model, loaded.tokenizer, settings)
    say("evaluation: " + ", ".join(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
                                   for name, value in result["metrics"].items() if name != "implementation"))
    return result


def fine_prune(config: PruneConfig, method: Method, resume: Path | None, say=say) -> Path:
    """Gradual fine-pruning on the cubic schedule, or, for calibrated criteria, one-shot pruning then recovery."""
    schedule = CubicSchedule(config.steps, 1.0 if method.calibrated else config.keep, config.schedule.warmup_share,
                             config.schedule.cooldown_share)
    state = process_state()
    if resume is not None and Path(config.out).exists() and not config.overwrite:
        raise FfnpruneError(f"output directory {config.out} already exists; a resumed run writes to the --out it "
                            "started with: pass --overwrite to let it replace that directory")
    check_output_dir(config.out, config.overwrite)
    if resume is None:
        workdir = work_dir(config.out)
        if (workdir / CHECKPOINT).exists() and not config.overwrite:
            raise FfnpruneError(f"an earlier run left a checkpoint in {workdir}; continue it with --resume {workdir}, "
                                "or pass --overwrite to start again")
        if state.is_main_process:
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir(parents=True)
            (workdir / RUN_CONFIG).write_text(yaml.safe_dump(to_flat_dict(config), sort_keys=False))
            say(f"checkpoints and log in {workdir}")
    else:
        workdir = resume
        if resumable_checkpoint(workdir / CHECKPOINT) is None:
            raise FfnpruneError(f"{workdir} holds no checkpoint to resume (expected {workdir / CHECKPOINT}); "
                                "give the work directory a run printed at its start")
        check_launch_matches(resumable_checkpoint(workdir / CHECKPOINT), fsdp_plugin() is not None,
                             state.num_processes)
        changes = check_resumed_options(config, workdir)
        if state.is_main_process and changes:
            _record_resume(workdir, config, changes, say)
    state.wait_for_everyone()

    try:
        return _train_and_save(config, method, schedule, workdir, resume, state, say)
    except BaseException:
        # A run that fails before its first checkpoint leaves nothing to resume: leave nothing behind either.
        if resume is None and state.is_main_process and resumable_checkpoint(workdir / CHECKPOINT) is None:
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _train_and_save(config: PruneConfig, method: Method, schedule: CubicSchedule, workdir: Path,
                    resume: Path | None, state, say) -> Path:
    recovering = method.calibrated
    loaded = load_model(config.model)
    teacher = None
    if config.distill.distill:
        teacher = load_model(config.distill.teacher).model if config.distill.teacher else copy.deepcopy(loaded.model)
    length = fit_context(loaded.model, config.training.context)
    # Before the one-shot prune changes the model in place: `generated` text comes from the dense model.
    train_examples, data_protocol = _training_data(config, loaded, teacher, workdir, length, state, say)
    initial_scores, one_shot_metadata = None, None
    if recovering:
        loaded, one_shot_metadata = _one_shot_before_recovery(loaded, config, method, workdir, resume, state, say)
    elif config.calibration.init_scores != "zeros":
        initial_scores = _calibrated_initial_scores(loaded, config, say)
    eval_examples = None
    if config.training.eval_every:  # the loss-carrying tokens of about --eval-tokens tokens of the split
        eval_examples = task_examples(config.task, loaded.tokenizer, config.data, config.eval_split, length,
                                      config.training.eval_tokens, strict=config.strict)
        eval_examples = eval_examples.head_tokens(config.training.eval_tokens)
    penalty = PenaltySettings(config.penalty.lambda_, config.penalty.mu, config.penalty.beta,
                              config.penalty.soft_threshold, config.penalty.gum_tokens, config.penalty.gum_every)
    outcome = train(config, loaded.model, loaded.adapter, None if recovering else method, schedule, penalty,
                    train_examples,
                    eval_examples, workdir, teacher=teacher, resume=resume is not None, say=say,
                    initial_scores=initial_scores)
    per_step = config.training.batch_size * config.training.grad_accum * outcome.processes
    protocol = {**data_protocol, "eval_split": config.eval_split, "context": length,
                "train_examples": len(train_examples), "tokens_seen": config.steps * per_step * length}
    training = {"final_loss": outcome.final_loss, "log": LOG, "resumed": read_resumes(workdir),
                "mixed_precision": outcome.mixed_precision, "processes": outcome.processes,
                "sharding": outcome.sharding,
                "kind": "recovery after one-shot pruning" if recovering else "fine-pruning",
                "distilled": teacher is not None, "init_scores": config.calibration.init_scores}
    out = Path(config.out)
    if state.is_main_process:  # under FSDP only the main process holds the whole trained model
        loaded.model = outcome.model
        if recovering:
            metadata = {**one_shot_metadata, "steps": config.steps, "protocol": protocol,
                        "hyperparameters": to_flat_dict(config), "training": training,
                        "parameters_after": loaded.model.num_parameters()}
        else:
            metadata = compact_with_metadata(loaded, config, outcome.kept, protocol=protocol,
                                             hyperparameters=to_flat_dict(config), training=training)
        evaluate_and_save(loaded, config, metadata, say, extra_files=outcome.files)
        shutil.rmtree(workdir, ignore_errors=True)
    state.wait_for_everyone()
    return out


PACKED_TOKENS = "train_tokens.bin"
TRAIN_ROWS_SEED = 0  # --train-rows draws the same rows for every run, whatever its --seed
PACKED_RECORD = "train_data.json"


def _training_data(config: PruneConfig, loaded: LoadedModel, teacher, workdir: Path, length: int, state, say):
    """The training sequences and what the protocol records of them: the task's split, or --train-data packed into
    the work directory (once: a resumed run reads the same tokens, and never samples `generated` text again)."""
    settings = config.training
    if settings.train_data is None:
        examples = task_examples(config.task, loaded.tokenizer, config.data, config.train_split, length,
                                 loss_on_prompt=config.loss_on_prompt, strict=config.strict)
        subset = {}
        if config.train_rows:
            subset = {"train_rows": min(config.train_rows, len(examples)), "train_rows_of": len(examples),
                      "train_rows_seed": TRAIN_ROWS_SEED}
            examples = examples.sample(config.train_rows, TRAIN_ROWS_SEED)
        return examples, {"task": config.task, **data_record(config.task, config.data, config.train_split),
                          "train_split": config.train_split, **subset}
    packed, described = workdir / PACKED_TOKENS, workdir / PACKED_RECORD
    # The barrier is outside the test: a process that saw the main one's finished file would otherwise skip it.
    if state.is_main_process and not described.is_file():
        budget = config.steps * settings.batch_size * settings.grad_accum * state.num_processes * length
        generated = None
        if settings.train_data == GENERATED:
            say(f"the dense model writes {settings.train_tokens:,} tokens of training text ...")
            generated = generate_documents(teacher if teacher is not None else loaded.model, loaded.tokenizer,
                                           settings.train_tokens, length, config.seed, workdir / GENERATED_FILE,
                                           progress=_token_progress(say, "generated"))
            sources = [Source(workdir / GENERATED_FILE, 1.0)]
        else:
            sources = parse_sources(settings.train_data)
        record = pack(sources, loaded.tokenizer, budget, packed, config.seed)
        write_json_atomic(described, {**record, **({"generated": generated} if generated else {})})
        say(f"training data: {record['tokens']:,} tokens packed into {packed}")
    state.wait_for_everyone()
    return PackedSequences(packed, length), {"train_data": json.loads(described.read_text())}


def _token_progress(say, what: str):
    def progress(done: int, total: int) -> None:
        say(f"{what}: {done:,} of {total:,} tokens")
    return progress


ONE_SHOT_DIR = "one-shot"
RESUMES = "resumes.json"
# What a resumed run may change: how it learns from here on and what it reports, not what it is.
CHANGEABLE_ON_RESUME = ("lr", "score_lr", "weight_decay", "adam_eps", "clip", "eval_every", "eval_tokens",
                        "checkpoint_every", "evaluate", "eval_limit", "overwrite", "mixed_precision",
                        "calibration_device", "dtype", "push_to_hub", "report_to")


def check_resumed_options(config: PruneConfig, workdir: Path) -> dict:
    """The options that differ from the run's run.yaml: those that would change what the run is are refused;
    returns the others, {name: [before, now]}."""
    recorded = read_yaml(workdir / RUN_CONFIG, PruneConfig)
    changes = {name: [recorded[name], value] for name, value in to_flat_dict(config).items()
               if name in recorded and recorded[name] != value}  # an option newer than the run keeps its default
    refused = {name: change for name, change in changes.items() if name not in CHANGEABLE_ON_RESUME}
    if refused:
        listed = ", ".join(f"{flag(n)} ({a!r} -> {b!r})" for n, (a, b) in refused.items())
        raise FfnpruneError(f"--resume continues the run as it was started; these options differ from its "
                            f"{workdir / RUN_CONFIG}: {listed}. A resumed run may change only "
                            f"{', '.join(map(flag, CHANGEABLE_ON_RESUME))}; start a new "
                            "run (another --out) to change the rest")
    return changes


def _record_resume(workdir: Path, config: PruneConfig, changes: dict, say) -> None:
    """Provenance stays true: run.yaml holds the options now in force, resumes.json when each changed."""
    from ffnprune.training.checkpoint import checkpoint_step

    step = checkpoint_step(resumable_checkpoint(workdir / CHECKPOINT))
    write_json_atomic(workdir / RESUMES, [*read_resumes(workdir), {"from_step": step, "changed": changes}])
    (workdir / RUN_CONFIG).write_text(yaml.safe_dump(to_flat_dict(config), sort_keys=False))
    say(f"resuming at step {step} with " + ", ".join(f"{n} {a!r} -> {b!r}" for n, (a, b) in changes.items()))


def read_resumes(workdir: Path) -> list:
    path = workdir / RESUMES
    return json.loads(path.read_text()) if path.is_file() else []


def _one_shot_before_recovery(loaded: LoadedModel, config: PruneConfig, method: Method, workdir: Path,
                              resume: Path | None, state, say) -> tuple[LoadedModel, dict]:
    """Recovery starts from the one-shot pruned model, saved in the work directory so that a resumed run starts
    from exactly the same one (and does not calibrate again)."""
    saved = workdir / ONE_SHOT_DIR
    if resume is None:
        if state.is_main_process:
            metadata = prune_once(loaded, config, method, say)
            save_pruned(loaded.model, loaded.tokenizer, saved, metadata, overwrite=True)
        state.wait_for_everyone()
    elif not (saved / "config.json").is_file():
        raise FfnpruneError(f"{workdir} has no one-shot model ({saved}) to recover from; start the run again")
    pruned = load_model(str(saved))
    return LoadedModel(pruned.model, pruned.tokenizer, pruned.adapter, loaded.source, loaded.location,
                       loaded.source_dtype), \
        read_metadata(saved)


def _calibrated_initial_scores(loaded: LoadedModel, config: PruneConfig, say) -> list:
    """--init-scores: the named criterion's scores on the dense model, standardised per layer."""
    criterion = get_method(config.calibration.init_scores)
    calibration = load_calibration(config, loaded, say)
    say(f"initial scores: {criterion.name} on {calibration.tokens:,} calibration tokens")
    scores = dense_scores(loaded.model, loaded.adapter, criterion, calibration, config.calibration,
                          pick_device(config.calibration.calibration_device, "--calibration-device"), config.seed)
    return [(s - s.mean()) / (s.std() + 1e-12) if s.numel() > 1 else s * 0 for s in scores]

"""`ffnprune prune`: one-shot (--steps 0) or fine-pruning, from a typed config to a saved pruned model."""

from __future__ import annotations

import copy
import shutil
import warnings
from pathlib import Path

import yaml
from accelerate import PartialState

from ffnprune.config import EvaluateConfig, PruneConfig, to_flat_dict
from ffnprune.criteria import Method, get_method
from ffnprune.errors import FfnpruneError
from ffnprune.evaluation.run import evaluate_model
from ffnprune.io.atomic import check_output_dir
from ffnprune.io.pruned_dir import save_pruned
from ffnprune.models import LoadedModel, load_model
from ffnprune.pruning.oneshot import compact_with_metadata, prune_loaded
from ffnprune.pruning.selection import check_keep, check_round_to
from ffnprune.schedules import CubicSchedule
from ffnprune.tasks import task_examples
from ffnprune.training.hooks import PenaltySettings
from ffnprune.training.loop import CHECKPOINT, LOG, train

RUN_CONFIG = "run.yaml"


class FfnpruneWarning(UserWarning):
    """An option that has no effect, or a choice a user should know about."""


def work_dir(out: str | Path) -> Path:
    """Checkpoints and the log of a fine-pruning run live beside its output until the model is saved."""
    out = Path(out)
    return out.with_name(out.name + ".work")


def check_config(config: PruneConfig) -> Method:
    if not config.model:
        raise FfnpruneError("no MODEL given: name a hub id, a model directory, a .gguf file or 'smollm2-135m'")
    if not config.out:
        raise FfnpruneError("no --out given: name the directory to write the pruned model to")
    check_keep(config.keep)
    method = get_method(config.method)
    check_round_to(config.round_to)
    if not isinstance(config.steps, int) or config.steps < 0:
        raise FfnpruneError(f"--steps {config.steps!r} must be 0 (one-shot) or a positive number of optimizer steps")
    mu = config.penalty.mu
    if method.uses_mu and (mu is None or mu <= 0):
        raise FfnpruneError(f"method {method.name} needs --mu > 0, the weight of uniqueness in its penalty "
                            "(the paper sweeps 0.5-2; --mu 1 is a fair start)")
    for name, value in (("gum-tokens", config.penalty.gum_tokens), ("gum-every", config.penalty.gum_every)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise FfnpruneError(f"--{name} {value!r} must be a whole number >= 1")
    if mu is not None and not method.uses_mu:
        warnings.warn(f"--mu {mu} is ignored by method {method.name}: only gum and anti-gum use it",
                      FfnpruneWarning, stacklevel=2)
    return method


def prune(config: PruneConfig, resume: str | Path | None = None, say=print) -> Path:
    """Prune as configured; with `resume`, continue the fine-pruning run whose work directory it names."""
    method = check_config(config)
    if config.steps == 0:
        if resume is not None:
            raise FfnpruneError("--resume continues a fine-pruning run; one-shot pruning (--steps 0) has nothing to "
                                "resume")
        check_output_dir(config.out, config.overwrite)
        loaded = load_model(config.model)
        metadata = prune_loaded(loaded, config)
        metadata["evaluation"] = final_evaluation(config, loaded, say)
        return save_pruned(loaded.model, loaded.tokenizer, config.out, metadata, overwrite=config.overwrite)
    return fine_prune(config, method, Path(resume) if resume else None, say)


def final_evaluation(config: PruneConfig, loaded: LoadedModel, say=print) -> dict | None:
    """With --evaluate, the compacted model on the evaluation split, as `ffnprune evaluate` would score it."""
    if not config.evaluate:
        return None
    say(f"evaluating the pruned model on {config.task} {config.eval_split} ...")
    settings = EvaluateConfig(model=config.model, task=config.task, split=config.eval_split, data=config.data,
                              limit=config.eval_limit, strict=config.strict)
    return evaluate_model(loaded.model, loaded.tokenizer, settings)


def fine_prune(config: PruneConfig, method: Method, resume: Path | None, say=print) -> Path:
    schedule = CubicSchedule(config.steps, config.keep, config.schedule.warmup_share, config.schedule.cooldown_share)
    state = PartialState()
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
        if not (workdir / CHECKPOINT / "trainer.json").is_file():
            raise FfnpruneError(f"{workdir} holds no checkpoint to resume (expected {workdir / CHECKPOINT}); "
                                "give the work directory a run printed at its start")
    state.wait_for_everyone()

    loaded = load_model(config.model)
    teacher = None
    if config.distill.distill:
        teacher = load_model(config.distill.teacher).model if config.distill.teacher else copy.deepcopy(loaded.model)
    length = config.training.context
    train_examples = task_examples(config.task, loaded.tokenizer, config.data, config.train_split, length,
                                   loss_on_prompt=config.loss_on_prompt, strict=config.strict)
    eval_examples = None
    if config.training.eval_every:  # the loss-carrying tokens of about --eval-tokens tokens of the split
        eval_examples = task_examples(config.task, loaded.tokenizer, config.data, config.eval_split, length,
                                      config.training.eval_tokens, strict=config.strict)
        eval_examples = eval_examples.head(max(1, config.training.eval_tokens // length))
    penalty = PenaltySettings(config.penalty.lambda_, config.penalty.mu, config.penalty.beta,
                              config.penalty.soft_threshold, config.penalty.gum_tokens, config.penalty.gum_every)
    outcome = train(config, loaded.model, loaded.adapter, method, schedule, penalty, train_examples, eval_examples,
                    workdir, teacher=teacher, resume=resume is not None, say=say)
    protocol = {"task": config.task, "data": str(config.data or "default (../shared/data)"),
                "train_split": config.train_split, "eval_split": config.eval_split, "context": length,
                "train_examples": len(train_examples)}
    metadata = compact_with_metadata(loaded, config, outcome.kept, protocol=protocol,
                                     hyperparameters=to_flat_dict(config),
                                     training={"final_loss": outcome.final_loss, "log": LOG})
    metadata["evaluation"] = final_evaluation(config, loaded, say) if state.is_main_process else None
    out = Path(config.out)
    if state.is_main_process:
        save_pruned(loaded.model, loaded.tokenizer, out, metadata, overwrite=config.overwrite,
                    extra_files={LOG: outcome.log})
        shutil.rmtree(workdir, ignore_errors=True)
    state.wait_for_everyone()
    return out

"""The fine-pruning training loop, on HF Accelerate (`accelerate launch` runs it with DDP, FSDP or DeepSpeed).

AdamW with a separate score learning rate, linear LR with warm-up, gradient accumulation, clipping, mixed precision
on GPU, a progress bar, a JSONL log per step, periodic evaluation at the current density, atomic checkpoints.
Every process sees a different slice of each global batch; the order of examples is a function of the seed and the
step alone, so a resumed run reads exactly what the uninterrupted one would have.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from ffnprune.adapters import adapter_for
from ffnprune.config import PruneConfig, to_flat_dict
from ffnprune.errors import FfnpruneError
from ffnprune.messages import logger, say
from ffnprune.metrics.perplexity import causal_lm_loss, examples_perplexity
from ffnprune.tasks.examples import Examples
from ffnprune.training.checkpoint import load_checkpoint, resumable_checkpoint, rewind_before, save_checkpoint
from ffnprune.training.data import PackedSequences
from ffnprune.training.distill import combine, distillation_loss
from ffnprune.training.hooks import FinePruner
from ffnprune.training.sharding import average_gradients, clip_gradients, fsdp_plugin, gathered, meta_skeleton, shard

CHECKPOINT = "checkpoint"
LOG = "train_log.jsonl"
RUNS = "runs"  # tensorboard's event files (--report-to tensorboard), as the HF Trainer names its folder


class PrunableModel(nn.Module):
    """The model and its neuron scores in one module, so that DDP synchronises the scores' gradients too (FSDP
    keeps them whole and out of its sharding; see training/sharding.py). It is called as the model is."""

    def __init__(self, model: nn.Module, scores: nn.Module):
        super().__init__()
        self.model = model
        self.scores = scores

    def forward(self, **inputs):
        return self.model(**inputs, use_cache=False)


class BatchOrder:
    """Example indices of every micro-batch: a stream of seeded permutations, one per pass over the data."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self._orders = size, seed, {}

    def _order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._orders = {epoch: torch.randperm(self.size, generator=generator)}
        return self._orders[epoch]

    def indices(self, first: int, count: int) -> list[int]:
        return [int(self._order(p // self.size)[p % self.size]) for p in range(first, first + count)]


def _tracker_config(config: PruneConfig) -> dict:
    """The run's options as the scalars and strings that trackers' hyper-parameter tables take."""
    return {name: value if isinstance(value, (int, float, str, bool)) else str(value)
            for name, value in to_flat_dict(config).items()}


def parameter_groups(model: nn.Module, pruner: FinePruner | None, lr: float, score_lr: float, weight_decay: float):
    """Weight decay on matrices only (none on biases, norms, scores); the scores get their own learning rate.
    Without a pruner: the groups of plain fine-tuning."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "lr": lr, "weight_decay": weight_decay},
              {"params": no_decay, "lr": lr, "weight_decay": 0.0}]
    if pruner is not None and pruner.trainable_scores():
        groups.append({"params": pruner.trainable_scores(), "lr": score_lr, "weight_decay": 0.0})
    return groups


@dataclass
class TrainingOutcome:
    kept: list[torch.Tensor]
    model: nn.Module | None  # the trained model, whole: on the main process only under FSDP
    final_loss: float
    steps: int
    files: dict[str, Path]  # name in the saved directory -> what the run wrote: the log, tensorboard's events
    pruner_state: dict[str, torch.Tensor]  # final scores and GUM statistics
    processes: int
    sharding: str | None  # "fsdp2" when the model was sharded over the processes
    mixed_precision: str  # what ran: --mixed-precision, else accelerate's configuration


def train(config: PruneConfig, model: nn.Module, adapter, method, schedule, penalty,
          train_examples: Examples | PackedSequences,
          eval_examples: Examples | None, workdir: Path, teacher: nn.Module | None = None,
          resume: bool = False, say=say, initial_scores: list[torch.Tensor] | None = None) -> TrainingOutcome:
    """Fine-prune `model` by `method` on the schedule; with `method` None, fine-tune it without pruning (the
    recovery of a one-shot pruned model)."""
    settings = config.training
    sharding = fsdp_plugin()
    accelerator = Accelerator(mixed_precision=settings.mixed_precision, cpu=not torch.cuda.is_available(),
                              log_with=settings.report_to, project_dir=workdir / RUNS)
    if settings.report_to:
        accelerator.init_trackers(Path(config.out).name, config=_tracker_config(config))
    set_seed(config.seed)
    model.to(accelerator.device).train()
    # Under FSDP the sharded model cannot be compacted: its full state comes back into this copy at the end.
    skeleton = meta_skeleton(model) if sharding is not None and accelerator.is_main_process else None
    pruner = FinePruner(model, adapter, method, schedule, penalty, config.seed,
                        reduce=lambda t: accelerator.reduce(t, "mean"), round_to=config.round_to,
                        uniform_widths=config.uniform_widths,
                        initial_scores=initial_scores)
    wrapper = PrunableModel(model, pruner.scores)
    if teacher is not None:
        teacher.to(accelerator.device).eval()
    if sharding is not None:
        shard(wrapper, adapter.decoder_layers(model), sharding, pruner.trainable_scores(), accelerator)
        if teacher is not None:
            shard(teacher, adapter_for(teacher.config).decoder_layers(teacher), sharding, [], accelerator)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, pruner, settings.lr, settings.score_lr, settings.weight_decay), eps=settings.adam_eps
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, round(settings.lr_warmup * config.steps), config.steps)
    if sharding is None:
        wrapper, optimizer = accelerator.prepare(wrapper, optimizer)
    trained = accelerator.unwrap_model(wrapper) if sharding is None else wrapper

    checkpoint_dir, log_path = workdir / CHECKPOINT, workdir / LOG
    start = 0
    if resume:
        source = resumable_checkpoint(checkpoint_dir)
        if source is None:
            raise FfnpruneError(f"{workdir} holds no checkpoint to resume (expected {checkpoint_dir})")
        start = load_checkpoint(source, trained.model, pruner, optimizer, scheduler,
                                sharded_over=accelerator if sharding is not None else None)
        apply_learning_settings(optimizer, scheduler, settings)
        _truncate_log(log_path, start)
        say(f"resumed from {checkpoint_dir} at step {start}")
    elif accelerator.is_main_process:
        log_path.unlink(missing_ok=True)

    order = BatchOrder(len(train_examples), config.seed)
    per_step = settings.batch_size * settings.grad_accum * accelerator.num_processes
    progress = tqdm(total=config.steps, initial=start, desc="fine-pruning" if method is not None else "recovery",
                    disable=not accelerator.is_main_process or not logger.isEnabledFor(logging.INFO))
    final_loss = math.nan
    for step in range(start, config.steps):
        totals = {"loss": 0.0, "task_loss": 0.0, "penalty": 0.0} | ({"distill_loss": 0.0} if teacher else {})
        keep_scheduled, penalty_weight = pruner.keep_fraction, pruner.penalty_weight
        for micro in range(settings.grad_accum):
            slot = micro * accelerator.num_processes + accelerator.process_index
            first = step * per_step + slot * settings.batch_size
            batch = {k: v.to(accelerator.device) for k, v in
                     train_examples.batch(order.indices(first, settings.batch_size)).items()}
            syncing = micro == settings.grad_accum - 1
            if sharding is not None:
                wrapper.set_requires_gradient_sync(syncing)
            with nullcontext() if syncing or sharding is not None else accelerator.no_sync(wrapper):
                pruner.before_forward(batch["attention_mask"])
                logits = wrapper(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                task_loss = causal_lm_loss(logits, batch["labels"])
                distill = None
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(input_ids=batch["input_ids"],
                                                 attention_mask=batch["attention_mask"]).logits
                    distill = distillation_loss(logits, teacher_logits, batch["labels"], config.distill.temperature,
                                                config.distill.distill_reduction)
                penalty_term = pruner.penalty()
                loss = combine(task_loss, distill, config.distill.distill_loss) + penalty_term
                if not torch.isfinite(loss):
                    _stop_on_bad_loss(step, loss, checkpoint_dir, workdir, settings.lr)
                accelerator.backward(loss / settings.grad_accum)
                pruner.after_backward()
            for name, value in (("loss", loss), ("task_loss", task_loss), ("distill_loss", distill),
                                ("penalty", penalty_term)):
                if value is not None:
                    totals[name] += value.detach().float().item() / settings.grad_accum
        kept_now = pruner.active_neurons()  # what the masks of this step kept
        if sharding is not None:
            average_gradients(pruner.trainable_scores())
        if settings.clip and sharding is not None:
            clip_gradients(list(wrapper.parameters()), settings.clip)
        elif settings.clip:
            accelerator.clip_grad_norm_(wrapper.parameters(), settings.clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        pruner.after_optimizer_step()

        totals = {k: accelerator.reduce(torch.tensor(v, device=accelerator.device), "mean").item()
                  for k, v in totals.items()}
        final_loss = totals["loss"]
        record = {"step": step + 1, **totals, "keep_scheduled": keep_scheduled,
                  "keep_actual": kept_now / sum(adapter.mlp_widths(model)), "lambda": penalty_weight,
                  "lr": scheduler.get_last_lr()[0]}
        if pruner.trainable_scores():
            record["score_lr"] = scheduler.get_last_lr()[-1]
        if settings.eval_every and eval_examples is not None and (step + 1) % settings.eval_every == 0:
            record["eval_perplexity"] = _evaluate(trained, pruner, eval_examples, settings.batch_size)
        if accelerator.is_main_process:
            with log_path.open("a") as log:
                log.write(json.dumps(record) + "\n")
        if settings.report_to:
            accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step + 1)
        progress.update(1)
        progress.set_postfix(loss=f"{final_loss:.3f}", keep=f"{record['keep_actual']:.3f}")
        if settings.checkpoint_every and (step + 1) % settings.checkpoint_every == 0 and step + 1 < config.steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process or sharding is not None:
                save_checkpoint(checkpoint_dir, trained.model, pruner, optimizer, scheduler, step + 1,
                                sharded_over=accelerator if sharding is not None else None)
    progress.close()
    for tracker in accelerator.trackers:  # not end_training(): it also ends the process group, which saving needs
        tracker.finish()
    pruner.before_forward()  # the final masks, at step T
    kept = pruner.kept()
    pruner.detach()
    whole_model = trained.model if sharding is None else gathered(model, skeleton, accelerator.is_main_process)
    if whole_model is not None:
        whole_model.eval()
    files = {LOG: log_path, **({RUNS: workdir / RUNS} if settings.report_to == "tensorboard" else {})}
    return TrainingOutcome(kept=kept, model=whole_model, final_loss=final_loss, steps=config.steps, files=files,
                           pruner_state=pruner.state(), processes=accelerator.num_processes,
                           sharding=None if sharding is None else "fsdp2",
                           mixed_precision=str(accelerator.mixed_precision))


def _evaluate(wrapper: PrunableModel, pruner: FinePruner, examples: Examples, batch_size: int) -> float:
    """Perplexity at the current density (the masks of the current step)."""
    wrapper.eval()
    pruner.before_forward()
    result = examples_perplexity(wrapper, examples, batch_size)["perplexity"]
    wrapper.train()
    return result


def _stop_on_bad_loss(step: int, loss: torch.Tensor, checkpoint_dir: Path, workdir: Path, lr: float):
    good = rewind_before(checkpoint_dir, step + 1)
    if good is not None:
        where = (f"The checkpoint of step {good}, from before the update that broke the weights, is kept in "
                 f"{checkpoint_dir}; continue from it with a lower learning rate: ffnprune prune --resume {workdir} "
                 f"--lr {lr / 4:g}")
    else:
        where = ("No checkpoint from before the bad update exists (--checkpoint-every N keeps them); retry with a "
                 f"lower --lr, such as {lr / 4:g}")
    raise FfnpruneError(f"the loss became {loss.item()} at step {step + 1}; training stopped. {where}")


def apply_learning_settings(optimizer, scheduler, settings) -> None:
    """A resumed run uses the learning rates and weight decay it was given now, not the checkpoint's: the LR
    schedule keeps its shape and position with the new peak values."""
    peaks = [settings.lr, settings.lr, settings.score_lr][: len(optimizer.param_groups)]
    decays = [settings.weight_decay, 0.0, 0.0]
    scheduler.base_lrs = peaks
    for group, peak, decay, factor in zip(optimizer.param_groups, peaks, decays, scheduler.lr_lambdas):
        group["initial_lr"], group["weight_decay"] = peak, decay
        group["lr"] = peak * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed."""
    if log_path.exists():
        lines = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= step]
        log_path.write_text("".join(line + "\n" for line in lines))

"""Fine-pruning inside a user's own transformers `Trainer` (or TRL's `SFTTrainer`, which is one).

    pruner = FinePruner(model, adapter_for(model.config), get_method("gum"), CubicSchedule(steps, 0.5),
                        PenaltySettings(mu=1.0))
    trainer = FinePruningTrainer(pruner=pruner, model=model, args=TrainingArguments(..., max_steps=steps), ...)
    trainer.train()
    save_fine_pruned(trainer, "out/my-gum")        # compacts to the kept neurons and saves a pruned directory

The Trainer subclass does what a callback cannot see: it sets the masks before every forward (they depend on the
batch's attention mask, which GUM's statistics need), adds the score penalty (and the distillation term) to the
loss, and gives the scores their own optimizer group. The callback closes each step: GUM's statistics after the
backward passes, the schedule's step after the optimizer's. Mix it into another Trainer class with
`fine_pruning_trainer(SFTTrainer)`.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

from ffnprune.errors import FfnpruneError
from ffnprune.training.distill import combine, distillation_loss
from ffnprune.training.hooks import FinePruner


class FinePruningCallback(TrainerCallback):
    """The step-level hooks: statistics after the step's backward passes, the schedule after the optimizer."""

    def __init__(self, pruner: FinePruner):
        self.pruner = pruner

    def on_train_begin(self, args, state, control, **kwargs):
        if args.world_size > 1:
            raise FfnpruneError("FinePruningTrainer runs in one process: its scores are not synchronised across "
                                "processes; use `accelerate launch -m ffnprune.cli.main prune ...` for DDP")
        if state.max_steps != self.pruner.schedule.total_steps:
            raise FfnpruneError(f"the pruning schedule has {self.pruner.schedule.total_steps} steps but the Trainer "
                                f"will run {state.max_steps}; build the CubicSchedule with the Trainer's max_steps")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.pruner.after_backward()

    def on_step_end(self, args, state, control, **kwargs):
        self.pruner.after_optimizer_step()


@functools.cache
def fine_pruning_trainer(base: type[Trainer]) -> type[Trainer]:
    """`base` (Trainer or a subclass such as TRL's SFTTrainer) extended with fine-pruning."""

    class FinePruningTrainer(base):
        def __init__(self, *args, pruner: FinePruner, teacher: torch.nn.Module | None = None,
                     temperature: float = 2.0, score_lr: float = 1e-2, **kwargs):
            super().__init__(*args, **kwargs)
            self.pruner, self.teacher, self.temperature, self.score_lr = pruner, teacher, temperature, score_lr
            self.add_callback(FinePruningCallback(pruner))
            if teacher is not None:
                teacher.to(self.args.device).eval()

        def create_optimizer(self, *args, **kwargs):
            optimizer = super().create_optimizer(*args, **kwargs)
            scores = self.pruner.trainable_scores()
            if scores and not any(p is scores[0] for group in optimizer.param_groups for p in group["params"]):
                optimizer.add_param_group({"params": scores, "lr": self.score_lr, "weight_decay": 0.0})
            return optimizer

        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            """The base class's own loss (SFTTrainer's completion masking and metrics included), then ours. The
            outputs are asked for only when needed: TRL's fused LM head builds the logits with an extra forward."""
            self.pruner.before_forward(inputs.get("attention_mask"))
            labels = inputs.get("labels")  # the base class may pop them
            distilling = self.teacher is not None and labels is not None
            result = super().compute_loss(model, inputs, return_outputs=return_outputs or distilling, **kwargs)
            loss, outputs = result if return_outputs or distilling else (result, None)
            if distilling:
                if model.training and not outputs.logits.requires_grad:
                    raise FfnpruneError(
                        f"{base.__name__} returns the logits without gradients (TRL's fused LM head recomputes them "
                        "under no_grad), so distillation would train nothing; distil with FinePruningTrainer (the "
                        "transformers Trainer), or train without teacher="
                    )
                with torch.no_grad():
                    teacher_logits = self.teacher(input_ids=inputs["input_ids"],
                                                  attention_mask=inputs.get("attention_mask")).logits
                loss = combine(loss, distillation_loss(outputs.logits, teacher_logits, labels, self.temperature))
            loss = loss + self.pruner.penalty()
            return (loss, outputs) if return_outputs else loss

    FinePruningTrainer.__name__ = FinePruningTrainer.__qualname__ = f"FinePruning{base.__name__}"
    return FinePruningTrainer


FinePruningTrainer = fine_pruning_trainer(Trainer)


def save_fine_pruned(trainer: Trainer, out: str | Path, tokenizer=None, overwrite: bool = False,
                     metadata: dict | None = None) -> Path:
    """Compact the trainer's model to the neurons its pruner keeps at the end and save a pruned directory."""
    from ffnprune.compaction import compact_mlps
    from ffnprune.io.pruned_dir import save_pruned

    pruner: FinePruner = trainer.pruner
    model = trainer.accelerator.unwrap_model(trainer.model)
    pruner.before_forward()
    kept = pruner.kept()
    widths_before = pruner.widths
    pruner.detach()
    compact_mlps(model, pruner.adapter, kept)
    model.eval()
    record = {"method": pruner.method.name if pruner.method else None, "keep": pruner.schedule.final_keep,
              "steps": pruner.step, "trainer": type(trainer).__name__, "mlp_widths_before": widths_before,
              "keep_actual": sum(len(k) for k in kept) / sum(widths_before),
              "kept_neurons": [k.tolist() for k in kept], **(metadata or {})}
    return save_pruned(model, tokenizer if tokenizer is not None else getattr(trainer, "processing_class", None),
                       out, record, overwrite=overwrite)

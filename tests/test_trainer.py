"""Fine-pruning inside a real transformers Trainer: masks, schedule and saved widths."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.utils.data import Dataset
from transformers import TrainingArguments

from ffnprune.adapters import adapter_for
from ffnprune.criteria import get_method
from ffnprune.errors import FfnpruneError
from ffnprune.io.pruned_dir import load_pruned
from ffnprune.schedules import CubicSchedule
from ffnprune.training.hooks import FinePruner, PenaltySettings
from ffnprune.training.trainer import FinePruningTrainer, fine_pruning_trainer, save_fine_pruned
from tiny_models import VOCAB, tiny_model


class RandomText(Dataset):
    def __init__(self, rows=32, length=16):
        self.ids = torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        ids = self.ids[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def _recording_gum_pruner(model, steps, keep):
    """A GUM pruner that records (step, neurons kept by the masks) at every forward."""
    schedule = CubicSchedule(steps, keep)
    pruner = FinePruner(model, adapter_for(model.config), get_method("gum"), schedule, PenaltySettings(mu=1.0))
    pruner.seen = []
    original = pruner.before_forward

    def recording(attention_mask=None):
        original(attention_mask)
        pruner.seen.append((pruner.step, pruner.active_neurons()))

    pruner.before_forward = recording
    return pruner


def _check_fine_pruned(trainer, pruner, model, steps, keep, scores_before, out, ids):
    """Masks, schedule, trained scores, GUM's statistics, and the saved compact model equal to the masked one."""
    adapter = pruner.adapter
    total = sum(adapter.mlp_widths(model))
    assert [step for step, _ in pruner.seen] == list(range(steps))  # one forward per step, each at its own step
    for step, active in pruner.seen:  # global Top_v: floor(v_t * total) neurons, v_t from the schedule
        assert active == int(pruner.schedule.keep_fraction(step) * total + 1e-9), (step, active)
    assert pruner.step == steps
    assert any(not torch.equal(a, b) for a, b in zip(scores_before, pruner.scores.layers()))  # scores trained
    assert pruner.statistics.gram[0] is not None and pruner.uniqueness[0] is not None  # GUM's statistics ran

    out = save_fine_pruned(trainer, out)
    reloaded = load_pruned(out)
    widths = adapter_for(reloaded.config).mlp_widths(reloaded)
    assert sum(widths) == int(keep * total) and widths == json.loads((out / "pruning.json").read_text())["mlp_widths"]
    with torch.no_grad():
        assert (reloaded(ids).logits - model(ids).logits).abs().max() <= 1e-5


def test_gum_fine_prunes_inside_a_trainer_and_saves_a_compact_model(tmp_path):
    steps, keep = 10, 0.5
    model = tiny_model("llama").train()
    pruner = _recording_gum_pruner(model, steps, keep)
    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=steps, per_device_train_batch_size=4,
                             learning_rate=1e-3, report_to=[], save_strategy="no", logging_steps=5, use_cpu=True,
                             seed=0)
    trainer = FinePruningTrainer(pruner=pruner, model=model, args=args, train_dataset=RandomText())
    scores_before = [s.detach().clone() for s in pruner.scores.layers()]
    trainer.train()
    _check_fine_pruned(trainer, pruner, model, steps, keep, scores_before, tmp_path / "pruned",
                       RandomText()[0]["input_ids"][None])


def _gum_in_sft_trainer(tmp_path, gpt2_tokenizer, steps, keep, **trainer_kwargs):
    """A tiny LLaMA, its recording GUM pruner and TRL's SFTTrainer extended with fine-pruning, on 32 short texts.
    bf16=False: SFTConfig's default bf16 autocast would blur the comparisons."""
    trl = pytest.importorskip("trl", reason="TRL is in the dev extras")
    from datasets import Dataset

    tokenizer = copy.deepcopy(gpt2_tokenizer)
    tokenizer.pad_token = tokenizer.eos_token
    model = tiny_model("llama", vocab_size=len(tokenizer)).train()
    pruner = _recording_gum_pruner(model, steps, keep)
    texts = Dataset.from_dict({"text": [f"Sentence {i}: pruning the neurons of a language model." for i in range(32)]})
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=steps, per_device_train_batch_size=4,
                         learning_rate=1e-3, report_to=[], save_strategy="no", use_cpu=True, max_length=32, seed=0,
                         logging_steps=steps, bf16=False)
    trainer = fine_pruning_trainer(trl.SFTTrainer)(pruner=pruner, model=model, args=args, train_dataset=texts,
                                                   processing_class=tokenizer, **trainer_kwargs)
    return trainer, pruner, model, tokenizer


def test_gum_fine_prunes_inside_trl_sft_trainer(tmp_path, gpt2_tokenizer):
    steps, keep = 6, 0.5
    trainer, pruner, model, tokenizer = _gum_in_sft_trainer(tmp_path, gpt2_tokenizer, steps, keep)
    scores_before = [s.detach().clone() for s in pruner.scores.layers()]
    trainer.train()
    assert "mean_token_accuracy" in trainer.state.log_history[0]  # SFTTrainer's own loss and metrics still ran
    _check_fine_pruned(trainer, pruner, model, steps, keep, scores_before, tmp_path / "pruned",
                       torch.tensor([tokenizer("Pruning a model.").input_ids]))


def test_the_documented_example_runs(tiny_model_dir, data_dir, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "examples" / "trainer_gum.py"
    out = tmp_path / "gum"
    result = subprocess.run([sys.executable, str(script), "--model", str(tiny_model_dir("llama")), "--data",
                             str(data_dir), "--steps", "6", "--context", "32", "--out", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    widths = json.loads((out / "pruning.json").read_text())["mlp_widths"]
    assert sum(widths) == 160 and load_pruned(out) is not None  # keep 0.5 of 4 x 80, globally


def test_distillation_inside_sft_trainer_is_refused_not_silently_untrained(tmp_path, gpt2_tokenizer):
    """TRL's fused LM head gives the logits without gradients: a distillation term would train nothing."""
    teacher = tiny_model("llama", vocab_size=len(gpt2_tokenizer))
    trainer, *_ = _gum_in_sft_trainer(tmp_path, gpt2_tokenizer, 2, 0.5, teacher=teacher)
    with pytest.raises(FfnpruneError, match="distillation would train nothing"):
        trainer.train()

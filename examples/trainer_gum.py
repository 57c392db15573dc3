"""Fine-prune with GUM inside your own transformers Trainer, then save a compact model.

    python examples/trainer_gum.py --model smollm2-135m --steps 40 --keep 0.5 --out out/trainer-gum

Any causal LM ffnprune supports works; the training data here is WikiText (ffnprune's offline copy), in blocks.
Swap in your own dataset, collator, TrainingArguments, or a Trainer subclass (TRL's SFTTrainer:
`fine_pruning_trainer(SFTTrainer)(pruner=..., ...)`).
"""

from __future__ import annotations

import argparse

from torch.utils.data import Dataset
from transformers import TrainingArguments, default_data_collator

from ffnprune import load_model
from ffnprune.criteria import get_method
from ffnprune.schedules import CubicSchedule
from ffnprune.tasks import task_examples
from ffnprune.training.hooks import FinePruner, PenaltySettings
from ffnprune.training.trainer import FinePruningTrainer, save_fine_pruned


class Blocks(Dataset):
    """ffnprune's task examples (input ids, attention mask, labels) as a torch Dataset."""

    def __init__(self, examples):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, index):
        return {name: values[0] for name, values in self.examples.batch([index]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default=None, help="WikiText folder (default: ../shared/data)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--mu", type=float, default=1.0)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    loaded = load_model(args.model)
    model = loaded.model.train()
    train = Blocks(task_examples("wikitext", loaded.tokenizer, args.data, "validation", args.context))
    pruner = FinePruner(model, loaded.adapter, get_method("gum"), CubicSchedule(args.steps, args.keep),
                        PenaltySettings(mu=args.mu))
    training = TrainingArguments(output_dir=args.out + ".trainer", max_steps=args.steps, learning_rate=5e-4,
                                 per_device_train_batch_size=args.batch_size, warmup_steps=0.1, weight_decay=0.1,
                                 logging_steps=10, save_strategy="no", report_to=[], seed=0)
    trainer = FinePruningTrainer(pruner=pruner, model=model, args=training, train_dataset=train,
                                 data_collator=default_data_collator, processing_class=loaded.tokenizer)
    trainer.train()
    out = save_fine_pruned(trainer, args.out, metadata={"source_model": args.model})
    print(f"saved {out}: MLP widths {loaded.adapter.mlp_widths(model)}")


if __name__ == "__main__":
    main()

"""E2E NLG: a restaurant meaning representation, then a description; several references per MR."""

from __future__ import annotations

from ffnprune.metrics.e2e import e2e_scores
from ffnprune.tasks.base import GenerationTask, Pair
from ffnprune.tasks.rows import text_field


def parse(record: dict) -> Pair:
    meaning = text_field(record, "mr")
    return Pair(prompt=f"Describe the restaurant.\n{meaning}\nDescription:", target=text_field(record, "ref"),
                group=meaning)


E2E = GenerationTask(
    name="e2e",
    files={"validation": "e2e/devset.csv", "test": "e2e/testset_w_refs.csv"},
    parse=parse,
    score=e2e_scores,
    max_new_tokens=64,
    metric_names=("bleu", "nist", "meteor", "rougeL", "cider"),
)

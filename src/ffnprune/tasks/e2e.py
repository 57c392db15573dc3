"""E2E NLG: a restaurant meaning representation, then a description; several references per MR."""

from __future__ import annotations

from ffnprune.metrics.e2e import e2e_scores
from ffnprune.tasks.base import GenerationTask, Pair
from ffnprune.tasks.rows import text_field


def pair(meaning: str, reference: str) -> Pair:
    return Pair(prompt=f"Describe the restaurant.\n{meaning}\nDescription:", target=reference, group=meaning)


def parse(record: dict) -> Pair:
    return pair(text_field(record, "mr"), text_field(record, "ref"))


def parse_hub(record: dict) -> Pair:
    """The hub's e2e_nlg: meaning_representation, human_reference."""
    return pair(text_field(record, "meaning_representation"), text_field(record, "human_reference"))


E2E = GenerationTask(
    name="e2e",
    files={"validation": "e2e/devset.csv", "test": "e2e/testset_w_refs.csv"},
    parse=parse,
    score=e2e_scores,
    hub=("e2e_nlg", None),
    parse_hub=parse_hub,
    max_new_tokens=64,
    metric_names=("bleu", "nist", "meteor", "rougeL", "cider"),
)

"""SAMSum dialogue summarisation: the dialogue, a separator, the summary (METHOD section 8)."""

from __future__ import annotations

from ffnprune.metrics.rouge import rouge_scores
from ffnprune.tasks.base import GenerationTask, Pair
from ffnprune.tasks.rows import text_field


def pair(dialogue: str, summary: str) -> Pair:
    return Pair(prompt=f"Summarize the dialogue.\n{dialogue.replace(chr(13) + chr(10), chr(10))}\nSummary:",
                target=summary)


def parse(record: dict) -> Pair:
    return pair(text_field(record, "context"), text_field(record, "response"))


def parse_hub(record: dict) -> Pair:
    """The hub's samsum: dialogue, summary."""
    return pair(text_field(record, "dialogue"), text_field(record, "summary"))


SAMSUM = GenerationTask(
    name="samsum",
    files={"validation": "samsum/validation.jsonl", "test": "samsum/test.jsonl"},
    parse=parse,
    score=rouge_scores,
    hub=("samsum", None),
    parse_hub=parse_hub,
    max_new_tokens=64,
    metric_names=("rouge1", "rouge2", "rougeL", "rougeLsum"),
)

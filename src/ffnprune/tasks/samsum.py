"""SAMSum dialogue summarisation: the dialogue, a separator, the summary (METHOD section 8)."""

from __future__ import annotations

from ffnprune.metrics.rouge import rouge_scores
from ffnprune.tasks.base import GenerationTask, Pair
from ffnprune.tasks.rows import text_field


def parse(record: dict) -> Pair:
    dialogue = text_field(record, "context").replace("\r\n", "\n")
    return Pair(prompt=f"Summarize the dialogue.\n{dialogue}\nSummary:", target=text_field(record, "response"))


SAMSUM = GenerationTask(
    name="samsum",
    files={"validation": "samsum/validation.jsonl", "test": "samsum/test.jsonl"},
    parse=parse,
    score=rouge_scores,
    max_new_tokens=64,
    metric_names=("rouge1", "rouge2", "rougeL", "rougeLsum"),
)

"""ROUGE-1/2/L/Lsum F-measures (x100) with Google's rouge-score, stemmed, averaged over items (best reference)."""

from __future__ import annotations

import re

from rouge_score import rouge_scorer

from ffnprune.metrics.references import check_references

TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def sentences_on_lines(text: str) -> str:
    """rougeLsum splits summaries at newlines; put one sentence per line (a regex split, no NLTK data needed)."""
    return "\n".join(s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s)


def rouge_scores(predictions: list[str], references: list[list[str]]) -> dict:
    check_references(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(TYPES), use_stemmer=True)
    totals = dict.fromkeys(TYPES, 0.0)
    for prediction, refs in zip(predictions, references):
        scores = scorer.score_multi([sentences_on_lines(r) for r in refs], sentences_on_lines(prediction))
        for name in TYPES:
            totals[name] += scores[name].fmeasure
    result = {name: 100 * total / len(predictions) for name, total in totals.items()}
    result["implementation"] = "rouge-score, use_stemmer=True, F-measure x100, best of the references"
    return result

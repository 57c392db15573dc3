"""Tasks: how each reads its local data into training and evaluation examples. `--task NAME` resolves here."""

from __future__ import annotations

from collections.abc import Callable

from ffnprune.errors import FfnpruneError
from ffnprune.tasks.examples import Examples
from ffnprune.tasks.wikitext import wikitext_examples

# name -> fn(tokenizer, data, split, length, max_tokens) -> Examples
TASKS: dict[str, Callable[..., Examples]] = {"wikitext": wikitext_examples}


def task_examples(name: str, tokenizer, data, split: str, length: int, max_tokens: int | None = None) -> Examples:
    if name not in TASKS:
        raise FfnpruneError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name](tokenizer, data, split, length, max_tokens)


__all__ = ["TASKS", "Examples", "task_examples"]

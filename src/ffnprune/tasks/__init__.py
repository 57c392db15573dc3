"""Tasks: how each reads its local data into training and evaluation examples. `--task NAME` resolves here."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ffnprune.errors import FfnpruneError
from ffnprune.tasks.base import HUB, GenerationTask
from ffnprune.tasks.data import DATA_ENV, default_data_dir
from ffnprune.tasks.e2e import E2E
from ffnprune.tasks.examples import Examples
from ffnprune.tasks.samsum import SAMSUM
from ffnprune.tasks.wikisql import WIKISQL
from ffnprune.tasks.wikitext import WIKITEXT, wikitext_examples, wikitext_file

TASKS = {"wikitext": WIKITEXT, "samsum": SAMSUM, "wikisql": WIKISQL, "e2e": E2E}


def get_task(name: str):
    if name not in TASKS:
        raise FfnpruneError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def task_data_path(name: str, data, split: str):
    """The local file a task's split is read from, or an error naming what is missing (checked before work)."""
    task = get_task(name)
    if str(data) == HUB:
        return HUB
    if not isinstance(task, GenerationTask):
        return wikitext_file(data, split)
    return task.path(data, split)


def data_record(name: str, data, split: str) -> dict:
    """What a result file records of the data it read: the file relative to the data root (so results compare across
    machines), the root as given, and the file's SHA-256."""
    path = task_data_path(name, data, split)
    if path == HUB:
        return {"data": HUB}
    path = Path(path).resolve()
    root = Path(data).resolve() if data is not None and Path(data).is_dir() else default_data_dir()
    root = root.resolve() if root is not None else None
    relative = path.relative_to(root) if root is not None and root in path.parents else path.name
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    given = str(data) if data is not None else f"default (${DATA_ENV}, else ../shared/data)"
    return {"data": given, "file": str(relative), "sha256": digest}


def task_examples(name: str, tokenizer, data, split: str, length: int, max_tokens: int | None = None,
                  loss_on_prompt: bool = False, strict: bool = False) -> Examples:
    """Training or evaluation examples of a task: WikiText blocks, or prompt-target rows with the loss on targets."""
    task = get_task(name)
    if not isinstance(task, GenerationTask):
        return wikitext_examples(tokenizer, data, split, length, max_tokens)
    return Examples.from_pairs(tokenizer, task.read(data, split, strict).items, length, loss_on_prompt)


__all__ = ["TASKS", "Examples", "data_record", "get_task", "task_data_path", "task_examples"]

"""What a task is: where its files are, how a row becomes a prompt and a target, and how outputs are scored."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ffnprune.errors import FfnpruneError
from ffnprune.tasks.data import DATA_ENV, default_data_dir
from ffnprune.tasks.rows import Rows, read_rows


@dataclass(frozen=True)
class Pair:
    prompt: str
    target: str
    group: str = ""  # rows sharing a group are one evaluation item with several references (E2E)


@dataclass(frozen=True)
class EvalItem:
    prompt: str
    references: list[str]


@dataclass(frozen=True)
class GenerationTask:
    name: str
    files: dict[str, str]  # split -> path under the data folder
    parse: Callable[[object], Pair]
    score: Callable[[list[str], list[list[str]]], dict]
    max_new_tokens: int
    metric_names: tuple[str, ...]
    teacher_forced_match: bool = False  # also report exact match under teacher forcing

    def path(self, data: str | Path | None, split: str) -> Path:
        if split not in self.files:
            raise FfnpruneError(f"task {self.name} has no split {split!r}; splits: {', '.join(self.files)}")
        root = Path(data) if data is not None else default_data_dir()
        if root is None:
            raise FfnpruneError(f"no data found for {self.name}: pass --data PATH or set ${DATA_ENV}")
        if root.is_file():
            return root
        path = root / self.files[split]
        if not path.is_file():
            raise FfnpruneError(f"missing data file: {path} (task {self.name}, split {split}); pass --data with the "
                                f"folder that holds {self.files[split]}")
        return path

    def read(self, data: str | Path | None, split: str, strict: bool = False) -> Rows:
        return read_rows(self.path(data, split), self.parse, strict)

    @staticmethod
    def eval_items(pairs: list[Pair]) -> list[EvalItem]:
        """One item per prompt group, with every reference of the group, in first-seen order."""
        grouped: dict[str, EvalItem] = {}
        for index, pair in enumerate(pairs):
            key = pair.group or str(index)
            if key not in grouped:
                grouped[key] = EvalItem(pair.prompt, [])
            grouped[key].references.append(pair.target)
        return list(grouped.values())

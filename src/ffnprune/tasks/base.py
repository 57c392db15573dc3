"""What a task is: where its files are, how a row becomes a prompt and a target, and how outputs are scored."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ffnprune.errors import FfnpruneError
from ffnprune.tasks.data import DATA_ENV, default_data_dir
from ffnprune.tasks.rows import Rows, parse_rows, read_rows

HUB = "hub"  # --data hub: read the task's dataset from the Hugging Face hub (needs network)


def load_hub_split(path: str, name: str | None, split: str):
    """A hub dataset split as an iterable of records, or an error that says how to work offline."""
    try:
        import datasets

        return datasets.load_dataset(path, name, split=split)
    except ImportError as error:
        raise FfnpruneError("--data hub needs the datasets package: pip install datasets") from error
    except Exception as error:  # datasets raises many types for network and missing-split failures
        where = f"{path}/{name}" if name else path
        raise FfnpruneError(f"could not read {where} split {split!r} from the hub ({error}); offline, omit "
                            "--data hub to use ../shared/data, or pass --data PATH") from error


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
    hub: tuple[str, str | None]  # (dataset, configuration) on the hub
    parse_hub: Callable[[dict], Pair]
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
        if str(data) == HUB:
            records = enumerate(load_hub_split(*self.hub, split), start=1)
            return parse_rows(f"hub:{self.hub[0]}/{split}", records, self.parse_hub, strict)
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

"""Calibration tokens: a sample of the task's training split (validation offline) or of a user's own text or JSONL
file, cut into sequences of `context` tokens."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ffnprune.errors import FfnpruneError
from ffnprune.tasks import data_record, task_examples
from ffnprune.tasks.examples import Examples

JSONL_SUFFIXES = (".jsonl", ".ndjson")


@dataclass
class CalibrationData:
    examples: Examples
    source: dict  # what pruning.json records: where the tokens came from and how many

    @property
    def tokens(self) -> int:
        return int(self.examples.attention_mask.sum())

    def batches(self, batch_size: int) -> list[dict[str, torch.Tensor]]:
        return [{k: v for k, v in self.examples.batch(range(start, min(start + batch_size, len(self.examples))))
                 .items() if k != "labels"} for start in range(0, len(self.examples), batch_size)]


def check_calibration_file(path: str | Path, tokenizer=None, context: int | None = None) -> Path:
    """The file must exist, hold text (JSONL: every line a string or an object with a 'text' string), and, where a
    tokenizer is given, at least one sequence of `context` tokens: checked before any model is loaded."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise FfnpruneError(f"calibration file {path} is a directory; give a text or JSONL file in it")
    if not path.is_file():
        raise FfnpruneError(f"calibration file {path} does not exist; give a text or JSONL file "
                            "(--calibration-data), or omit the option to calibrate on the task's training split")
    if path.suffix.lower() == ".json":
        raise FfnpruneError(f"calibration file {path} is a .json file, which would be calibrated on as raw text "
                            "(brackets and keys included); write one JSON string or {\"text\": ...} object per line "
                            "in a .jsonl file, or give plain text in a .txt file")
    if path.stat().st_size == 0 or not path.read_text(encoding="utf-8", errors="replace").strip():
        raise FfnpruneError(f"calibration file {path} is empty; give a file with text in it")
    _file_documents(path)
    if tokenizer is not None and context is not None:
        _file_examples(path, tokenizer, context)
    return path


def _file_documents(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() not in JSONL_SUFFIXES:
        return [text]
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise FfnpruneError(f"calibration file {path}, line {number}: not JSON ({error})") from None
        if isinstance(record, dict) and isinstance(record.get("text"), str):
            documents.append(record["text"])
        elif isinstance(record, str):
            documents.append(record)
        else:
            found = f"an object with keys {', '.join(map(repr, record))}" if isinstance(record, dict) else \
                f"a JSON {type(record).__name__}"
            raise FfnpruneError(f"calibration file {path}, line {number}: expected a string or an object with a "
                                f"'text' string, found {found}; rename the key holding the text to 'text'")
    if not documents:
        raise FfnpruneError(f"calibration file {path} holds no text")
    return documents


def _file_examples(path: Path, tokenizer, context: int) -> Examples:
    """Documents tokenised, each followed by EOS, concatenated, and cut into blocks of `context` tokens."""
    ids: list[int] = []
    for document in _file_documents(path):
        ids += tokenizer(document, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    examples = Examples.blocks(torch.tensor(ids, dtype=torch.long), context)
    if len(examples) == 0:
        raise FfnpruneError(f"calibration file {path} has {len(ids)} tokens, fewer than one sequence of {context}; "
                            "give more text or a smaller --calibration-context")
    return examples


def calibration_data(tokenizer, *, tokens: int, context: int, seed: int, file: str | None = None,
                     task: str = "wikitext", data: str | None = None, split: str = "validation",
                     strict: bool = False) -> CalibrationData:
    """About `tokens` tokens in sequences of `context`, drawn (seeded) from the file or the task's split."""
    if file is not None:
        path = check_calibration_file(file)
        examples = _file_examples(path, tokenizer, context)
        source = {"file": str(path)}
    else:
        examples = task_examples(task, tokenizer, data, split, context, strict=strict)
        source = {"task": task, "split": split, **data_record(task, data, split)}
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))
    real = examples.attention_mask.sum(dim=1)[order]
    count = int((real.cumsum(0) < tokens).sum()) + 1  # sequences until `tokens` is reached
    chosen = torch.sort(order[:count]).values
    sample = Examples(examples.input_ids[chosen], examples.attention_mask[chosen], examples.labels[chosen])
    calibration = CalibrationData(sample, source)
    calibration.source.update({"tokens": calibration.tokens, "sequences": len(sample), "context": context,
                               "seed": seed, "available_sequences": len(examples)})
    return calibration

"""WikiText test and validation text, read from local files (WikiText-2 shares WikiText-103's valid/test articles)."""

from __future__ import annotations

from pathlib import Path

from ffnprune.errors import FfnpruneError
from ffnprune.tasks.base import HUB, load_hub_split
from ffnprune.tasks.data import DATA_ENV, default_data_dir
from ffnprune.tasks.examples import Examples

SPLIT_FILES = {"test": "wiki.test.tokens", "validation": "wiki.valid.tokens"}
WIKITEXT = "wikitext"  # the language-modelling task: evaluated by perplexity, not generation
SUBDIRS = ("wikitext/wikitext-2-v1", "wikitext-2-v1", "")


def wikitext_file(data: str | Path | None, split: str) -> Path:
    """The split's file from a data root, a wikitext folder, or a file given directly."""
    if split not in SPLIT_FILES:
        raise FfnpruneError(f"unknown WikiText split {split!r}; offline splits are: {', '.join(SPLIT_FILES)}")
    root = Path(data) if data is not None else default_data_dir()
    if root is None:
        raise FfnpruneError(f"no WikiText data found: pass --data PATH (a data folder or a {SPLIT_FILES[split]} file) "
                            f"or set ${DATA_ENV}")
    if root.is_file():
        if root.suffix.lower() in (".jsonl", ".json", ".csv"):
            raise FfnpruneError(f"--data {root} is a {root.suffix} file, and the wikitext task reads plain text (a "
                                f"{SPLIT_FILES[split]} file); for a task's rows give --task samsum, wikisql or e2e, "
                                "and for your own calibration text --calibration-data")
        return root
    for subdir in SUBDIRS:
        candidate = root / subdir / SPLIT_FILES[split]
        if candidate.is_file():
            return candidate
    raise FfnpruneError(f"missing data file: no {SPLIT_FILES[split]} under {root}; pass --data with the folder that "
                        f"holds wikitext/wikitext-2-v1/{SPLIT_FILES[split]}, or the file itself")


HUB_DATASET = ("wikitext", "wikitext-103-raw-v1")


def read_wikitext(data: str | Path | None, split: str = "test") -> tuple[str, Path | str]:
    if str(data) == HUB:
        text = "".join(record["text"] for record in load_hub_split(*HUB_DATASET, split))
        return text, f"hub:{'/'.join(HUB_DATASET)}/{split}"
    path = wikitext_file(data, split)
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise FfnpruneError(f"{path} holds no text")
    return text, path


def wikitext_examples(tokenizer, data, split: str, length: int, max_tokens: int | None = None) -> Examples:
    """Blocks of `length` tokens of the split's text (every token carries the loss)."""
    from ffnprune.metrics.perplexity import token_ids

    text, path = read_wikitext(data, split)
    examples = Examples.blocks(token_ids(tokenizer, text, max_tokens), length)
    if len(examples) == 0:
        raise FfnpruneError(f"{path} has fewer tokens than one block of {length}; give more text or a smaller context")
    return examples

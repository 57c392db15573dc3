"""General training text for recovery and fine-pruning (--train-data): files streamed into packed sequences on disk,
or text the dense teacher writes itself (`generated`, the data-free distillation of LLM-QAT, Liu et al. 2023).

Sources are read a document at a time (a JSONL record, or a block of lines of a text file), tokenized, joined by
end-of-text tokens and appended to a token file in the run's work directory until the token budget is reached; the
training loop then reads fixed-length sequences from that file through a memory map. So a corpus of any size trains
in bounded memory, and a resumed run reads the same file again instead of rebuilding (or regenerating) it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ffnprune.errors import FfnpruneError
from ffnprune.io.atomic import atomic_file

GENERATED = "generated"
GENERATED_FILE = "generated.jsonl"  # in the work directory
TEXT_SUFFIXES = (".txt", ".tokens", ".md", ".text")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
TEXT_BLOCK_LINES = 64  # a text file is tokenized this many lines at a time
SAMPLING = {"temperature": 1.0, "top_p": 0.95, "prompt": "the tokenizer's BOS token (EOS where it has none)"}


@dataclass(frozen=True)
class Source:
    path: Path
    weight: float


def parse_sources(spec: str) -> list[Source]:
    """'a.jsonl:0.7,shards/:0.3' (weights optional, default 1) -> the files, checked before any work. A directory
    stands for every text or JSONL file in it, sorted by name, as one source."""
    sources = []
    for part in str(spec).split(","):
        path, _, weight = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "1")
        try:
            value = float(weight)
        except ValueError:
            raise FfnpruneError(f"--train-data {spec!r}: {weight!r} is not a weight; give PATH or PATH:WEIGHT, "
                                "comma-separated") from None
        if not math.isfinite(value) or value <= 0:
            raise FfnpruneError(f"--train-data {spec!r}: weights must be positive numbers")
        sources.append(Source(Path(path).expanduser(), value))
    for source in sources:
        files = source_files(source.path)
        if not any(file.stat().st_size for file in files):
            raise FfnpruneError(f"--train-data {source.path} is empty; give files with text in them")
        for file in files:  # a JSONL's first record shows its form before any work
            next(_documents(file), None)
    return sources


def source_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in TEXT_SUFFIXES + JSONL_SUFFIXES)
        if not files:
            raise FfnpruneError(f"--train-data {path} holds no text or JSONL file ({', '.join(TEXT_SUFFIXES)}, "
                                f"{', '.join(JSONL_SUFFIXES)})")
        return files
    if not path.is_file():
        raise FfnpruneError(f"--train-data {path} does not exist; give text or JSONL files, a folder of them, or "
                            f"'{GENERATED}'")
    if path.suffix.lower() == ".json":
        raise FfnpruneError(f"--train-data {path} is a .json file; write one JSON string or {{\"text\": ...}} "
                            "object per line in a .jsonl file")
    return [path]


def _documents(path: Path) -> Iterator[str]:
    """The documents of one file, read lazily: a JSONL record's text, or a block of lines of a text file."""
    with path.open(encoding="utf-8") as handle:
        if path.suffix.lower() in JSONL_SUFFIXES:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise FfnpruneError(f"--train-data {path}, line {number}: not JSON ({error})") from None
                text = record.get("text") if isinstance(record, dict) else record
                if not isinstance(text, str):
                    keys = f"keys {', '.join(map(repr, record))}" if isinstance(record, dict) else type(record).__name__
                    raise FfnpruneError(f"--train-data {path}, line {number}: no 'text' string (found {keys}); "
                                        "rename the field holding the text to 'text'")
                yield text
        else:
            block = []
            for line in handle:
                block.append(line)
                if len(block) == TEXT_BLOCK_LINES:
                    yield "".join(block)
                    block = []
            if block:
                yield "".join(block)


def _source_stream(source: Source) -> Iterator[str]:
    for path in source_files(source.path):
        yield from _documents(path)


def pack(sources: list[Source], tokenizer, tokens: int, target: Path, seed: int) -> dict:
    """Tokenize the sources into `target` (uint32 ids, documents ended by EOS) until `tokens`; a mixture draws each
    next document from a source chosen by weight (seeded). An exhausted source leaves the mixture. Returns what was
    packed, for pruning.json."""
    eos = tokenizer.eos_token_id
    rng = random.Random(seed)
    streams = {index: _source_stream(source) for index, source in enumerate(sources)}
    counts = dict.fromkeys(streams, 0)
    written = 0
    with atomic_file(target) as staging, staging.open("wb") as out:
        while written < tokens and streams:
            index = rng.choices(list(streams), weights=[sources[i].weight for i in streams])[0]
            document = next(streams[index], None)
            if document is None:
                del streams[index]
                continue
            ids = tokenizer(document, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
            ids = ids[: tokens - written]
            np.asarray(ids, dtype=np.uint32).tofile(out)
            written += len(ids)
            counts[index] += len(ids)
    return {"sources": [{"path": str(s.path), "weight": s.weight, "tokens": counts[i]} for i, s in enumerate(sources)],
            "tokens": written, "file": target.name}


class PackedSequences:
    """Fixed-length training sequences read from a packed token file through a memory map (the Examples interface the
    training loop uses: len() and batch())."""

    def __init__(self, path: Path, context: int):
        self.ids = np.memmap(path, dtype=np.uint32, mode="r")
        self.context = context
        if len(self) == 0:
            raise FfnpruneError(f"the training data holds {len(self.ids)} tokens, fewer than one sequence of "
                                f"--context {context}; give more text, a larger --train-tokens or a smaller --context")

    def __len__(self) -> int:
        return len(self.ids) // self.context

    def batch(self, indices) -> dict[str, torch.Tensor]:
        rows = torch.from_numpy(np.stack([np.asarray(self.ids[i * self.context:(i + 1) * self.context], np.int64)
                                          for i in indices]))
        return {"input_ids": rows, "attention_mask": torch.ones_like(rows), "labels": rows.clone()}


@torch.inference_mode()
def generate_documents(teacher, tokenizer, tokens: int, context: int, seed: int, target: Path,
                       batch_size: int = 8, progress=None) -> dict:
    """The teacher's own text: sequences of up to `context` tokens sampled from BOS (seeded per batch, so the same
    seed writes the same file), as JSONL documents in `target`."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    device = next(teacher.parameters()).device
    written, batches = 0, 0
    with atomic_file(target) as staging, staging.open("w", encoding="utf-8") as out:
        while written < tokens:
            generator_seed = seed * 1_000_003 + batches
            torch.manual_seed(generator_seed)
            prompt = torch.full((batch_size, 1), start, dtype=torch.long, device=device)
            sampled = teacher.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                                       temperature=SAMPLING["temperature"], top_p=SAMPLING["top_p"], top_k=0,
                                       max_new_tokens=context - 1, pad_token_id=tokenizer.eos_token_id)
            for row in sampled[:, 1:].tolist():
                if tokenizer.eos_token_id in row:
                    row = row[: row.index(tokenizer.eos_token_id)]
                if row and written < tokens:
                    out.write(json.dumps({"text": tokenizer.decode(row)}) + "\n")
                    written += len(row)
            batches += 1
            if progress:
                progress(min(written, tokens), tokens)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    return {"generated_by": "the dense teacher", "tokens": written, "seed": seed, **SAMPLING,
            "max_tokens_per_document": context - 1, "file": target.name, "sha256": digest}

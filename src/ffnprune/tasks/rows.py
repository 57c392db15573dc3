"""Reading task files row by row: malformed rows are skipped and counted (or stop the run, strict), never guessed."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ffnprune.errors import FfnpruneError


@dataclass
class Rows:
    """Parsed rows of one file (or hub split), and what was skipped."""

    source: Path | str
    items: list = field(default_factory=list)
    skipped: int = 0
    first_skipped_line: int | None = None

    def report(self) -> dict:
        return {"file": str(self.source), "rows": len(self.items), "skipped_malformed": self.skipped,
                "first_skipped_line": self.first_skipped_line}


def _records(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed record or the exception that parsing raised)."""
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        yield number, json.loads(line)
                    except json.JSONDecodeError as error:
                        yield number, error
    elif path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            for record in reader:
                yield reader.line_num, record
    else:
        raise FfnpruneError(f"{path}: unsupported file type {path.suffix!r} (expected .jsonl or .csv)")


def read_rows(path: Path, parse: Callable[[object], object], strict: bool = False) -> Rows:
    """Apply `parse` to every record of a file; it raises KeyError/ValueError/TypeError for a malformed one."""
    return parse_rows(path, _records(path), parse, strict)


def parse_rows(source, records, parse: Callable[[object], object], strict: bool = False) -> Rows:
    """Apply `parse` to (line number, record) pairs, skipping and counting malformed records (or stopping)."""
    rows = Rows(source)
    for number, record in records:
        try:
            if isinstance(record, Exception):
                raise ValueError(str(record))
            rows.items.append(parse(record))
        except (KeyError, ValueError, TypeError, AttributeError) as error:
            if strict:
                raise FfnpruneError(f"{source}, line {number}: malformed row ({error!r}); fix or remove it, or run "
                                    "without --strict to skip malformed rows") from None
            rows.skipped += 1
            rows.first_skipped_line = rows.first_skipped_line or number
    if not rows.items:
        raise FfnpruneError(f"{source} holds no usable row ({rows.skipped} malformed)")
    return rows


def text_field(record: dict, name: str) -> str:
    """A non-empty string field of a record (an empty target or reference makes the row malformed)."""
    value = record[name]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field {name!r} is empty or not text")
    return value.strip()

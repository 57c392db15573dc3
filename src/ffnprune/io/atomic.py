"""Outputs appear whole or not at all: write into a hidden sibling, then rename into place."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ffnprune.errors import FfnpruneError

PARTIAL_MARK = ".partial-"
MARKER = ".ffnprune"  # in every directory ffnprune writes: --overwrite replaces only these
KNOWN_OUTPUTS = ("pruning.json", "redundancy.json", "comparison.json")  # written before the marker existed


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path, directory: bool) -> None:
    """tempfile creates 0700 directories and 0600 files; what we publish gets the user's usual permissions."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def check_writable(target: str | os.PathLike, what: str = "--out") -> Path:
    """An output path that can be created: its nearest existing ancestor is a writable directory."""
    target = Path(target)
    ancestor = target.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise FfnpruneError(f"{what} {target} cannot be created: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise FfnpruneError(f"{what} {target} cannot be created: {ancestor} is not writable; choose another {what}")
    return target


def _files(directory: Path) -> set[str]:
    return {str(path.relative_to(directory)) for path in directory.rglob("*") if not path.is_dir()}


# What directories written before the marker listed its files hold (models, analyses, their logs).
_LEGACY_OUTPUTS = ("config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
                   "tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt", "chat_template.jinja",
                   "modeling_ffnprune.py", "README.md", "train_log.jsonl", "resumes.json", "*.png", "runs/*",
                   *KNOWN_OUTPUTS)


def foreign_files(directory: Path) -> list[str]:
    """The files in `directory` that ffnprune did not write: those its marker does not list (a marker of an older
    version lists nothing: then those that no ffnprune output is named like); every file if there is no marker."""
    marker = directory / MARKER
    present = _files(directory) - {MARKER}
    legacy = {name for name in present if any(fnmatch.fnmatch(name, pattern) for pattern in _LEGACY_OUTPUTS)}
    written = set()
    if marker.is_file():
        try:
            written = set(json.loads(marker.read_text())["files"])
        except (ValueError, KeyError, TypeError):  # an older marker: one line of text
            written = legacy
    elif any((directory / name).is_file() for name in KNOWN_OUTPUTS):
        written = legacy
    return sorted(present - written)


def _listed(names: list[str]) -> str:
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def check_output_dir(target: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing output unless asked to replace it and everything in it is ffnprune's own (checked before
    any long work starts), and an output that cannot be created."""
    target = check_writable(target)
    if target.exists() and not target.is_dir():
        raise FfnpruneError(f"output {target} exists and is not a directory; choose another --out")
    if target.exists() and not overwrite:
        raise FfnpruneError(
            f"output directory {target} already exists; pass --overwrite to replace it, or choose another --out"
        )
    if target.exists():
        others = foreign_files(target)
        if others:
            raise FfnpruneError(
                f"--overwrite replaces only what ffnprune wrote, and {target} also holds {_listed(others)}; move "
                "them away or choose another --out"
            )
    return target


def check_not_inside(out: str | os.PathLike, source: str | os.PathLike, what: str = "--out") -> None:
    """An output may not replace what the command reads from, nor a directory that holds it."""
    out, source = Path(out).expanduser().resolve(), Path(source).expanduser().resolve()
    if out == source or out in source.parents:
        raise FfnpruneError(f"{what} {out} would replace the model it is made from ({source}); choose another {what}")


@contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory that becomes `target` only when the block completes.

    A kill at any point leaves either no `target` or a complete one (plus, at worst, a hidden `.NAME.partial-*`
    sibling, removed by the next save to the same target). With `overwrite`, the old directory is replaced.
    """
    target = check_output_dir(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}{PARTIAL_MARK}*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{PARTIAL_MARK}", dir=target.parent))
    try:
        follow_umask(staging, directory=True)
        yield staging
        # The files ffnprune wrote, so that --overwrite can tell them from a user's files added later.
        (staging / MARKER).write_text(json.dumps({"written_by": "ffnprune; --overwrite may replace these files",
                                                  "files": sorted(_files(staging))}, indent=1) + "\n")
        for path in staging.rglob("*"):  # some writers (safetensors via transformers) create 0600 files too
            follow_umask(path, directory=path.is_dir())
        _commit(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _commit(staging: Path, target: Path) -> None:
    if target.exists():
        retired = target.with_name(f".{target.name}{PARTIAL_MARK}old-{uuid.uuid4().hex[:8]}")
        os.replace(target, retired)
        os.replace(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, target)


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; it replaces `path` only when the block completes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{PARTIAL_MARK}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        follow_umask(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, data) -> None:
    """Write JSON to a temporary file beside `path`, then rename it over `path`."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")

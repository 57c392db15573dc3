"""Resumable checkpoints, written atomically, with no pickle to trust on reading.

A checkpoint directory holds the weights (model.safetensors), the pruner's scores and GUM statistics
(pruner.safetensors), the optimizer state (optimizer.pt, read back with torch.load(weights_only=True): tensors and
plain containers only), and trainer.json: step, LR-scheduler state and every RNG state.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from ffnprune.errors import FfnpruneError
from ffnprune.io.atomic import atomic_directory

REQUIRED = ("model.safetensors", "pruner.safetensors", "optimizer.pt", "trainer.json")
PREVIOUS = ".previous"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state().tolist(), "python": _jsonable(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    random.setstate(_tupled(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _jsonable(value):
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tupled(value):
    return tuple(_tupled(v) for v in value) if isinstance(value, list) else value


def previous_checkpoint(directory: Path) -> Path:
    """The checkpoint before the newest, kept so that a run whose loss turns NaN has one from before the update
    that broke it."""
    return directory.with_name(directory.name + PREVIOUS)


def save_checkpoint(directory: Path, model, pruner, optimizer, scheduler, step: int) -> None:
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise FfnpruneError(f"the weights at step {step} are not finite; no checkpoint written (the last good one "
                            f"stays in {directory})")
    if (directory / "trainer.json").is_file():
        previous = previous_checkpoint(directory)
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(directory, previous)
    with atomic_directory(directory, overwrite=True) as staging:
        save_model(model, str(staging / "model.safetensors"))
        save_file({k: v.contiguous().cpu() for k, v in pruner.state().items()}, str(staging / "pruner.safetensors"))
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        trainer = {"step": step, "scheduler": scheduler.state_dict(), "rng": rng_state()}
        (staging / "trainer.json").write_text(json.dumps(trainer))


def checkpoint_step(directory: Path) -> int:
    return json.loads((directory / "trainer.json").read_text())["step"]


def resumable_checkpoint(directory: Path) -> Path | None:
    """The checkpoint a resumed run starts from: the newest, or the previous one if a kill came between the two
    renames of save_checkpoint."""
    for candidate in (directory, previous_checkpoint(directory)):
        if (candidate / "trainer.json").is_file():
            return candidate
    return None


def rewind_before(directory: Path, bad_step: int) -> int | None:
    """The loss turned non-finite at step `bad_step`: the update before it (or an earlier one) broke the weights.
    Make the newest checkpoint from before that update the one --resume takes, dropping any later one; returns its
    step, or None if none predates it."""
    for candidate in (directory, previous_checkpoint(directory)):
        if (candidate / "trainer.json").is_file() and checkpoint_step(candidate) <= bad_step - 2:
            if candidate != directory:
                shutil.rmtree(directory, ignore_errors=True)
                os.replace(candidate, directory)
            return checkpoint_step(directory)
    return None


def load_checkpoint(directory: Path, model, pruner, optimizer, scheduler) -> int:
    """Restore every state saved by save_checkpoint; returns the step to continue from."""
    missing = [name for name in REQUIRED if not (directory / name).is_file()]
    if missing:
        raise FfnpruneError(
            f"checkpoint {directory} is incomplete (missing {', '.join(missing)}); it cannot be resumed"
        )
    try:
        device = next(model.parameters()).device
        load_model(model, str(directory / "model.safetensors"), device=str(device))
        pruner.load_state({k: v.to(device) for k, v in load_file(str(directory / "pruner.safetensors")).items()})
        optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True, map_location=device))
        trainer = json.loads((directory / "trainer.json").read_text())
        scheduler.load_state_dict(trainer["scheduler"])
        set_rng_state(trainer["rng"])
    except FfnpruneError:
        raise
    except Exception as error:
        raise FfnpruneError(f"checkpoint {directory} could not be read ({error}); it may be corrupt") from error
    return trainer["step"]

"""Resumable checkpoints, written atomically, with no pickle to trust on reading.

A checkpoint directory holds the weights (model.safetensors; under FSDP each process's shard,
model-rank<r>-of-<n>.safetensors), the pruner's scores and GUM statistics (pruner.safetensors), the optimizer state
(optimizer-rank<r>-of-<n>.safetensors, flat tensors), and trainer.json: step, LR-scheduler state, every RNG state,
and whether it is sharded over how many processes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch.distributed.tensor import DTensor

from ffnprune.errors import FfnpruneError
from ffnprune.io.atomic import atomic_directory
from ffnprune.training.sharding import local

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


def _shard_files(rank: int, processes: int) -> tuple[str, str]:
    return f"model-rank{rank}-of-{processes}.safetensors", f"optimizer-rank{rank}-of-{processes}.safetensors"


def _optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer


def _optimizer_parameters(optimizer) -> list:
    return [p for group in _optimizer(optimizer).param_groups for p in group["params"]]


def optimizer_tensors(optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as flat tensors ("<parameter index>.<name>"), this process's shard
    of sharded ones: safetensors holds them, and reading them back runs no code."""
    state = _optimizer(optimizer).state
    return {f"{index}.{name}": local(value).detach().contiguous().cpu()
            for index, parameter in enumerate(_optimizer_parameters(optimizer))
            for name, value in state.get(parameter, {}).items()}


def load_optimizer_tensors(optimizer, tensors: dict[str, torch.Tensor]) -> None:
    parameters = _optimizer_parameters(optimizer)
    restored: dict = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        parameter = parameters[int(index)]
        if name != "step":  # AdamW keeps its step count on the CPU
            value = value.to(parameter.device)
            if isinstance(parameter, DTensor):
                value = DTensor.from_local(value, parameter.device_mesh, parameter.placements, shape=parameter.shape,
                                           stride=parameter.stride())
        restored.setdefault(parameter, {})[name] = value
    state = _optimizer(optimizer).state
    state.clear()
    state.update(restored)


def _local_parameters(model) -> dict[str, torch.Tensor]:
    return {name: local(p).detach().contiguous().cpu() for name, p in model.named_parameters()}


def save_checkpoint(directory: Path, model, pruner, optimizer, scheduler, step: int, sharded_over=None) -> None:
    """Write the checkpoint of `step`. Unsharded, the main process calls it alone; sharded (FSDP), every process
    of `sharded_over` (an accelerate state) calls it and writes its own shard of the weights and optimizer."""
    finite = all(bool(torch.isfinite(local(p)).all()) for p in model.parameters())
    if sharded_over is not None:
        finite = sharded_over.reduce(torch.tensor(float(finite), device=sharded_over.device), "sum").item() == \
            sharded_over.num_processes
    if not finite:
        raise FfnpruneError(f"the weights at step {step} are not finite; no checkpoint written (the last good one "
                            f"stays in {directory})")
    main = sharded_over is None or sharded_over.is_main_process
    shards = directory.with_name(directory.name + ".shards")  # each process's files, before they go in at once
    processes = 1
    if sharded_over is not None:
        processes = sharded_over.num_processes
        if main:
            shutil.rmtree(shards, ignore_errors=True)
            shards.mkdir(parents=True)
        sharded_over.wait_for_everyone()
        model_file, optimizer_file = _shard_files(sharded_over.process_index, processes)
        save_file(_local_parameters(model), str(shards / model_file))
        save_file(optimizer_tensors(optimizer), str(shards / optimizer_file))
        sharded_over.wait_for_everyone()
    if main:
        if (directory / "trainer.json").is_file():
            previous = previous_checkpoint(directory)
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(directory, previous)
        with atomic_directory(directory, overwrite=True) as staging:
            if sharded_over is not None:
                for path in shards.iterdir():
                    os.replace(path, staging / path.name)
            else:
                save_model(model, str(staging / "model.safetensors"))
                save_file(optimizer_tensors(optimizer), str(staging / _shard_files(0, 1)[1]))
            save_file({k: v.contiguous().cpu() for k, v in pruner.state().items()},
                      str(staging / "pruner.safetensors"))
            trainer = {"step": step, "scheduler": scheduler.state_dict(), "rng": rng_state(),
                       "sharded": sharded_over is not None, "processes": processes}
            (staging / "trainer.json").write_text(json.dumps(trainer))
        shutil.rmtree(shards, ignore_errors=True)
    if sharded_over is not None:
        sharded_over.wait_for_everyone()


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


def check_launch_matches(directory: Path, sharded: bool, processes: int) -> dict:
    """The checkpoint's trainer.json, if this launch can resume it: a sharded checkpoint under FSDP on as many
    processes as wrote it; an unsharded one without FSDP, on any number."""
    try:
        trainer = json.loads((directory / "trainer.json").read_text())
    except (OSError, ValueError) as error:
        raise FfnpruneError(f"checkpoint {directory} has no readable trainer.json ({error}); it cannot be "
                            "resumed") from error
    trainer.setdefault("sharded", False)
    trainer.setdefault("processes", 1)
    if trainer["sharded"] != sharded or (sharded and trainer["processes"] != processes):
        written = f"under FSDP on {trainer['processes']} processes" if trainer["sharded"] else "without FSDP"
        now = f"under FSDP on {processes} processes" if sharded else "without FSDP"
        raise FfnpruneError(f"checkpoint {directory} was written {written} and this run is {now}; resume it as it "
                            "was launched")
    return trainer


def load_checkpoint(directory: Path, model, pruner, optimizer, scheduler, sharded_over=None) -> int:
    """Restore every state saved by save_checkpoint; returns the step to continue from."""
    trainer = check_launch_matches(directory, sharded_over is not None,
                                   sharded_over.num_processes if sharded_over is not None else 1)
    sharded, processes = trainer["sharded"], trainer["processes"]
    model_file, optimizer_file = _shard_files(sharded_over.process_index, processes) if sharded else \
        ("model.safetensors", _shard_files(0, 1)[1])
    missing = [name for name in ("pruner.safetensors", model_file, optimizer_file) if not (directory / name).is_file()]
    if missing:
        raise FfnpruneError(
            f"checkpoint {directory} is incomplete (missing {', '.join(missing)}); it cannot be resumed"
        )
    try:
        device = next(model.parameters()).device
        if sharded:
            _load_local_parameters(model, load_file(str(directory / model_file)))
        else:
            load_model(model, str(directory / model_file), device=str(device))
        pruner.load_state({k: v.to(device) for k, v in load_file(str(directory / "pruner.safetensors")).items()})
        load_optimizer_tensors(optimizer, load_file(str(directory / optimizer_file)))
        scheduler.load_state_dict(trainer["scheduler"])
        set_rng_state(trainer["rng"])
    except FfnpruneError:
        raise
    except Exception as error:
        raise FfnpruneError(f"checkpoint {directory} could not be read ({error}); it may be corrupt") from error
    return trainer["step"]


def _load_local_parameters(model, tensors: dict[str, torch.Tensor]) -> None:
    parameters = dict(model.named_parameters())
    if tensors.keys() != parameters.keys():
        raise FfnpruneError(f"the checkpoint's weights do not match the model: missing "
                            f"{sorted(parameters.keys() - tensors.keys())[:5]}, unexpected "
                            f"{sorted(tensors.keys() - parameters.keys())[:5]}")
    with torch.no_grad():
        for name, parameter in parameters.items():
            local(parameter).copy_(tensors[name])

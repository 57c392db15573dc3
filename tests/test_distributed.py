"""Two processes (DDP over gloo on CPU, launched by torchrun) agree on global Top_v and GUM's statistics."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import torch
    from safetensors.torch import save_file
    sys.path.insert(0, {tests!r})
    from tiny_models import tiny_model
    from ffnprune.adapters import adapter_for
    from ffnprune.config import PruneConfig, build_config
    from ffnprune.criteria import get_method
    from ffnprune.schedules import CubicSchedule
    from ffnprune.tasks.examples import Examples
    from ffnprune.training.hooks import PenaltySettings
    from ffnprune.training.loop import train

    out = Path({out!r})
    config = build_config(PruneConfig, {{"model": "tiny", "out": str(out), "method": "gum", "mu": 1.0, "keep": 0.25,
                                         "steps": 10, "context": 16, "batch_size": 2, "seed": 0}})
    model = tiny_model("llama")  # the same weights in every process (seeded)
    ids = torch.randint(0, 128, (64 * 16,), generator=torch.Generator().manual_seed(1))
    outcome = train(config, model, adapter_for(model.config), get_method("gum"), CubicSchedule(10, 0.25),
                    PenaltySettings(mu=1.0), Examples.blocks(ids, 16), None, out, say=lambda *a: None)
    rank = torch.distributed.get_rank()
    tensors = {{k: v.cpu().contiguous() for k, v in outcome.pruner_state.items()}}
    tensors.update({{f"kept.{{i}}": k.cpu() for i, k in enumerate(outcome.kept)}})
    tensors["processes"] = torch.tensor(outcome.processes)
    save_file(tensors, str(out / f"rank{{rank}}.safetensors"))
""")


def test_two_processes_agree_on_kept_neurons_and_statistics(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29517", str(script)], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    first, second = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert int(first["processes"]) == 2
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert sum(first[f"kept.{i}"].numel() for i in range(4)) == 80  # floor(0.25 * 320), over both processes
    assert any(name.startswith("gum.gram") for name in first)


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def test_calibration_on_two_processes_prunes_as_one(tmp_path, tiny_model_dir):
    """torchrun -m ffnprune.cli.main prune: each process calibrates on half of the sequences, the statistics are
    summed, and the pruned model (written once) is the single process's, in memory and streamed."""
    from ffnprune.cli.main import main
    from ffnprune.io.pruned_dir import read_metadata
    from test_oneshot import _calibration_text

    options = ["--method", "obs", "--keep", "0.5", "--calibration-data", str(_calibration_text(tmp_path)),
               "--calibration-context", "32", "--calibration-tokens", "1024", "--dtype", "float32"]
    dense = str(tiny_model_dir("llama"))
    assert main(["prune", dense, "--out", str(tmp_path / "one"), *options]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for name, extra in (("two", []), ("two-streamed", ["--stream"])):
        result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                 "--master_port", "29518", "-m", "ffnprune.cli.main", "prune", dense, "--out",
                                 str(tmp_path / name), *options, *extra], capture_output=True, text=True, env=env,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
        assert read_metadata(tmp_path / name)["processes"] == 2
        assert read_metadata(tmp_path / name)["kept_neurons"] == read_metadata(tmp_path / "one")["kept_neurons"]
        one, two = _weights(tmp_path / "one"), _weights(tmp_path / name)
        assert one.keys() == two.keys()
        for key in one:
            assert (one[key] - two[key]).abs().max() <= 1e-6, (name, key)


def _launch(args: list[str], port: int, fsdp: bool, launcher: str = "torchrun",
            kill_after_checkpoint_at: int | None = None, workdir: Path | None = None) -> subprocess.CompletedProcess:
    """`ffnprune prune ARGS` on two CPU processes, started by torchrun (FSDP2 switched on by the environment, as
    accelerate sets it) or by `accelerate launch` (--use_fsdp --fsdp_version 2, or --multi_gpu: on a machine without
    GPUs its processes run on CPU); optionally every process is SIGKILLed right after the checkpoint of a step."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if launcher == "torchrun":
        command = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
        if fsdp:
            env |= {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}
    else:
        command = ["-m", "accelerate.commands.launch", "--num_processes", "2", "--main_process_port", str(port),
                   *(["--use_fsdp", "--fsdp_version", "2"] if fsdp else ["--multi_gpu"])]
    script = textwrap.dedent(f"""
        import os, signal, sys
        import ffnprune.training.loop as loop
        from ffnprune.cli.main import main
        original = loop.save_checkpoint
        def save_then_die(*args, **kwargs):
            original(*args, **kwargs)
            if args[5] == {kill_after_checkpoint_at!r}:
                os.kill(os.getpid(), signal.SIGKILL)
        loop.save_checkpoint = save_then_die
        sys.exit(main({["prune", *args]!r}))
    """)
    path = workdir / f"launch-{port}.py"
    path.write_text(script)
    return subprocess.run([sys.executable, *command, str(path)], capture_output=True, text=True, env=env,
                          timeout=900)


def _log(directory: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (directory / "train_log.jsonl").read_text().splitlines()]


FINE_PRUNING = ["--keep", "0.25", "--steps", "6", "--context", "16", "--distill", "--clip", "0.5", "--seed", "3",
                "--dtype", "float32"]


def test_fsdp_fine_pruning_keeps_what_one_process_keeps(tmp_path, tiny_model_dir, data_dir):
    """Global movement with a sharded student and a sharded teacher, on two processes started by `accelerate launch
    --use_fsdp --fsdp_version 2`, against one process that sees the same four sequences a step: the same neurons,
    losses and weights."""
    from ffnprune.cli.main import main
    from ffnprune.io.pruned_dir import read_metadata

    model = str(tiny_model_dir("llama"))
    common = [model, "--method", "global-movement", *FINE_PRUNING, "--data", str(data_dir)]
    assert main(["prune", *common, "--batch-size", "4", "--out", str(tmp_path / "one")]) == 0
    sharded = _launch([*common, "--batch-size", "2", "--out", str(tmp_path / "fsdp")], 29521, fsdp=True,
                      launcher="accelerate", workdir=tmp_path)
    assert sharded.returncode == 0, sharded.stderr[-4000:]
    one, fsdp = read_metadata(tmp_path / "one"), read_metadata(tmp_path / "fsdp")
    assert fsdp["training"]["sharding"] == "fsdp2" and fsdp["training"]["processes"] == 2
    assert one["training"]["sharding"] is None
    assert fsdp["kept_neurons"] == one["kept_neurons"]
    for first, second in zip(_log(tmp_path / "one"), _log(tmp_path / "fsdp"), strict=True):
        for key in ("loss", "task_loss", "distill_loss"):
            assert abs(first[key] - second[key]) <= 1e-5, (first["step"], key)
    one_weights, fsdp_weights = _weights(tmp_path / "one"), _weights(tmp_path / "fsdp")
    assert one_weights.keys() == fsdp_weights.keys()
    for key in one_weights:
        assert (one_weights[key] - fsdp_weights[key]).abs().max() <= 1e-4, key


def test_gum_under_fsdp_equals_ddp_and_a_killed_fsdp_run_resumes_to_the_same_model(tmp_path, tiny_model_dir,
                                                                                  data_dir):
    """GUM (its statistics all-reduced) on a Conv1D model: FSDP (torchrun) and DDP (`accelerate launch --multi_gpu`)
    on two processes agree; an FSDP run killed
    after its step-4 checkpoint (sharded: one file per process) and resumed ends as the uninterrupted one."""
    from ffnprune.io.pruned_dir import read_metadata

    common = [str(tiny_model_dir("gpt2")), "--method", "gum", "--mu", "1", *FINE_PRUNING, "--batch-size", "2",
              "--data", str(data_dir), "--checkpoint-every", "2"]
    runs = {}
    for name, fsdp, launcher, port in (("ddp", False, "accelerate", 29522), ("fsdp", True, "torchrun", 29523)):
        runs[name] = _launch([*common, "--out", str(tmp_path / name)], port, fsdp, launcher, workdir=tmp_path)
        assert runs[name].returncode == 0, runs[name].stderr[-4000:]
    killed = _launch([*common, "--out", str(tmp_path / "resumed")], 29524, True, kill_after_checkpoint_at=4,
                     workdir=tmp_path)
    assert killed.returncode != 0 and not (tmp_path / "resumed").exists()
    checkpoint = tmp_path / "resumed.work" / "checkpoint"
    assert {"model-rank0-of-2.safetensors", "model-rank1-of-2.safetensors",
            "optimizer-rank1-of-2.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    resumed = _launch(["--resume", str(tmp_path / "resumed.work")], 29525, True, workdir=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr

    reference = read_metadata(tmp_path / "fsdp")
    for name in ("ddp", "resumed"):
        assert read_metadata(tmp_path / name)["kept_neurons"] == reference["kept_neurons"], name
        for first, second in zip(_log(tmp_path / "fsdp"), _log(tmp_path / name), strict=True):
            assert abs(first["loss"] - second["loss"]) <= 1e-6, (name, first["step"])
    fsdp, resumed_weights = _weights(tmp_path / "fsdp"), _weights(tmp_path / "resumed")
    for key in fsdp:
        assert torch.equal(fsdp[key], resumed_weights[key]), key

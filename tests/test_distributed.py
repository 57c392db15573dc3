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

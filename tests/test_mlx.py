"""The exports run in Apple's MLX (mlx-lm, CPU build on Linux: `make test-mlx` installs it and runs this file; the
default install leaves it out, and then these tests skip). A checkpoint pruned and exported through the CLI gives
mlx-lm's logits equal to transformers' on the pruned directory: the Nemotron-NAS export with per-layer widths (a
layer without MLP, and one carrying only the reconstruction bias) and the uniform export of every family mlx-lm
knows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ffnprune.cli.main import main
from ffnprune.io.pruned_dir import load_pruned
from test_nemotron_nas import prune_and_export, save_wide_llama

mx = pytest.importorskip("mlx.core", reason="mlx is not installed: make test-mlx")
mlx_utils = pytest.importorskip("mlx_lm.utils", reason="mlx-lm is not installed: make test-mlx")

TOLERANCE = 1e-3  # float32 in both; observed about 1e-6


def mlx_logits(directory: Path, ids: torch.Tensor) -> np.ndarray:
    model, _ = mlx_utils.load_model(Path(directory))  # strict: a missing or unexpected tensor is an error
    return np.array(model(mx.array(ids.numpy())))


def transformers_logits(pruned: Path, ids: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return load_pruned(pruned).eval()(ids).logits.numpy()


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory, gpt2_tokenizer):
    return save_wide_llama(tmp_path_factory.mktemp("mlx") / "dense", gpt2_tokenizer)


@pytest.mark.parametrize("options", [
    ("--method", "obs", "--layer-keep", "0:0,1:1", "--calibration-tokens", "256", "--calibration-context", "32"),
    ("--method", "magnitude", "--layer-keep", "2:0"),
], ids=["bias-and-bias-only-layer", "no-op-layer"])
def test_mlx_runs_the_nemotron_nas_export_as_transformers_runs_the_pruned_model(wide_llama, data_dir, tmp_path,
                                                                                 options):
    extra = ("--data", str(data_dir)) if "obs" in options else ()
    pruned, export = prune_and_export(wide_llama, tmp_path, data_dir, *options, *extra)
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    assert np.abs(mlx_logits(export, ids) - transformers_logits(pruned, ids)).max() <= TOLERANCE


@pytest.mark.parametrize("model_type", ["llama", "gemma2", "gemma3_text", "phi3"])
def test_mlx_runs_the_uniform_export(tiny_model_dir, tmp_path, model_type):
    """mlx-lm's gemma3_text reads no layer_types (every sixth layer is global, as released): the tiny one is so."""
    pruned, uniform = tmp_path / "pruned", tmp_path / "uniform"
    assert main(["prune", str(tiny_model_dir(model_type)), "--method", "magnitude", "--keep", "0.5", "--layer-keep",
                 "0:0.25", "--out", str(pruned)]) == 0
    assert main(["export", str(pruned), "--format", "uniform", "--out", str(uniform)]) == 0
    # mlx-lm's gemma2 attends to every earlier token in every layer, transformers' alternate layers to a sliding
    # window (8 tokens here, 4096 in Gemma 2): they agree within the window
    length = 8 if model_type == "gemma2" else 24
    ids = torch.randint(0, 1000, (2, length), generator=torch.Generator().manual_seed(0))
    assert np.abs(mlx_logits(uniform, ids) - transformers_logits(pruned, ids)).max() <= TOLERANCE


def test_mlx_runs_the_uniform_export_with_a_bias_and_a_rotary_base_of_its_own(wide_llama, data_dir, tmp_path):
    """The reconstruction's MLP bias (mlp_bias) and a rotary base other than mlx-lm's default (50,000 here; SmolLM2's
    is 100,000): the stock config spells rope_theta, which mlx-lm reads, beside transformers 5's rope_parameters."""
    pruned, uniform = tmp_path / "pruned", tmp_path / "uniform"
    assert main(["prune", str(wide_llama), "--method", "obs", "--keep", "0.5", "--layer-keep", "0:0.25", "--data",
                 str(data_dir), "--calibration-tokens", "256", "--calibration-context", "32", "--out",
                 str(pruned)]) == 0
    assert main(["export", str(pruned), "--format", "uniform", "--out", str(uniform)]) == 0
    ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    assert np.abs(mlx_logits(uniform, ids) - transformers_logits(pruned, ids)).max() <= TOLERANCE

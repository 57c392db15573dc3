"""Streamed one-shot pruning (--stream): a checkpoint on disk read one layer at a time gives the same pruned model as
the in-memory path, written as a sharded checkpoint that loads strictly with and without ffnprune."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from ffnprune.cli.main import main
from ffnprune.io.pruned_dir import load_pruned, read_metadata
from helpers import run_without_ffnprune
from test_oneshot import _calibration_text
from tiny_models import tiny_model


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _weights(directory) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, gpt2_tokenizer):
    """A tiny LLaMA saved in bf16, in several shards."""
    directory = tmp_path_factory.mktemp("sharded") / "llama"
    model = tiny_model("llama", vocab_size=len(gpt2_tokenizer)).to(torch.bfloat16)
    model.save_pretrained(directory, max_shard_size="40KB")
    gpt2_tokenizer.save_pretrained(directory)
    assert len(list(directory.glob("*.safetensors"))) > 2
    return directory


@pytest.mark.parametrize("options", [("--method", "obs"), ("--method", "flap", "--reconstruct", "bias",
                                                             "--calibration-target", "own", "--layer-keep", "0:1")])
def test_streamed_equals_in_memory(capsys, tmp_path, sharded, options):
    calibration = ("--calibration-data", _calibration_text(tmp_path), "--calibration-context", "32",
                   "--calibration-tokens", "1024", "--keep", "0.5", *options)
    code, _, err = _run(capsys, "prune", sharded, "--out", tmp_path / "memory", *calibration)
    assert code == 0, err
    code, _, err = _run(capsys, "prune", sharded, "--stream", "--out", tmp_path / "streamed", *calibration)
    assert code == 0, err
    memory, streamed = _weights(tmp_path / "memory"), _weights(tmp_path / "streamed")
    assert memory.keys() == streamed.keys()
    for name in memory:
        assert memory[name].dtype == streamed[name].dtype == torch.bfloat16, name
        assert (memory[name].float() - streamed[name].float()).abs().max() <= 1e-6, name
    assert read_metadata(tmp_path / "streamed")["kept_neurons"] == read_metadata(tmp_path / "memory")["kept_neurons"]
    assert read_metadata(tmp_path / "streamed")["streamed"] is True
    assert not (tmp_path / "streamed.work").exists()
    index = json.loads((tmp_path / "streamed" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(streamed)
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = load_pruned(tmp_path / "streamed").eval()(ids).logits
    theirs = run_without_ffnprune(f"""
        import json, torch, transformers
        model = transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path / "streamed")!r},
                                                                  trust_remote_code=True).eval()
        with torch.no_grad():
            print(json.dumps({{"logits": model(torch.tensor({ids.tolist()})).logits.tolist()}}))
    """, tmp_path)
    assert (ours - torch.tensor(theirs["logits"])).abs().max() < 1e-5


@pytest.mark.parametrize("stream", [False, True])
def test_hidden_states_spilled_to_files_give_the_same_model(capsys, tmp_path, sharded, stream):
    """--hidden-memory 0: every batch's hidden states go to files and are read back; nothing else changes, and the
    files are gone afterwards."""
    options = ("--calibration-data", _calibration_text(tmp_path), "--calibration-context", "32",
               "--calibration-tokens", "1024", "--keep", "0.5", *(("--stream",) if stream else ()))
    code, _, err = _run(capsys, "prune", sharded, "--out", tmp_path / "memory", *options)
    assert code == 0, err
    code, _, err = _run(capsys, "prune", sharded, "--out", tmp_path / "spilled", "--hidden-memory", "0", *options)
    assert code == 0, err
    assert read_metadata(tmp_path / "spilled")["one_shot"]["hidden_states"]["spilled_to_files"] is True
    assert read_metadata(tmp_path / "memory")["one_shot"]["hidden_states"]["spilled_to_files"] is False
    memory, spilled = _weights(tmp_path / "memory"), _weights(tmp_path / "spilled")
    assert memory.keys() == spilled.keys()
    assert all(torch.equal(memory[name], spilled[name]) for name in memory)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["calibration.txt", "memory", "spilled"]


def test_a_hub_id_streams_from_the_hub_cache(tmp_path, sharded):
    """`prune ORG/NAME --stream` reads the snapshot huggingface_hub keeps in its cache (offline here, as a user's
    earlier download left it), layer by layer: the same model as streaming the directory itself."""
    import os
    import shutil
    import subprocess
    import sys

    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-llama" / "snapshots" / ("0" * 40)
    shutil.copytree(sharded, snapshot)
    (cache / "models--someone--tiny-llama" / "refs").mkdir()
    (cache / "models--someone--tiny-llama" / "refs" / "main").write_text("0" * 40)
    options = ["--stream", "--method", "flap", "--keep", "0.5", "--calibration-data", str(_calibration_text(tmp_path)),
               "--calibration-context", "32", "--calibration-tokens", "512"]
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    for source, out in (("someone/tiny-llama", "from-hub"), (str(sharded), "from-directory")):
        result = subprocess.run([sys.executable, "-m", "ffnprune.cli.main", "prune", source, "--out",
                                 str(tmp_path / out), *options], capture_output=True, text=True, env=env, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    hub, directory = _weights(tmp_path / "from-hub"), _weights(tmp_path / "from-directory")
    assert hub.keys() == directory.keys()
    assert all(torch.equal(hub[name], directory[name]) for name in hub)
    assert read_metadata(tmp_path / "from-hub")["streamed"] is True

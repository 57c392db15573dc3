"""Outputs are written whole or not at all; damaged inputs get errors that say what to do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ffnprune.adapters import adapter_for
from ffnprune.compaction import compact_mlps
from ffnprune.errors import FfnpruneError
from ffnprune.io.atomic import atomic_directory, write_json_atomic
from ffnprune.io.pruned_dir import load_pruned, save_pruned
from ffnprune.models import load_model
from tiny_models import tiny_model


def _partials(parent):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name]


def test_failure_inside_leaves_neither_target_nor_partial(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as staging:
            (staging / "half.bin").write_text("x")
            raise RuntimeError("boom")
    assert not target.exists()
    assert _partials(tmp_path) == []


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as staging:
        (staging / "a").write_text("old")
    with pytest.raises(FfnpruneError, match="--overwrite"):
        with atomic_directory(target):
            pass
    with atomic_directory(target, overwrite=True) as staging:
        (staging / "b").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == [".ffnprune", "b"]  # the marker --overwrite looks for
    assert _partials(tmp_path) == []


def test_write_json_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"b": 2})
    assert json.loads(path.read_text()) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_sigkill_during_save_leaves_no_half_written_directory(tmp_path):
    """Kill the saving process after every file is staged but before it is renamed into place."""
    target = tmp_path / "model"
    marker = tmp_path / "staged"
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from tiny_models import tiny_model
        import ffnprune.io.atomic as atomic
        from ffnprune.adapters import adapter_for
        from ffnprune.compaction import compact_mlps
        from ffnprune.io.pruned_dir import save_pruned
        def stall(staging, target):
            open({str(marker)!r}, "w").close()
            time.sleep(120)
        atomic._commit = stall
        model = tiny_model("llama")
        adapter = adapter_for(model.config)
        compact_mlps(model, adapter, [list(range(8))] * 4)
        save_pruned(model, None, {str(target)!r}, {{}})
    """)
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 120
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the save never reached its commit"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not target.exists()
    assert len(_partials(tmp_path)) == 1  # the staged files, hidden

    model = tiny_model("llama")
    compact_mlps(model, adapter_for(model.config), [list(range(8))] * 4)
    save_pruned(model, None, target, {})
    assert _partials(tmp_path) == []  # the next save to that target cleans up
    load_pruned(target)


def test_corrupt_pruned_checkpoint_is_reported(tmp_path):
    model = tiny_model("gpt2")
    compact_mlps(model, adapter_for(model.config), [list(range(10))] * 4)
    directory = save_pruned(model, None, tmp_path / "model", {})
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(FfnpruneError, match="corrupt"):
        load_pruned(directory)
    with pytest.raises(FfnpruneError, match="corrupt"):
        load_model(str(directory))


def test_corrupt_gguf_is_reported(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + os.urandom(200))
    with pytest.raises(FfnpruneError, match=r"broken\.gguf"):
        load_model(str(path))


@pytest.mark.parametrize("make,message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: p / "missing.gguf", "does not exist"),
    (lambda p: p, "not a model directory"),
    (lambda p: (p / "weights.bin").write_bytes(b"x") and p / "weights.bin", "not a .gguf file"),
])
def test_bad_model_paths_are_named(tmp_path, make, message):
    with pytest.raises(FfnpruneError, match=message):
        load_model(str(make(tmp_path)))


def test_unsupported_architecture_lists_supported_ones(tmp_path):
    from transformers import BertConfig

    config = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    config.save_pretrained(tmp_path)
    with pytest.raises(FfnpruneError) as error:
        load_model(str(tmp_path))
    message = str(error.value)
    assert "'bert'" in message
    for model_type in ("gpt2", "gpt_neo", "gpt_neox", "opt", "llama", "mistral", "qwen2"):
        assert model_type in message


def test_load_pruned_refuses_a_model_it_did_not_prune(tmp_path):
    tiny_model("opt").save_pretrained(tmp_path)
    with pytest.raises(FfnpruneError, match="did not prune"):
        load_pruned(tmp_path)


def test_unreachable_hub_id_says_how_to_work_offline():
    with pytest.raises(FfnpruneError, match="smollm2-135m"):
        load_model("no-such-org/no-such-model")


def test_empty_data_file_is_reported(tmp_path):
    from ffnprune.tasks.wikitext import read_wikitext

    (tmp_path / "wiki.test.tokens").write_text("\n \n")
    with pytest.raises(FfnpruneError, match="holds no text"):
        read_wikitext(tmp_path, "test")

"""Inputs that used to give a silently wrong result, lose the user's files or say nothing: each through the CLI on a
tiny checkpoint written to disk (the errors among them are rows of tests/bad_inputs.py)."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
import yaml

from ffnprune.cli.main import main


def _run(capsys, *argv):
    capsys.readouterr()
    code = main([str(part) for part in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_default_method_is_the_calibrated_path_and_uncalibrated_one_shot_warns(tmp_path, tiny_model_dir, capsys):
    dense = tiny_model_dir("llama")
    code, out, err = _run(capsys, "prune", dense, "--calibration-tokens", "512", "--calibration-context", "32",
                          "--out", tmp_path / "default")
    assert code == 0, err
    metadata = json.loads((tmp_path / "default" / "pruning.json").read_text())
    assert metadata["method"] == "obs" and metadata["one_shot"]["reconstruct"] == "lstsq"
    assert "warning" not in err
    # The end of the run says what was made and how to go on.
    assert "4 x 40" in out and "parameters:" in out and f"ffnprune evaluate {tmp_path / 'default'}" in out

    code, _, err = _run(capsys, "prune", dense, "--method", "magnitude", "--out", tmp_path / "magnitude")
    assert code == 0
    assert "ffnprune: warning: method magnitude in one shot" in err and "--method obs" in err


def test_round_to_rounds_to_a_non_zero_multiple_and_empty_layers_are_named(tmp_path, tiny_model_dir, capsys):
    dense = tiny_model_dir("llama")
    # int(0.1 x 80) = 8 neurons, which the nearest multiple of 16 used to round to 0.
    code, _, err = _run(capsys, "prune", dense, "--method", "magnitude", "--keep", "0.1", "--round-to", "16",
                        "--out", tmp_path / "rounded")
    assert code == 0, err
    assert json.loads((tmp_path / "rounded" / "pruning.json").read_text())["mlp_widths"] == [16] * 4
    assert "kept no MLP neuron" not in err

    code, _, err = _run(capsys, "prune", dense, "--method", "magnitude", "--layer-keep", "0:0.01", "--out",
                        tmp_path / "empty")
    assert code == 0
    assert "1 of 4 layers kept no MLP neuron (layers 0)" in err
    code, _, err = _run(capsys, "prune", dense, "--method", "magnitude", "--layer-keep", "0:0", "--out",
                        tmp_path / "asked")
    assert code == 0 and "kept no MLP neuron" not in err  # --layer-keep asked for exactly that


def test_overwrite_replaces_what_ffnprune_wrote(tmp_path, tiny_model_dir, capsys):
    dense, out = tiny_model_dir("llama"), tmp_path / "out"
    assert _run(capsys, "prune", dense, "--method", "magnitude", "--out", out)[0] == 0
    assert set(json.loads((out / ".ffnprune").read_text())["files"]) >= {"config.json", "model.safetensors",
                                                                           "pruning.json"}
    assert _run(capsys, "prune", dense, "--method", "random", "--out", out, "--overwrite")[0] == 0
    assert json.loads((out / "pruning.json").read_text())["method"] == "random"

    report = tmp_path / "eval.json"
    assert _run(capsys, "evaluate", out, "--context", "32", "--max-tokens", "128", "--out", report)[0] == 0
    first = report.read_text()
    code, _, err = _run(capsys, "evaluate", out, "--context", "16", "--max-tokens", "128", "--out", report)
    assert code == 2 and "already exists" in err and report.read_text() == first
    assert _run(capsys, "evaluate", out, "--context", "16", "--max-tokens", "128", "--out", report,
                "--overwrite")[0] == 0
    assert report.read_text() != first


def test_an_interrupted_one_shot_prune_does_not_point_to_checkpoints(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import ffnprune.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "prune_one_shot", interrupted)
    code, _, err = _run(capsys, "prune", tiny_model_dir("llama"), "--out", tmp_path / "out")
    assert code == 130
    assert "one-shot pruning writes nothing until it has finished" in err and "--checkpoint-every" not in err
    assert not (tmp_path / "out").exists()


def test_a_failed_write_is_an_error_that_keeps_the_checkpoint(tmp_path, tiny_model_dir, data_dir, capsys,
                                                               monkeypatch):
    import ffnprune.pipeline as pipeline

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline, "save_pruned", disk_full)
    out = tmp_path / "out"
    code, _, err = _run(capsys, "prune", tiny_model_dir("llama"), "--method", "movement", "--steps", "4",
                        "--checkpoint-every", "2", "--context", "32", "--batch-size", "2", "--data", data_dir,
                        "--out", out)
    assert code == 2 and "Traceback" not in err
    assert "could not write the pruned model" in err and "No space left on device" in err
    assert f"ffnprune prune --resume {tmp_path / 'out.work'}" in err
    assert not out.exists() and (tmp_path / "out.work" / "checkpoint").is_dir()


def test_a_disk_too_small_for_the_output_is_refused_before_work(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import ffnprune.pipeline as pipeline

    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**6, 10**6 - 1000, 1000))
    code, _, err = _run(capsys, "prune", tiny_model_dir("llama"), "--out", tmp_path / "out")
    assert code == 2 and "GiB free" in err
    assert list(tmp_path.iterdir()) == []
    # 30 MB hold the tiny model pruned (about 10 MB in float32), not its training checkpoints (14 bytes a parameter).
    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 0, 30 * 10**6))
    assert _run(capsys, "prune", tiny_model_dir("llama"), "--method", "magnitude", "--out", tmp_path / "one")[0] == 0
    code, _, err = _run(capsys, "prune", tiny_model_dir("llama"), "--method", "movement", "--steps", "4",
                        "--checkpoint-every", "2", "--out", tmp_path / "run")
    assert code == 2 and "checkpoints (OUT.work) need" in err


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_work_directory(tmp_path, tiny_model_dir, capsys,
                                                                               monkeypatch):
    import ffnprune.pipeline as pipeline

    def no_examples(*args, **kwargs):
        raise pipeline.FfnpruneError("no training text")

    monkeypatch.setattr(pipeline, "task_examples", no_examples)
    code, _, err = _run(capsys, "prune", tiny_model_dir("llama"), "--method", "movement", "--steps", "4",
                        "--context", "32", "--out", tmp_path / "out")
    assert code == 2 and "no training text" in err
    assert list(tmp_path.iterdir()) == []


def test_yaml_keys_may_be_written_like_the_flags(tmp_path, tiny_model_dir, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"method": "magnitude", "round-to": 8, "keep": 0.5}))
    code, _, err = _run(capsys, "prune", tiny_model_dir("llama"), "--config", config, "--out", tmp_path / "out")
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "pruning.json").read_text())["round_to"] == 8


@pytest.mark.parametrize("command", ["prune", "export"])
def test_help_says_out_is_required(capsys, command):
    assert main([command, "--help"]) == 0
    assert "(required" in capsys.readouterr().out


def test_training_and_generation_stay_within_the_model_positions(tmp_path, tiny_model_dir, data_dir, capsys):
    """A GPT-2 of 64 positions: training at the default --context 512 and SAMSum prompts of hundreds of tokens plus
    the new ones used to end in an IndexError inside the position embedding."""
    gpt2 = tiny_model_dir("gpt2")
    code, _, err = _run(capsys, "prune", gpt2, "--method", "movement", "--steps", "4", "--batch-size", "2", "--data",
                        data_dir, "--out", tmp_path / "out")
    assert code == 0, err
    assert "--context 512 is longer than the model's 64 positions; using 64" in err
    assert json.loads((tmp_path / "out" / "pruning.json").read_text())["protocol"]["context"] == 64
    report = tmp_path / "samsum.json"
    code, _, err = _run(capsys, "evaluate", gpt2, "--task", "samsum", "--limit", "2", "--num-beams", "1", "--data",
                        data_dir, "--out", report)
    assert code == 0, err
    assert "the model has 64 positions: prompts keep their last 32 tokens" in err
    generation = json.loads(report.read_text())["protocol"]["generation"]
    assert generation["max_prompt_tokens"] + generation["max_new_tokens"] <= 64

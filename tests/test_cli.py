"""The ffnprune command on a tiny model with the real GPT-2 tokenizer."""

from __future__ import annotations

import json

import pytest

from ffnprune.cli.main import main
from ffnprune.io.pruned_dir import load_pruned, read_metadata


@pytest.fixture(scope="module")
def dense_dir(tiny_model_dir):
    return tiny_model_dir("llama")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_info_reports_widths_parameters_and_flops(capsys, dense_dir):
    code, out, _ = run(capsys, "info", dense_dir)
    assert code == 0
    assert "llama" in out and "4 x 80" in out and "MLP" in out
    code, out, _ = run(capsys, "info", dense_dir, "--json")
    info = json.loads(out)
    assert info["mlp_widths"] == [80] * 4 and 0 < info["mlp_flop_share"] < 1


def test_prune_saves_a_model_with_metadata_and_tokenizer(capsys, dense_dir, tmp_path):
    out_dir = tmp_path / "pruned"
    code, _, err = run(capsys, "prune", dense_dir, "--method", "random", "--keep", "0.25", "--steps", "0",
                       "--seed", "1", "--out", out_dir)
    assert code == 0, err
    model = load_pruned(out_dir)
    assert model.config.ffnprune["mlp_widths"] == [20] * 4
    metadata = read_metadata(out_dir)
    assert metadata["method"] == "random" and metadata["keep"] == 0.25 and metadata["seed"] == 1
    assert metadata["source_model"] == str(dense_dir)
    assert [len(k) for k in metadata["kept_neurons"]] == [20] * 4
    assert metadata["parameters_after"] < metadata["parameters_before"]
    assert (out_dir / "tokenizer.json").exists()

    code, out, _ = run(capsys, "info", out_dir)
    assert code == 0 and "4 x 20" in out

    code, _, err = run(capsys, "prune", dense_dir, "--keep", "0.5", "--out", out_dir)
    assert code == 2 and "--overwrite" in err
    code, _, err = run(capsys, "prune", dense_dir, "--keep", "0.5", "--out", out_dir, "--overwrite")
    assert code == 0, err
    assert read_metadata(out_dir)["method"] == "obs"  # the default: calibrated, refit

    uniform = tmp_path / "uniform"
    code, _, err = run(capsys, "export", out_dir, "--uniform", "--out", uniform)
    assert code == 0, err
    assert json.loads((uniform / "config.json").read_text())["intermediate_size"] == 40


@pytest.mark.parametrize("argv,message", [
    (["--keep", "1.5"], "out of range"),
    (["--keep", "0"], "out of range"),
    (["--method", "nope"], "known methods: random, magnitude"),
    (["--steps", "1"], "too few for the schedule"),
    (["--steps", "-1"], "--steps '-1': input should be greater than or equal to 0"),
    (["--steps", "2.7"], "--steps '2.7': input should be a valid integer"),
    (["--method", "soft-movement", "--steps", "10", "--soft-threshold", "1"], "--soft-threshold '1': input should "
                                                                              "be less than 1"),
    (["--method", "gum", "--mu", "1", "--steps", "10", "--beta", "0"], "--beta '0': input should be greater than 0"),
    (["--distill", "--steps", "10", "--temperature", "0"], "--temperature '0': input should be greater than 0"),
    (["--lambda", "-1"], "--lambda '-1': input should be greater than or equal to 0"),
    (["--mixed-precision", "fp8"], "--mixed-precision 'fp8': input should be 'no', 'fp16' or 'bf16'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--method", "gum", "--steps", "0"], "needs --mu"),
    (["--method", "movement", "--steps", "0"], "give --steps N"),
    (["--method", "gum", "--mu", "1", "--steps", "10", "--gum-tokens", "0"], "--gum-tokens '0': input should be "
                                                                             "greater than or equal to 1"),
])
def test_prune_bad_options_exit_2_with_the_fix(capsys, dense_dir, tmp_path, argv, message):
    code, _, err = run(capsys, "prune", dense_dir, "--out", tmp_path / "x", *argv)
    assert code == 2 and message in err
    assert not (tmp_path / "x").exists()


def test_prune_missing_model_path(capsys, tmp_path):
    code, _, err = run(capsys, "prune", tmp_path / "nowhere", "--out", tmp_path / "x")
    assert code == 2 and "does not exist" in err


def test_demo_fine_prunes_each_method_and_records_its_protocol(capsys, dense_dir, data_dir, tmp_path):
    out_dir = tmp_path / "demo"
    code, out, err = run(capsys, "demo", "--model", dense_dir, "--data", data_dir, "--max-tokens", "512",
                         "--context", "64", "--steps", "3", "--train-context", "32", "--prompt-length", "16",
                         "--new-tokens", "4", "--repeats", "2", "--out", out_dir)
    assert code == 0, err
    assert "WikiText ppl" in out and "gum keep 0.5" in out and "obs keep 0.5" in out
    result = json.loads((out_dir / "results.json").read_text())
    assert result["split"] == "test" and result["methods"] == ["obs", "gum"] and result["steps"] == 3
    assert result["protocol"]["context"] == 64 and result["protocol"]["tokens_scored"] == 8 * 63
    assert result["speed"]["settings"]["prompt_lengths"] == [16] and result["speed"]["settings"]["repeats"] == 2
    assert result["hyperparameters"]["gum"]["mu"] == 1.0 and result["hyperparameters"]["obs"]["mu"] is None
    assert result["hyperparameters"]["obs"]["distill"] and not result["hyperparameters"]["gum"]["distill"]
    dense = result["results"]["dense"]
    for method in ("obs", "gum"):
        row = result["results"][method]
        assert sum(row["mlp_widths"]) == sum(dense["mlp_widths"]) // 2
        # obs's refit adds a down_proj bias (hidden size 32) to each of the 4 layers
        assert row["mlp_parameters"] == dense["mlp_parameters"] // 2 + (4 * 32 if method == "obs" else 0)
        assert row["flops_per_token"] < dense["flops_per_token"]
        timed = [r for r in result["speed"]["runs"] if r["model"] == method]
        assert [r["batch_size"] for r in timed] == [1, 8] and all(r["speedup_decode_flops"] > 1 for r in timed)
        assert load_pruned(out_dir / method).config.ffnprune["mlp_widths"] == row["mlp_widths"]
        assert json.loads((out_dir / method / "pruning.json").read_text())["steps"] == 3
    assert "ffnprune_version" in result and result["data"]["file"] == "wikitext/wikitext-2-v1/wiki.test.tokens"
    assert len(result["data"]["sha256"]) == 64


def test_demo_unknown_method_lists_the_known_ones(capsys, dense_dir, data_dir, tmp_path):
    code, _, err = run(capsys, "demo", "--model", dense_dir, "--data", data_dir, "--methods", "gum,best",
                       "--out", tmp_path / "demo")
    assert code == 2 and "best" in err and "global-movement" in err


def test_demo_missing_data_file(capsys, dense_dir, tmp_path):
    code, _, err = run(capsys, "demo", "--model", dense_dir, "--data", tmp_path, "--out", tmp_path / "demo")
    assert code == 2 and "missing data file" in err


def test_export_needs_a_format(capsys, tmp_path):
    code, _, err = run(capsys, "export", tmp_path, "--out", tmp_path / "u")
    assert code == 2 and "--format uniform" in err and "--format gguf" in err

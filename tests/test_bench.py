"""`ffnprune bench`: a pruned model timed against its dense source, with the FLOP-theoretical speed-up beside."""

from __future__ import annotations

import json

import pytest
import torch

from ffnprune.benchmark.memory import PeakMemory
from ffnprune.cli.main import main


@pytest.fixture
def pair(tiny_model_dir, tmp_path):
    dense = tiny_model_dir("llama")
    pruned = tmp_path / "pruned"
    assert main(["prune", str(dense), "--method", "random", "--keep", "0.25", "--out", str(pruned)]) == 0
    return dense, pruned


def test_bench_times_both_models_and_sets_measured_against_flops(capsys, pair, tmp_path):
    dense, pruned = pair
    out = tmp_path / "bench.json"
    code = main(["bench", str(dense), str(pruned), "--batch-sizes", "1,2", "--prompt-lengths", "8,16",
                 "--new-tokens", "3", "--repeats", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "prefill speed-up" in printed and "(measured / FLOPs)" in printed
    result = json.loads(out.read_text())
    assert result["machine"]["device"] == "cpu" and result["machine"]["torch"] == torch.__version__
    assert len(result["runs"]) == 2 * 2 * 2
    sizes = result["sizes"]
    reference, other = list(sizes)
    assert reference == result["reference"]
    assert sizes[other]["mlp_parameters"] == sizes[reference]["mlp_parameters"] // 4
    for row in result["runs"]:
        assert len(row["prefill_ms_all"]) == 2 and row["decode_tokens_per_second"] > 0
        if row["model"] == other:
            expected = [r for r in result["runs"] if r["model"] == reference and r["batch_size"] == row["batch_size"]
                        and r["prompt_length"] == row["prompt_length"]][0]
            assert row["speedup_prefill_flops"] == pytest.approx(
                expected["prefill_flops_per_token"] / row["prefill_flops_per_token"])
            assert row["speedup_prefill_flops"] > 1 and row["speedup_decode_flops"] > 1
            assert row["prefill_efficiency"] == pytest.approx(row["speedup_prefill"] / row["speedup_prefill_flops"])


@pytest.mark.parametrize("argv,message", [(["--batch-sizes", "1,x"], "--batch-sizes"),
                                          (["--repeats", "0"], "--repeats"),
                                          (["--device", "cuda"], "no CUDA device")])
def test_bench_bad_options(capsys, pair, argv, message):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    code = main(["bench", *map(str, pair), *argv])
    assert code == 2 and message in capsys.readouterr().err


def test_bench_needs_two_models(capsys, pair):
    assert main(["bench", str(pair[0])]) == 2
    assert "two models" in capsys.readouterr().err


def test_peak_memory_sees_a_temporary_allocation():
    with PeakMemory("cpu") as peak:
        block = torch.ones(64 * 1024 * 1024 // 4)  # 64 MiB, touched
        del block
    if peak.bytes is None:
        pytest.skip("this platform does not report peak resident memory")
    assert peak.added >= 60 * 1024 * 1024


def test_training_bench_times_each_variant_against_plain_fine_tuning(capsys, tiny_model_dir, data_dir, tmp_path):
    out = tmp_path / "training.json"
    code = main(["bench-training", str(tiny_model_dir("llama")), "--data", str(data_dir), "--variants",
                 "fine-tuning,global-movement,gum,gum:tokens=8:every=2", "--context", "32", "--steps", "3",
                 "--warmup", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert "time / FT" in capsys.readouterr().out
    rows = json.loads(out.read_text())["variants"]
    assert list(rows) == ["fine-tuning", "global-movement", "gum", "gum:tokens=8:every=2"]
    assert all(len(row["step_seconds_all"]) == 3 * 2 for row in rows.values())
    assert "time_vs_fine_tuning" not in rows["fine-tuning"]
    gum = rows["gum"]
    assert gum["time_vs_fine_tuning"] == pytest.approx(gum["step_seconds"] / rows["fine-tuning"]["step_seconds"])
    assert gum["time_vs_global_movement"] == pytest.approx(
        gum["step_seconds"] / rows["global-movement"]["step_seconds"])


@pytest.mark.parametrize("variants,message", [("gum:tokens=0", "tokens=N"), ("movement:every=2", "gum and anti-gum"),
                                              ("fine-tuning:tokens=8", "no options"), ("bogus", "known methods")])
def test_training_bench_bad_variants(capsys, tiny_model_dir, variants, message):
    assert main(["bench-training", str(tiny_model_dir("llama")), "--variants", variants]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
@pytest.mark.parametrize("command", [["evaluate", "--max-tokens", "64"], ["analyze", "--out", "analysis"]])
def test_measuring_commands_refuse_a_missing_gpu(capsys, pair, tmp_path, command):
    """--device auto falls back to the CPU; an explicit cuda on a machine without one is a clear error."""
    argv = [command[0], str(pair[0]), *[str(tmp_path / a) if a == "analysis" else a for a in command[1:]]]
    assert main([*argv, "--device", "cuda"]) == 2
    assert "no CUDA device" in capsys.readouterr().err

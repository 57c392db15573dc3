"""Fine-pruning runs end to end on tiny models: every method, resume after SIGKILL, NaN, config files, hooks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from ffnprune.cli.main import main
from ffnprune.config import PruneConfig, build_config
from ffnprune.errors import FfnpruneError
from ffnprune.io.pruned_dir import load_pruned, read_metadata
from ffnprune.pipeline import FfnpruneWarning, prune, work_dir
from tiny_models import tiny_model

FAST = {"context": 32, "batch_size": 2, "steps": 12, "keep": 0.25, "seed": 0}


@pytest.fixture(scope="module")
def tiny_dirs(tiny_model_dir):
    """Tiny llama (gated) and gpt2 (Conv1D, biases, dropout) models with the GPT-2 tokenizer."""
    return {model_type: tiny_model_dir(model_type) for model_type in ("llama", "gpt2")}


def config(model, out, data_dir, **values) -> PruneConfig:
    return build_config(PruneConfig, {**FAST, "model": str(model), "out": str(out), "data": str(data_dir), **values})


@pytest.mark.parametrize("method", ["random", "magnitude", "movement", "global-movement", "gum", "anti-gum"])
def test_each_method_prunes_to_the_requested_keep_and_loads(tiny_dirs, data_dir, tmp_path, method):
    mu = {"mu": 1.0} if "gum" in method else {}
    out = prune(config(tiny_dirs["llama"], tmp_path / method, data_dir, method=method, **mu), say=lambda *a: None)
    model = load_pruned(out)
    widths = model.config.ffnprune["mlp_widths"]
    metadata = read_metadata(out)
    if method in ("random", "magnitude", "movement"):  # local top-v
        assert widths == [20] * 4
    else:  # global top-v: floor(0.25 * 320) in all, layers may differ
        assert sum(widths) == 80
    assert metadata["method"] == method and metadata["keep_actual"] == pytest.approx(sum(widths) / 320)
    assert metadata["protocol"]["train_split"] == "validation" and metadata["hyperparameters"]["lr"] == 5e-4
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 13))
    assert log[0]["keep_scheduled"] == 1.0 and log[-1]["keep_scheduled"] == pytest.approx(0.25)
    assert log[-1]["keep_actual"] == pytest.approx(sum(widths) / 320)
    assert not work_dir(out).exists()


def test_soft_movement_runs_end_to_end(tiny_dirs, data_dir, tmp_path):
    """Soft movement keeps what passes its threshold, not a set share (see the mechanics test for the threshold)."""
    out = prune(config(tiny_dirs["llama"], tmp_path / "soft", data_dir, method="soft-movement"), say=lambda *a: None)
    metadata = read_metadata(out)
    assert [len(k) for k in metadata["kept_neurons"]] == load_pruned(out).config.ffnprune["mlp_widths"]
    assert metadata["selection"] == "threshold" and 0 <= metadata["keep_actual"] <= 1


def test_rounded_widths_hold_during_fine_pruning_and_after(tiny_dirs, data_dir, tmp_path):
    out = prune(config(tiny_dirs["llama"], tmp_path / "gum", data_dir, method="gum", mu=1.0, round_to=16,
                       eval_every=0), say=lambda *a: None)
    widths = load_pruned(out).config.ffnprune["mlp_widths"]
    assert all(width % 16 == 0 for width in widths) and read_metadata(out)["round_to"] == 16
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(round(record["keep_actual"] * 320) % 16 == 0 for record in log)  # the masks trained with


def test_distillation_runs_and_is_logged(tiny_dirs, data_dir, tmp_path):
    out = prune(config(tiny_dirs["gpt2"], tmp_path / "kd", data_dir, method="global-movement", distill=True),
                say=lambda *a: None)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all("distill_loss" in r for r in log)
    assert log[0]["distill_loss"] < 1e-3  # the student starts as the teacher
    assert log[-1]["distill_loss"] > log[0]["distill_loss"]


def _run_cli(args: list[str], kill_after_checkpoint_at: int | None = None) -> subprocess.CompletedProcess:
    """Run `ffnprune` in a fresh process; optionally SIGKILL it right after it writes the checkpoint of a step."""
    patch = ""
    if kill_after_checkpoint_at is not None:
        patch = textwrap.dedent(f"""
            import os, signal
            import ffnprune.training.loop as loop
            original = loop.save_checkpoint
            def save_then_die(directory, model, pruner, optimizer, scheduler, step, **kwargs):
                original(directory, model, pruner, optimizer, scheduler, step, **kwargs)
                if step == {kill_after_checkpoint_at}:
                    os.kill(os.getpid(), signal.SIGKILL)
            loop.save_checkpoint = save_then_die
        """)
    script = patch + f"import sys\nfrom ffnprune.cli.main import main\nsys.exit(main({args!r}))\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_run_killed_and_resumed_ends_as_the_uninterrupted_run(tiny_dirs, data_dir, tmp_path):
    common = [str(tiny_dirs["gpt2"]), "--method", "gum", "--mu", "1", "--keep", "0.25", "--steps", "12",
              "--context", "32", "--batch-size", "2", "--grad-accum", "2", "--checkpoint-every", "4",
              "--data", str(data_dir), "--seed", "5"]
    whole = _run_cli(["prune", *common, "--out", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = _run_cli(["prune", *common, "--out", str(tmp_path / "resumed")], kill_after_checkpoint_at=8)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "resumed").exists()
    workdir = tmp_path / "resumed.work"
    assert json.loads((workdir / "checkpoint" / "trainer.json").read_text())["step"] == 8

    resumed = _run_cli(["prune", "--resume", str(workdir)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr

    first, second = read_metadata(tmp_path / "whole"), read_metadata(tmp_path / "resumed")
    assert first["kept_neurons"] == second["kept_neurons"]
    assert abs(first["training"]["final_loss"] - second["training"]["final_loss"]) <= 1e-6
    logs = [[json.loads(line) for line in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
            for name in ("whole", "resumed")]
    assert [r["step"] for r in logs[1]] == list(range(1, 13))
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(*logs)) <= 1e-6
    assert not workdir.exists()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_dirs, data_dir, tmp_path, monkeypatch):
    import ffnprune.training.loop as loop

    calls = {"n": 0}
    original = loop.causal_lm_loss

    def loss_that_breaks(logits, labels, reduction="mean"):
        calls["n"] += 1
        value = original(logits, labels, reduction)
        return value * float("nan") if calls["n"] == 7 else value

    monkeypatch.setattr(loop, "causal_lm_loss", loss_that_breaks)
    out = tmp_path / "nan"
    # The loss at step 7 ran on the weights of update 6: the checkpoint of step 6 may hold the damage, so the one
    # of step 4 becomes the one --resume takes.
    with pytest.raises(FfnpruneError, match=r"loss became nan at step 7.*checkpoint of step 4.*--resume .* --lr"):
        prune(config(tiny_dirs["llama"], out, data_dir, method="movement", checkpoint_every=2), say=lambda *a: None)
    assert not out.exists()
    checkpoint = work_dir(out) / "checkpoint"
    assert json.loads((checkpoint / "trainer.json").read_text())["step"] == 4


def _interrupt_after_checkpoint(monkeypatch, at_step: int) -> None:
    import ffnprune.training.loop as loop

    original = loop.save_checkpoint

    def save_then_stop(directory, model, pruner, optimizer, scheduler, step, **kwargs):
        original(directory, model, pruner, optimizer, scheduler, step, **kwargs)
        if step == at_step:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_stop)


def test_resume_honours_a_new_learning_rate_and_records_it(tiny_dirs, data_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "lr"
    args = ["prune", str(tiny_dirs["llama"]), "--method", "movement", "--keep", "0.5", "--steps", "8",
            "--context", "32", "--batch-size", "2", "--checkpoint-every", "4", "--lr", "1e-3",
            "--data", str(data_dir), "--out", str(out)]
    _interrupt_after_checkpoint(monkeypatch, 4)
    assert main(args) == 130
    workdir = work_dir(out)
    assert f"--resume {workdir}" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["prune", "--resume", str(workdir), "--keep", "0.25"]) == 2  # what the run is cannot change
    assert "--keep (0.5 -> 0.25)" in capsys.readouterr().err
    assert main(["prune", "--resume", str(workdir), "--lr", "1e-4"]) == 0, capsys.readouterr().err
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    # Linear decay after a 10% warm-up (1 step of 8): the LR after step t is peak * (8 - t) / 7.
    assert log[3]["lr"] == pytest.approx(1e-3 * 4 / 7) and log[4]["lr"] == pytest.approx(1e-4 * 3 / 7)
    metadata = read_metadata(out)
    assert metadata["hyperparameters"]["lr"] == 1e-4
    assert metadata["training"]["resumed"] == [{"from_step": 4, "changed": {"lr": [1e-3, 1e-4]}}]
    assert metadata["training"]["mixed_precision"] == "no"  # what ran (no flag, no accelerate config on CPU)


def test_mu_for_a_method_that_ignores_it_warns(tiny_dirs, data_dir, tmp_path):
    with pytest.warns(FfnpruneWarning, match="ignored by method movement"):
        prune(config(tiny_dirs["llama"], tmp_path / "m", data_dir, method="movement", mu=1.0), say=lambda *a: None)


def test_a_leftover_run_must_be_resumed_or_overwritten(tiny_dirs, data_dir, tmp_path):
    out = tmp_path / "left"
    (work_dir(out) / "checkpoint").mkdir(parents=True)
    with pytest.raises(FfnpruneError, match="--resume"):
        prune(config(tiny_dirs["llama"], out, data_dir, method="random"), say=lambda *a: None)
    with pytest.raises(FfnpruneError, match="no checkpoint"):
        prune(config(tiny_dirs["llama"], out, data_dir, method="random"), resume=tmp_path, say=lambda *a: None)


def test_yaml_config_mirrors_the_flags_and_flags_override_it(tiny_dirs, data_dir, tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(textwrap.dedent(f"""
        method: gum
        mu: 0.5
        keep: 0.25
        steps: 12
        lr: 1e-3
        context: 32
        batch_size: 2
        data: {data_dir}
    """))
    out = tmp_path / "from-yaml"
    code = main(["prune", str(tiny_dirs["llama"]), "--config", str(path), "--keep", "0.5", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    hyper = read_metadata(out)["hyperparameters"]
    assert hyper["method"] == "gum" and hyper["mu"] == 0.5 and hyper["lr"] == 1e-3 and hyper["keep"] == 0.5

    path.write_text("metod: gum\n")
    code = main(["prune", str(tiny_dirs["llama"]), "--config", str(path), "--out", str(tmp_path / "x")])
    assert code == 2 and "unknown option(s) metod" in capsys.readouterr().err


def test_the_hooks_drive_a_plain_pytorch_loop():
    """The documented user loop: no Accelerate, no ffnprune trainer."""
    from ffnprune.adapters import adapter_for
    from ffnprune.compaction import compact_mlps
    from ffnprune.criteria import get_method
    from ffnprune.schedules import CubicSchedule
    from ffnprune.training.hooks import FinePruner, PenaltySettings

    model = tiny_model("llama").train()
    adapter = adapter_for(model.config)
    steps = 10
    pruner = FinePruner(model, adapter, get_method("gum"), CubicSchedule(steps, 0.25), PenaltySettings(mu=1.0))
    optimizer = torch.optim.AdamW([{"params": model.parameters()},
                                   {"params": pruner.trainable_scores(), "lr": 1e-2, "weight_decay": 0.0}], lr=1e-3)
    ids = torch.randint(0, 128, (2, 16))
    for _ in range(steps):
        pruner.before_forward()
        loss = model(ids, labels=ids).loss + pruner.penalty()
        loss.backward()
        pruner.after_backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.after_optimizer_step()
    kept = pruner.kept()
    pruner.detach()
    compact_mlps(model, adapter, kept)
    assert sum(adapter.mlp_widths(model)) == 80


def test_the_shipped_config_file_is_valid():
    from pathlib import Path

    from ffnprune.config import read_yaml

    path = Path(__file__).parents[1] / "configs" / "gum-wikitext.yaml"
    config = build_config(PruneConfig, {**read_yaml(path, PruneConfig), "model": "m", "out": "o"})
    assert config.method == "gum" and config.penalty.mu == 1.0 and config.training.lr == 5e-4


def test_gum_with_uniform_widths_exports_a_stock_checkpoint_at_its_real_width(tiny_dirs, data_dir, tmp_path):
    out = prune(config(tiny_dirs["llama"], tmp_path / "gum-uniform", data_dir, method="gum", mu=1.0, keep=0.5,
                       uniform_widths=True), say=lambda *a: None)
    metadata = read_metadata(out)
    assert metadata["mlp_widths"] == [40, 40, 40, 40] and "uniform widths" in metadata["selection"]
    uniform = tmp_path / "stock"
    assert main(["-q", "export", str(out), "--uniform", "--out", str(uniform)]) == 0
    stock = json.loads((uniform / "config.json").read_text())
    assert stock["intermediate_size"] == 40 and stock["model_type"] == "llama"  # the real width, no padding
    with pytest.raises(FfnpruneError, match="--uniform-widths applies to the global methods"):
        prune(config(tiny_dirs["llama"], tmp_path / "x", data_dir, method="movement", uniform_widths=True),
              say=lambda *a: None)


def test_report_to_tensorboard_logs_every_step_beside_the_jsonl_log(tiny_dirs, data_dir, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is in the dev extras")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "logged"
    assert main(["prune", str(tiny_dirs["llama"]), "--method", "gum", "--mu", "1", "--keep", "0.5", "--steps", "4",
                 "--context", "32", "--batch-size", "2", "--report-to", "tensorboard", "--data", str(data_dir),
                 "--out", str(out)]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(out / "runs" / "logged"))
    events.Reload()
    for name in ("loss", "penalty", "keep_actual", "lr"):
        logged = events.Scalars(name)
        assert [e.step for e in logged] == [1, 2, 3, 4]
        assert [e.value for e in logged] == pytest.approx([record[name] for record in log], rel=1e-6)

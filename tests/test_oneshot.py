"""One-shot calibrated pruning: criteria, reconstruction, layer-by-layer calibration, the added output bias through
every loading route, recovery, and the errors raised before any work."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from ffnprune.adapters import adapter_for
from ffnprune.calibration import LayerStatistics, SequentialCalibration, calibration_data
from ffnprune.cli.main import main
from ffnprune.compaction import finish_compaction
from ffnprune.config import CalibrationConfig
from ffnprune.criteria import get_method
from ffnprune.criteria.calibrated import obs_select
from ffnprune.errors import FfnpruneError
from ffnprune.io.pruned_dir import export_uniform, load_pruned, read_metadata
from ffnprune.pruning.masks import NeuronMasks, masks_from_kept
from ffnprune.pruning.oneshot import one_shot_spec, prune_layer, prune_one_shot
from ffnprune.pruning.reconstruction import reconstruct
from ffnprune.pruning.statistics import ActivationStatistics
from helpers import run_without_ffnprune
from tiny_models import tiny_config, tiny_model

CPU = torch.device("cpu")


def _statistics(activations: torch.Tensor) -> LayerStatistics:
    return LayerStatistics(activations.T @ activations, activations.sum(dim=0), activations.shape[0], None)


@pytest.mark.parametrize("mode", ["none", "bias", "lstsq"])
def test_reported_errors_equal_the_output_errors_measured_on_the_activations(mode, monkeypatch):
    """relative_error and relative_error_sliced, computed from G a block of rows at a time, against the outputs."""
    import ffnprune.pruning.reconstruction as reconstruction

    monkeypatch.setattr(reconstruction, "ROWS_AT_ONCE", 3)  # several blocks of [W | b]'s 7 rows
    generator = torch.Generator().manual_seed(1)
    activations = torch.randn(300, 9, dtype=torch.float64, generator=generator) + 0.3
    weight = torch.randn(7, 9, dtype=torch.float64, generator=generator)
    bias = torch.randn(7, dtype=torch.float64, generator=generator)
    kept = torch.tensor([0, 2, 3, 5, 8])
    result = reconstruct(_statistics(activations), weight, bias, kept, mode, damp=1e-3)
    dense = activations @ weight.T + bias
    pruned = activations[:, kept] @ result.weight.T + (result.bias if result.bias is not None else 0.0)
    sliced = activations[:, kept] @ weight[:, kept].T + bias
    scale = dense.square().sum()
    assert result.relative_error == pytest.approx(float((dense - pruned).square().sum() / scale), rel=1e-9)
    assert result.relative_error_sliced == pytest.approx(float((dense - sliced).square().sum() / scale), rel=1e-9)


def _calibration_text(tmp_path, words: int = 6000):
    generator = torch.Generator().manual_seed(0)
    vocabulary = ["the", "model", "prunes", "neurons", "of", "a", "layer", "and", "keeps", "what", "matters", "most"]
    text = " ".join(vocabulary[int(i)] for i in torch.randint(0, len(vocabulary), (words,), generator=generator))
    path = tmp_path / "calibration.txt"
    path.write_text(text)
    return path


def test_lstsq_absorbs_a_neuron_that_is_a_linear_combination_of_kept_ones():
    generator = torch.Generator().manual_seed(0)
    activations = torch.randn(400, 6, dtype=torch.float64, generator=generator)
    activations[:, 3] = 2 * activations[:, 0] - activations[:, 1] + 0.5  # redundant, with an intercept
    weight = torch.randn(5, 6, dtype=torch.float64, generator=generator)
    bias = torch.randn(5, dtype=torch.float64, generator=generator)
    stats = _statistics(activations)
    kept = torch.tensor([0, 1, 2, 4, 5])
    dense_output = activations @ weight.T + bias
    refit = reconstruct(stats, weight, bias, kept, "lstsq", damp=1e-12)
    assert (activations[:, kept] @ refit.weight.T + refit.bias - dense_output).abs().max() < 1e-5
    assert refit.relative_error < 1e-10
    sliced = reconstruct(stats, weight, bias, kept, "none", damp=1e-12)
    assert (activations[:, kept] @ sliced.weight.T + sliced.bias - dense_output).abs().max() > 0.1
    assert sliced.relative_error == pytest.approx(sliced.relative_error_sliced) and sliced.relative_error > 1e-3
    # Neurons 0, 1 and 3 are linearly dependent (with the intercept): OBS removes one of them first, at no cost.
    assert set(range(6)) - set(obs_select(stats, weight, bias, 5, damp=1e-12).tolist()) <= {0, 1, 3}


def test_greedy_obs_removes_the_brute_force_best_single_neuron():
    generator = torch.Generator().manual_seed(1)
    for trial in range(5):
        activations = torch.randn(300, 8, dtype=torch.float64, generator=generator) @ \
            torch.randn(8, 8, dtype=torch.float64, generator=generator)
        weight = torch.randn(6, 8, dtype=torch.float64, generator=generator)
        stats = _statistics(activations)
        damp = 0.01
        gram = stats.augmented()
        hessian = gram.clone()
        hessian.diagonal()[:8] += damp * gram.diagonal()[:8].mean()
        dense = torch.cat([weight, torch.zeros(6, 1, dtype=torch.float64)], dim=1)
        costs = []
        for removed in range(8):  # refit every other column and the bias, by brute force, in float64
            columns = [c for c in range(9) if c != removed]
            refit = torch.zeros_like(dense)
            refit[:, columns] = dense @ hessian[:, columns] @ torch.linalg.inv(hessian[columns][:, columns])
            difference = dense - refit
            costs.append(float(((difference @ hessian) * difference).sum()))
        kept = obs_select(stats, weight, None, 7, damp).tolist()
        best = min(range(8), key=costs.__getitem__)
        assert kept == [c for c in range(8) if c != best], (trial, costs)


def test_criteria_scores_follow_their_formulas():
    generator = torch.Generator().manual_seed(2)
    activations = torch.randn(64, 4, dtype=torch.float64, generator=generator) * torch.tensor([1.0, 2, 3, 4])
    weight = torch.randn(3, 4, dtype=torch.float64, generator=generator)
    stats = _statistics(activations)
    from ffnprune.criteria import CALIBRATED

    wanda = CALIBRATED["wanda-sp"].scores(stats, weight, None, 0.01)
    assert torch.allclose(wanda, activations.norm(dim=0) * weight.abs().mean(dim=0))
    flap = CALIBRATED["flap"].scores(stats, weight, None, 0.01)
    assert torch.allclose(flap, activations.var(dim=0, unbiased=False) * weight.square().sum(dim=0))


def _batches(tokenizer, tmp_path, tokens=1024, context=32):
    return calibration_data(tokenizer, tokens=tokens, context=context, seed=0, file=_calibration_text(tmp_path))


def _sliding_and_full_attention(vocab_size: int):
    """A Qwen2 whose layers 0-1 attend to everything and layers 2-3 to the last 8 tokens (two masks)."""
    config = tiny_config("qwen2", vocab_size=vocab_size)
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, 8, 2
    config.layer_types = ["full_attention"] * 2 + ["sliding_attention"] * 2
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("kind", ["llama", "sliding and full attention", "gemma3_text", "gemma2", "phi3"])
def test_layer_by_layer_statistics_equal_a_full_forward(gpt2_tokenizer, tmp_path, kind):
    """Every layer is called with the arguments the model gives it (its own kind's mask included, and Gemma 3's
    local rotary embeddings), so its statistics are those of a whole-model forward; the calibration sequences (32)
    exceed the sliding window (8)."""
    model = _sliding_and_full_attention(len(gpt2_tokenizer)) if kind == "sliding and full attention" else \
        tiny_model(kind, vocab_size=len(gpt2_tokenizer))
    adapter = adapter_for(model.config)
    batches = _batches(gpt2_tokenizer, tmp_path).batches(8)
    seen = []
    SequentialCalibration(model, adapter, batches, CPU).run(lambda i, layer, stats: seen.append(stats) or False)
    whole = ActivationStatistics(model, adapter, beta=None, training_only=False, dtype=torch.float64)
    with torch.no_grad():
        for batch in batches:
            whole.token_mask = batch["attention_mask"]
            model(**batch)
    whole.detach()
    for index, stats in enumerate(seen):
        assert stats.count == whole.counts[index]
        assert torch.allclose(stats.gram, whole.gram[index], rtol=1e-5, atol=1e-7)
        assert torch.allclose(stats.sums, whole.sums[index], rtol=1e-5, atol=1e-7)


def test_sequential_pruning_equals_pruning_with_full_forwards(gpt2_tokenizer, tmp_path):
    """Layer l is calibrated on the outputs of layers 0..l-1 as already pruned: the same as running the whole
    (partly pruned) model for every layer."""
    model = tiny_model("llama", vocab_size=len(gpt2_tokenizer))
    reference = copy.deepcopy(model)
    adapter = adapter_for(model.config)
    calibration = _batches(gpt2_tokenizer, tmp_path)
    method = get_method("obs")
    settings = CalibrationConfig(calibration_batch_size=8, calibration_target="own")
    result = prune_one_shot(model, adapter, method, 0.5, settings, calibration, CPU)
    spec = one_shot_spec(reference, adapter, "lstsq")
    kept = []
    for index, layer in enumerate(adapter.decoder_layers(reference)):
        capture = ActivationStatistics(reference, adapter, beta=None, training_only=False, dtype=torch.float64)
        with torch.no_grad():
            for batch in calibration.batches(8):
                capture.token_mask = batch["attention_mask"]
                reference(**batch)
        capture.detach()
        stats = LayerStatistics(capture.gram[index], capture.sums[index], capture.counts[index], None)
        kept.append(prune_layer(layer, adapter, spec, stats, method, 40, "lstsq", 0.01)["indices"])
    finish_compaction(reference, adapter, spec)
    assert [k.tolist() for k in result.kept] == kept
    ids = calibration.examples.input_ids[:2]
    with torch.no_grad():
        assert (model(ids).logits - reference(ids).logits).abs().max() < 1e-5


@pytest.fixture(scope="module")
def obs_pruned(tiny_model_dir, tmp_path_factory):
    """A tiny llama read from disk, pruned by the CLI with obs + lstsq (which adds a down_proj bias)."""
    root = tmp_path_factory.mktemp("obs")
    dense = tiny_model_dir("llama")
    out = root / "pruned"
    code = main(["prune", str(dense), "--method", "obs", "--keep", "0.5", "--out", str(out),
                 "--calibration-data", str(_calibration_text(root)), "--calibration-tokens", "2048",
                 "--calibration-context", "32"])
    assert code == 0
    return dense, out


def test_added_output_bias_survives_every_loading_route(obs_pruned, tmp_path):
    import transformers

    dense_dir, out = obs_pruned
    metadata = read_metadata(out)
    assert metadata["one_shot"]["reconstruct"] == "lstsq" and metadata["mlp_widths"] == [40] * 4
    assert metadata["one_shot"]["calibration"]["file"].endswith("calibration.txt")
    saved = load_file(str(out / "model.safetensors"))
    biases = [saved[f"model.layers.{i}.mlp.down_proj.bias"] for i in range(4)]
    assert all(b.abs().max() > 1e-4 for b in biases), "the refit bias is zero: the test would prove nothing"

    # An independent reference: the dense model from disk, masked to the kept neurons, with the refit columns put
    # in place and the refit bias added by a hook.
    reference = transformers.AutoModelForCausalLM.from_pretrained(dense_dir).eval()
    adapter = adapter_for(reference.config)
    kept = [torch.tensor(k) for k in metadata["kept_neurons"]]
    with torch.no_grad():
        for index, layer in enumerate(adapter.decoder_layers(reference)):
            layer.mlp.down_proj.weight[:, kept[index]] = saved[f"model.layers.{index}.mlp.down_proj.weight"]
            layer.mlp.down_proj.register_forward_hook(lambda m, a, output, b=biases[index]: output + b)
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), NeuronMasks(reference, adapter, masks_from_kept(adapter.mlp_widths(reference), kept)):
        expected = reference(ids).logits
    with torch.no_grad():
        assert (load_pruned(out)(ids).logits - expected).abs().max() < 1e-5
    uniform = export_uniform(out, tmp_path / "uniform")
    assert json.loads((uniform / "config.json").read_text())["mlp_bias"] is True
    save_file({"ids": ids, "expected": expected.contiguous()}, str(tmp_path / "expected.safetensors"))
    differences = run_without_ffnprune(f"""
        import json, torch, transformers
        from safetensors.torch import load_file
        expected = load_file("expected.safetensors")
        remote = transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        plain = transformers.AutoModelForCausalLM.from_pretrained({str(uniform)!r}).eval()
        with torch.no_grad():
            print(json.dumps({{name: (m(expected["ids"]).logits - expected["expected"]).abs().max().item()
                               for name, m in (("remote", remote), ("plain", plain))}}))
    """, tmp_path)
    assert max(differences.values()) < 1e-5, differences


def test_uniform_export_refuses_a_bias_the_stock_architecture_cannot_hold(gpt2_tokenizer, tmp_path):
    model = tiny_model("qwen2", vocab_size=len(gpt2_tokenizer))
    adapter = adapter_for(model.config)
    prune_one_shot(model, adapter, get_method("flap"), 0.5, CalibrationConfig(), _batches(gpt2_tokenizer, tmp_path),
                   CPU)
    from ffnprune.io.pruned_dir import save_pruned

    directory = save_pruned(model, None, tmp_path / "qwen", {"method": "flap"})
    with pytest.raises(FfnpruneError, match="no MLP bias to hold it"):
        export_uniform(directory, tmp_path / "uniform")
    assert not (tmp_path / "uniform").exists()


def test_widths_layer_keep_global_and_round_to(gpt2_tokenizer, tmp_path):
    calibration = _batches(gpt2_tokenizer, tmp_path)
    for settings, check in (
        (CalibrationConfig(layer_keep="0:1,-1:1"), lambda w: w == [80, 40, 40, 80]),
        (CalibrationConfig(selection="global"), lambda w: sum(w) == 160 and len(set(w)) > 1),
        (CalibrationConfig(layer_keep="1:0.25"), lambda w: w == [40, 20, 40, 40]),
    ):
        model = tiny_model("llama", vocab_size=len(gpt2_tokenizer))
        adapter = adapter_for(model.config)
        prune_one_shot(model, adapter, get_method("wanda-sp"), 0.5, settings, calibration, CPU)
        assert check(adapter.mlp_widths(model)), (settings, adapter.mlp_widths(model))
    model = tiny_model("llama", vocab_size=len(gpt2_tokenizer))
    prune_one_shot(model, adapter, get_method("activation"), 0.3, CalibrationConfig(), calibration, CPU, round_to=8)
    assert adapter.mlp_widths(model) == [24] * 4


def test_non_finite_statistics_name_the_layer(gpt2_tokenizer, tmp_path):
    model = tiny_model("llama", vocab_size=len(gpt2_tokenizer))
    adapter = adapter_for(model.config)
    with torch.no_grad():
        adapter.decoder_layers(model)[2].mlp.up_proj.weight[0, 0] = float("inf")
    with pytest.raises(FfnpruneError, match="layer 2: the calibration statistics"):
        prune_one_shot(model, adapter, get_method("obs"), 0.5, CalibrationConfig(),
                       _batches(gpt2_tokenizer, tmp_path), CPU)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("case", ["empty file", "missing file", "no task data", "layer keep", "gradual reconstruct",
                                  "init scores"])
def test_bad_calibration_input_stops_before_work(capsys, tiny_model_dir, tmp_path, case):
    dense = tiny_model_dir("llama")
    out = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    argv, message = {
        "empty file": (["--method", "obs", "--calibration-data", empty], "is empty"),
        "missing file": (["--method", "flap", "--calibration-data", tmp_path / "nope.jsonl"], "does not exist"),
        "no task data": (["--method", "obs", "--data", tmp_path / "nowhere"], "missing data file"),
        "layer keep": (["--method", "obs", "--layer-keep", "0-1"], "LAYER:KEEP"),
        "gradual reconstruct": (["--method", "movement", "--steps", "10", "--reconstruct", "lstsq"],
                                "applies to one-shot pruning"),
        "init scores": (["--method", "random", "--steps", "10", "--init-scores", "obs"], "learns none"),
    }[case]
    code, _, err = _run(capsys, "prune", dense, "--out", out, *argv)
    assert code == 2 and "ffnprune: error:" in err and message in err, err
    assert not out.exists() and not (tmp_path / "out.work").exists()


def test_few_calibration_tokens_warn_about_the_damping(capsys, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "prune", tiny_model_dir("llama"), "--method", "obs", "--out", out,
                        "--calibration-data", _calibration_text(tmp_path), "--calibration-tokens", "40",
                        "--calibration-context", "32")
    assert code == 0, err
    assert "calibration tokens for layers of up to 80 neurons" in err and "--damp 0.01" in err


def test_recovery_after_one_shot_and_calibrated_initial_scores(capsys, tiny_model_dir, tmp_path):
    dense = tiny_model_dir("llama")
    text = _calibration_text(tmp_path)
    out = tmp_path / "recovered"
    code, _, err = _run(capsys, "prune", dense, "--method", "flap", "--keep", "0.5", "--steps", "3", "--distill",
                        "--out", out, "--context", "32", "--batch-size", "2", "--calibration-data", text,
                        "--calibration-context", "32", "--calibration-tokens", "1024", "--checkpoint-every", "1")
    assert code == 0, err
    metadata = read_metadata(out)
    assert metadata["training"]["kind"] == "recovery after one-shot pruning" and metadata["training"]["distilled"]
    assert metadata["mlp_widths"] == [40] * 4 and metadata["one_shot"]["criterion"] == "flap"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3] and all(r["keep_actual"] == 1.0 for r in log)
    assert load_pruned(out).model.layers[0].mlp.down_proj.bias is not None

    out = tmp_path / "gum"
    code, _, err = _run(capsys, "prune", dense, "--method", "gum", "--mu", "1", "--keep", "0.5", "--steps", "10",
                        "--init-scores", "obs", "--out", out, "--context", "32", "--batch-size", "2",
                        "--calibration-data", text, "--calibration-context", "32", "--calibration-tokens", "1024")
    assert code == 0, err
    assert read_metadata(out)["training"]["init_scores"] == "obs"


def test_dense_target_drift_is_the_gap_to_the_dense_models_layer_output(gpt2_tokenizer, tmp_path):
    """With the dense model carried along, layer 1's statistics hold [X, 1]^T (O_dense - O): X its activations and O
    its output in the model whose layer 0 is pruned, O_dense its output in the dense model."""
    model = tiny_model("llama", vocab_size=len(gpt2_tokenizer))
    dense = copy.deepcopy(model)
    adapter = adapter_for(model.config)
    batches = _batches(gpt2_tokenizer, tmp_path, tokens=256).batches(8)
    assert len(batches) == 1
    spec = one_shot_spec(model, adapter, "lstsq")
    seen = {}

    def visit(index, layer, stats):
        seen[index] = stats
        if index == 0:
            prune_layer(layer, adapter, spec, stats, get_method("flap"), 20, "lstsq", 0.01)
        return index == 0

    SequentialCalibration(model, adapter, batches, CPU, dense_target=True).run(visit)
    assert seen[0].drift.abs().max() == 0  # layer 0 sees the same inputs in both models

    def layer_io(network, index):
        captured = {}
        layer = adapter.decoder_layers(network)[index]
        hooks = [adapter.output_projection(layer).register_forward_pre_hook(
                     lambda m, args: captured.__setitem__("x", args[0])),
                 layer.register_forward_hook(lambda m, args, out: captured.__setitem__(
                     "out", out[0] if isinstance(out, tuple) else out))]
        with torch.no_grad():
            network(**batches[0])
        for hook in hooks:
            hook.remove()
        return captured

    # `model` now has layer 0 pruned and the others dense: run it whole and read layer 1's activations and output
    pruned, reference = layer_io(model, 1), layer_io(dense, 1)
    activations = torch.cat([pruned["x"].flatten(0, 1), torch.ones(pruned["x"].shape[0] * pruned["x"].shape[1], 1)],
                            dim=1).double()
    expected = activations.T @ (reference["out"] - pruned["out"]).flatten(0, 1).double()
    assert expected.abs().max() > 1e-3, "layer 0's pruning changed nothing: the test would prove nothing"
    assert torch.allclose(seen[1].drift, expected, rtol=1e-4, atol=1e-6)


def _ridge(activations: torch.Tensor, target: torch.Tensor, kept: list[int], damp: float) -> torch.Tensor:
    """The damped least-squares fit of `target` on [X_K, 1], solved directly: the neurons' diagonal gets damp x the
    mean diagonal of X^T X (the intercept none). Returns [W'_K | b'] as [hidden, kept + 1]."""
    design = torch.cat([activations[:, kept], torch.ones(activations.shape[0], 1, dtype=torch.float64)], dim=1)
    ridge = torch.zeros(len(kept) + 1, dtype=torch.float64)
    ridge[:-1] = damp * (activations.square().sum(dim=0)).mean()
    return torch.linalg.solve(design.T @ design + torch.diag(ridge), design.T @ target).T


def _correlated(seed: int, tokens: int = 300, width: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, dtype=torch.float64, generator=generator)
    return torch.randn(tokens, width, dtype=torch.float64, generator=generator) @ mixing + 0.3


def test_lstsq_refit_and_its_dense_target_equal_a_direct_ridge_solve():
    """The refit is the damped least squares of the layer's output (or, with a drift, of the dense model's output)
    on the kept activations and an intercept; a large damping makes the damping's share visible."""
    activations = _correlated(3)
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(5, 8, dtype=torch.float64, generator=generator)
    bias = torch.randn(5, dtype=torch.float64, generator=generator)
    kept, damp = [0, 2, 3, 5, 7], 0.5
    own = activations @ weight.T + bias
    refit = reconstruct(_statistics(activations), weight, bias, torch.tensor(kept), "lstsq", damp)
    assert torch.allclose(torch.cat([refit.weight, refit.bias[:, None]], dim=1), _ridge(activations, own, kept, damp),
                          atol=1e-8)
    assert not torch.allclose(_ridge(activations, own, kept, damp), _ridge(activations, own, kept, 1e-9), atol=1e-3)
    dense_output = own + torch.randn(own.shape, dtype=torch.float64, generator=generator)  # what the dense model gave
    stats = _statistics(activations)
    augmented = torch.cat([activations, torch.ones(activations.shape[0], 1, dtype=torch.float64)], dim=1)
    stats.drift = augmented.T @ (dense_output - own)
    refit = reconstruct(stats, weight, bias, torch.tensor(kept), "lstsq", damp)
    assert torch.allclose(torch.cat([refit.weight, refit.bias[:, None]], dim=1),
                          _ridge(activations, dense_output, kept, damp), atol=1e-8)


def test_flap_bias_compensation_keeps_the_mean_output():
    """FLAP's bias: the pruned neurons' mean contribution moves into the bias, so the mean output is unchanged."""
    activations = _correlated(5)
    generator = torch.Generator().manual_seed(6)
    weight = torch.randn(5, 8, dtype=torch.float64, generator=generator)
    bias = torch.randn(5, dtype=torch.float64, generator=generator)
    kept = torch.tensor([1, 4, 6])
    result = reconstruct(_statistics(activations), weight, bias, kept, "bias", 0.01)
    compensated = activations[:, kept] @ result.weight.T + result.bias
    assert torch.allclose(compensated.mean(dim=0), (activations @ weight.T + bias).mean(dim=0), atol=1e-9)
    assert torch.equal(result.weight, weight[:, kept])


def _greedy_by_brute_force(activations, weight, bias, count: int, damp: float) -> list[int]:
    """Remove, one at a time, the neuron whose removal leaves the smallest cost (d - r) H (d - r)^T, r the best
    [W' | b'] on the other survivors and the bias, H the damped Gram of [X, 1], each solved from scratch: the choice
    greedy OBS makes with its rank-one updates."""
    width = activations.shape[1]
    augmented = torch.cat([activations, torch.ones(activations.shape[0], 1, dtype=torch.float64)], dim=1)
    hessian = augmented.T @ augmented
    hessian.diagonal()[:width] += damp * hessian.diagonal()[:width].mean()
    dense = torch.cat([weight, bias[:, None]], dim=1)
    alive = list(range(width))

    def cost(removed):
        columns = [c for c in alive if c != removed] + [width]
        refit = torch.zeros_like(dense)
        refit[:, columns] = dense @ hessian[:, columns] @ torch.linalg.inv(hessian[columns][:, columns])
        return float((((dense - refit) @ hessian) * (dense - refit)).sum())

    while len(alive) > count:
        alive.remove(min(alive, key=cost))
    return alive


@pytest.mark.parametrize("damp", [0.01, 0.3])
def test_greedy_obs_removes_what_a_brute_force_greedy_removes(damp):
    """Half of the neurons removed one by one: every step after the first is priced on the updated weights and
    inverse Hessian, and with the damping of the refit (one neuron nearly duplicates another)."""
    for trial in range(4):
        activations = _correlated(10 + trial)
        activations[:, 5] = activations[:, 2] + 0.05 * activations[:, 6]
        generator = torch.Generator().manual_seed(20 + trial)
        weight = torch.randn(6, 8, dtype=torch.float64, generator=generator)
        bias = torch.randn(6, dtype=torch.float64, generator=generator)
        kept = obs_select(_statistics(activations), weight, bias, 4, damp).tolist()
        assert kept == _greedy_by_brute_force(activations, weight, bias, 4, damp), (trial, damp)


def test_activation_and_obs_scores_follow_their_formulas():
    activations = _correlated(7, tokens=64, width=4)
    generator = torch.Generator().manual_seed(8)
    weight = torch.randn(3, 4, dtype=torch.float64, generator=generator)
    stats = _statistics(activations)
    sequences = activations.reshape(8, 8, 4)  # 8 sequences of 8 tokens
    stats.sequence_means = sequences.abs().mean(dim=1).square().sum(dim=0)
    from ffnprune.criteria import CALIBRATED

    activation = CALIBRATED["activation"].scores(stats, weight, None, 0.01)
    assert torch.allclose(activation, sequences.abs().mean(dim=1).square().sum(dim=0).sqrt())
    damp = 0.5
    augmented = torch.cat([activations, torch.ones(64, 1, dtype=torch.float64)], dim=1)
    hessian = augmented.T @ augmented
    hessian.diagonal()[:4] += damp * activations.square().sum(dim=0).mean()
    expected = weight.square().sum(dim=0) / torch.linalg.inv(hessian).diagonal()[:4]
    assert torch.allclose(CALIBRATED["obs"].scores(stats, weight, None, damp), expected)


def test_initial_scores_decide_what_a_learned_method_keeps(capsys, tiny_model_dir, tmp_path):
    """--init-scores activation with learning rates too small to move anything: movement keeps, in every layer,
    the neurons the one-shot activation criterion keeps on the same calibration text."""
    dense, text = tiny_model_dir("llama"), _calibration_text(tmp_path)
    calibration = ("--calibration-data", text, "--calibration-context", "32", "--calibration-tokens", "1024")
    code, _, err = _run(capsys, "prune", dense, "--method", "movement", "--init-scores", "activation", "--keep", "0.5",
                        "--steps", "3", "--lr", "1e-12", "--score-lr", "1e-12", "--context", "32", "--batch-size",
                        "2", "--out", tmp_path / "learned", *calibration)
    assert code == 0, err
    code, _, err = _run(capsys, "prune", dense, "--method", "activation", "--reconstruct", "none", "--keep", "0.5",
                        "--calibration-inputs", "dense", "--out", tmp_path / "one-shot", *calibration)
    assert code == 0, err
    assert read_metadata(tmp_path / "learned")["kept_neurons"] == read_metadata(tmp_path / "one-shot")["kept_neurons"]


def test_recovery_distils_from_the_dense_model(capsys, tiny_model_dir, tmp_path):
    """The teacher is the model before pruning: at the first step the student (pruned to half) differs from it."""
    out = tmp_path / "recovered"
    code, _, err = _run(capsys, "prune", tiny_model_dir("llama"), "--method", "obs", "--keep", "0.5", "--steps", "2",
                        "--distill", "--out", out, "--context", "32", "--batch-size", "2", "--calibration-data",
                        _calibration_text(tmp_path), "--calibration-context", "32", "--calibration-tokens", "1024")
    assert code == 0, err
    first = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    # A tiny random model's logits are nearly flat, so the KL is small (3.6e-5 here); from a teacher equal to the
    # student it would be exactly 0
    assert first["distill_loss"] > 1e-7, first["distill_loss"]

"""For every adapter: masked model == compacted model == reloaded model (both loading routes) == uniform export."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from ffnprune.adapters import SUPPORTED_MODEL_TYPES, adapter_for
from ffnprune.io.pruned_dir import export_uniform, load_pruned, save_pruned
from helpers import masked_and_compacted, run_without_ffnprune, uneven_kept
from tiny_models import VOCAB, tiny_model

TOLERANCE = 1e-5


def _inputs(seed=0):
    return torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pruned_models(tmp_path_factory):
    """model type -> (directory, uniform directory, masked logits, compacted logits, dense logits)."""
    root = tmp_path_factory.mktemp("pruned")
    ids = _inputs()
    built = {}
    for model_type in SUPPORTED_MODEL_TYPES:
        model = tiny_model(model_type)
        adapter = adapter_for(model.config)
        kept = uneven_kept(adapter.mlp_widths(model))
        dense, masked, compacted = masked_and_compacted(model, adapter, kept, ids)
        directory = save_pruned(model, None, root / f"pruned_{model_type}", {"method": "test"})
        uniform = export_uniform(directory, root / f"uniform_{model_type}")
        built[model_type] = (directory, uniform, masked, compacted, dense, [len(k) for k in kept])
    return ids, built


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_masked_equals_compacted_equals_reloaded(pruned_models, model_type):
    ids, built = pruned_models
    directory, uniform, masked, compacted, dense, widths = built[model_type]
    assert (dense - masked).abs().max() > 1e-3, "the masks changed nothing: the test would prove nothing"
    assert (masked - compacted).abs().max() <= TOLERANCE
    reloaded = load_pruned(directory)
    assert adapter_for(reloaded.config).mlp_widths(reloaded) == widths
    with torch.no_grad():
        assert (reloaded(ids).logits - compacted).abs().max() <= TOLERANCE


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_layer_with_no_neuron_adds_only_output_bias(pruned_models, model_type):
    directory = pruned_models[1][model_type][0]
    model = load_pruned(directory)
    adapter = adapter_for(model.config)
    empty_layer = adapter.decoder_layers(model)[0]  # uneven_kept keeps no neuron in layer 0
    output = adapter.output_projection(empty_layer)
    seen = []
    output.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        model(_inputs(1))
    expected = torch.zeros_like(seen[0]) if output.bias is None else output.bias.expand_as(seen[0])
    assert torch.equal(seen[0], expected)


def test_both_loading_routes_without_ffnprune_installed(pruned_models, tmp_path):
    """trust_remote_code loads the pruned models and plain from_pretrained the uniform ones, ffnprune unimportable."""
    ids, built = pruned_models
    tensors = {"ids": ids}
    for model_type, (_, _, _, compacted, _, _) in built.items():
        tensors[model_type] = compacted.contiguous()
    save_file(tensors, str(tmp_path / "expected.safetensors"))
    dirs = {t: (str(b[0]), str(b[1])) for t, b in built.items()}
    differences = run_without_ffnprune(f"""
        import json, torch, transformers
        from safetensors.torch import load_file
        expected = load_file("expected.safetensors")
        out = {{}}
        for model_type, (pruned, uniform) in {dirs!r}.items():
            remote = transformers.AutoModelForCausalLM.from_pretrained(pruned, trust_remote_code=True).eval()
            plain = transformers.AutoModelForCausalLM.from_pretrained(uniform).eval()
            assert plain.__class__.__module__.startswith("transformers.models."), type(plain)
            with torch.no_grad():
                out[model_type] = [
                    (remote(expected["ids"]).logits - expected[model_type]).abs().max().item(),
                    (plain(expected["ids"]).logits - expected[model_type]).abs().max().item(),
                ]
        print(json.dumps(out))
    """, tmp_path)
    assert set(differences) == set(SUPPORTED_MODEL_TYPES)
    for model_type, (remote, uniform) in differences.items():
        assert remote <= TOLERANCE, model_type
        assert uniform <= TOLERANCE, model_type


def test_uniform_export_pads_to_widest_layer(pruned_models):
    from ffnprune.io.pruned_dir import read_metadata

    directory, uniform, *_, widths = pruned_models[1]["llama"]
    metadata = read_metadata(uniform)
    assert metadata["uniform_export"]["width"] == max(widths)
    assert metadata["uniform_export"]["kept_widths"] == widths
    assert not (uniform / "modeling_ffnprune.py").exists()

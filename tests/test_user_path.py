"""The path users take: a dense checkpoint on disk, `ffnprune prune` through the CLI, the result reloaded where
ffnprune cannot be imported (trust_remote_code, and the uniform export with plain from_pretrained), compared with
the dense checkpoint masked independently (by hand-written module names, not ffnprune's adapters)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from ffnprune.adapters import SUPPORTED_MODEL_TYPES
from ffnprune.cli.main import main
from helpers import run_without_ffnprune

TOLERANCE = 1e-5

# Written independently of ffnprune.adapters: layers, input projections, output projection, Conv1D layout, and
# whether the one input projection stacks gate and up rows (Phi-3).
MLP_NAMES = {
    "gpt2": ("transformer.h", ["mlp.c_fc"], "mlp.c_proj", True, False),
    "gpt_neo": ("transformer.h", ["mlp.c_fc"], "mlp.c_proj", False, False),
    "gpt_neox": ("gpt_neox.layers", ["mlp.dense_h_to_4h"], "mlp.dense_4h_to_h", False, False),
    "opt": ("model.decoder.layers", ["fc1"], "fc2", False, False),
    **{t: ("model.layers", ["mlp.gate_proj", "mlp.up_proj"], "mlp.down_proj", False, False)
       for t in ("llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text")},
    "phi3": ("model.layers", ["mlp.gate_up_proj"], "mlp.down_proj", False, True),
}

REFERENCE = """
    import json, torch, transformers
    from safetensors.torch import load_file
    ids = load_file("ids.safetensors")["ids"]
    layers_path, inputs, output, conv1d, fused = {names!r}
    kept = json.load(open({pruned!r} + "/pruning.json"))["kept_neurons"]
    kept = json.loads(kept) if isinstance(kept, str) else kept
    dense = transformers.AutoModelForCausalLM.from_pretrained({dense!r}).eval()
    with torch.no_grad():
        for layer, keep in zip(dense.get_submodule(layers_path), kept):
            width = layer.get_submodule(output).weight.shape[0 if conv1d else 1]
            drop = torch.ones(width, dtype=torch.bool)
            drop[keep] = False
            rows = torch.cat([drop, drop]) if fused else drop
            for name in inputs:
                projection = layer.get_submodule(name)
                if conv1d:
                    projection.weight[:, rows] = 0
                else:
                    projection.weight[rows, :] = 0
                if projection.bias is not None:
                    projection.bias[rows] = 0
            projection = layer.get_submodule(output)
            if conv1d:
                projection.weight[drop, :] = 0
            else:
                projection.weight[:, drop] = 0
        reference = dense(ids).logits
        remote = transformers.AutoModelForCausalLM.from_pretrained({pruned!r}, trust_remote_code=True).eval()
        plain = transformers.AutoModelForCausalLM.from_pretrained({uniform!r}).eval()
        assert type(plain).__module__.startswith("transformers.models."), type(plain)
        # Without remote code the pruned directory is refused before any weight is read (no stock class claims its
        # model_type), so transformers' ignore_mismatched_sizes=True cannot load random MLPs; its tokenizer loads.
        try:
            transformers.AutoModelForCausalLM.from_pretrained({pruned!r}, ignore_mismatched_sizes=True)
            refused = ""
        except ValueError as error:
            refused = str(error)
        assert "trust_remote_code=True" in refused, refused
        assert transformers.AutoTokenizer.from_pretrained({pruned!r}, trust_remote_code=True)("a b c")["input_ids"]
        assert transformers.AutoTokenizer.from_pretrained({pruned!r})("a b c")["input_ids"]  # asks, falls back
        print(json.dumps({{"remote": (remote(ids).logits - reference).abs().max().item(),
                          "uniform": (plain(ids).logits - reference).abs().max().item(),
                          "masked_changed": (dense.__class__.from_pretrained({dense!r})(ids).logits
                                             - reference).abs().max().item()}}))
"""


@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_checkpoint_on_disk_pruned_through_the_cli_reloads_without_ffnprune(tiny_model_dir, tmp_path, model_type):
    dense = tiny_model_dir(model_type)
    pruned, uniform = tmp_path / "pruned", tmp_path / "uniform"
    assert main(["prune", str(dense), "--method", "magnitude", "--keep", "0.5", "--out", str(pruned)]) == 0
    assert main(["export", str(pruned), "--uniform", "--out", str(uniform)]) == 0
    save_file({"ids": torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))},
              str(tmp_path / "ids.safetensors"))
    script = REFERENCE.format(names=MLP_NAMES[model_type], dense=str(dense), pruned=str(pruned), uniform=str(uniform))
    differences = run_without_ffnprune(script, tmp_path)
    assert differences["masked_changed"] > 1e-3, "masking changed nothing: the comparison would prove nothing"
    assert differences["remote"] <= TOLERANCE, differences
    assert differences["uniform"] <= TOLERANCE, differences


def test_a_checkpoint_with_a_missing_tensor_is_refused(tiny_model_dir, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    source = tiny_model_dir("llama")
    for path in source.iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    tensors = load_file(str(source / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(damaged / "model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    assert main(["prune", str(damaged), "--method", "magnitude", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "missing tensors model.layers.1.mlp.up_proj.weight" in error and "ffnprune: error:" in error
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_a_pruned_checkpoint_with_a_missing_tensor_is_refused(tiny_model_dir, tmp_path, capsys):
    pruned = tmp_path / "pruned"
    assert main(["prune", str(tiny_model_dir("gpt_neox")), "--method", "magnitude", "--out", str(pruned)]) == 0
    tensors = load_file(str(pruned / "model.safetensors"))
    del tensors["lm_head.weight"]
    save_file(tensors, str(pruned / "model.safetensors"), metadata={"format": "pt"})
    assert main(["evaluate", str(pruned), "--max-tokens", "64", "--context", "32"]) == 2
    assert "missing tensors lm_head.weight" in capsys.readouterr().err


SAVE_AGAIN = """
    import json, torch, transformers
    from safetensors.torch import load_file
    ids = load_file("ids.safetensors")["ids"]
    model = transformers.AutoModelForCausalLM.from_pretrained({pruned!r}, trust_remote_code=True).eval()
    with torch.no_grad():
        reference = model(ids).logits
    model.save_pretrained("resaved")
    again = transformers.AutoModelForCausalLM.from_pretrained("resaved", trust_remote_code=True).eval()
    with torch.no_grad():
        resaved = (again(ids).logits - reference).abs().max().item()
    from peft import LoraConfig, get_peft_model
    lora = get_peft_model(again, LoraConfig(r=2, target_modules={targets!r}, init_lora_weights=False))
    with torch.no_grad():
        adapted = lora(ids).logits
    merged = lora.merge_and_unload()
    merged.save_pretrained("merged")
    merged = transformers.AutoModelForCausalLM.from_pretrained("merged", trust_remote_code=True).eval()
    with torch.no_grad():
        print(json.dumps({{"resaved": resaved,
                          "merged": (merged(ids).logits - adapted).abs().max().item(),
                          "lora_changed": (adapted - reference).abs().max().item()}}))
"""


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_save_pretrained_round_trips_and_a_peft_merge_reloads(tiny_model_dir, tmp_path, model_type):
    """What Trainer, a PEFT merge and push_to_hub do: save the loaded pruned model again; it must load again."""
    from ffnprune.io.pruned_dir import load_pruned

    pruned = tmp_path / "pruned"
    assert main(["prune", str(tiny_model_dir(model_type)), "--method", "magnitude", "--keep", "0.3",
                 "--out", str(pruned)]) == 0
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    save_file({"ids": ids}, str(tmp_path / "ids.safetensors"))
    # The ffnprune route: load_pruned, save_pretrained, reload by both routes.
    model = load_pruned(pruned)
    model.save_pretrained(tmp_path / "via_ffnprune")
    with torch.no_grad():
        reference = model(ids).logits
        assert (load_pruned(tmp_path / "via_ffnprune")(ids).logits - reference).abs().max() <= TOLERANCE
    saved = json.loads((tmp_path / "via_ffnprune" / "config.json").read_text())
    assert saved["auto_map"] == {"AutoConfig": "modeling_ffnprune.FfnprunedConfig",
                                 "AutoModelForCausalLM": "modeling_ffnprune.FfnprunedForCausalLM"}
    assert saved["model_type"] == "ffnprune" and saved["ffnprune"]["model_type"] == model_type
    targets = ["c_fc", "c_proj"] if model_type == "gpt2" else ["up_proj", "down_proj"]
    for source in (pruned, tmp_path / "via_ffnprune"):
        differences = run_without_ffnprune(SAVE_AGAIN.format(pruned=str(source), targets=targets), tmp_path)
        assert differences["lora_changed"] > 1e-4, "the LoRA adapter changed nothing"
        assert differences["resaved"] <= TOLERANCE and differences["merged"] <= 1e-4, differences

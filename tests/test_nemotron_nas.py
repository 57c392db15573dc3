"""`ffnprune export --format nemotron-nas`: a checkpoint pruned through the CLI, exported through the CLI, read as the
serving runtimes read it, with their width formula written out here independently of ffnprune, and its config class
loaded where ffnprune cannot be imported. (mlx-lm running it: tests/test_mlx.py, `make test-mlx`.)"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from ffnprune.cli.main import main
from helpers import run_without_ffnprune

HIDDEN, WIDTH = 64, 768  # 768 = 3 x 256: widths rounded to 256 are 0, 256, 512 or 768


def vllm_width(ffn_mult: float, hidden: int) -> int:
    """vLLM's and mlx-lm's _ffn_mult_to_intermediate_size, as they write it."""
    width = int(2 * ffn_mult * hidden / 3)
    return width if width % 256 == 0 else width + 256 - width % 256


def save_wide_llama(directory, tokenizer):
    """A small LLaMA whose MLPs are wide enough for widths in multiples of 256, saved with its tokenizer."""
    config = transformers.LlamaConfig(hidden_size=HIDDEN, intermediate_size=WIDTH, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer),
                                      max_position_embeddings=64, rope_theta=50000.0, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1 + 0.1 * torch.randn_like(parameter))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def dense_dir(tmp_path_factory, gpt2_tokenizer):
    return save_wide_llama(tmp_path_factory.mktemp("nas") / "dense", gpt2_tokenizer)


def prune_and_export(dense, root, data_dir, *options):
    pruned, export = root / "pruned", root / "nas"
    assert main(["prune", str(dense), "--keep", "0.5", "--round-to", "256", "--out", str(pruned), *options]) == 0
    assert main(["export", str(pruned), "--format", "nemotron-nas", "--out", str(export)]) == 0
    return pruned, export


@pytest.fixture(scope="module")
def exported(dense_dir, data_dir, tmp_path_factory):
    """Per-layer widths with one layer emptied and the reconstruction's output bias (obs + lstsq)."""
    return prune_and_export(dense_dir, tmp_path_factory.mktemp("obs"), data_dir, "--method", "obs",
                            "--layer-keep", "0:0,1:1", "--data", str(data_dir), "--calibration-tokens", "256",
                            "--calibration-context", "32")


def test_the_runtimes_formula_gives_back_every_width_and_weights_keep_their_values(exported):
    pruned, export = exported
    config = json.loads((export / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"] and config["model_type"] == "nemotron-nas"
    assert config["mlp_bias"] is True and config["rope_theta"] == 50000.0 and config["hidden_act"] == "silu"
    kept = json.loads((pruned / "pruning.json").read_text())["mlp_widths"]
    assert kept[0] == 0 and kept[1] == WIDTH and all(w % 256 == 0 for w in kept)
    blocks = config["block_configs"]
    built = [0 if b["ffn"]["no_op"] else vllm_width(b["ffn"]["ffn_mult"], HIDDEN) for b in blocks]
    # layer 0 kept no neuron but carries the reconstruction's bias: 256 zero neurons hold it, not a no_op
    assert built == [256, *kept[1:]]
    assert all(b["attention"]["n_heads_in_group"] == 2 for b in blocks)
    source = {**load_file(pruned / "model.safetensors")}
    written = {**load_file(export / "model.safetensors")}
    assert "lm_head.weight" not in written  # tied: the runtimes reuse the embedding
    for index, width in enumerate(kept):
        prefix = f"model.layers.{index}.mlp."
        if width == 0:
            assert written[prefix + "gate_proj.weight"].shape[0] == 256
            assert not written[prefix + "down_proj.weight"].any()
        else:
            for name in ("gate_proj.weight", "up_proj.weight", "down_proj.weight"):
                assert torch.equal(written[prefix + name], source[prefix + name])
        assert torch.equal(written[prefix + "down_proj.bias"], source[prefix + "down_proj.bias"])
        assert not written[prefix + "gate_proj.bias"].any() and not written[prefix + "up_proj.bias"].any()
    assert set(written) - {n for n in written if ".mlp." in n and n.endswith("proj.bias")} <= set(source)


def test_an_empty_layer_without_bias_is_a_no_op_block(dense_dir, data_dir, tmp_path):
    pruned, export = prune_and_export(dense_dir, tmp_path, data_dir, "--method", "magnitude", "--layer-keep", "2:0")
    config = json.loads((export / "config.json").read_text())
    assert config["mlp_bias"] is False
    assert config["block_configs"][2]["ffn"] == {"no_op": True, "replace_with_linear": False}
    names = load_file(export / "model.safetensors")
    assert not any(n.startswith(("model.layers.2.mlp.", "model.layers.2.post_attention_layernorm.")) for n in names)
    assert "model.layers.2.input_layernorm.weight" in names
    assert "No MLP biases" in (export / "README.md").read_text()


def test_the_servers_read_the_config_by_attribute_without_ffnprune(exported, tmp_path):
    """vLLM and SGLang load config.json through AutoConfig with trust_remote_code and read block_configs by
    attribute (hasattr tells the two dialects apart); the shipped configuration file serves them."""
    _, export = exported
    read = run_without_ffnprune(f"""
        import json, transformers
        config = transformers.AutoConfig.from_pretrained({str(export)!r}, trust_remote_code=True)
        blocks = config.block_configs
        print(json.dumps({{"type": config.model_type, "no_op": [b.ffn.no_op for b in blocks],
                          "mult": [b.ffn.ffn_mult for b in blocks],
                          "group": [b.attention.n_heads_in_group for b in blocks],
                          "puzzletron": any(hasattr(b.ffn, "intermediate_size") for b in blocks),
                          "theta": config.rope_parameters["rope_theta"], "mlp_bias": config.mlp_bias}}))
    """, tmp_path)
    assert read["type"] == "nemotron-nas" and read["puzzletron"] is False and read["theta"] == 50000.0
    widths = json.loads((export / "pruning.json").read_text())["nemotron_nas_export"]["built_widths"]
    assert [vllm_width(m, HIDDEN) for m in read["mult"]] == widths and read["group"] == [2] * 4
    assert read["mlp_bias"] is True


def test_the_card_warns_where_the_bias_is_lost(exported):
    card = (exported[1] / "README.md").read_text()
    assert "SGLang skips MLP biases" in card and "vllm serve" in card

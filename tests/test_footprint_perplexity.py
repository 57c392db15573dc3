import math

import torch
import torch.nn.functional as F

from ffnprune.adapters import adapter_for
from ffnprune.analysis.footprint import footprint
from ffnprune.compaction import compact_mlps
from ffnprune.metrics.perplexity import block_perplexity
from helpers import uneven_kept
from tiny_models import VOCAB, tiny_model


def test_footprint_counts_mlp_parameters_and_flops_by_hand():
    model = tiny_model("gpt2")  # 4 layers, hidden 32, MLP 128, Conv1D with biases
    adapter = adapter_for(model.config)
    size = footprint(model, adapter, context=64)
    per_layer = 32 * 128 + 128 + 128 * 32 + 32
    assert size["mlp_parameters"] == 4 * per_layer
    assert size["mlp_flops_per_token"] == 4 * 2 * (2 * 32 * 128)
    attention = 4 * 4 * 64 * 32
    matmuls = 4 * 2 * (32 * 96 + 32 * 32 + 2 * 32 * 128) + 2 * 32 * VOCAB
    assert size["flops_per_token"] == matmuls + attention

    widths = [len(k) for k in uneven_kept(adapter.mlp_widths(model))]
    compact_mlps(model, adapter, uneven_kept(adapter.mlp_widths(model)))
    after = footprint(model, adapter, context=64)
    assert after["mlp_widths"] == widths
    assert after["mlp_parameters"] == sum(2 * 32 * w + w + 32 for w in widths)
    assert size["parameters"] - after["parameters"] == size["mlp_parameters"] - after["mlp_parameters"]


def test_block_perplexity_matches_the_mean_cross_entropy():
    model = tiny_model("llama")
    ids = torch.randint(0, VOCAB, (100,), generator=torch.Generator().manual_seed(0))
    result = block_perplexity(model, ids, context=16, batch_size=2)
    blocks = ids[:96].view(6, 16)
    with torch.no_grad():
        logits = model(blocks).logits[:, :-1]
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), blocks[:, 1:].reshape(-1))
    assert math.isclose(result["perplexity"], math.exp(expected.item()), rel_tol=1e-5)
    assert result["tokens_scored"] == 6 * 15
    assert result["protocol"]["context"] == 16 and result["protocol"]["blocks"] == 6

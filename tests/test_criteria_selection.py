import math

import pytest
import torch

from ffnprune.adapters import adapter_for
from ffnprune.criteria import METHODS, get_method
from ffnprune.criteria.magnitude import magnitude_intersect_scores, magnitude_sum_scores, neuron_norms
from ffnprune.errors import FfnpruneError
from ffnprune.pruning.oneshot import select_kept
from ffnprune.pruning.selection import check_keep, kept_count, local_top_v
from tiny_models import tiny_model


@pytest.mark.parametrize("keep,width,expected", [(0.29, 100, 29), (0.5, 1536, 768), (0.1, 30, 3), (1.0, 7, 7),
                                                 (0.3, 3, 0), (0.7, 10, 7)])
def test_kept_count_is_int_of_v_times_n_without_float_error(keep, width, expected):
    assert kept_count(keep, width) == expected


@pytest.mark.parametrize("keep", [0, -0.1, 1.5, math.nan, "0.5", True])
def test_keep_out_of_range_is_refused_with_the_fix(keep):
    with pytest.raises(FfnpruneError, match=r"\(0, 1\]"):
        check_keep(keep)


def test_local_top_v_keeps_the_highest_scores_sorted():
    scores = [torch.tensor([0.1, 0.9, -1.0, 0.5]), torch.tensor([3.0, 2.0, 1.0])]
    kept = local_top_v(scores, 0.5)
    assert [k.tolist() for k in kept] == [[1, 3], [0]]


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(FfnpruneError) as error:
        get_method("gumm")
    for name in METHODS:
        assert name in str(error.value)


def test_random_scores_are_reproducible_from_the_seed():
    model = tiny_model("gpt2")
    adapter = adapter_for(model.config)
    first = select_kept(model, adapter, "random", 0.5, seed=3)
    again = select_kept(model, adapter, "random", 0.5, seed=3)
    other = select_kept(model, adapter, "random", 0.5, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_neuron_norms_are_rows_of_inputs_and_columns_of_output(model_type):
    model = tiny_model(model_type)
    adapter = adapter_for(model.config)
    layer = adapter.decoder_layers(model)[1]
    norms = neuron_norms(layer, adapter)
    inputs = adapter.input_projections(layer)
    output = adapter.output_projection(layer)
    if model_type == "gpt2":  # Conv1D: [in, out]
        by_hand = [inputs[0].weight.norm(dim=0), output.weight.norm(dim=1)]
    else:  # Linear: [out, in]; gate, up, down
        by_hand = [inputs[0].weight.norm(dim=1), inputs[1].weight.norm(dim=1), output.weight.norm(dim=0)]
    assert torch.allclose(norms, torch.stack(by_hand))


def test_magnitude_keeps_the_intersection_of_each_matrix_top_v(monkeypatch):
    """Parts' top-2 sets {0, 1} and {1, 0} intersect in {0, 1}; neuron 2 is in one top-2 only."""
    norms = torch.tensor([[5.0, 4.0, 4.5, 1.0], [4.0, 5.0, 1.0, 4.5]])
    monkeypatch.setattr("ffnprune.criteria.magnitude.neuron_norms", lambda layer, adapter: norms)

    class OneLayer:
        def decoder_layers(self, model):
            return [None]

    scores = magnitude_intersect_scores(None, OneLayer())
    assert local_top_v(scores, 0.5)[0].tolist() == [0, 1]
    sums = magnitude_sum_scores(None, OneLayer())
    assert torch.allclose(sums[0], norms.sum(0))

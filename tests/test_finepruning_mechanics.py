"""The mechanics of fine-pruning on small tensors and tiny models (METHOD sections 2-6)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ffnprune.adapters import adapter_for
from ffnprune.criteria import get_method
from ffnprune.errors import FfnpruneError
from ffnprune.pruning.penalty import penalty_weights, score_penalty
from ffnprune.pruning.selection import global_top_v, kept_count, round_widths
from ffnprune.pruning.statistics import ActivationStatistics
from ffnprune.schedules import CubicSchedule
from ffnprune.training.distill import distillation_loss
from ffnprune.training.hooks import FinePruner, PenaltySettings
from tiny_models import VOCAB, tiny_model


def test_schedule_matches_the_worked_example():
    schedule = CubicSchedule(1000, 0.1)
    values = [round(schedule.keep_fraction(t), 2) for t in (150, 300, 500, 700)]
    assert values == [0.79, 0.37, 0.13, 0.10]
    assert schedule.keep_fraction(0) == schedule.keep_fraction(100) == 1.0
    assert schedule.keep_fraction(701) == schedule.keep_fraction(1000) == pytest.approx(0.1)


def test_threshold_follows_the_same_cubic_shape():
    schedule = CubicSchedule(1000, 0.1)
    assert schedule.threshold(100, 0.1) == 0.0
    assert schedule.threshold(700, 0.1) == pytest.approx(0.1)
    expected = 0.1 * (1 - (1 - (300 - 100) / 600) ** 3)
    assert schedule.threshold(300, 0.1) == pytest.approx(expected)


@pytest.mark.parametrize("steps", [0, 1])
def test_too_few_steps_for_warmup_and_cooldown(steps):
    with pytest.raises(FfnpruneError, match="too few"):
        CubicSchedule(steps, 0.5)


def test_shares_that_leave_no_pruning_phase_are_refused():
    with pytest.raises(FfnpruneError, match="leave a pruning phase"):
        CubicSchedule(100, 0.5, warmup_share=0.5, cooldown_share=0.5)


@pytest.mark.parametrize("keep", [0.5, 0.25, 0.1, 0.333, 1.0])
def test_global_top_v_keeps_exactly_floor_v_total(keep):
    generator = torch.Generator().manual_seed(0)
    scores = [torch.randn(n, generator=generator) for n in (7, 64, 13, 100)]
    kept = global_top_v(scores, keep)
    assert sum(len(k) for k in kept) == kept_count(keep, 184) == math.floor(keep * 184 + 1e-9)
    threshold = min(float(s[k].min()) for s, k in zip(scores, kept) if len(k))
    dropped = [s[torch.ones(len(s), dtype=torch.bool).index_fill_(0, k, False)] for s, k in zip(scores, kept)]
    assert all(float(d.max()) <= threshold for d in dropped if len(d))


def test_global_top_v_can_empty_a_layer():
    kept = global_top_v([torch.full((5,), -1.0), torch.arange(10.0)], 0.5)
    assert [len(k) for k in kept] == [0, 7]


@pytest.mark.parametrize("model_type", ["gpt2", "opt", "llama", "phi3"])
def test_score_gradient_is_the_movement_formula(model_type):
    """With every neuron kept, dL/ds_i = sum_j W1[i,j] dL/dW1[i,j] + sum_k W2[k,i] dL/dW2[k,i] (+ the up rows; for
    Phi-3's fused gate_up_proj, rows i and N + i)."""
    model = tiny_model(model_type).train()
    for module in model.modules():  # dropout would make the two passes differ
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    adapter = adapter_for(model.config)
    pruner = FinePruner(model, adapter, get_method("movement"), CubicSchedule(100, 0.5))
    pruner.before_forward()
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
    model(ids, labels=ids).loss.backward()
    for layer, scores in zip(adapter.decoder_layers(model), pruner.scores.layers()):
        expected = sum((adapter.input_rows(p) * _rows_of_grad(adapter, p)).sum(1)
                       for p in adapter.input_projections(layer))
        output = adapter.output_projection(layer)
        if model_type == "phi3":  # gate rows, then up rows
            expected = expected[: len(scores)] + expected[len(scores):]
        expected = expected + (adapter.output_columns(output) * _columns_of_grad(adapter, output)).sum(1)
        assert torch.allclose(scores.grad, expected, atol=1e-6, rtol=1e-4)
        assert scores.grad.abs().max() > 0


def _rows_of_grad(adapter, projection):
    return projection.weight.grad.t() if adapter.layout == "conv1d" else projection.weight.grad


def _columns_of_grad(adapter, projection):
    return projection.weight.grad if adapter.layout == "conv1d" else projection.weight.grad.t()


def test_gum_multiplier_matches_a_hand_computation():
    gram = torch.tensor([[4.0, 2.0, 0.0], [2.0, 1.0, -0.5], [0.0, -0.5, 9.0]])
    statistics = ActivationStatistics.__new__(ActivationStatistics)
    statistics.gram = [gram]
    v, mu = 0.5, 1.5
    u = statistics.uniqueness_penalty(keep_fraction=v)[0]
    cos01 = 2.0 / (2.0 * 1.0 + 1e-6)
    cos12 = -0.5 / (1.0 * 3.0 + 1e-6)
    hand = torch.tensor([cos01, cos01 + abs(cos12), abs(cos12)]) / (3 * v)
    assert torch.allclose(u, hand)
    assert torch.allclose(penalty_weights("gum", mu, u, 3, "cpu"), 1 + mu * hand)
    assert torch.equal(penalty_weights("l1", mu, u, 3, "cpu"), torch.ones(3))


def test_anti_gum_reverses_the_multiplier():
    u = torch.tensor([0.1, 0.7, 0.3, 0.5])
    gum = penalty_weights("gum", 2.0, u, 4, "cpu")
    anti = penalty_weights("anti-gum", 2.0, u, 4, "cpu")
    assert torch.allclose(anti, (2.0 * u).max() - 2.0 * u + 1)
    assert torch.equal(torch.argsort(gum), torch.argsort(-anti))
    assert anti[1] == 1.0 and gum[1] == gum.max()  # the most redundant neuron: strongest pull in GUM, weakest in anti


def test_penalty_is_the_mean_weighted_sigmoid_per_layer_over_3l():
    """The authors' normalisation: 1 / (3L), L the number of layers."""
    scores = [torch.tensor([0.0, 1.0]), torch.tensor([-2.0])]
    weights = [torch.tensor([1.0, 3.0]), torch.tensor([2.0])]
    by_hand = ((0.5 + 3 * torch.sigmoid(torch.tensor(1.0))) / 2 + 2 * torch.sigmoid(torch.tensor(-2.0))) / (3 * 2)
    assert torch.allclose(score_penalty(scores, weights), by_hand)


def test_penalty_weight_follows_v_t_for_gum_and_the_threshold_for_soft_movement():
    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    schedule = CubicSchedule(100, 0.25)
    gum = FinePruner(model, adapter, get_method("gum"), schedule, PenaltySettings(weight=2.0, mu=1.0))
    assert gum.penalty_weight == pytest.approx(2.0 / 0.25)
    gum.step = 100
    assert gum.penalty_weight == pytest.approx(2.0)
    gum.detach()
    soft = FinePruner(model, adapter, get_method("soft-movement"), schedule, PenaltySettings(weight=2.0))
    assert soft.penalty_weight == 0.0  # dense warm-up: no pull yet
    soft.step = 40
    assert soft.penalty_weight == pytest.approx(2.0 * schedule.threshold(40, 0.1) / 0.1)
    soft.step = 100
    assert soft.penalty_weight == pytest.approx(2.0)


def test_soft_movement_ends_at_the_requested_density_when_every_score_drifts_down():
    """The L1 pull drags all scores below the threshold together; the authors' per-layer minimum keeps
    int(v_f * N_l) + 1 neurons of every layer (the highest scores), not 1% of them."""
    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    schedule = CubicSchedule(200, 0.25)
    pruner = FinePruner(model, adapter, get_method("soft-movement"), schedule, PenaltySettings(weight=2.0))
    optimizer = torch.optim.AdamW(pruner.trainable_scores(), lr=0.1, weight_decay=0.0)
    with torch.no_grad():
        for layer_scores in pruner.scores.layers():
            layer_scores.copy_(torch.randn(layer_scores.shape, generator=torch.Generator().manual_seed(0)) * 0.01)
    for _ in range(schedule.total_steps):
        pruner.before_forward()
        pruner.penalty().backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.after_optimizer_step()
    assert max(torch.sigmoid(s).max() for s in pruner.scores.layers()) < 0.1  # everything fell below tau_f
    assert [len(k) for k in pruner.kept()] == [int(0.25 * 80) + 1] * 4


def test_statistics_exclude_pad_tokens_and_follow_the_running_average():
    model = tiny_model("llama").train()
    adapter = adapter_for(model.config)
    beta = 0.3
    pruner = FinePruner(model, adapter, get_method("gum"), CubicSchedule(100, 0.5), PenaltySettings(mu=1.0, beta=beta))
    captured = []
    adapter.output_projection(adapter.decoder_layers(model)[1]).register_forward_pre_hook(
        lambda module, args: captured.append(args[0].detach().clone()))
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    attention = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    grams = []
    for _ in range(2):
        pruner.before_forward(attention)
        model(ids, attention_mask=attention).logits.sum().backward()
        pruner.after_backward()
        grams.append(pruner.statistics.gram[1].clone())
    real = [h[attention.bool()] for h in captured]  # [tokens, N] of the 10 real tokens
    first = beta * real[0].T @ real[0]
    second = (1 - beta) * first + beta * real[1].T @ real[1]
    assert torch.allclose(grams[0], first, atol=1e-5)
    assert torch.allclose(grams[1], second, atol=1e-5)
    assert pruner.uniqueness[1] is not None and pruner.uniqueness[1].shape == (80,)


def test_cheap_statistics_count_strided_tokens_every_kth_step():
    model = tiny_model("llama").train()
    adapter = adapter_for(model.config)
    settings = PenaltySettings(mu=1.0, beta=0.5, gum_tokens=4, gum_every=2)
    pruner = FinePruner(model, adapter, get_method("gum"), CubicSchedule(100, 0.5), settings)
    captured = []
    adapter.output_projection(adapter.decoder_layers(model)[0]).register_forward_pre_hook(
        lambda module, args: captured.append(args[0].detach().clone()))
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(4))
    attention = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    strided = [0, 4, 7, 11]  # 4 of the 12 positions, evenly strided; position 4 is a pad and counts as zero

    def sampled(activations):
        return activations.flatten(0, -2)[strided] * attention.reshape(-1)[strided, None]

    grams, uniqueness = [], []
    for _ in range(3):
        pruner.before_forward(attention)
        model(ids, attention_mask=attention).logits.sum().backward()
        pruner.after_backward()
        pruner.after_optimizer_step()
        grams.append(pruner.statistics.gram[0].clone())
        uniqueness.append(pruner.uniqueness[0].clone())
    first = sampled(captured[0])
    assert first[1].abs().sum() == 0 and first[0].abs().sum() > 0
    assert torch.allclose(grams[0], 0.5 * first.T @ first, atol=1e-5)
    assert torch.equal(grams[1], grams[0]) and torch.equal(uniqueness[1], uniqueness[0])  # step 1: not counted
    third = sampled(captured[2])
    assert torch.allclose(grams[2], 0.5 * grams[0] + 0.5 * third.T @ third, atol=1e-5)
    assert not torch.equal(uniqueness[2], uniqueness[0])


def test_random_scores_stay_frozen_and_magnitude_scores_follow_the_weights():
    model = tiny_model("gpt2").train()
    adapter = adapter_for(model.config)
    random_pruner = FinePruner(model, adapter, get_method("random"), CubicSchedule(100, 0.5), seed=3)
    before = [s.clone() for s in random_pruner.scores.layers()]
    assert random_pruner.trainable_scores() == []
    assert all(((s >= -1) & (s <= 1)).all() for s in before)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = torch.randint(0, VOCAB, (2, 8))
    for _ in range(3):
        random_pruner.before_forward()
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        random_pruner.after_optimizer_step()
    assert all(torch.equal(a, b) for a, b in zip(before, random_pruner.scores.layers()))
    random_pruner.detach()

    model = tiny_model("gpt2")
    magnitude = FinePruner(model, adapter, get_method("magnitude"), CubicSchedule(100, 0.5))
    magnitude.before_forward()
    first = [s.clone() for s in magnitude.scores.layers()]
    with torch.no_grad():
        adapter.output_columns(adapter.output_projection(adapter.decoder_layers(model)[0]))[0].mul_(100)
    magnitude.before_forward()
    assert not torch.equal(first[0], magnitude.scores.layers()[0])


def test_masks_follow_the_schedule_and_detach_restores_the_model():
    model = tiny_model("opt")
    adapter = adapter_for(model.config)
    ids = torch.randint(0, VOCAB, (1, 8))
    with torch.no_grad():
        dense = model(ids).logits
    pruner = FinePruner(model, adapter, get_method("random"), CubicSchedule(10, 0.25))
    pruner.step = 10
    pruner.before_forward()
    assert [int(m.sum()) for m in pruner.masks.masks] == [24] * 4
    pruner.detach()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, dense)


def test_distillation_loss_is_t_squared_kl_over_labelled_tokens():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 4, 5, generator=generator), torch.randn(2, 4, 5, generator=generator)
    labels = torch.tensor([[0, 1, 2, -100], [0, 3, -100, -100]])
    temperature = 2.0
    rows = [(0, 0), (0, 1), (1, 0)]  # next-token positions whose label is not -100
    kl = sum(F.kl_div(F.log_softmax(student[b, t] / temperature, -1), F.softmax(teacher[b, t] / temperature, -1),
                      reduction="sum") for b, t in rows) / len(rows)
    assert torch.allclose(distillation_loss(student, teacher, labels, temperature), temperature**2 * kl)
    assert distillation_loss(teacher, teacher, labels, temperature).abs() < 1e-6
    # The authors' reduction: kl_div(log_softmax(s/T), softmax(t/T), reduction="batchmean") over every position.
    authors = F.kl_div(F.log_softmax(student / temperature, -1), F.softmax(teacher / temperature, -1),
                       reduction="batchmean")
    assert torch.allclose(distillation_loss(student, teacher, labels, temperature, "authors"),
                          temperature**2 * authors)


def test_soft_movement_keeps_scores_whose_sigmoid_passes_the_scheduled_threshold():
    model = tiny_model("llama")
    adapter = adapter_for(model.config)
    pruner = FinePruner(model, adapter, get_method("soft-movement"), CubicSchedule(100, 0.25),
                        PenaltySettings(soft_threshold=0.1))
    with torch.no_grad():
        for scores in pruner.scores.layers():
            scores.copy_(torch.linspace(-4, 4, scores.numel()))  # sigmoid(-2.197) = 0.1
    assert [len(k) for k in pruner.kept()] == [80] * 4  # tau = 0 during warm-up
    pruner.step = 100
    expected = int((torch.sigmoid(torch.linspace(-4, 4, 80)) > 0.1).sum())
    assert 0 < expected < 80
    assert [len(k) for k in pruner.kept()] == [expected] * 4


def test_round_widths_trims_the_lowest_kept_and_restores_the_highest_pruned():
    scores = torch.randn(100, generator=torch.Generator().manual_seed(0))
    order = torch.argsort(scores, descending=True)
    odd = torch.sort(order[1:38]).values  # 37 kept, not the very best neuron
    [up] = round_widths([odd], [scores], 8)  # 37 -> 40: the three best pruned come back
    assert len(up) == 40 and set(up.tolist()) == set(odd.tolist()) | set(order[[0, 38, 39]].tolist())
    fewer = torch.sort(order[:35]).values
    [down] = round_widths([fewer], [scores], 8)  # 35 -> 32: the three lowest kept go
    assert torch.equal(down, torch.sort(order[:32]).values)
    assert len(round_widths([torch.arange(100)], [scores], 8)[0]) == 100  # a full layer stays full
    assert len(round_widths([torch.arange(98)], [scores], 8)[0]) == 96
    assert len(round_widths([torch.arange(3)], [scores], 8)[0]) == 8  # the nearest non-zero multiple
    assert len(round_widths([torch.arange(0)], [scores], 8)[0]) == 0  # an empty layer stays empty
    with pytest.raises(FfnpruneError, match="--round-to"):
        round_widths([odd], [scores], 0)


def _bytes_saved_for_backward(model, ids) -> int:
    """Bytes of the distinct tensors autograd keeps for backward during one forward pass."""
    seen = {}

    def pack(tensor):
        seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(ids).logits.sum()
    return sum(seen.values())


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_learned_masks_keep_no_extra_activations_for_backward(model_type):
    """Masking the weights, a learned method's forward keeps at most one masked copy of each MLP weight more than
    plain fine-tuning; masking activations would keep copies of every token's activations (here far larger)."""
    model = tiny_model(model_type).train()
    adapter = adapter_for(model.config)
    ids = torch.randint(0, VOCAB, (8, 64), generator=torch.Generator().manual_seed(0))
    plain = _bytes_saved_for_backward(model, ids)
    pruner = FinePruner(model, adapter, get_method("movement"), CubicSchedule(10, 0.5))
    pruner.before_forward()
    masked = _bytes_saved_for_backward(model, ids)
    pruner.detach()
    mlp_weights = sum(p.numel() * p.element_size() for layer in adapter.decoder_layers(model)
                      for projection in [*adapter.input_projections(layer), adapter.output_projection(layer)]
                      for p in projection.parameters())
    activations = sum(8 * 64 * width * 4 for width in adapter.mlp_widths(model))
    assert activations > 2 * mlp_weights  # the test can tell the two apart
    assert masked - plain <= mlp_weights + 16 * sum(adapter.mlp_widths(model))  # + the mask vectors

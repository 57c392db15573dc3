"""Fine-pruning as a few hooks that any training loop can call (ours, the HF Trainer's, a user's).

    pruner = FinePruner(model, adapter, get_method("gum"), CubicSchedule(steps, 0.25), PenaltySettings(mu=1.0))
    optimizer = AdamW([...model params..., {"params": pruner.trainable_scores(), "lr": 1e-2, "weight_decay": 0}])
    for batch in batches:
        pruner.before_forward(batch.get("attention_mask"))
        loss = model(**batch).loss + pruner.penalty()
        loss.backward()
        pruner.after_backward()
        optimizer.step(); optimizer.zero_grad()
        pruner.after_optimizer_step()
    kept = pruner.kept()          # final neurons per layer; then compact_mlps(model, adapter, kept)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ffnprune.adapters import MlpAdapter
from ffnprune.criteria import Method
from ffnprune.pruning.masks import NeuronMasks
from ffnprune.pruning.penalty import penalty_weights, score_penalty
from ffnprune.pruning.scores import NeuronScores, straight_through
from ffnprune.pruning.selection import global_top_v, local_top_v, round_widths, threshold_selection
from ffnprune.pruning.statistics import ActivationStatistics
from ffnprune.schedules import CubicSchedule


@dataclass(frozen=True)
class PenaltySettings:
    weight: float = 2.0  # lambda
    mu: float | None = None  # GUM's uniqueness weight
    beta: float = 0.999  # GUM's running-statistics rate
    soft_threshold: float = 0.1  # soft movement's final sigmoid threshold
    gum_tokens: int | None = None  # tokens per micro-batch GUM's statistics see (None: all)
    gum_every: int = 1  # GUM refreshes its statistics and u every N steps


class FinePruner:
    """Masks a model's MLP neurons by scores that follow a method and a schedule, step by step. With `method`
    None it prunes nothing (the recovery fine-tuning of a one-shot pruned model): no masks, no scores, no penalty.
    `initial_scores` start a learned method's scores elsewhere than at 0 (calibrated scores, --init-scores).
    `uniform_widths` makes the global methods keep the same share of every layer."""

    def __init__(self, model: nn.Module, adapter: MlpAdapter, method: Method | None, schedule: CubicSchedule,
                 penalty: PenaltySettings = PenaltySettings(), seed: int = 0,
                 reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t, round_to: int = 1,
                 initial_scores: list[torch.Tensor] | None = None, uniform_widths: bool = False):
        self.model, self.adapter, self.method, self.schedule, self.settings = model, adapter, method, schedule, penalty
        self.round_to = round_to
        self.uniform_widths = uniform_widths
        self.reduce = reduce
        self.step = 0
        self.widths = widths = adapter.mlp_widths(model)
        device = next(model.parameters()).device
        learned = method is not None and method.learned
        if method is not None and not learned:
            initial_scores = method.fixed_scores(model, adapter, torch.Generator().manual_seed(seed))
        self.scores = NeuronScores(widths, learned, initial_scores).to(device)
        self.masks = None if method is None else NeuronMasks(
            model, adapter, [torch.ones(w, device=device) for w in widths]).attach()
        # It reads the output projection's input, where masked neurons are already 0 (their input rows are).
        self.statistics = (ActivationStatistics(model, adapter, penalty.beta, penalty.gum_tokens)
                           if method is not None and method.uses_mu else None)
        self.uniqueness: list[torch.Tensor | None] = [None] * len(widths)

    def trainable_scores(self) -> list[nn.Parameter]:
        return list(self.scores.parameters())

    @property
    def keep_fraction(self) -> float:
        """v_t, the scheduled share of neurons kept at the current step."""
        return self.schedule.keep_fraction(self.step)

    def kept(self) -> list[torch.Tensor]:
        """Indices each layer keeps at the current step (widths rounded to multiples of `round_to`)."""
        scores = self.scores.layers()
        if self.method is None:
            return [torch.arange(width) for width in self.widths]
        if self.method.selection == "threshold":
            kept = threshold_selection(scores, self.schedule.threshold(self.step, self.settings.soft_threshold),
                                       self.schedule.final_keep)
        else:
            # uniform_widths: the global ranking under a per-layer quota of int(v_t N_l), which is each layer's top
            # int(v_t N_l); GUM's penalty still weighs uniqueness, and the result exports as a stock checkpoint.
            ranked_globally = self.method.selection == "global" and not self.uniform_widths
            select = global_top_v if ranked_globally else local_top_v
            kept = select(scores, self.keep_fraction)
        return round_widths(kept, scores, self.round_to)

    def before_forward(self, attention_mask: torch.Tensor | None = None) -> None:
        """Set the masks for the next forward pass (call before every forward, micro-batches included)."""
        if self.method is None:
            return
        if not self.method.learned and not self.method.frozen:
            self.scores.set_fixed(self.method.fixed_scores(self.model, self.adapter, None))
        scores = self.scores.layers()
        self.masks.masks = straight_through(self.kept(), scores)
        if self.statistics is not None:
            self.statistics.token_mask = attention_mask
            self.statistics.active = self.step % self.settings.gum_every == 0

    def penalty(self) -> torch.Tensor:
        """lambda_t * R, to add to the loss (0 for methods without a penalty)."""
        if self.method is None or self.method.penalty == "none":
            return torch.zeros((), device=next(self.model.parameters()).device)
        scores = self.scores.layers()
        weights = [penalty_weights(self.method.penalty, self.settings.mu, u, s.numel(), s.device)
                   for u, s in zip(self.uniqueness, scores)]
        return self.penalty_weight * score_penalty(scores, weights)

    @property
    def penalty_weight(self) -> float:
        """lambda_t: lambda * tau_t / tau_f for soft movement (0 while dense, rising with its threshold), else
        lambda * v_t / v_f."""
        if self.method is not None and self.method.selection == "threshold":
            return self.settings.weight * (1.0 - self.schedule.remaining(self.step))
        return self.settings.weight * self.keep_fraction / self.schedule.final_keep

    def after_backward(self) -> None:
        """Fold this pass's activations into GUM's statistics and refresh u for the next step's penalty."""
        if self.statistics is not None and self.statistics.active:
            self.statistics.update(self.reduce)
            self.uniqueness = self.statistics.uniqueness_penalty(self.keep_fraction)

    def active_neurons(self) -> int:
        """Neurons the masks of the last forward kept (all of them when nothing is pruned)."""
        if self.masks is None:
            return sum(self.widths)
        return sum(int(mask.detach().sum()) for mask in self.masks.masks)

    def after_optimizer_step(self) -> None:
        self.step += 1

    def state(self) -> dict[str, torch.Tensor]:
        state = {f"scores.{i}": s.detach() for i, s in enumerate(self.scores.layers())}
        if self.statistics is not None:
            state.update({f"gum.{k}": v for k, v in self.statistics.state().items()})
            state.update({f"uniqueness.{i}": u for i, u in enumerate(self.uniqueness) if u is not None})
        state["step"] = torch.tensor(self.step)
        return state

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for index, layer_scores in enumerate(self.scores.layers()):
                layer_scores.copy_(state[f"scores.{index}"])
        if self.statistics is not None:
            self.statistics.load_state({k[4:]: v for k, v in state.items() if k.startswith("gum.")})
            self.uniqueness = [state.get(f"uniqueness.{i}") for i in range(len(self.uniqueness))]
        self.step = int(state["step"])

    def detach(self) -> None:
        """Remove every hook, leaving the model as it was (call before compacting)."""
        if self.masks is not None:
            self.masks.detach()
        if self.statistics is not None:
            self.statistics.detach()

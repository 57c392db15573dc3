"""The paper's claims, each checked on a study's finished cells: which cells it rests on, our figures with their
seed spread, and a verdict (reproduced, not reproduced, inconclusive at this budget, or not run yet).

The rules, per task, at keep 0.25 without distillation unless a claim says otherwise ("better" follows the task's
metric: lower perplexity, higher ROUGE-L, exact match or BLEU; a gap is relative to the better of the two):
1. Random nearly matches the established methods: random within 5% of the better of magnitude and movement.
2. GUM wins: GUM ahead of every other fine-pruning method (random, magnitude, movement, global movement).
3. Movement keeps redundant neurons and GUM fixes it: GUM's kept neurons more unique than movement's.
4. Distillation narrows the gaps: the range of random, movement and GUM is smaller with distillation than without
   (the change is held against the seed spread like the gaps).
5. (Beyond the paper) one-shot obs + recovery against the best fine-pruning method at the same number of steps.
A difference smaller than twice the seed spread is inconclusive: the largest standard deviation over seeds of the
task's two-seed cells, in points of the score or, for perplexity, in log perplexity (a ratio). On a generation task
each claim is also checked on the loss per target token: where the two disagree the verdict is inconclusive, and
where the metric is 0 everywhere the loss decides.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

NEARLY = 0.05  # claim 1: "nearly matches" is within 5%
FINE_PRUNING = ("random", "magnitude", "movement", "global-movement", "gum")
KEEP = 0.25
CONCLUSIVE = ("reproduced", "not reproduced", "obs ahead", "obs behind")
ZERO_EVERYWHERE = "inconclusive at this budget (metric 0 everywhere)"


@dataclass
class Verdict:
    claim: str
    task: str
    cells: str
    figures: str
    verdict: str


def target_loss(record: dict) -> float | None:
    """A generation task's loss per target token under teacher forcing, where the record has it."""
    return record.get("evaluation", {}).get("metrics", {}).get("target_loss")


@dataclass(frozen=True)
class Measure:
    """What a claim compares. Differences and the seed spread are held in `units`: a score's own points (a relative
    spread explodes near an exact match of 0), log perplexity (a ratio), or the loss per target token, already a log."""

    kind: str  # "score" (higher is better), "perplexity" or "loss" (lower is better)

    def value(self, record: dict) -> float | None:
        return target_loss(record) if self.kind == "loss" else record["metric"]

    @property
    def lower_is_better(self) -> bool:
        return self.kind != "score"

    def units(self, value: float) -> float:
        return math.log(value) if self.kind == "perplexity" else value

    def lead(self, ahead: float, behind: float) -> float:
        """How far `ahead` leads `behind`, in units (negative: it trails)."""
        difference = self.units(ahead) - self.units(behind)
        return -difference if self.lower_is_better else difference

    def allowance(self, best: float) -> float:
        """Claim 1's "within 5%", in units: of the score, or of the perplexity (a ratio)."""
        return NEARLY * abs(best) if self.kind == "score" else math.log(1 + NEARLY)

    def ahead(self, lead: float, ahead: float, behind: float) -> str:
        """A lead as a reader takes it: relative to the better of the two, or in nats of loss."""
        side = "ahead" if lead >= 0 else "behind"
        if self.kind == "loss":
            return f"{abs(lead):.2f} nats {side}"
        if self.kind == "perplexity":
            return f"{math.expm1(abs(lead)):.1%} {side}"
        leader = max(ahead, behind)
        return f"{abs(lead) / abs(leader) if leader else 0.0:.1%} {side}"

    def noise(self, spread: float | None) -> str:
        if spread is None:
            return "; one seed"
        return {"score": f"; seed spread {spread:.2f} points", "perplexity": f"; seed spread {spread:.1%}",
                "loss": f"; seed spread {spread:.2f} nats"}[self.kind]

    def best(self, groups: dict[str, list[float]]) -> str:
        """The method whose mean is best."""
        return (min if self.lower_is_better else max)(groups, key=lambda m: _mean(groups[m]))

    def values(self, records: list[dict], task: str, method: str, distill: bool = False,
               keep: float = KEEP) -> list[float]:
        return [self.value(r) for r in records if r["task"] == task and r["method"] == method
                and r["distill"] == distill and r["keep"] == keep]

    def seed_spread(self, records: list[dict], task: str) -> float | None:
        """The largest standard deviation over seeds, in units, among the task's cells that ran with several."""
        groups: dict[tuple, list[float]] = {}
        for r in records:
            if r["task"] == task and r["method"] != "dense":
                groups.setdefault((r["method"], r["keep"], r["distill"]), []).append(self.units(self.value(r)))
        spreads = [statistics.stdev(v) for v in groups.values() if len(v) > 1]
        return max(spreads) if spreads else None


LOSS = Measure("loss")


def _metric(task: str) -> Measure:
    return Measure("perplexity" if task == "wikitext" else "score")


def _mean(values: list[float]) -> float:
    return statistics.mean(values)


def shown(values: list[float], count: bool = False) -> str:
    """One value, or the mean ± the standard deviation over seeds (and, with `count`, how many)."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{_mean(values):.2f} ± {statistics.stdev(values):.2f}" + (f" (n={len(values)})" if count else "")


def _decide(lead: float, spread: float | None, holds: bool, *means: float) -> str:
    if means and not any(means):
        return ZERO_EVERYWHERE
    if spread is not None and abs(lead) < 2 * spread:
        return "inconclusive at this budget"
    return "reproduced" if holds else "not reproduced"


def check_claims(records: list[dict]) -> list[Verdict]:
    """Each claim on each task, on the task's metric; on a generation task also on the loss per target token, which
    vetoes a verdict it contradicts (ROUGE rewards a string of stopwords: a collapsed model can out-score a working
    one) and decides where the metric is 0 everywhere."""
    verdicts = []
    for task in dict.fromkeys(r["task"] for r in records):
        cells = [r for r in records if r["task"] == task and r["method"] != "dense"]
        with_loss = task != "wikitext" and all(target_loss(r) is not None for r in cells)
        for claim in (_random_matches, _gum_wins, _uniqueness, _distillation, _obs):
            verdict = claim(records, task, _metric(task))
            if with_loss and claim is not _uniqueness and verdict.verdict != "not run yet":
                verdict = _checked_by_loss(verdict, claim(records, task, LOSS))
            verdicts.append(verdict)
    return verdicts


def _checked_by_loss(by_metric: Verdict, by_loss: Verdict) -> Verdict:
    verdict = by_metric.verdict
    if verdict in CONCLUSIVE and by_loss.verdict in CONCLUSIVE and by_loss.verdict != verdict:
        verdict = "inconclusive at this budget (the metric and the loss per target token disagree)"
    elif verdict == ZERO_EVERYWHERE and by_loss.verdict in CONCLUSIVE:
        verdict = f"{by_loss.verdict} (on the loss per target token; the metric is 0 everywhere)"
    figures = f"{by_metric.figures}. Loss per target token: {by_loss.figures}"
    return Verdict(by_metric.claim, by_metric.task, by_metric.cells, figures, verdict)


def _against_best(measure: Measure, records, task, name: str, values: list[float], others: dict[str, list[float]],
                  label: str) -> tuple[float, float, float | None, str]:
    """`name`'s mean against the best of `others`: its lead in units, the best's mean, the seed spread, the figures."""
    best_name = measure.best(others)
    best, spread = _mean(others[best_name]), measure.seed_spread(records, task)
    lead = measure.lead(_mean(values), best)
    figures = (f"{name} {shown(values)}, {label}{best_name} {shown(others[best_name])}: {name} "
               f"{measure.ahead(lead, _mean(values), best)}{measure.noise(spread)}")
    return lead, best, spread, figures


def _missing(claim: str, task: str, cells: str) -> Verdict:
    return Verdict(claim, task, cells, "", "not run yet")


def _random_matches(records, task, measure: Measure) -> Verdict:
    claim, cells = "1. random nearly matches the established methods", "random, magnitude, movement"
    random = measure.values(records, task, "random")
    others = {m: measure.values(records, task, m) for m in ("magnitude", "movement")}
    if not random or not all(others.values()):
        return _missing(claim, task, cells)
    lead, best, spread, figures = _against_best(measure, records, task, "random", random, others, "")
    margin = lead + measure.allowance(best)
    return Verdict(claim, task, cells, figures, _decide(margin, spread, margin >= 0, _mean(random), best))


def _gum_wins(records, task, measure: Measure) -> Verdict:
    claim, cells = "2. GUM wins", "GUM against random, magnitude, movement, global movement"
    gum = measure.values(records, task, "gum")
    others = {m: measure.values(records, task, m) for m in FINE_PRUNING if m != "gum"}
    if not gum or not all(others.values()):
        return _missing(claim, task, cells)
    lead, best, spread, figures = _against_best(measure, records, task, "GUM", gum, others, "best other ")
    return Verdict(claim, task, cells, figures, _decide(lead, spread, lead > 0, _mean(gum), best))


def _uniqueness(records, task, measure: Measure) -> Verdict:
    claim, cells = "3. movement keeps redundant neurons, GUM fixes it", "uniqueness of GUM and movement"
    values = {m: [r["uniqueness"] for r in records if r["task"] == task and r["method"] == m and not r["distill"]
                  and r["keep"] == KEEP and r.get("uniqueness") is not None] for m in ("gum", "movement")}
    if not all(values.values()):
        return _missing(claim, task, cells)
    gum, movement = _mean(values["gum"]), _mean(values["movement"])
    figures = f"uniqueness GUM {gum:.3f}, movement {movement:.3f}"
    return Verdict(claim, task, cells, figures, "reproduced" if gum > movement else "not reproduced")


def _distillation(records, task, measure: Measure) -> Verdict:
    claim, cells = "4. distillation narrows the gaps", "random, movement, GUM with and without distillation"
    methods = ("random", "movement", "gum")
    means = {distill: [_mean(v) for m in methods if (v := measure.values(records, task, m, distill))]
             for distill in (False, True)}
    if not all(len(v) == len(methods) for v in means.values()):
        return _missing(claim, task, cells)
    spread = measure.seed_spread(records, task)
    ranges = {d: max(v) - min(v) for d, v in means.items()}
    units = {d: [measure.units(m) for m in v] for d, v in means.items()}
    narrowed = (max(units[False]) - min(units[False])) - (max(units[True]) - min(units[True]))
    figures = f"range of the three: {ranges[False]:.2f} without, {ranges[True]:.2f} with distillation" \
              f"{measure.noise(spread)}"
    return Verdict(claim, task, cells, figures, _decide(narrowed, spread, narrowed > 0, *means[False], *means[True]))


def _obs(records, task, measure: Measure) -> Verdict:
    claim, cells = "5. (ours) obs + recovery against fine-pruning, same steps", "obs; the best fine-pruning method"
    obs = measure.values(records, task, "obs")
    others = {m: v for m in FINE_PRUNING if (v := measure.values(records, task, m))}
    if not obs or not others:
        return _missing(claim, task, cells)
    lead, best, spread, figures = _against_best(measure, records, task, "obs", obs, others, "best fine-pruning ")
    verdict = _decide(lead, spread, lead > 0, _mean(obs), best)
    return Verdict(claim, task, cells, figures, {"reproduced": "obs ahead", "not reproduced": "obs behind"}
                   .get(verdict, verdict))


def claims_table(verdicts: list[Verdict]) -> str:
    lines = ["| claim | task | cells | our figures (test) | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {v.claim} | {v.task} | {v.cells} | {v.figures} | {v.verdict} |" for v in verdicts]
    return "\n".join(lines) + "\n"


def _bars(axis, records: list[dict], cells: list[dict], methods: list[str], value, title: str, log: bool) -> None:
    """One bar per method without and with distillation (means over seeds), the dense model as a dashed line."""
    for offset, distill in ((-0.2, False), (0.2, True)):
        means = [statistics.mean(v) if (v := [value(r) for r in cells if r["method"] == m and r["distill"] == distill
                                              and value(r) is not None]) else float("nan") for m in methods]
        axis.bar([i + offset for i in range(len(methods))], means, width=0.4,
                 label="with distillation" if distill else "without")
    dense = [value(r) for r in records if r["method"] == "dense" and value(r) is not None]
    if dense:
        axis.axhline(dense[0], color="black", linestyle="--", linewidth=1, label="dense")
    axis.set_xticks(range(len(methods)), methods, rotation=30, fontsize=8)
    axis.set_title(title, fontsize=10)
    if log:
        axis.set_yscale("log")
    axis.legend(fontsize=7)


def plot_claims(results: Path, records: list[dict], metric_names: dict[str, str]) -> None:
    """Per task: the metric of each method with and without distillation (and the loss per target token on the
    generation tasks), and uniqueness against the metric."""
    for task in dict.fromkeys(r["task"] for r in records):
        task_records = [r for r in records if r["task"] == task]
        cells = [r for r in task_records if r["method"] != "dense" and r["keep"] == KEEP]
        if not cells:
            continue
        with_loss = any(target_loss(r) is not None for r in cells)
        figure, axes = plt.subplots(1, 2 + with_loss, figsize=(5.5 * (2 + with_loss), 3.8))
        methods = list(dict.fromkeys(r["method"] for r in cells))
        metric = metric_names[task]
        perplexity_like = _metric(task).lower_is_better
        _bars(axes[0], task_records, cells, methods, lambda r: r["metric"],
              f"{task}: {metric} at keep {KEEP:g} (test)", perplexity_like)
        if with_loss:
            _bars(axes[1], task_records, cells, methods, target_loss,
                  "loss per target token, teacher-forced (lower is better)", False)
        for method in methods:
            points = [(r["uniqueness"], r["metric"]) for r in cells if r["method"] == method
                      and r.get("uniqueness") is not None]
            if points:
                axes[-1].scatter(*zip(*points), label=method)
        axes[-1].set(xlabel="uniqueness of the kept neurons", ylabel=metric, title="uniqueness against the metric")
        if perplexity_like:
            axes[-1].set_yscale("log")
        axes[-1].legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(results / f"claims-{task}.png", dpi=100)
        plt.close(figure)

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
task's two-seed cells, in points of the score or, for perplexity, in log perplexity (a ratio).
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


@dataclass
class Verdict:
    claim: str
    task: str
    cells: str
    figures: str
    verdict: str


def _lower_is_better(task: str) -> bool:
    return task == "wikitext"


def _values(records: list[dict], task: str, method: str, distill: bool = False, keep: float = KEEP) -> list[float]:
    return [r["metric"] for r in records if r["task"] == task and r["method"] == method and r["distill"] == distill
            and r["keep"] == keep]


def _mean(values: list[float]) -> float:
    return statistics.mean(values)


def shown(values: list[float], count: bool = False) -> str:
    """One value, or the mean ± the standard deviation over seeds (and, with `count`, how many)."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{_mean(values):.2f} ± {statistics.stdev(values):.2f}" + (f" (n={len(values)})" if count else "")


def _gap(task: str, worse: float, better: float) -> float:
    """How far `worse` is behind `better`, relative to the better of the two (negative: it is ahead)."""
    difference = worse - better if _lower_is_better(task) else better - worse
    leader = min(worse, better) if _lower_is_better(task) else max(worse, better)
    return difference / abs(leader) if leader else 0.0


def _best(task: str, groups: dict[str, list[float]]) -> str:
    """The method whose mean is best in the task's direction."""
    return (min if _lower_is_better(task) else max)(groups, key=lambda m: _mean(groups[m]))


def _ahead(gap: float) -> str:
    return f"{abs(gap):.1%} {'ahead' if gap >= 0 else 'behind'}"


def _units(task: str, value: float) -> float:
    """Where differences and the seed spread are compared: log perplexity (a ratio), or the score's own points (a
    relative spread explodes near an exact match of 0)."""
    return math.log(value) if _lower_is_better(task) else value


def _lead(task: str, ahead: float, behind: float) -> float:
    """How far `ahead` leads `behind`, in the task's units (negative: it trails)."""
    return _units(task, ahead) - _units(task, behind) if not _lower_is_better(task) else \
        _units(task, behind) - _units(task, ahead)


def seed_spread(records: list[dict], task: str) -> float | None:
    """The largest standard deviation over seeds, in the task's units, among its cells that ran with several."""
    groups: dict[tuple, list[float]] = {}
    for r in records:
        if r["task"] == task and r["method"] != "dense":
            groups.setdefault((r["method"], r["keep"], r["distill"]), []).append(_units(task, r["metric"]))
    spreads = [statistics.stdev(v) for v in groups.values() if len(v) > 1]
    return max(spreads) if spreads else None


def _noise(task: str, spread: float | None) -> str:
    if spread is None:
        return "; one seed"
    return f"; seed spread {spread:.1%}" if _lower_is_better(task) else f"; seed spread {spread:.2f} points"


def _decide(lead: float, spread: float | None, holds: bool, *means: float) -> str:
    if means and not any(means):
        return "inconclusive at this budget (metric 0 everywhere)"
    if spread is not None and abs(lead) < 2 * spread:
        return "inconclusive at this budget"
    return "reproduced" if holds else "not reproduced"


def check_claims(records: list[dict]) -> list[Verdict]:
    verdicts = []
    for task in dict.fromkeys(r["task"] for r in records):
        spread = seed_spread(records, task)
        noise = _noise(task, spread)
        verdicts += [_random_matches(records, task, spread, noise), _gum_wins(records, task, spread, noise),
                     _uniqueness(records, task), _distillation(records, task, spread, noise),
                     _obs(records, task, spread, noise)]
    return verdicts


def _missing(claim: str, task: str, cells: str) -> Verdict:
    return Verdict(claim, task, cells, "", "not run yet")


def _random_matches(records, task, spread, noise) -> Verdict:
    claim, cells = "1. random nearly matches the established methods", "random, magnitude, movement"
    random, others = _values(records, task, "random"), {m: _values(records, task, m) for m in ("magnitude", "movement")}
    if not random or not all(others.values()):
        return _missing(claim, task, cells)
    name = _best(task, others)
    gap = _gap(task, _mean(random), _mean(others[name]))
    figures = f"random {shown(random)}, {name} {shown(others[name])}: random {_ahead(-gap)}{noise}"
    lead = _lead(task, _mean(others[name]), _mean(random))
    allowance = math.log(1 + NEARLY) if _lower_is_better(task) else NEARLY * abs(_mean(others[name]))
    return Verdict(claim, task, cells, figures, _decide(lead - allowance, spread, lead <= allowance, _mean(random),
                                                        _mean(others[name])))


def _gum_wins(records, task, spread, noise) -> Verdict:
    claim, cells = "2. GUM wins", "GUM against random, magnitude, movement, global movement"
    gum = _values(records, task, "gum")
    others = {m: _values(records, task, m) for m in FINE_PRUNING if m != "gum"}
    if not gum or not all(others.values()):
        return _missing(claim, task, cells)
    name = _best(task, others)
    gap = _gap(task, _mean(others[name]), _mean(gum))  # positive: GUM ahead of the best other
    figures = f"GUM {shown(gum)}, best other {name} {shown(others[name])}: GUM {_ahead(gap)}{noise}"
    lead = _lead(task, _mean(gum), _mean(others[name]))
    return Verdict(claim, task, cells, figures, _decide(lead, spread, lead > 0, _mean(gum), _mean(others[name])))


def _uniqueness(records, task) -> Verdict:
    claim, cells = "3. movement keeps redundant neurons, GUM fixes it", "uniqueness of GUM and movement"
    values = {m: [r["uniqueness"] for r in records if r["task"] == task and r["method"] == m and not r["distill"]
                  and r["keep"] == KEEP and r.get("uniqueness") is not None] for m in ("gum", "movement")}
    if not all(values.values()):
        return _missing(claim, task, cells)
    gum, movement = _mean(values["gum"]), _mean(values["movement"])
    figures = f"uniqueness GUM {gum:.3f}, movement {movement:.3f}"
    return Verdict(claim, task, cells, figures, "reproduced" if gum > movement else "not reproduced")


def _distillation(records, task, spread, noise) -> Verdict:
    claim, cells = "4. distillation narrows the gaps", "random, movement, GUM with and without distillation"
    methods = ("random", "movement", "gum")
    means = {distill: [_mean(v) for m in methods if (v := _values(records, task, m, distill))]
             for distill in (False, True)}
    if not all(len(v) == len(methods) for v in means.values()):
        return _missing(claim, task, cells)
    ranges = {d: max(v) - min(v) for d, v in means.items()}
    units = {d: [_units(task, m) for m in v] for d, v in means.items()}
    narrowed = (max(units[False]) - min(units[False])) - (max(units[True]) - min(units[True]))
    figures = f"range of the three: {ranges[False]:.2f} without, {ranges[True]:.2f} with distillation{noise}"
    return Verdict(claim, task, cells, figures, _decide(narrowed, spread, narrowed > 0, *means[False], *means[True]))


def _obs(records, task, spread, noise) -> Verdict:
    claim, cells = "5. (ours) obs + recovery against fine-pruning, same steps", "obs; the best fine-pruning method"
    obs = _values(records, task, "obs")
    others = {m: _values(records, task, m) for m in FINE_PRUNING}
    others = {m: v for m, v in others.items() if v}
    if not obs or not others:
        return _missing(claim, task, cells)
    name = _best(task, others)
    gap = _gap(task, _mean(others[name]), _mean(obs))
    figures = f"obs {shown(obs)}, best fine-pruning {name} {shown(others[name])}: obs {_ahead(gap)}{noise}"
    lead = _lead(task, _mean(obs), _mean(others[name]))
    verdict = _decide(lead, spread, lead > 0, _mean(obs), _mean(others[name]))
    return Verdict(claim, task, cells, figures, {"reproduced": "obs ahead", "not reproduced": "obs behind"}
                   .get(verdict, verdict))


def claims_table(verdicts: list[Verdict]) -> str:
    lines = ["| claim | task | cells | our figures (test) | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {v.claim} | {v.task} | {v.cells} | {v.figures} | {v.verdict} |" for v in verdicts]
    return "\n".join(lines) + "\n"


def target_loss(record: dict) -> float | None:
    """A generation task's loss per target token under teacher forcing, where the record has it."""
    return record.get("evaluation", {}).get("metrics", {}).get("target_loss")


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
        _bars(axes[0], task_records, cells, methods, lambda r: r["metric"],
              f"{task}: {metric} at keep {KEEP:g} (test)", _lower_is_better(task))
        if with_loss:
            _bars(axes[1], task_records, cells, methods, target_loss,
                  "loss per target token, teacher-forced (lower is better)", False)
        for method in methods:
            points = [(r["uniqueness"], r["metric"]) for r in cells if r["method"] == method
                      and r.get("uniqueness") is not None]
            if points:
                axes[-1].scatter(*zip(*points), label=method)
        axes[-1].set(xlabel="uniqueness of the kept neurons", ylabel=metric, title="uniqueness against the metric")
        axes[-1].legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(results / f"claims-{task}.png", dpi=100)
        plt.close(figure)

"""A study file and the cells it expands to.

    name: cpu-wikitext
    model: smollm2-135m
    tasks: [wikitext]
    seeds: [0]
    options: {steps: 40, context: 256, batch_size: 4, mu: 1.0}     # any `ffnprune prune` option
    task_options: {samsum: {steps: 200}}                # a task's own options, over `options`
    task_evaluate: {samsum: {limit: 200, sample_seed: 0}}           # a task's own `evaluate` options
    grids:                                              # each grid: methods x keeps x distill (x seeds) (x tasks)
      - {methods: [random, gum], keeps: [0.5, 0.25], distill: [false]}
      - {methods: [gum], keeps: [0.25], distill: [true], seeds: [0, 1]}   # a grid's seeds replace the study's
      - {methods: [gum], keeps: [0.5], tasks: [wikitext]}                 # and its tasks (of the study's)
    evaluate: {max_tokens: 16384, limit: 50}                        # any `ffnprune evaluate` option
    analyze: {max_tokens: 4096}                                     # any `ffnprune analyze` option; {} to skip
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from pathlib import Path

from ffnprune.config import (
    AnalyzeConfig,
    EvaluateConfig,
    PruneConfig,
    build_config,
    key,
    leaf_fields,
    load_yaml_mapping,
)
from ffnprune.criteria import get_method
from ffnprune.errors import FfnpruneError
from ffnprune.pruning.selection import check_keep
from ffnprune.tasks import get_task

STUDY_KEYS = {"name", "model", "tasks", "seeds", "options", "task_options", "task_evaluate", "grids", "evaluate",
              "analyze"}
GRID_KEYS = {"methods", "keeps", "distill", "seeds", "tasks"}


@dataclass(frozen=True)
class Cell:
    task: str
    method: str
    keep: float
    distill: bool
    seed: int

    @property
    def name(self) -> str:
        return f"{self.task}-{self.method}-k{self.keep:g}-{'kd' if self.distill else 'nokd'}-s{self.seed}"


@dataclass
class Study:
    name: str
    model: str
    tasks: list[str]
    seeds: list[int]
    options: dict
    cells: list[Cell]
    evaluate: dict
    analyze: dict = field(default_factory=dict)
    task_options: dict = field(default_factory=dict)
    task_evaluate: dict = field(default_factory=dict)

    def prune_config(self, cell: Cell, out: Path, data: str | None) -> PruneConfig:
        values = {**self.options, **self.task_options.get(cell.task, {}), "model": self.model, "out": str(out),
                  "task": cell.task, "method": cell.method, "keep": cell.keep, "seed": cell.seed,
                  "distill": cell.distill, "overwrite": True}
        if data is not None:
            values["data"] = data
        if not get_method(cell.method).uses_mu:
            values.pop("mu", None)
        return build_config(PruneConfig, values)

    def evaluate_config(self, model: str, task: str, data: str | None) -> EvaluateConfig:
        return build_config(EvaluateConfig, {**self.evaluate, **self.task_evaluate.get(task, {}), "model": model,
                                             "task": task, "split": "test",
                                             **({"data": data} if data is not None else {})})

    def analyze_config(self, model: str, task: str, out: Path, data: str | None) -> AnalyzeConfig:
        return build_config(AnalyzeConfig, {**self.analyze, "model": model, "task": task, "out": str(out),
                                            "overwrite": True, **({"data": data} if data is not None else {})})


def _check_keys(values: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise FfnpruneError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def read_study(path: str | Path) -> Study:
    path = Path(path)
    values = load_yaml_mapping(path, "study file")
    _check_keys(values, STUDY_KEYS, str(path))
    for required in ("name", "model", "grids"):
        if required not in values:
            raise FfnpruneError(f"study file {path} needs '{required}'")
    options = values.get("options") or {}
    for section, config in (("options", PruneConfig), ("evaluate", EvaluateConfig), ("analyze", AnalyzeConfig)):
        _check_keys(values.get(section) or {}, {key(f) for _, f, _ in leaf_fields(config)}, f"{path}: {section}")
    tasks = list(values.get("tasks", ["wikitext"]))
    for task in tasks:
        get_task(task)  # an unknown task fails here, before anything runs
    per_task = {}
    for section, config in (("task_options", PruneConfig), ("task_evaluate", EvaluateConfig)):
        per_task[section] = values.get(section) or {}
        _check_keys(per_task[section], set(tasks), f"{path}: {section} (tasks of the study)")
        for task, chosen in per_task[section].items():
            _check_keys(chosen, {key(f) for _, f, _ in leaf_fields(config)}, f"{path}: {section}.{task}")
    seeds = [int(s) for s in values.get("seeds", [0])]
    cells = []
    for index, grid in enumerate(values["grids"]):
        _check_keys(grid, GRID_KEYS, f"{path}: grids[{index}]")
        grid_tasks = list(grid.get("tasks", tasks))
        _check_keys(dict.fromkeys(grid_tasks), set(tasks), f"{path}: grids[{index}].tasks (tasks of the study)")
        for task, method, keep, distill, seed in product(grid_tasks, grid["methods"], grid["keeps"],
                                                         grid.get("distill", [False]),
                                                         [int(s) for s in grid.get("seeds", seeds)]):
            get_method(method)
            cell = Cell(task, method, check_keep(float(keep)), bool(distill), seed)
            if cell not in cells:
                cells.append(cell)
    return Study(str(values["name"]), str(values["model"]), tasks, seeds, options, cells,
                 values.get("evaluate") or {}, values.get("analyze") or {}, per_task["task_options"],
                 per_task["task_evaluate"])

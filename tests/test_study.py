"""`ffnprune study`: cells expanded from grids, run once, skipped when done, tabulated."""

from __future__ import annotations

import json

import pytest

from ffnprune.cli.main import main
from ffnprune.errors import FfnpruneError
from ffnprune.study.plan import read_study

STUDY = """
name: tiny
model: {model}
tasks: [wikitext]
seeds: [0]
options: {{steps: 6, context: 32, batch_size: 2, mu: 1.0, checkpoint_every: 3}}
grids:
  - {{methods: [random, gum], keeps: [0.5, 0.25], distill: [false]}}
  - {{methods: [gum], keeps: [0.25], distill: [true]}}
evaluate: {{max_tokens: 512, context: 64, stride: 32, batch_size: 4}}
analyze: {{max_tokens: 256, context: 64}}
"""


def test_grids_expand_to_named_cells(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(model="m"))
    study = read_study(path)
    assert [c.name for c in study.cells] == [
        "wikitext-random-k0.5-nokd-s0", "wikitext-random-k0.25-nokd-s0", "wikitext-gum-k0.5-nokd-s0",
        "wikitext-gum-k0.25-nokd-s0", "wikitext-gum-k0.25-kd-s0"]
    config = study.prune_config(study.cells[0], tmp_path / "x", None)
    assert config.penalty.mu is None and config.steps == 6  # mu only goes to the methods that use it


def test_a_grids_seeds_replace_the_studys(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(model="m").replace(
        "evaluate:", "  - {methods: [random], keeps: [0.25], seeds: [0, 1, 2]}\nevaluate:", 1))
    names = [c.name for c in read_study(path).cells]
    assert names[5:] == ["wikitext-random-k0.25-nokd-s1", "wikitext-random-k0.25-nokd-s2"]  # s0 is already there
    assert sum(name.startswith("wikitext-random-k0.25-nokd") for name in names) == 3


@pytest.mark.parametrize("change,message", [("metods", "unknown key"), ("bad-option", "unknown key"),
                                            ("bad-method", "unknown method")])
def test_bad_study_files(tmp_path, change, message):
    text = STUDY.format(model="m")
    text = {"metods": text.replace("grids:", "metods: 1\ngrids:"),
            "bad-option": text.replace("steps: 6", "stepz: 6"),
            "bad-method": text.replace("[random, gum]", "[random, gumm]")}[change]
    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(FfnpruneError, match=message):
        read_study(path)


def test_study_runs_every_cell_once_and_tabulates(capsys, tiny_model_dir, data_dir, tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY.format(model=tiny_model_dir("llama")))
    argv = ["study", "--config", str(path), "--data", str(data_dir), "--results", str(tmp_path / "results"),
            "--models", str(tmp_path / "models")]
    assert main(argv) == 0, capsys.readouterr().err
    results = tmp_path / "results" / "tiny"
    records = json.loads((results / "results.json").read_text())
    assert len(records) == 6 and {r["method"] for r in records} == {"dense", "random", "gum"}
    for record in records:
        assert record["metric"] > 1 and 0 <= record["uniqueness"] <= 1
        if record["method"] != "dense":
            assert (results / "cells" / record["log"]).exists()
            assert record["protocol"]["train_split"] == "validation" and record["evaluation"]["split"] == "test"
    table = (results / "table.md").read_text()
    assert "| dense (reference) |" in table and "| gum |" in table and "with distillation" in table
    assert (results / "wikitext-nokd.png").exists() and (results / "wikitext-kd.png").exists()

    (results / "cells" / "wikitext-random-k0.25-nokd-s0.json").unlink()
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().err
    assert out.count("done, skipped") == 4 and "wikitext-random-k0.25-nokd-s0\n" in out
    assert len(json.loads((results / "results.json").read_text())) == 6


@pytest.mark.parametrize("name,cells", [("study-cpu.yaml", 28 + 6), ("study-gpu.yaml", 4 * 7 * 3 * 2 * 2),
                                        ("study-v2.yaml", 4 * (6 + 3 + 2) + 6)])
def test_the_shipped_study_files_are_valid(name, cells):
    from pathlib import Path

    study = read_study(Path(__file__).parents[1] / "configs" / name)
    assert len(study.cells) == cells
    assert study.prune_config(study.cells[0], Path("x"), None).steps > 0


def test_a_cell_killed_mid_way_continues_from_its_checkpoint(tiny_model_dir, data_dir, tmp_path, monkeypatch):
    import ffnprune.training.loop as loop
    from ffnprune.study.run import run_study

    class Killed(Exception):
        pass

    def save_then_die(*args, **kwargs):
        original(*args, **kwargs)
        raise Killed

    original = loop.save_checkpoint
    path = tmp_path / "study.yaml"
    text = STUDY.format(model=tiny_model_dir("llama"))
    text = text.replace("[random, gum], keeps: [0.5, 0.25]", "[gum], keeps: [0.5]")
    path.write_text(text.replace("  - {methods: [gum], keeps: [0.25], distill: [true]}\n", ""))
    places = {"results_root": str(tmp_path / "results"), "models_root": str(tmp_path / "models"), "data": str(data_dir)}
    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        run_study(path, **places, say=lambda *a: None)
    cells = tmp_path / "results" / "tiny" / "cells"
    assert not (cells / "wikitext-gum-k0.5-nokd-s0.json").exists()
    assert (tmp_path / "models" / "tiny" / "wikitext-gum-k0.5-nokd-s0.work" / "checkpoint" / "trainer.json").is_file()

    monkeypatch.setattr(loop, "save_checkpoint", original)
    said = []
    run_study(path, **places, say=said.append)
    assert any("resumed from" in line and "step 3" in line for line in said)
    log = [json.loads(line) for line in (cells / "wikitext-gum-k0.5-nokd-s0.log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [1, 2, 3, 4, 5, 6]


MINIATURE = """
name: mini-v2
model: {model}
tasks: [wikitext, samsum, wikisql, e2e]
seeds: [0]
options: {{steps: 2, context: 64, batch_size: 2, mu: 1.0, train_rows: 8}}
task_options: {{wikitext: {{train_rows: 4}}}}
grids:
  - {{methods: [gum], keeps: [0.5], tasks: [wikitext, samsum, wikisql, e2e]}}
  - {{methods: [obs], keeps: [0.25], tasks: [samsum]}}
evaluate: {{max_tokens: 256, context: 64, stride: 32, batch_size: 4}}
task_evaluate:
  samsum: {{limit: 3, sample_seed: 0, num_beams: 1, max_new_tokens: 6, context: 64}}
  wikisql: {{limit: 3, sample_seed: 0, num_beams: 1, max_new_tokens: 6, context: 64}}
  e2e: {{limit: 3, sample_seed: 0, num_beams: 1, max_new_tokens: 6, context: 64}}
analyze: {{max_tokens: 128, context: 32}}
"""


def test_a_miniature_of_the_v2_plan_runs_every_task_with_its_generation_metrics(capsys, tiny_model_dir, data_dir,
                                                                                 tmp_path):
    """Per-grid tasks, per-task options and evaluation, a seeded test subset, a fixed subset of the validation rows,
    and one-shot obs + recovery as a cell: through `ffnprune study`, every task's own metrics recorded."""
    path = tmp_path / "study.yaml"
    path.write_text(MINIATURE.format(model=tiny_model_dir("llama")))
    assert [c.name for c in read_study(path).cells] == [
        "wikitext-gum-k0.5-nokd-s0", "samsum-gum-k0.5-nokd-s0", "wikisql-gum-k0.5-nokd-s0", "e2e-gum-k0.5-nokd-s0",
        "samsum-obs-k0.25-nokd-s0"]
    argv = ["study", "--config", str(path), "--data", str(data_dir), "--results", str(tmp_path / "results"),
            "--models", str(tmp_path / "models")]
    assert main(argv) == 0, capsys.readouterr().err
    records = {r["cell"]: r for r in json.loads((tmp_path / "results" / "mini-v2" / "results.json").read_text())}
    assert len(records) == 4 + 5
    metrics = {task: set(records[f"{task}-gum-k0.5-nokd-s0"]["evaluation"]["metrics"]) for task in
               ("samsum", "wikisql", "e2e")}
    assert {"rouge1", "rouge2", "rougeL"} <= metrics["samsum"] and "exact_match" in metrics["wikisql"]
    assert {"bleu", "nist", "meteor", "rougeL", "cider"} <= metrics["e2e"]
    assert all("target_loss" in names for names in metrics.values())
    table = (tmp_path / "results" / "mini-v2" / "table.md").read_text()
    assert table.count("loss per target token") == 3  # the generation tasks', beside their own metric
    for task in ("samsum", "wikisql", "e2e"):
        evaluation = records[f"{task}-dense"]["evaluation"]
        assert evaluation["items"] == 3 and evaluation["sample_seed"] == 0
    assert records["samsum-gum-k0.5-nokd-s0"]["protocol"]["train_rows"] == 8
    assert records["wikitext-gum-k0.5-nokd-s0"]["protocol"]["train_rows"] == 4
    obs = records["samsum-obs-k0.25-nokd-s0"]
    assert obs["keep_actual"] == pytest.approx(0.25, abs=0.02) and 0 <= obs["uniqueness"] <= 1


def test_a_seeded_test_subset_is_the_same_items_for_every_model_and_not_the_first(data_dir):
    from ffnprune.config import EvaluateConfig
    from ffnprune.evaluation.run import check_data, select_items

    drawn = select_items(819, 50, seed=0)
    assert drawn == select_items(819, 50, seed=0) and drawn == sorted(set(drawn)) and len(drawn) == 50
    assert drawn != list(range(50)) and max(drawn) > 700  # spread over the split, not its head
    assert select_items(819, 50, seed=1) != drawn
    assert select_items(819, 50, seed=None) == list(range(50)) and select_items(10, None, None) == list(range(10))
    with pytest.raises(FfnpruneError, match="give --limit N too"):
        check_data(EvaluateConfig(task="samsum", data=str(data_dir), sample_seed=0))


def test_the_v2_plan_is_the_grid_the_claims_need():
    """Every task: six methods at keep 0.25 (obs + recovery among them, trained as long), distillation for random,
    movement and GUM, a second seed for random and GUM; keep 0.5 on WikiText only; each task's test subset seeded."""
    from pathlib import Path

    study = read_study(Path(__file__).parents[1] / "configs" / "study-v2.yaml")
    cells = {(c.task, c.method, c.keep, c.distill, c.seed) for c in study.cells}
    methods = ["random", "magnitude", "movement", "global-movement", "gum", "obs"]
    for task in ("wikitext", "samsum", "wikisql", "e2e"):
        assert {(task, m, 0.25, False, 0) for m in methods} <= cells
        assert {(task, m, 0.25, True, 0) for m in ("random", "movement", "gum")} <= cells
        assert {(task, m, 0.25, False, 1) for m in ("random", "gum")} <= cells
        steps = {study.prune_config(c, Path("x"), None).steps for c in study.cells if c.task == task}
        assert len(steps) == 1  # obs + recovery trains as long as fine-pruning
        if task != "wikitext":
            evaluation = study.evaluate_config("m", task, None)
            assert evaluation.limit and evaluation.sample_seed == 0 and evaluation.num_beams == 1  # greedy
    assert {c.task for c in study.cells if c.keep == 0.5} == {"wikitext"}


def _record(task, method, metric, distill=False, seed=0, uniqueness=None, keep=0.25, loss=None):
    record = {"task": task, "method": method, "metric": metric, "distill": distill, "seed": seed, "keep": keep,
              "uniqueness": uniqueness}
    if loss is not None:
        record["evaluation"] = {"metrics": {"target_loss": loss}}
    return record


def test_claims_follow_their_rules_in_each_metrics_direction():
    from ffnprune.study.claims import check_claims

    records = [_record("samsum", m, v) for m, v in (("random", 30.0), ("magnitude", 31.0), ("movement", 30.5),
                                                     ("global-movement", 31.5), ("obs", 34.0))]
    records += [_record("samsum", "random", 29.8, seed=1), _record("samsum", "gum", 33.0, uniqueness=0.5),
                _record("samsum", "gum", 32.8, seed=1, uniqueness=0.5), _record("samsum", "dense", 40.0, keep=1.0)]
    records[2]["uniqueness"] = 0.3  # movement
    records += [_record("samsum", m, v, distill=True) for m, v in (("random", 32.0), ("movement", 32.5),
                                                                   ("gum", 33.2))]
    records += [_record("wikitext", m, v) for m, v in (("random", 100.0), ("magnitude", 60.0), ("movement", 70.0))]
    verdicts = {(v.task, v.claim[0]): v for v in check_claims(records)}
    assert verdicts["samsum", "1"].verdict == "reproduced"  # 3.5% behind magnitude, within 5%
    assert verdicts["samsum", "2"].verdict == "reproduced" and "global-movement" in verdicts["samsum", "2"].figures
    assert verdicts["samsum", "3"].verdict == "reproduced"
    assert verdicts["samsum", "4"].verdict == "reproduced"  # range 3.0 without, 1.2 with distillation
    assert verdicts["samsum", "5"].verdict == "obs ahead"
    assert verdicts["wikitext", "1"].verdict == "not reproduced"  # perplexity: lower is better, 67% behind
    assert verdicts["wikitext", "2"].verdict == "not run yet" and verdicts["wikitext", "4"].verdict == "not run yet"
    records[5]["metric"] = 31.4  # random's second seed far off: a 3% seed spread swallows GUM's 4% lead
    assert check_claims(records)[1].verdict == "inconclusive at this budget"


def test_claims_at_an_exact_match_of_zero_are_inconclusive_not_a_division_by_zero():
    """WikiSQL's exact match can be 0 for every method at a small budget: the gaps are undefined, not a crash."""
    from ffnprune.study.claims import check_claims

    records = [_record("wikisql", m, 0.0) for m in ("random", "magnitude", "movement", "global-movement", "gum", "obs")]
    records += [_record("wikisql", m, 0.0, distill=True) for m in ("random", "movement", "gum")]
    verdicts = {v.claim[0]: v.verdict for v in check_claims(records)}
    assert verdicts["1"] == verdicts["2"] == verdicts["4"] == verdicts["5"] == \
        "inconclusive at this budget (metric 0 everywhere)"
    records[0]["metric"] = 0.02  # random alone above 0: it leads, and the gap is relative to it
    verdicts = {v.claim[0]: v for v in check_claims(records)}
    assert verdicts["1"].verdict == "reproduced" and "random 100.0% ahead" in verdicts["1"].figures
    assert verdicts["2"].verdict == "not reproduced" and "GUM 100.0% behind" in verdicts["2"].figures
    # Seeds at 0 and 2 points: a spread of 1.41 points, not 141% of a mean of 1, so 22 against 7 still decides.
    records += [_record("wikisql", "gum", 2.0, seed=1)]
    records[-5]["metric"], records[0]["metric"] = 22.0, 7.0  # obs, random
    verdicts = {v.claim[0]: v for v in check_claims(records)}
    assert verdicts["5"].verdict == "obs ahead" and "seed spread 1.41 points" in verdicts["5"].figures
    assert verdicts["4"].verdict == "reproduced"  # range 7 without, 0 with distillation: more than 2 x 1.41



def test_the_loss_per_target_token_vetoes_a_metric_it_contradicts_and_decides_where_the_metric_is_zero():
    """ROUGE rewards a string of stopwords: on SAMSum a collapsed random model ("to... the... is...") out-scored
    movement. The loss per target token (a log perplexity, lower is better, compared in nats) catches it."""
    from ffnprune.study.claims import check_claims

    figures = (("random", 13.8, 8.4), ("magnitude", 12.2, 9.2), ("movement", 10.7, 5.9),
               ("global-movement", 11.0, 5.0), ("gum", 12.0, 4.0), ("obs", 14.0, 2.0))
    records = [_record("samsum", m, v, loss=loss) for m, v, loss in figures]
    records += [_record("samsum", "random", 13.6, seed=1, loss=8.2)]  # seed spreads 0.14 points and 0.14 nats
    verdicts = {v.claim[0]: v for v in check_claims(records)}
    assert "disagree" in verdicts["1"].verdict  # ROUGE-L: random ahead of magnitude; loss: 2.4 nats behind movement
    assert "random 2.40 nats behind; seed spread 0.14 nats" in verdicts["1"].figures
    assert "disagree" in verdicts["2"].verdict  # ROUGE-L: GUM behind random; loss: 1.0 nats ahead of global movement
    assert verdicts["5"].verdict == "obs ahead"  # both agree
    for record in records:
        del record["evaluation"]
    verdicts = {v.claim[0]: v.verdict for v in check_claims(records)}
    assert verdicts["1"] == "reproduced" and verdicts["2"] == "not reproduced"  # the metric alone

    zeros = [_record("wikisql", m, 0.0, loss=loss) for m, _, loss in figures]
    verdicts = {v.claim[0]: v.verdict for v in check_claims(zeros)}
    assert verdicts["1"] == "not reproduced (on the loss per target token; the metric is 0 everywhere)"
    assert verdicts["2"].startswith("reproduced (on the loss") and verdicts["5"].startswith("obs ahead (on the loss")
    zeros[0]["evaluation"]["metrics"]["target_loss"] = 6.0  # 0.1 nats behind movement: 10.5% in perplexity, not 5%
    assert {v.claim[0]: v.verdict for v in check_claims(zeros)}["1"].startswith("not reproduced (on the loss")
    zeros += [_record("wikisql", "random", 0.0, seed=1, loss=7.0)]  # now 0.6 nats behind, within a spread of 0.71
    verdicts = {v.claim[0]: v.verdict for v in check_claims(zeros)}
    assert verdicts["1"] == "inconclusive at this budget (metric 0 everywhere)"

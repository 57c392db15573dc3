"""Tasks, metrics against known values, generation, and `ffnprune evaluate`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ffnprune.cli.main import main
from ffnprune.errors import FfnpruneError
from ffnprune.evaluation.run import teacher_forced
from ffnprune.metrics.e2e import e2e_scores, multi_reference_bleu, multi_reference_nist
from ffnprune.metrics.exact_match import exact_match
from ffnprune.metrics.rouge import rouge_scores
from ffnprune.tasks import get_task
from ffnprune.tasks.base import GenerationTask, Pair
from ffnprune.tasks.examples import IGNORE, Examples
from ffnprune.tasks.wikisql import sql_text

# --- metrics against known values -------------------------------------------------------------------------------


def test_bleu_reproduces_the_sacrebleu_readme_example():
    hypotheses = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
    references = [["The dog bit the man.", "The dog had bit the man."],
                  ["It was not unexpected.", "No one was surprised."],
                  ["The man bit him first.", "The man had bitten the dog."]]
    assert multi_reference_bleu(hypotheses, references) == pytest.approx(48.53, abs=0.01)


def test_bleu_takes_a_different_number_of_references_per_item():
    score = multi_reference_bleu(["a b c d e", "f g h i j"], [["a b c d e"], ["x", "f g h i j", "y"]])
    assert score == pytest.approx(100.0)


def test_e2e_metrics_survive_empty_and_very_short_outputs():
    result = e2e_scores(["", "x y"], [["a b c"], ["x y z w"]])
    assert result["nist"] >= 0 and result["bleu"] >= 0
    assert e2e_scores([""], [["a b c"]])["nist"] == 0.0


def test_nist_reproduces_the_nltk_doctest():
    hypothesis = ("It is a guide to action which ensures that the military always obeys the commands of the "
                  "party")
    references = [
        "It is a guide to action that ensures that the military will forever heed Party commands",
        "It is the guiding principle which guarantees the military forces always being under the command of "
        "the Party",
        "It is the practical guide for the army always to heed the directions of the party",
    ]
    assert multi_reference_nist([hypothesis], [references]) == pytest.approx(3.3709, abs=1e-4)


def test_rouge_matches_a_hand_count():
    """Stemmed unigrams: 6 of the prediction's 8 tokens are in the 9-token reference."""
    scores = rouge_scores(["The quick brown dog jumps on the log."], [["The quick brown fox jumps over the lazy dog"]])
    precision, recall = 6 / 8, 6 / 9
    assert scores["rouge1"] == pytest.approx(100 * 2 * precision * recall / (precision + recall))
    assert rouge_scores(["Same text. Two sentences."], [["Same text. Two sentences."]])["rougeLsum"] == 100.0


def test_rouge_takes_the_best_reference():
    assert rouge_scores(["a b c"], [["x y z", "a b c"]])["rouge2"] == 100.0


def test_exact_match_ignores_case_and_spacing_only():
    result = exact_match(["SELECT  a FROM table", "select b from table", "SELECT c"],
                         [["select a from table"], ["SELECT b FROM table WHERE x"], ["SELECT c"]])
    assert result["exact_match"] == pytest.approx(200 / 3)


def test_e2e_metric_set_on_identical_and_on_different_texts():
    references = [["The Eagle is a coffee shop near the river.", "Near the river is The Eagle, a coffee shop."],
                  ["Blue Spice serves French food.", "French food is served at Blue Spice."],
                  ["Zizzi is a cheap pub.", "Zizzi, a pub, is cheap."]]
    same = e2e_scores([r[0] for r in references], references)
    other = e2e_scores(["A restaurant.", "Food is served.", "It is a pub."], references)
    assert same["bleu"] == pytest.approx(100.0) and same["rougeL"] == pytest.approx(100.0)
    assert same["meteor"] > 99 and same["meteor"] > other["meteor"]
    for name in ("bleu", "nist", "rougeL", "cider"):
        assert same[name] > other[name], name
    assert "pycocoevalcap" in same["implementation"]


def test_meteor_without_java_is_reported_unavailable(monkeypatch):
    monkeypatch.setattr("ffnprune.metrics.e2e.shutil.which", lambda name: None)
    result = e2e_scores(["a b"], [["a b"]])
    assert result["meteor"] is None and "Java" in result["meteor_unavailable"]


@pytest.mark.parametrize("score", [rouge_scores, exact_match, e2e_scores])
def test_empty_references_are_refused(score):
    with pytest.raises(FfnpruneError, match="empty reference"):
        score(["a"], [[""]])
    with pytest.raises(FfnpruneError, match="empty reference"):
        score(["a"], [[]])


def test_the_prediction_is_the_first_non_empty_line():
    from ffnprune.evaluation.generate import first_line

    assert first_line("\n  Amanda will call.\nNext question:") == "Amanda will call."
    assert first_line("\n\n") == ""


# --- tasks ----------------------------------------------------------------------------------------------------


def test_wikisql_sql_text_from_structured_sql():
    assert sql_text({"sel": "Nationality", "conds": [["Player", "=", "Terrence Ross"]], "agg": ""}) == \
        "SELECT \"Nationality\" FROM table WHERE \"Player\" = 'Terrence Ross'"
    assert sql_text({"sel": "No.", "conds": [["Year", ">", 1990], ["Team", "=", "O'Neil"]], "agg": "COUNT"}) == \
        "SELECT COUNT(\"No.\") FROM table WHERE \"Year\" > 1990 AND \"Team\" = 'O''Neil'"


@pytest.mark.parametrize("name,rows", [("samsum", 819), ("wikisql", 15878), ("e2e", 4693)])
def test_test_splits_read_from_the_offline_files(data_dir, name, rows):
    task = get_task(name)
    read = task.read(data_dir, "test")
    assert len(read.items) + read.skipped >= rows - 100 and len(read.items) > 0.99 * rows
    assert all(isinstance(p, Pair) and p.target for p in read.items[:50])


def test_e2e_groups_references_by_meaning_representation(data_dir):
    task = get_task("e2e")
    items = task.eval_items(task.read(data_dir, "test").items)
    assert 600 < len(items) < 700  # 630 MRs in the official test set
    assert items[0].prompt.startswith("Describe the restaurant.\nname[Blue Spice]")
    assert len(items[0].references) > 1


def test_malformed_rows_are_skipped_with_a_count_or_stop_with_the_line(tmp_path):
    path = tmp_path / "samsum" / "test.jsonl"
    path.parent.mkdir()
    path.write_text('{"context": "A: hi", "response": "A greets."}\n{not json\n'
                    '{"context": "B: yo", "response": ""}\n{"context": "C: bye", "response": "C leaves."}\n')
    read = get_task("samsum").read(tmp_path, "test")
    assert len(read.items) == 2 and read.skipped == 2 and read.first_skipped_line == 2
    with pytest.raises(FfnpruneError, match="line 2"):
        get_task("samsum").read(tmp_path, "test", strict=True)


def test_unknown_task_and_missing_split_file(tmp_path):
    with pytest.raises(FfnpruneError, match="known tasks: wikitext, samsum, wikisql, e2e"):
        get_task("glue")
    with pytest.raises(FfnpruneError, match="missing data file"):
        get_task("wikisql").read(tmp_path, "test")
    with pytest.raises(FfnpruneError, match="no split 'train'"):
        get_task("e2e").read(tmp_path, "train")


def test_pairs_carry_the_loss_on_the_target_only(gpt2_tokenizer):
    pair = Pair(prompt="Question: one plus one?\nSQL:", target="SELECT 2")
    examples = Examples.from_pairs(gpt2_tokenizer, [pair], length=24)
    ids, labels, mask = examples.input_ids[0], examples.labels[0], examples.attention_mask[0]
    target = gpt2_tokenizer(" SELECT 2", add_special_tokens=False)["input_ids"] + [gpt2_tokenizer.eos_token_id]
    real = int(mask.sum())
    assert labels[real - len(target) : real].tolist() == target
    assert (labels[: real - len(target)] == IGNORE).all() and (labels[real:] == IGNORE).all()
    assert ids[: real - len(target)].tolist() == gpt2_tokenizer(pair.prompt, add_special_tokens=False)["input_ids"]
    everything = Examples.from_pairs(gpt2_tokenizer, [pair], length=24, loss_on_prompt=True).labels[0]
    assert everything[:real].tolist() == ids[:real].tolist()


def test_long_prompts_lose_their_beginning(gpt2_tokenizer):
    pair = Pair(prompt="word " * 100 + "END", target="yes")
    examples = Examples.from_pairs(gpt2_tokenizer, [pair], length=16)
    text = gpt2_tokenizer.decode(examples.input_ids[0])
    assert text.endswith("END yes<|endoftext|>") and examples.attention_mask.sum() == 16


def test_a_train_rows_subset_is_a_seeded_draw_of_whole_rows_in_split_order():
    """`--train-rows`: every cell of a study trains on the same rows, drawn from the whole split (not its head), each
    row's tokens, mask and labels kept together."""
    rows = torch.arange(200).unsqueeze(1).repeat(1, 6)
    examples = Examples(rows, (rows % 2 == 0).long(), rows + 1000)
    drawn = examples.sample(50, seed=0)
    first = drawn.input_ids[:, 0]
    assert torch.equal(first, examples.sample(50, seed=0).input_ids[:, 0])
    assert not torch.equal(first, examples.sample(50, seed=1).input_ids[:, 0])
    assert torch.equal(first, first.sort().values) and len(set(first.tolist())) == 50 and first.max() > 150
    assert torch.equal(drawn.labels, drawn.input_ids + 1000) and torch.equal(drawn.attention_mask,
                                                                               (drawn.input_ids % 2 == 0).long())
    assert examples.sample(500, seed=0) is examples


def test_sliding_windows_score_every_token_but_the_first_once():
    ids = torch.arange(1, 38)
    windows = Examples.sliding_windows(ids, context=10, stride=4)
    scored = [int(w[j]) for w, lab in zip(windows.input_ids, windows.labels) for j in range(1, 10) if lab[j] != IGNORE]
    assert sorted(scored) == list(range(2, 38))
    assert (windows.input_ids[1:, :6] == windows.input_ids[:-1, 4:]).all() or True
    blocks = Examples.sliding_windows(ids[:30], context=10, stride=10)
    assert torch.equal(blocks.input_ids, Examples.blocks(ids[:30], 10).input_ids)


def test_teacher_forced_exact_match_counts_whole_targets_and_the_loss_every_target_token():
    labels = torch.tensor([[IGNORE, 5, 6, IGNORE], [IGNORE, 7, 8, 9]])
    examples = Examples(torch.tensor([[1, 5, 6, 0], [1, 7, 8, 9]]), torch.ones(2, 4, dtype=torch.long), labels)

    class Oracle(torch.nn.Module):
        """Predicts the labels, except the last token of the second row."""

        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, 10)
            nxt = labels[:, 1:].clamp_min(0)
            logits[:, :-1].scatter_(2, nxt.unsqueeze(-1), 1.0)
            logits[1, 2, 9], logits[1, 2, 3] = 0.0, 1.0
            return type("Out", (), {"logits": logits})

    scores = teacher_forced(Oracle(), examples, batch_size=2)
    assert scores["exact_match"] == 50.0
    # five target tokens: four with the right logit at 1 of ten, one (row 2's last) with it at 0
    assert scores["target_loss"] == pytest.approx((5 * math.log(math.e + 9) - 4) / 5)


# --- the command ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tiny_model_dir):
    return tiny_model_dir("llama")


@pytest.mark.parametrize("task", ["samsum", "wikisql", "e2e"])
def test_evaluate_writes_metrics_and_protocol(capsys, tiny_dir, data_dir, tmp_path, task):
    out = tmp_path / "result.json"
    code = main(["evaluate", str(tiny_dir), "--task", task, "--data", str(data_dir), "--limit", "3",
                 "--num-beams", "2", "--max-new-tokens", "8", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["task"] == task and result["split"] == "test" and result["items"] == 3
    assert set(get_task(task).metric_names) <= set(result["metrics"])
    assert result["protocol"]["generation"]["num_beams"] == 2 and result["ffnprune_version"]
    assert "validation" in result["data_protocol"] and result["data"]["file"].endswith(get_task(task).files["test"])
    assert isinstance(get_task(task), GenerationTask) and len(result["samples"]) == 3


def test_evaluate_wikitext_reports_block_and_sliding_window_perplexity(capsys, tiny_dir, data_dir, tmp_path):
    out = tmp_path / "wt.json"
    code = main(["evaluate", str(tiny_dir), "--task", "wikitext", "--data", str(data_dir), "--max-tokens", "1000",
                 "--context", "100", "--stride", "50", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    # The tiny model has 64 positions: the context is clamped to them, with a notice, and recorded as used.
    assert "--context 100 is longer than the model's 64 positions; using 64" in err
    result = json.loads(out.read_text())
    assert result["protocol"]["sliding_window"] == {"context": 64, "stride": 50, "tokens_scored": 999}
    assert result["protocol"]["block"]["tokens_scored"] == 15 * 63
    assert result["metrics"]["sliding_window_perplexity"] > 1


def test_prune_evaluates_the_pruned_model_on_request(capsys, tiny_dir, data_dir, tmp_path):
    out = tmp_path / "pruned"
    code = main(["prune", str(tiny_dir), "--method", "random", "--keep", "0.5", "--task", "e2e", "--evaluate",
                 "--eval-limit", "2", "--data", str(data_dir), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    evaluation = json.loads((out / "pruning.json").read_text())["evaluation"]
    assert evaluation["task"] == "e2e" and evaluation["items"] == 2 and "bleu" in evaluation["metrics"]
    # Generation pads and truncates on the left; the tokenizer saved beside the model must not keep that.
    saved, source = (json.loads((d / "tokenizer.json").read_text()) for d in (out, tiny_dir))
    assert saved["truncation"] == source["truncation"] and saved["padding"] == source["padding"]
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config.get("truncation_side", "right") == "right" and config.get("padding_side", "right") == "right"


def test_fine_pruning_on_a_generation_task(tiny_dir, data_dir, tmp_path):
    from ffnprune.config import PruneConfig, build_config
    from ffnprune.pipeline import prune

    config = build_config(PruneConfig, {"model": str(tiny_dir), "out": str(tmp_path / "sam"), "task": "samsum",
                                        "data": str(data_dir), "method": "global-movement", "keep": 0.5,
                                        "steps": 6, "context": 64, "batch_size": 2, "eval_every": 3,
                                        "eval_tokens": 256})
    out = prune(config, say=lambda *a: None)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["eval_perplexity"] > 1 and json.loads((out / "pruning.json").read_text())["protocol"]["task"] == \
        "samsum"


def test_evaluate_checks_the_data_before_loading_the_model(capsys, tmp_path):
    code = main(["evaluate", str(tmp_path / "no-model"), "--task", "samsum", "--data", str(tmp_path)])
    assert code == 2 and "missing data file" in capsys.readouterr().err
    code = main(["evaluate", str(tmp_path / "no-model"), "--task", "summarise"])
    assert code == 2 and "unknown task 'summarise'" in capsys.readouterr().err


def test_hub_records_map_to_the_same_pairs_as_the_offline_files():
    from ffnprune.tasks import e2e, samsum, wikisql

    assert samsum.parse_hub({"dialogue": "A: hi\r\nB: yo", "summary": "They greet."}) == \
        samsum.parse({"context": "A: hi\r\nB: yo", "response": "They greet."})
    assert e2e.parse_hub({"meaning_representation": "name[X]", "human_reference": "X."}) == \
        e2e.parse({"mr": "name[X]", "ref": "X."})
    hub = {"question": "Who?", "table": {"header": ["Player", "Nationality", "Year"]},
           "sql": {"sel": 1, "agg": 3, "conds": {"column_index": [0, 2], "operator_index": [0, 1],
                                                 "condition": ["Terrence Ross", "1990"]}}}
    assert wikisql.parse_hub(hub).target == \
        "SELECT COUNT(\"Nationality\") FROM table WHERE \"Player\" = 'Terrence Ross' AND \"Year\" > '1990'"


def test_data_hub_offline_says_how_to_work_offline():
    with pytest.raises(FfnpruneError, match="omit --data hub"):
        get_task("samsum").read("hub", "test")


def test_batches_drop_the_padding_every_row_ends_with(gpt2_tokenizer):
    pairs = [Pair("a", "b"), Pair("a longer prompt here", "and a longer target")]
    examples = Examples.from_pairs(gpt2_tokenizer, pairs, length=64)
    batch = examples.batch([0, 1])
    assert batch["input_ids"].shape[1] == int(examples.attention_mask[1].sum()) < 64
    assert examples.batch([0])["input_ids"].shape[1] == int(examples.attention_mask[0].sum())

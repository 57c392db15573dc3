"""--train-data: general text streamed into packed sequences, or text the dense model writes itself; --train-tokens
as the budget; --distill-loss kl. Through the CLI on a tiny checkpoint written to disk."""

from __future__ import annotations

import hashlib
import json
import tracemalloc

import pytest
import torch

from ffnprune.cli.main import main
from ffnprune.training.data import PackedSequences, Source, generate_documents, pack
from helpers import stopped_after_first_checkpoint

TRAIN = ["--context", "32", "--batch-size", "2", "--lr", "1e-3"]


def _log(directory):
    return [json.loads(line) for line in (directory / "train_log.jsonl").read_text().splitlines()]


def test_a_file_larger_than_the_budget_is_read_only_as_far_as_needed(tmp_path, gpt2_tokenizer):
    corpus = tmp_path / "corpus.jsonl"
    with corpus.open("w") as out:
        for index in range(2000):
            out.write(json.dumps({"text": f"Document {index} tells of rivers, towns and the sea. " * 20}) + "\n")
        out.write("this line is not JSON: a reader that went this far would fail\n")
    tracemalloc.start()
    record = pack([Source(corpus, 1.0)], gpt2_tokenizer, 50_000, tmp_path / "packed.bin", seed=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert record["tokens"] == 50_000 and (tmp_path / "packed.bin").stat().st_size == 4 * 50_000
    assert peak < corpus.stat().st_size / 4  # documents are read and tokenized one at a time
    sequences = PackedSequences(tmp_path / "packed.bin", 32)
    assert len(sequences) == 50_000 // 32
    batch = sequences.batch([0, 5])
    expected = gpt2_tokenizer("Document 0 tells", add_special_tokens=False)["input_ids"]
    assert batch["input_ids"][0, :len(expected)].tolist() == expected
    assert torch.equal(batch["labels"], batch["input_ids"]) and batch["attention_mask"].all()


def test_a_mixture_draws_from_each_source_by_weight(tmp_path, gpt2_tokenizer):
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"text": f"{name} " * 30}) + "\n"
                                                        for _ in range(500)))
    record = pack([Source(tmp_path / "a.jsonl", 3.0), Source(tmp_path / "b.jsonl", 1.0)], gpt2_tokenizer, 20_000,
                  tmp_path / "packed.bin", seed=0)
    shares = [source["tokens"] / record["tokens"] for source in record["sources"]]
    assert shares[0] == pytest.approx(0.75, abs=0.05)


def test_generated_text_is_the_same_for_a_seed(tmp_path, tiny_model_dir):
    from ffnprune.models import load_model

    loaded = load_model(str(tiny_model_dir("llama")))
    first = generate_documents(loaded.model, loaded.tokenizer, 300, 32, 7, tmp_path / "a.jsonl", batch_size=4)
    again = generate_documents(loaded.model, loaded.tokenizer, 300, 32, 7, tmp_path / "b.jsonl", batch_size=4)
    other = generate_documents(loaded.model, loaded.tokenizer, 300, 32, 8, tmp_path / "c.jsonl", batch_size=4)
    assert first["sha256"] == again["sha256"] != other["sha256"]
    assert first["tokens"] >= 300 and first["temperature"] == 1.0


def test_recovery_on_streamed_files_trains_for_the_token_budget(tmp_path, tiny_model_dir, data_dir):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "one.txt").write_text("Plain text of the first shard, with several lines.\n" * 300)
    (shards / "two.jsonl").write_text("".join(json.dumps({"text": "A record of the second shard."}) + "\n"
                                              for _ in range(300)))
    out = tmp_path / "out"
    assert main(["prune", str(tiny_model_dir("llama")), "--calibration-tokens", "512", "--calibration-context", "32",
                 "--data", str(data_dir), "--train-data", str(shards), "--train-tokens", "640", "--distill",
                 "--distill-loss", "kl", *TRAIN, "--out", str(out)]) == 0
    metadata = json.loads((out / "pruning.json").read_text())
    assert metadata["steps"] == 10  # 640 tokens / (2 x 32)
    protocol = metadata["protocol"]
    assert protocol["tokens_seen"] == 640 and protocol["train_data"]["tokens"] == 640
    assert protocol["train_data"]["sources"][0]["path"] == str(shards)
    log = _log(out)
    assert all(record["loss"] == pytest.approx(record["distill_loss"]) for record in log)  # KL only
    assert "tokens seen" in (out / "README.md").read_text()


def test_a_killed_recovery_on_generated_text_resumes_to_the_same_log(tmp_path, tiny_model_dir, data_dir,
                                                                     monkeypatch):
    import ffnprune.pipeline as pipeline

    dense = str(tiny_model_dir("llama"))
    common = ["--calibration-tokens", "512", "--calibration-context", "32", "--data", str(data_dir), "--train-data",
              "generated", "--train-tokens", "512", "--checkpoint-every", "4", *TRAIN]
    assert main(["prune", dense, *common, "--out", str(tmp_path / "whole")]) == 0

    with stopped_after_first_checkpoint():
        assert main(["prune", dense, *common, "--out", str(tmp_path / "killed")]) == 130
    work = tmp_path / "killed.work"
    generated = (work / "generated.jsonl").read_bytes()

    def regenerate(*args, **kwargs):
        raise AssertionError("a resumed run sampled its training text again")

    monkeypatch.setattr(pipeline, "generate_documents", regenerate)
    assert main(["prune", "--resume", str(work)]) == 0
    losses = [record["loss"] for record in _log(tmp_path / "whole")]
    assert [record["loss"] for record in _log(tmp_path / "killed")] == pytest.approx(losses, abs=1e-6)
    resumed = json.loads((tmp_path / "killed" / "pruning.json").read_text())["protocol"]["train_data"]
    whole = json.loads((tmp_path / "whole" / "pruning.json").read_text())["protocol"]["train_data"]
    assert resumed["generated"]["sha256"] == whole["generated"]["sha256"]
    assert resumed["generated"]["sha256"] == hashlib.sha256(generated).hexdigest()


def test_calibration_on_text_the_dense_model_writes(tmp_path, tiny_model_dir):
    dense = str(tiny_model_dir("llama"))
    kept = []
    for run in ("a", "b"):
        assert main(["prune", dense, "--calibration-data", "generated", "--calibration-tokens", "256",
                     "--calibration-context", "32", "--out", str(tmp_path / run)]) == 0
        metadata = json.loads((tmp_path / run / "pruning.json").read_text())
        calibration = metadata["one_shot"]["calibration"]
        assert calibration["generated"]["tokens"] >= 256 and calibration["tokens"] >= 256
        assert "file" not in calibration  # the temporary file is gone; its digest stays
        kept.append((calibration["generated"]["sha256"], metadata["kept_neurons"]))
    assert kept[0] == kept[1]  # the same seed writes the same text and keeps the same neurons

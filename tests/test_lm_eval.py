"""A pruned model directory evaluates with EleutherAI's lm-evaluation-harness, on a local task, both ways."""

from __future__ import annotations

import json
import math
import os

import pytest

from ffnprune.io.pruned_dir import load_pruned

TASK = """task: wikitext_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


@pytest.fixture(scope="module")
def pruned_dir(tmp_path_factory, gpt2_tokenizer):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from ffnprune.adapters import adapter_for
    from ffnprune.compaction import compact_mlps
    from ffnprune.io.pruned_dir import save_pruned
    from tiny_models import tiny_model

    model = tiny_model("llama", vocab_size=len(gpt2_tokenizer))
    compact_mlps(model, adapter_for(model.config), [list(range(0, 80, 2)), [], list(range(80)), [3]])
    return save_pruned(model, gpt2_tokenizer, tmp_path_factory.mktemp("harness") / "pruned", {"method": "test"})


def test_lm_eval_scores_a_pruned_model_by_object_and_by_path(pruned_dir, data_dir, tmp_path, gpt2_tokenizer):
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    paragraphs = [line.strip() for line in (data_dir / "wikitext/wikitext-2-v1/wiki.test.tokens").open()
                  if line.strip() and not line.startswith(" =")][:6]
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs))
    (tmp_path / "wikitext_local.yaml").write_text(TASK.format(docs=docs))
    tasks = TaskManager(include_path=str(tmp_path))

    results = []
    for model in (HFLM(pretrained=load_pruned(pruned_dir), tokenizer=gpt2_tokenizer, device="cpu", batch_size=2),
                  HFLM(pretrained=str(pruned_dir), trust_remote_code=True, device="cpu", batch_size=2)):
        output = lm_eval.simple_evaluate(model=model, tasks=["wikitext_local"], task_manager=tasks)
        results.append(output["results"]["wikitext_local"])
    by_object, by_path = results
    assert by_object["sample_len"] == 6
    assert math.isfinite(by_object["word_perplexity,none"]) and by_object["bits_per_byte,none"] > 0
    assert by_object["word_perplexity,none"] == pytest.approx(by_path["word_perplexity,none"], rel=1e-5)

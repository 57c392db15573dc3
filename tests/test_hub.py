"""Hub-ready directories: the model card parses with huggingface_hub, the layout is the hub's, the safetensors
header carries the pruning summary. (Uploading needs the network; its refusals offline are in bad_inputs.py.)"""

from __future__ import annotations

import json

from huggingface_hub import ModelCard
from safetensors import safe_open

from ffnprune.cli.main import main
from ffnprune.io.model_card import model_card


def test_a_pruned_directory_is_hub_ready(tiny_model_dir, tmp_path, data_dir):
    out = tmp_path / "tiny-obs"
    assert main(["-q", "prune", str(tiny_model_dir("llama")), "--method", "obs", "--keep", "0.5",
                 "--calibration-tokens", "1024", "--calibration-context", "32", "--data", str(data_dir),
                 "--evaluate", "--eval-limit", "256", "--out", str(out)]) == 0
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "transformers" and "ffnprune" in card.data.tags and "obs" in card.data.tags
    assert card.data.base_model is None  # a local source is not a hub id
    metadata = json.loads((out / "pruning.json").read_text())
    perplexity = metadata["evaluation"]["metrics"]["perplexity"]
    assert f"| perplexity | {perplexity:.4g} |" in card.text and "trust_remote_code=True" in card.text
    assert "40 in every layer" in card.text
    # The hub's layout: everything at the top level, weights in safetensors, the modelling file beside them.
    names = {p.name for p in out.iterdir()}
    assert {"README.md", "config.json", "model.safetensors", "modeling_ffnprune.py", "pruning.json",
            "tokenizer.json"} <= names and not any(p.is_dir() for p in out.iterdir())
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        header = handle.metadata()
    assert header["format"] == "pt"
    assert json.loads(header["ffnprune"])["mlp_widths"] == metadata["mlp_widths"] == [40, 40, 40, 40]

    uniform = tmp_path / "tiny-obs-uniform"
    assert main(["-q", "export", str(out), "--uniform", "--out", str(uniform)]) == 0
    card = ModelCard.load(uniform / "README.md")
    assert "trust_remote_code" not in card.text and "uniform export" in card.text


def test_a_hub_source_becomes_the_cards_base_model():
    card = ModelCard(model_card({"source_model": "smollm2-135m", "method": "gum"}, [768] * 30, "smol-gum"))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    card = ModelCard(model_card({"source_model": "EleutherAI/pythia-160m", "method": "obs"}, [1536] * 12, "p"))
    assert card.data.base_model == "EleutherAI/pythia-160m"

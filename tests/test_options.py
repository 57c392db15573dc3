"""One validation for flags, YAML and Python; the saved dtype; whose warnings are labelled as ffnprune's."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors import safe_open

from ffnprune.cli.main import main
from ffnprune.config import PruneConfig, build_config
from ffnprune.errors import FfnpruneError, FfnpruneWarning
from ffnprune.messages import configure_cli_logging
from tiny_models import tiny_model


def test_yaml_strings_and_numbers_get_real_types_or_an_error():
    config = build_config(PruneConfig, {"distill": "false", "steps": "3", "lr": "1e-3", "mixed_precision": "bf16"})
    assert config.distill.distill is False and config.steps == 3 and config.training.lr == 1e-3
    for values, message in (({"steps": 2.7}, "--steps 2.7: input should be a valid integer"),
                            ({"distill": "maybe"}, "--distill 'maybe'"),
                            ({"method": ["gum"]}, "--method ['gum']: input should be a valid string"),
                            ({"calibration_device": "tpu"}, "--calibration-device 'tpu'")):
        with pytest.raises(FfnpruneError, match=message.replace("[", r"\[").replace("]", r"\]")):
            build_config(PruneConfig, values)


def test_booleans_have_negative_flags(tiny_model_dir, tmp_path, capsys):
    args = ["prune", str(tiny_model_dir("llama")), "--method", "random", "--out", str(tmp_path / "o")]
    assert main([*args, "--evaluate", "--no-evaluate", "--eval-limit", "5"]) == 2  # --no-evaluate wins
    assert "add --evaluate" in capsys.readouterr().err


def _bf16_checkpoint(tmp_path, gpt2_tokenizer):
    directory = tmp_path / "bf16"
    tiny_model("llama", vocab_size=len(gpt2_tokenizer)).to(torch.bfloat16).save_pretrained(directory)
    gpt2_tokenizer.save_pretrained(directory)
    return directory


def _stored_dtypes(directory) -> set[str]:
    with safe_open(str(directory / "model.safetensors"), "pt") as handle:
        return {str(handle.get_slice(name).get_dtype()) for name in handle.keys()}


def test_saved_weights_keep_the_source_dtype_unless_told(tmp_path, gpt2_tokenizer):
    source = _bf16_checkpoint(tmp_path, gpt2_tokenizer)
    assert main(["-q", "prune", str(source), "--method", "random", "--out", str(tmp_path / "same")]) == 0
    assert _stored_dtypes(tmp_path / "same") == {"BF16"}
    assert json.loads((tmp_path / "same" / "pruning.json").read_text())["saved_dtype"] == "bfloat16"
    assert main(["-q", "prune", str(source), "--method", "random", "--dtype", "float32",
                 "--out", str(tmp_path / "f32")]) == 0
    assert _stored_dtypes(tmp_path / "f32") == {"F32"}


def test_only_ffnprune_warnings_carry_its_label(capsys):
    """Other libraries' warnings go on to the usual display (their own category and place), not relabelled."""
    passed_on = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, *rest, **kw: passed_on.append((str(message), category))
        configure_cli_logging()
        warnings.warn("from ffnprune", FfnpruneWarning, stacklevel=1)
        warnings.warn("from another library", FutureWarning, stacklevel=1)
    assert "ffnprune: warning: from ffnprune" in capsys.readouterr().err
    assert passed_on == [("from another library", FutureWarning)]

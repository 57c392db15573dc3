"""Turning the MODEL argument into a loaded model and tokenizer."""

from ffnprune.models.resolve import (
    SMOLLM2_ALIAS,
    LoadedModel,
    ModelShape,
    check_model_spec,
    fit_context,
    load_model,
    load_tokenizer,
    model_positions,
    peek_config,
    peek_model,
    pick_device,
    stored_dtype,
)

__all__ = ["SMOLLM2_ALIAS", "LoadedModel", "ModelShape", "check_model_spec", "fit_context", "load_model",
           "load_tokenizer", "model_positions", "peek_config", "peek_model", "pick_device", "stored_dtype"]

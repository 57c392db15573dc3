"""Turning the MODEL argument into a loaded model and tokenizer."""

from ffnprune.models.resolve import (
    SMOLLM2_ALIAS,
    LoadedModel,
    check_model_spec,
    fit_context,
    load_model,
    model_positions,
    pick_device,
)

__all__ = ["SMOLLM2_ALIAS", "LoadedModel", "check_model_spec", "fit_context", "load_model", "model_positions",
           "pick_device"]

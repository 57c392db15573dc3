"""Turning the MODEL argument into a loaded model and tokenizer."""

from ffnprune.models.resolve import SMOLLM2_ALIAS, LoadedModel, load_model, pick_device

__all__ = ["SMOLLM2_ALIAS", "LoadedModel", "load_model", "pick_device"]

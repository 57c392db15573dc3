"""Modelling code for a model pruned by ffnprune: its source architecture with one MLP width per layer.

This file is copied, as is, into every saved pruned model (as modeling_ffnprune.py, with one line appended that
names the source class), so that

    transformers.AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

loads the model where ffnprune is not installed. It must therefore import nothing but torch and transformers.
`config.ffnprune` says where each layer's MLP projections live and how wide each layer is.
"""

import functools
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers import CONFIG_MAPPING, PretrainedConfig
from transformers.pytorch_utils import Conv1D

MODELING_FILE = "modeling_ffnprune.py"
REMOTE_CLASS = "FfnprunedForCausalLM"
CONFIG_CLASS = "FfnprunedConfig"
_SOURCE_TAIL = "\n\n# The source architecture of this pruned model.\n"
# config.json's model_type: no stock class claims it, so plain from_pretrained (without remote code) stops and asks
# for trust_remote_code=True, instead of building the stock model at one width and offering
# ignore_mismatched_sizes=True, which would load random MLPs. AutoTokenizer takes trust_remote_code=True too (without
# it transformers asks, then falls back to the tokenizer files).
PRUNED_MODEL_TYPE = "ffnprune"


def stock_config_dict(values):
    """config.json's values with the source architecture's model_type (kept in config.ffnprune) restored."""
    spec = values.get("ffnprune") or {}
    if values.get("model_type") == PRUNED_MODEL_TYPE:
        values = {**values, "model_type": spec["model_type"]}
    return values


class FfnprunedConfig:
    """auto_map's AutoConfig: reads config.json into the source architecture's own config class."""

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoConfig"):
        pass

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        values, kwargs = PretrainedConfig.get_config_dict(pretrained_model_name_or_path, **kwargs)
        values = stock_config_dict(values)
        return CONFIG_MAPPING[values["model_type"]].from_dict(values, **kwargs)


def mark_pruned_config(save_directory):
    """Give a saved config.json the pruned model_type and the AutoConfig entry that reads it."""
    path = os.path.join(save_directory, "config.json")
    with open(path) as handle:
        values = json.load(handle)
    values["model_type"] = PRUNED_MODEL_TYPE
    values["auto_map"] = {"AutoConfig": f"{MODELING_FILE[:-3]}.{CONFIG_CLASS}",
                          "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{REMOTE_CLASS}"}
    with open(path, "w") as handle:
        json.dump(values, handle, indent=2, sort_keys=True)
        handle.write("\n")


def modeling_source(base_name):
    """This file as it is saved beside a pruned model of class `base_name` (the line naming it appended once)."""
    source = Path(__file__).read_text().split(_SOURCE_TAIL)[0]
    return (f"{source}{_SOURCE_TAIL}from transformers import {base_name}  # noqa: E402\n\n"
            f"{REMOTE_CLASS} = pruned_causal_lm({base_name})\n")


class PrunedConv1D(Conv1D):
    """GPT-2's Conv1D (weight [in, out]) that also runs when a layer keeps no neuron (in or out features 0)."""

    def forward(self, x):
        out = torch.addmm(self.bias, x.flatten(0, -2), self.weight)
        return out.view(*x.shape[:-1], self.nf)


def new_projection(layout, in_features, out_features, like, bias=False):
    """An uninitialised projection of the given shape, on `like`'s device and dtype, with a bias if `like` has one
    or `bias` asks for one."""
    with warnings.catch_warnings():  # a layer that keeps no neuron is intended
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        if layout == "conv1d":
            projection = PrunedConv1D(out_features, in_features)
            return projection.to(device=like.weight.device, dtype=like.weight.dtype)
        return nn.utils.skip_init(
            nn.Linear, in_features, out_features, bias=bias or like.bias is not None,
            device=like.weight.device, dtype=like.weight.dtype,
        )


def projection_features(layout, projection):
    """(in_features, out_features) of a Linear or Conv1D."""
    rows, columns = projection.weight.shape
    return (rows, columns) if layout == "conv1d" else (columns, rows)


def resize_layer(layer, spec, width):
    """Replace one decoder layer's MLP projections by empty ones of `width` neurons. The output projection gains a
    bias where the source architecture has none if `spec["output_bias"]` (one-shot pruning's reconstruction)."""
    layout = spec["layout"]
    for path in spec["inputs"]:
        old = layer.get_submodule(path)
        hidden, _ = projection_features(layout, old)
        # a fused projection (Phi-3's gate_up_proj) stacks `fused` blocks of `width` rows
        layer.set_submodule(path, new_projection(layout, hidden, width * spec.get("fused", 1), like=old))
    old = layer.get_submodule(spec["output"])
    _, hidden = projection_features(layout, old)
    layer.set_submodule(spec["output"], new_projection(layout, width, hidden, like=old,
                                                       bias=bool(spec.get("output_bias"))))


def resize_mlps(model, spec):
    """Replace every layer's MLP projections by empty ones of that layer's width (weights are loaded after)."""
    layers = model.get_submodule(spec["layers"])
    if len(layers) != len(spec["mlp_widths"]):
        raise ValueError(f"config.ffnprune lists {len(spec['mlp_widths'])} MLP widths for {len(layers)} layers")
    for layer, width in zip(layers, spec["mlp_widths"]):
        resize_layer(layer, spec, width)


@functools.cache
def pruned_causal_lm(base):
    """A subclass of a transformers causal-LM class whose MLPs take their widths from config.ffnprune."""

    class FfnprunedForCausalLM(base):
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            resize_mlps(self, config.ffnprune)

        def save_pretrained(self, save_directory, *args, **kwargs):
            """Whoever saves the model (Trainer, a PEFT merge, push_to_hub) writes a directory that loads again:
            the modelling file beside the weights and auto_map naming its class."""
            self.config.auto_map = {"AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.{REMOTE_CLASS}"}
            super().save_pretrained(save_directory, *args, **kwargs)
            if kwargs.get("is_main_process", True):
                path = os.path.join(save_directory, MODELING_FILE)
                with open(path, "w") as handle:
                    handle.write(modeling_source(self.config.ffnprune["base_class"]))
                if self.config.ffnprune.get("model_type"):
                    mark_pruned_config(save_directory)

    # config.architectures records this name: a runtime that reads it must not take the model for a stock one.
    return FfnprunedForCausalLM

"""Small randomly initialised models of every supported architecture, for fast tests."""

from __future__ import annotations

import torch
import transformers

VOCAB = 128


def tiny_config(model_type: str, vocab_size: int = VOCAB):
    common = dict(vocab_size=vocab_size)
    if model_type == "gpt2":
        return transformers.GPT2Config(n_embd=32, n_layer=4, n_head=4, n_positions=64, **common)
    if model_type == "gpt_neo":
        return transformers.GPTNeoConfig(
            hidden_size=32, num_layers=4, num_heads=4, max_position_embeddings=64, window_size=8,
            attention_types=[[["global", "local"], 2]], **common,
        )
    if model_type == "gpt_neox":
        return transformers.GPTNeoXConfig(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
            max_position_embeddings=64, **common,
        )
    if model_type == "opt":
        return transformers.OPTConfig(
            hidden_size=32, num_hidden_layers=4, num_attention_heads=4, ffn_dim=96, max_position_embeddings=64,
            word_embed_proj_dim=32, **common,
        )
    gated = dict(hidden_size=32, intermediate_size=80, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64, **common)
    if model_type == "gemma2":
        # head_dim is its own setting in Gemma, and the query scale follows it (as llama.cpp assumes); layers
        # alternate sliding-window (8 tokens) and full attention
        return transformers.Gemma2Config(**gated, head_dim=8, query_pre_attn_scalar=8, sliding_window=8,
                                         layer_types=["sliding_attention", "full_attention"] * 2)
    if model_type == "gemma3_text":
        # as released: every sixth layer global, the others a sliding window (which mlx-lm and llama.cpp assume)
        kinds = ["sliding_attention"] * 5 + ["full_attention"]
        return transformers.Gemma3TextConfig(**{**gated, "num_hidden_layers": 6}, head_dim=8, query_pre_attn_scalar=8,
                                             sliding_window=8, layer_types=kinds)
    if model_type == "phi3":
        return transformers.Phi3Config(**gated, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    classes = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}
    return classes[model_type](**gated)


def tiny_model(model_type: str, seed: int = 0, vocab_size: int = VOCAB):
    """A tiny model whose biases and norms are random too, so a test sees every parameter's effect."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(model_type, vocab_size))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.5)
            else:
                parameter.mul_(1 + 0.1 * torch.randn_like(parameter))
    return model.eval()

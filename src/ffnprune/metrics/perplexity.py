"""Perplexity over fixed, non-overlapping blocks of a tokenised text."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ffnprune.errors import FfnpruneError


def token_ids(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids[:max_tokens] if max_tokens else ids, dtype=torch.long)


@torch.inference_mode()
def block_perplexity(model, ids: torch.Tensor, context: int, batch_size: int = 4) -> dict:
    """exp(mean NLL) over every token but the first of each block of `context` tokens; a partial last block is
    dropped. Returns the figure with its protocol (context, stride, tokens scored)."""
    blocks = ids[: len(ids) // context * context].view(-1, context)
    if len(blocks) == 0:
        raise FfnpruneError(f"the text has {len(ids)} tokens, fewer than one block of {context}; "
                            "give more text or a smaller context")
    device = next(model.parameters()).device
    total_nll, scored = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start : start + batch_size].to(device)
        logits = model(batch).logits[:, :-1].float()
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1), reduction="sum")
        total_nll += nll.item()
        scored += batch[:, 1:].numel()
    mean_nll = total_nll / scored
    return {
        "perplexity": math.exp(mean_nll),
        "mean_nll": mean_nll,
        "tokens_scored": scored,
        "protocol": {"kind": "non-overlapping blocks", "context": context, "stride": context,
                     "blocks": len(blocks), "tokens_read": int(len(blocks) * context)},
    }

"""Perplexity: over the label tokens of a task's examples, and over fixed blocks of a text."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ffnprune.errors import FfnpruneError
from ffnprune.messages import progress_bar
from ffnprune.tasks.examples import IGNORE, Examples


def token_ids(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids[:max_tokens] if max_tokens else ids, dtype=torch.long)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of each next token that carries a label, in at least float32."""
    logits = logits[:, :-1].reshape(-1, logits.size(-1))
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE, reduction=reduction)


@torch.inference_mode()
def examples_perplexity(model, examples: Examples, batch_size: int = 4, desc: str = "perplexity") -> dict:
    """exp(mean NLL) over every labelled next token of the examples."""
    device = next(model.parameters()).device
    total_nll, scored = 0.0, 0
    for start in progress_bar(range(0, len(examples), batch_size), desc=desc):
        rows = range(start, min(start + batch_size, len(examples)))
        batch = {k: v.to(device) for k, v in examples.batch(rows).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total_nll += causal_lm_loss(logits, batch["labels"], reduction="sum").item()
        scored += int((batch["labels"][:, 1:] != IGNORE).sum())
    if scored == 0:
        raise FfnpruneError("no token carries a label in these examples; nothing to evaluate")
    mean_nll = total_nll / scored
    return {"perplexity": math.exp(mean_nll), "mean_nll": mean_nll, "tokens_scored": scored}


def block_perplexity(model, ids: torch.Tensor, context: int, batch_size: int = 4) -> dict:
    """Perplexity over non-overlapping blocks of `context` tokens (every token but each block's first is scored;
    a partial last block is dropped), with its protocol."""
    examples = Examples.blocks(ids, context)
    if len(examples) == 0:
        raise FfnpruneError(f"the text has {len(ids)} tokens, fewer than one block of {context}; "
                            "give more text or a smaller context")
    result = examples_perplexity(model, examples, batch_size)
    result["protocol"] = {"kind": "non-overlapping blocks", "context": context, "stride": context,
                          "blocks": len(examples), "tokens_read": len(examples) * context}
    return result

"""Batched beam-search generation of one line per prompt."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm


@dataclass(frozen=True)
class GenerationSettings:
    num_beams: int = 10
    length_penalty: float = 0.9
    no_repeat_ngram_size: int = 4
    max_new_tokens: int = 64
    batch_size: int = 8
    max_prompt_tokens: int = 448  # longer prompts keep their end (the text nearest the answer)


def _prepare_tokenizer(tokenizer):
    """A copy set up for batched generation: padding and truncation on the left. The caller's tokenizer is left
    as it was: it may be saved beside the model afterwards, and a fast tokenizer's backend keeps the truncation of
    its last call in tokenizer.json, which would cut every later user's inputs."""
    tokenizer = copy.deepcopy(tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    tokenizer.truncation_side = "left"
    return tokenizer


def first_line(text: str) -> str:
    """Targets are one line: the generation's first non-empty line (models often open with a line break)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


@torch.inference_mode()
def generate(model, tokenizer, prompts: list[str], settings: GenerationSettings, progress: bool = True) -> list[str]:
    tokenizer = _prepare_tokenizer(tokenizer)
    device = next(model.parameters()).device
    outputs = []
    for start in tqdm(range(0, len(prompts), settings.batch_size), desc="generating", disable=not progress):
        batch = tokenizer(prompts[start : start + settings.batch_size], return_tensors="pt", padding=True,
                          truncation=True, max_length=settings.max_prompt_tokens).to(device)
        beams = {"length_penalty": settings.length_penalty, "early_stopping": True} if settings.num_beams > 1 else {}
        generated = model.generate(
            **batch, num_beams=settings.num_beams, no_repeat_ngram_size=settings.no_repeat_ngram_size,
            max_new_tokens=settings.max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, **beams,  # greedy decoding takes no beam settings
        )
        new_tokens = generated[:, batch["input_ids"].shape[1] :]
        outputs.extend(first_line(t) for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return outputs

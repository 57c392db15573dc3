"""Tokenised examples of a task: fixed-length rows with the tokens that carry the loss marked in `labels`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # label of a token that carries no loss (prompt, padding)


@dataclass
class Examples:
    input_ids: torch.Tensor  # [n, length]
    attention_mask: torch.Tensor  # [n, length], 0 for padding
    labels: torch.Tensor  # [n, length], IGNORE where no loss

    def __len__(self) -> int:
        return len(self.input_ids)

    def batch(self, indices) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index],
                "labels": self.labels[index]}

    def head(self, count: int) -> Examples:
        return Examples(self.input_ids[:count], self.attention_mask[:count], self.labels[:count])

    @classmethod
    def blocks(cls, ids: torch.Tensor, length: int) -> Examples:
        """Non-overlapping blocks of `length` tokens, every token carrying the loss (a partial last block dropped)."""
        rows = ids[: len(ids) // length * length].view(-1, length)
        return cls(rows, torch.ones_like(rows), rows.clone())

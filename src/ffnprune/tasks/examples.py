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
        """The rows, without the padding columns that every one of them ends with (rows are right-padded)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        mask = self.attention_mask[index]
        width = int(mask.sum(dim=1).max())
        return {"input_ids": self.input_ids[index, :width], "attention_mask": mask[:, :width],
                "labels": self.labels[index, :width]}

    def head_tokens(self, tokens: int) -> Examples:
        """The fewest leading rows that hold `tokens` real (unpadded) tokens, or all rows: a budget in tokens means
        the same on WikiText's full blocks and on WikiSQL's rows of a few dozen tokens."""
        held = self.attention_mask.sum(dim=1).cumsum(dim=0)
        return self._rows(slice(0, int((held < tokens).sum()) + 1))

    def sample(self, count: int, seed: int) -> Examples:
        """`count` rows drawn without replacement with `seed`, in their original order (all rows if fewer)."""
        if count >= len(self):
            return self
        drawn = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count]
        return self._rows(drawn.sort().values)

    def _rows(self, index) -> Examples:
        return Examples(self.input_ids[index], self.attention_mask[index], self.labels[index])

    @classmethod
    def from_pairs(cls, tokenizer, pairs, length: int, loss_on_prompt: bool = False) -> Examples:
        """prompt + " " + target + EOS per row, right-padded to `length`. Only the target (and EOS) carries the loss
        unless `loss_on_prompt`; padding never does. A long prompt loses its beginning, a long target its end."""
        eos = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        rows, masks, labels = [], [], []
        for pair in pairs:
            target = (tokenizer(" " + pair.target, add_special_tokens=False)["input_ids"] + [eos])[: length - 1]
            prompt = tokenizer(pair.prompt, add_special_tokens=False)["input_ids"][-(length - len(target)):]
            ids = prompt + target
            padding = length - len(ids)
            rows.append(ids + [pad] * padding)
            masks.append([1] * len(ids) + [0] * padding)
            labels.append((prompt if loss_on_prompt else [IGNORE] * len(prompt)) + target + [IGNORE] * padding)
        as_tensor = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
        return cls(as_tensor(rows), as_tensor(masks), as_tensor(labels))

    @classmethod
    def blocks(cls, ids: torch.Tensor, length: int) -> Examples:
        """Non-overlapping blocks of `length` tokens, every token carrying the loss (a partial last block dropped)."""
        rows = ids[: len(ids) // length * length].view(-1, length)
        return cls(rows, torch.ones_like(rows), rows.clone())

    @classmethod
    def sliding_windows(cls, ids: torch.Tensor, context: int, stride: int) -> Examples:
        """Windows of `context` tokens moved by `stride`; each scores only the tokens no earlier window scored, so
        every token but the first is predicted once, with up to context - stride tokens of history."""
        if len(ids) < context:
            return cls.blocks(ids[:0], context)
        rows, labels = [], []
        scored_until = 1
        for end in range(context, len(ids) + stride, stride):
            end = min(end, len(ids))
            window = ids[end - context : end]
            label = window.clone()
            label[: context - (end - scored_until)] = IGNORE  # keep the last end - scored_until positions
            rows.append(window)
            labels.append(label)
            scored_until = end
            if end == len(ids):
                break
        rows = torch.stack(rows)
        return cls(rows, torch.ones_like(rows), torch.stack(labels))

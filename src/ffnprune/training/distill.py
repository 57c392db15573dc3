"""Online logit distillation from the dense model (METHOD section 6)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ffnprune.tasks.examples import IGNORE

CE_WEIGHT = 0.5


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, reduction: str = "token") -> torch.Tensor:
    """T^2 KL(softmax(z_t / T) || softmax(z_s / T)). `token` (default): averaged over the next-token positions that
    carry a label. `authors`: as the authors' kl_div(..., reduction="batchmean") over [batch, positions, vocab],
    i.e. summed over every position (prompt and padding included) and divided by the batch size, about
    sequence-length times stronger against the cross-entropy."""
    if reduction == "authors":
        student = student_logits.float() / temperature
        teacher = teacher_logits.float() / temperature
        kl = F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), log_target=True,
                      reduction="sum") / student.shape[0]
        return temperature**2 * kl
    carries = labels[:, 1:] != IGNORE
    student = student_logits[:, :-1][carries].float() / temperature
    teacher = teacher_logits[:, :-1][carries].float() / temperature
    kl = F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), log_target=True,
                  reduction="batchmean")
    return temperature**2 * kl


def combine(task_loss: torch.Tensor, distill: torch.Tensor | None, mode: str = "mixed") -> torch.Tensor:
    """0.5 CE + 0.5 KD with a teacher (`kl`: the KD term alone), the plain task loss without."""
    if distill is None:
        return task_loss
    return distill if mode == "kl" else CE_WEIGHT * task_loss + (1 - CE_WEIGHT) * distill
